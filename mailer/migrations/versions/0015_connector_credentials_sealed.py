"""Shop credentials sealed at rest (a key in instance_secrets, existing rows encrypted), and
write-backs for customers whose shop id is not known yet (connector_outbox.remote_id nullable).

``connector_shops.secret`` (webhook signing secret) and ``connector_shops.api_token``
(Shopify Admin API token, WooCommerce REST key) were stored in clear.  This revision adds
the instance secret ``connector_credentials_key`` (32 random bytes, AES-256-GCM) and seals
every value already there as ``aesgcm1:`` + base64(nonce + ciphertext + tag), with
``platform:shop:column`` as associated data (the format of mailer/instance_secrets.py, written
out here so the migration does not change when the module does).  Values already sealed are
left alone, so running it on a partly sealed table is safe.  The downgrade opens them again
and drops the key.

``connector_outbox.remote_id`` becomes nullable: a withdrawal for a customer mailer knows
only by address is queued without the shop's id, and the write-back looks the customer up
by e-mail first (mailer/connectors/writeback.py).  The downgrade drops such rows that are
still unresolved (the old code cannot send them).

Revision ID: 0015
Revises: 0013
Create Date: 2026-12-01 00:00:00
"""
import base64
import os

import sqlalchemy as sa
from alembic import op
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

revision = '0015'
down_revision = '0013'
branch_labels = None
depends_on = None

KEY_NAME = "connector_credentials_key"
#: Bytes of the AES-256-GCM key.
KEY_BYTES = 32
#: Bytes of each value's random nonce.
NONCE_BYTES = 12
PREFIX = "aesgcm1:"
COLUMNS = ("secret", "api_token")


def _aad(platform: str, shop: str, column: str) -> bytes:
    return f"{platform}:{shop}:{column}".encode()


def _rows(conn):
    # Every connected shop: a handful of rows, read whole.
    return conn.execute(sa.text("SELECT id, platform, shop, secret, api_token FROM connector_shops")).all()


def upgrade() -> None:
    conn = op.get_bind()
    key = conn.execute(sa.text("SELECT value FROM instance_secrets WHERE name = :n"), {"n": KEY_NAME}
                       ).scalar_one_or_none()
    if key is None:
        key = os.urandom(KEY_BYTES)
        conn.execute(sa.text("INSERT INTO instance_secrets (name, value) VALUES (:n, :v)"),
                     {"n": KEY_NAME, "v": key})
    aes = AESGCM(bytes(key))
    for row in _rows(conn):
        changes = {}
        for column in COLUMNS:
            value = getattr(row, column)
            if value and not value.startswith(PREFIX):
                nonce = os.urandom(NONCE_BYTES)
                sealed = aes.encrypt(nonce, value.encode("utf-8"), _aad(row.platform, row.shop, column))
                changes[column] = PREFIX + base64.b64encode(nonce + sealed).decode("ascii")
        for column, value in changes.items():
            conn.execute(sa.text(f"UPDATE connector_shops SET {column} = :v WHERE id = :id"),  # nosec B608 - COLUMNS
                         {"v": value, "id": row.id})
    _remote_id_nullable(True)


def _remote_id_nullable(nullable: bool) -> None:
    with op.batch_alter_table('connector_outbox', schema=None) as batch_op:
        batch_op.alter_column('remote_id', existing_type=sa.String(length=100), nullable=nullable)


def downgrade() -> None:
    conn = op.get_bind()
    conn.execute(sa.text("DELETE FROM connector_outbox WHERE remote_id IS NULL"))
    _remote_id_nullable(False)
    key = conn.execute(sa.text("SELECT value FROM instance_secrets WHERE name = :n"), {"n": KEY_NAME}
                       ).scalar_one_or_none()
    if key is None:
        return
    aes = AESGCM(bytes(key))
    for row in _rows(conn):
        for column in COLUMNS:
            value = getattr(row, column)
            if value and value.startswith(PREFIX):
                raw = base64.b64decode(value[len(PREFIX):])
                clear = aes.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(row.platform, row.shop, column))
                conn.execute(sa.text(f"UPDATE connector_shops SET {column} = :v WHERE id = :id"),  # nosec B608
                             {"v": clear.decode("utf-8"), "id": row.id})
    conn.execute(sa.text("DELETE FROM instance_secrets WHERE name = :n"), {"n": KEY_NAME})
