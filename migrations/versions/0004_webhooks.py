"""webhooks: jobs.callback_url and its delivery state and log; tenants.webhook_secret

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 05:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('callback_url', sa.Text(), nullable=True, comment="Webhook of the job's end."))
        batch_op.add_column(sa.Column('webhook_state', sa.String(length=16), nullable=True,
                                      comment='waiting (job not finished), retrying, delivered, failed.'))
        batch_op.add_column(sa.Column('webhook_attempts', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('webhook_next_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('webhook_log', JSON, nullable=True,
                                      comment='One entry per delivery attempt: at, status, error, ms.'))
        batch_op.create_index('ix_jobs_webhook_due', ['webhook_state', 'webhook_next_at'], unique=False)
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('webhook_secret', sa.String(length=64), nullable=True,
                                      comment="HMAC-SHA256 key of this tenant's webhook signatures."))


def downgrade() -> None:
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.drop_column('webhook_secret')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_webhook_due')
        batch_op.drop_column('webhook_log')
        batch_op.drop_column('webhook_next_at')
        batch_op.drop_column('webhook_attempts')
        batch_op.drop_column('webhook_state')
        batch_op.drop_column('callback_url')
