"""dedup: jobs.force, jobs.dedup_key (content key of the inputs), jobs.dedup_of

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 05:20:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('force', sa.Boolean(), nullable=False, server_default=sa.false(),
                                      comment='Run even when a twin succeeded.'))
        batch_op.add_column(sa.Column('dedup_key', sa.String(length=64), nullable=True,
                                      comment="sha256 of the job's inputs by content (workers/dedup.py)."))
        batch_op.add_column(sa.Column('dedup_of', sa.String(length=32), nullable=True,
                                      comment='The succeeded job whose artifact this one returned.'))
        batch_op.create_index('ix_jobs_tenant_dedup', ['tenant_id', 'dedup_key'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_tenant_dedup')
        batch_op.drop_column('dedup_of')
        batch_op.drop_column('dedup_key')
        batch_op.drop_column('force')
