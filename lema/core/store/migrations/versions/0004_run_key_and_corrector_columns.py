"""attempts.run_key and corrections.corrector as indexed columns (they were only inside the packed ids, found with
leading-wildcard LIKE scans that no index serves)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:15:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('run_key', sa.String(length=40), nullable=False, server_default=''))
        batch_op.create_index('ix_attempts_problem_id_run_key', ['problem_id', 'run_key'])
    with op.batch_alter_table('corrections', schema=None) as batch_op:
        batch_op.add_column(sa.Column('corrector', sa.String(length=40), nullable=False, server_default=''))
        batch_op.create_index('ix_corrections_attempt_id_corrector', ['attempt_id', 'corrector'])
    # Backfill from the ids: attempt "<problem>|<run key>|<sample>", correction "<attempt>|<corrector tag>".
    # rsplit keeps problem ids that contain '|' intact. Python, not SQL string functions: the same on SQLite and
    # PostgreSQL.
    bind = op.get_bind()
    attempts = sa.table('attempts', sa.column('id', sa.String), sa.column('run_key', sa.String))
    corrections = sa.table('corrections', sa.column('id', sa.String), sa.column('corrector', sa.String))
    for table, column, part in ((attempts, 'run_key', lambda i: i.rsplit('|', 2)[-2] if i.count('|') >= 2 else ''),
                                (corrections, 'corrector', lambda i: i.rsplit('|', 1)[-1] if '|' in i else '')):
        ids = [row[0] for row in bind.execute(sa.select(table.c.id))]
        for start in range(0, len(ids), 1000):
            rows = [{'key': i, 'value': part(i)} for i in ids[start:start + 1000]]
            if rows:
                bind.execute(table.update().where(table.c.id == sa.bindparam('key'))
                             .values({column: sa.bindparam('value')}), rows)


def downgrade() -> None:
    with op.batch_alter_table('corrections', schema=None) as batch_op:
        batch_op.drop_index('ix_corrections_attempt_id_corrector')
        batch_op.drop_column('corrector')
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.drop_index('ix_attempts_problem_id_run_key')
        batch_op.drop_column('run_key')
