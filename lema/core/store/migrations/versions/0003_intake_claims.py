"""intake: claims by `lema collect --follow` workers (worker id, lease expiry, claim count)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 09:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # All nullable or with a server default, so rows queued before this revision are simply unclaimed.
    with op.batch_alter_table('intake', schema=None) as batch_op:
        batch_op.add_column(sa.Column('worker_id', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('claims', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('intake', schema=None) as batch_op:
        batch_op.drop_column('claims')
        batch_op.drop_column('lease_until')
        batch_op.drop_column('worker_id')
