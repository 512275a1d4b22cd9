"""Address-hash salt stored in the database (table instance_secrets), no longer derived from the secret key.

A new database gets a random salt.  An existing one keeps every stored hash: the
salt written is the one the old code derived (``MAILER_HASH_SALT`` if set, else
``sha256("salt:" + MAILER_SECRET_KEY)`` as hex), checked against the newest customer
whose address is still known; if no configured key reproduces that hash the upgrade
stops, changing nothing.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 00:00:00
"""
import hashlib
import hmac
import secrets

import sqlalchemy as sa
from alembic import context, op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

#: Tables whose rows carry salted address hashes (any row there means "existing data").
HASHED_TABLES = ("customers", "suppressions", "consent_events", "deliveries")
#: Random bytes behind a new database's salt (stored as 64 hex characters).
NEW_SALT_BYTES = 32


def _legacy_salt(secret_key: str) -> bytes:
    """The salt mailer derived from the secret key before this revision."""
    return hashlib.sha256(("salt:" + secret_key).encode()).hexdigest().encode()


def _email_hash(address: str, salt: bytes) -> str:
    return hmac.new(salt, address.strip().casefold().encode("utf-8"), hashlib.sha256).hexdigest()


def _settings():
    settings = context.config.attributes.get("mailer_settings")
    if settings is None:
        from mailer.settings import Settings

        settings = Settings.from_env()
    return settings


def _salt_for_existing(conn, settings) -> bytes:
    candidates = []
    if settings.hash_salt:
        candidates.append(settings.hash_salt.encode("utf-8"))
    candidates.append(_legacy_salt(settings.secret_key))
    candidates += [_legacy_salt(k) for k in settings.secret_keys]
    sample = conn.execute(sa.text("SELECT email, email_hash FROM customers WHERE email IS NOT NULL "
                                  "ORDER BY id DESC LIMIT 1")).first()
    if sample is None:
        return candidates[0]
    for salt in candidates:
        if hmac.compare_digest(_email_hash(sample.email, salt), sample.email_hash):
            return salt
    raise RuntimeError("migration 0003: none of MAILER_HASH_SALT, MAILER_SECRET_KEY, MAILER_SECRET_KEYS "
                       "reproduces the address hashes stored in this database; run the upgrade with the "
                       "MAILER_SECRET_KEY (or MAILER_HASH_SALT) the database was written with")


def upgrade() -> None:
    conn = op.get_bind()
    settings = _settings()
    existing = any(conn.execute(sa.text(f"SELECT 1 FROM {t} LIMIT 1")).first()  # nosec B608 - fixed table names
                   for t in HASHED_TABLES)
    if existing:
        salt = _salt_for_existing(conn, settings)
    elif settings.hash_salt:
        salt = settings.hash_salt.encode("utf-8")
    else:
        salt = secrets.token_hex(NEW_SALT_BYTES).encode("ascii")
    table = op.create_table(
        'instance_secrets',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('value', sa.LargeBinary(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'),
                  nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )
    op.bulk_insert(table, [{"name": "address_hash_salt", "value": salt}])


def downgrade() -> None:
    op.drop_table('instance_secrets')
