"""API keys for the HTTP API: created once, shown once, stored only as a SHA-256 hash.

A key looks like ``mk_<prefix>_<secret>``: the 8-character prefix is stored in clear
so listings can show which key is which; the whole key is stored only as its SHA-256
hex digest.  A 32-byte random secret makes a plain (unsalted) hash safe: there is
nothing to brute-force.  Revoked keys stop working at once.

Each key carries scopes (:data:`SCOPES`): what it may call.  A key made before
migration 0004, or without ``--scope``, has :data:`DEFAULT_SCOPES` (``notices,events``,
what every key could do then).  ``last_used_at`` records when the key last authenticated
a request, written at most once per :data:`LAST_USED_RESOLUTION_S` so a busy key does not
turn every request into a write.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer import audit
from mailer.clock import utcnow
from mailer.errors import InvalidState, NotFound, ValidationError
from mailer.models import ApiKey

#: Random bytes in a key's secret part.
SECRET_BYTES = 32
#: Every scope a key can hold, and the endpoints it opens (docs/http-api.md).
SCOPES = ("notices", "events", "consents", "customers", "gdpr")
#: Scopes of keys created without --scope, and of keys from before scopes existed.
DEFAULT_SCOPES = ("notices", "events")
#: last_used_at is rewritten only when older than this many seconds.
LAST_USED_RESOLUTION_S = 60
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class Created:
    id: int
    name: str
    key: str
    scopes: tuple[str, ...] = DEFAULT_SCOPES


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_scopes(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """``"notices,consents"`` as a tuple in :data:`SCOPES` order; unknown names are a ValidationError."""
    if value is None:
        return DEFAULT_SCOPES
    names = [p.strip() for p in (value.split(",") if isinstance(value, str) else value) if p.strip()]
    unknown = [n for n in names if n not in SCOPES]
    if unknown or not names:
        raise ValidationError(f"unknown scope(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                              f"choose from {', '.join(SCOPES)}", field="scope")
    return tuple(s for s in SCOPES if s in names)


def scopes_of(key: ApiKey) -> tuple[str, ...]:
    return tuple(s for s in (key.scopes or "").split(",") if s)


def create(session: Session, name: str, scopes: str | tuple[str, ...] | list[str] | None = None) -> Created:
    """Store a new key named ``name``; the returned key is never stored or shown again."""
    granted = parse_scopes(scopes)
    if not _NAME.match(name or ""):
        raise ValidationError(f"API key name {name!r}: use 1-100 letters, digits, '.', '_' or '-'",
                              field="name")
    if session.execute(select(ApiKey.id).where(ApiKey.name == name)).first() is not None:
        raise InvalidState(f"an API key named {name!r} exists already; revoke it or pick another name")
    prefix = secrets.token_hex(4)
    key = f"mk_{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    row = ApiKey(name=name, prefix=prefix, key_hash=key_hash(key), scopes=",".join(granted))
    session.add(row)
    session.flush()
    return Created(row.id, name, key, granted)


def create_audited(session: Session, name: str, scopes: str | tuple[str, ...] | list[str] | None = None, *,
                   actor: str, ip: str | None = None) -> Created:
    """:func:`create`, recorded in the audit log (``apikey.create``) in the same transaction."""
    created = create(session, name, scopes)
    audit.record(session, actor=actor, action="apikey.create", target=f"apikey:{created.name}",
                 detail={"scopes": list(created.scopes), "prefix": created.key.split("_")[1]}, ip=ip)
    return created


def verify(session: Session, key: str | None) -> ApiKey | None:
    """The live key row for a presented key, or None (unknown, malformed or revoked)."""
    if not key or len(key) > 200 or not key.isascii():
        return None
    # key_hash is UNIQUE: one indexed lookup; comparing hashes leaks nothing about the key.
    row = session.execute(select(ApiKey).where(ApiKey.key_hash == key_hash(key))).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= timedelta(seconds=LAST_USED_RESOLUTION_S):
        row.last_used_at = now
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
