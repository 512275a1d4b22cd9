"""Worker heartbeats on the database's clock (issue 22, part 2: a dead host is replaced within a lease).

* ``worker_heartbeats``: one row per running worker process (its Dramatiq broker id), with
  ``MAILER_WORKER_NAME``, host and pid, when it started, its last heartbeat (``beat_at``,
  written with the database's own clock) and when a sweeper reaped it (``reaped_at``).
  The sweeper treats a worker silent for ``MAILER_LEASE_S`` as dead and puts the Dramatiq
  messages it had taken back in their queues.  No existing table changes.

Revision ID: 0017
Revises: 0015
Create Date: 2026-12-01 00:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'worker_heartbeats',
        sa.Column('worker_id', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('beat_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('reaped_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('worker_id'),
    )
    op.create_index('ix_worker_heartbeats_beat_at', 'worker_heartbeats', ['beat_at'])


def downgrade() -> None:
    op.drop_index('ix_worker_heartbeats_beat_at', table_name='worker_heartbeats')
    op.drop_table('worker_heartbeats')
