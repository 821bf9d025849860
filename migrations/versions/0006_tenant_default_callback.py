"""tenants.default_callback_url: the webhook of the tenant's jobs that give no callback_url

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 05:50:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('default_callback_url', sa.Text(), nullable=True,
                                      comment="callback_url of the tenant's jobs that give none."))


def downgrade() -> None:
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.drop_column('default_callback_url')
