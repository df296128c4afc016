"""reviews: people's grades of corrections (lema serve review), kept as history (regrades add rows, undo stamps
withdrawn_at)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 00:10:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'reviews',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('correction_id', sa.String(length=400), sa.ForeignKey('corrections.id'), nullable=False),
        sa.Column('reviewer', sa.String(length=64), nullable=False),
        sa.Column('grade', sa.String(length=16), nullable=False),
        sa.Column('note', sa.Text(), nullable=False, server_default=''),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('withdrawn_at', sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index('ix_reviews_correction_id', 'reviews', ['correction_id'])


def downgrade() -> None:
    op.drop_index('ix_reviews_correction_id', table_name='reviews')
    op.drop_table('reviews')
