"""API keys for the HTTP API: created once, shown once, stored only as a SHA-256 hash.

A key looks like ``mk_<prefix>_<secret>``: the 8-character prefix is stored in clear
so listings can show which key is which; the whole key is stored only as its SHA-256
hex digest.  A 32-byte random secret makes a plain (unsalted) hash safe: there is
nothing to brute-force.  Revoked keys stop working at once.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.errors import InvalidState, NotFound, ValidationError
from mailer.models import ApiKey

#: Random bytes in a key's secret part.
SECRET_BYTES = 32
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class Created:
    id: int
    name: str
    key: str


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create(session: Session, name: str) -> Created:
    """Store a new key named ``name``; the returned key is never stored or shown again."""
    if not _NAME.match(name or ""):
        raise ValidationError(f"API key name {name!r}: use 1-100 letters, digits, '.', '_' or '-'",
                              field="name")
    if session.execute(select(ApiKey.id).where(ApiKey.name == name)).first() is not None:
        raise InvalidState(f"an API key named {name!r} exists already; revoke it or pick another name")
    prefix = secrets.token_hex(4)
    key = f"mk_{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    row = ApiKey(name=name, prefix=prefix, key_hash=key_hash(key))
    session.add(row)
    session.flush()
    return Created(row.id, name, key)


def verify(session: Session, key: str | None) -> ApiKey | None:
    """The live key row for a presented key, or None (unknown, malformed or revoked)."""
    if not key or len(key) > 200 or not key.isascii():
        return None
    # key_hash is UNIQUE: one indexed lookup; comparing hashes leaks nothing about the key.
    row = session.execute(select(ApiKey).where(ApiKey.key_hash == key_hash(key))).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    return row


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.execute(select(ApiKey).order_by(ApiKey.id)).scalars())


def revoke(session: Session, name: str) -> ApiKey:
    row = session.execute(select(ApiKey).where(ApiKey.name == name)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no API key named {name!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row
