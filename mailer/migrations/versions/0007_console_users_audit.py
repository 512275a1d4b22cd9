"""The console: users, sessions, one-time tokens, and the append-only audit log (issue 16).

* ``console_users``: who logs in to /console, with a role, an Argon2 hash and an optional TOTP secret.
* ``console_sessions``: server-side sessions (SHA-256 of the cookie), CSRF token, idle tracking.
* ``console_tokens``: one-time set-password links (SHA-256 of the token, expiry).
* ``audit_log``: hash-chained like consent_events; guard triggers refuse UPDATE and DELETE
  (and TRUNCATE on PostgreSQL) at the database level.
* Dashboard indexes: ``deliveries (sent_at, kind)``, ``(status, updated_at)``,
  ``(status, created_at)`` and ``bounces (occurred_at, kind)``, so the last 7 days
  aggregate over index ranges on a million customers' mail.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 00:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
_TS = sa.DateTime(timezone=True)

PG_AUDIT_GUARD = """
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
"""

SQLITE_AUDIT_GUARD = [
    """CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
       BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused'); END""",
    """CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
       BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused'); END""",
]


def upgrade() -> None:
    op.create_table(
        'console_users',
        sa.Column('id', _ID, nullable=False),
        sa.Column('email', sa.String(length=320), nullable=False),
        sa.Column('role', sa.Enum('admin', 'marketer', 'compliance', 'viewer', name='consolerole',
                                  native_enum=False, length=20), nullable=False),
        sa.Column('password_hash', sa.String(length=255), nullable=True),
        sa.Column('locale', sa.String(length=20), server_default='en', nullable=False),
        sa.Column('totp_secret', sa.String(length=64), nullable=True),
        sa.Column('totp_pending', sa.String(length=64), nullable=True),
        sa.Column('totp_last_step', sa.BigInteger(), nullable=True),
        sa.Column('created_at', _TS, server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
        sa.Column('password_set_at', _TS, nullable=True),
        sa.Column('disabled_at', _TS, nullable=True),
        sa.Column('last_login_at', _TS, nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('email'),
    )
    op.create_table(
        'console_sessions',
        sa.Column('id', _ID, nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('user_id', _ID, nullable=False),
        sa.Column('csrf_token', sa.String(length=64), nullable=False),
        sa.Column('created_at', _TS, nullable=False),
        sa.Column('last_seen_at', _TS, nullable=False),
        sa.Column('revoked_at', _TS, nullable=True),
        sa.Column('ip', sa.String(length=64), nullable=True),
        sa.Column('user_agent', sa.String(length=300), nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['console_users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('token_hash'),
    )
    op.create_index('ix_console_sessions_user', 'console_sessions', ['user_id', 'revoked_at'], unique=False)
    op.create_table(
        'console_tokens',
        sa.Column('id', _ID, nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('user_id', _ID, nullable=False),
        sa.Column('purpose', sa.String(length=20), nullable=False),
        sa.Column('created_at', _TS, nullable=False),
        sa.Column('expires_at', _TS, nullable=False),
        sa.Column('used_at', _TS, nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['console_users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('token_hash'),
    )
    op.create_table(
        'audit_log',
        sa.Column('id', _ID, nullable=False),
        sa.Column('seq', sa.BigInteger(), nullable=False),
        sa.Column('occurred_at', _TS, nullable=False),
        sa.Column('actor', sa.String(length=320), nullable=False),
        sa.Column('action', sa.String(length=50), nullable=False),
        sa.Column('target', sa.String(length=400), nullable=False),
        sa.Column('detail', sa.JSON(), nullable=True),
        sa.Column('ip', sa.String(length=64), nullable=True),
        sa.Column('prev_hash', sa.String(length=64), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('seq'),
        sa.UniqueConstraint('hash'),
    )
    op.create_index('ix_audit_log_occurred_at', 'audit_log', ['occurred_at'], unique=False)
    op.create_index('ix_audit_log_action_occurred', 'audit_log', ['action', 'occurred_at'], unique=False)
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_deliveries_sent_at_kind', ['sent_at', 'kind'], unique=False)
        batch_op.create_index('ix_deliveries_status_updated', ['status', 'updated_at'], unique=False)
        batch_op.create_index('ix_deliveries_status_created', ['status', 'created_at'], unique=False)
    with op.batch_alter_table('bounces', schema=None) as batch_op:
        batch_op.create_index('ix_bounces_occurred_kind', ['occurred_at', 'kind'], unique=False)
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(PG_AUDIT_GUARD)
    elif dialect == "sqlite":
        for statement in SQLITE_AUDIT_GUARD:
            op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update ON audit_log")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    elif dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    with op.batch_alter_table('bounces', schema=None) as batch_op:
        batch_op.drop_index('ix_bounces_occurred_kind')
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_status_created')
        batch_op.drop_index('ix_deliveries_status_updated')
        batch_op.drop_index('ix_deliveries_sent_at_kind')
    op.drop_index('ix_audit_log_action_occurred', table_name='audit_log')
    op.drop_index('ix_audit_log_occurred_at', table_name='audit_log')
    op.drop_table('audit_log')
    op.drop_table('console_tokens')
    op.drop_index('ix_console_sessions_user', table_name='console_sessions')
    op.drop_table('console_sessions')
    op.drop_table('console_users')
