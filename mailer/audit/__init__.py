"""The audit log: who did what, when, on what and from which IP, append-only and hash-chained.

Every console action that changes or exports something calls :func:`record` inside the
transaction that does it, so the entry and the change commit (or roll back) together.
Each row's ``hash`` is ``sha256(prev_hash || canonical_json(fields))`` over every column
but ``id`` (the consent ledger's approach, :mod:`mailer.consent.ledger`), and guard
triggers (migration 0007) refuse UPDATE and DELETE on SQLite and PostgreSQL, so an edit
is refused by the database and a forged row breaks the chain :func:`verify` walks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.errors import ValidationError
from mailer.models import AuditEntry

#: prev_hash of the first entry.
GENESIS = "0" * 64
#: Class id (int4) of the PostgreSQL advisory lock that serializes appends so the chain
#: never forks; its second key is the schema's (as the consent chain's lock, per schema).
CHAIN_LOCK_CLASS = 0x61756469  # "audi"
#: The audit chain lock of the current schema (see mailer.consent.ledger.CHAIN_LOCK_SQL).
CHAIN_LOCK_SQL = "SELECT pg_advisory_xact_lock(:c, hashtext(coalesce(current_schema(), '')))"
#: Every action the product records (docs/console.md#audit-log).
ACTIONS = ("campaign.create", "campaign.test_send", "campaign.send", "campaign.pause", "campaign.resume",
           "campaign.cancel", "consent.export", "gdpr.export", "gdpr.erase", "suppression.add",
           "suppression.remove", "apikey.create", "user.create", "user.disable", "user.login",
           "user.logout_everywhere", "user.totp_enable", "user.password_set", "automation.cancel", "shop.redact")
#: Fields the hash covers, in this order.
HASHED_FIELDS = ("seq", "occurred_at", "actor", "action", "target", "detail", "ip")
#: Longest actor / target kept, characters (the columns' sizes).
MAX_ACTOR_CHARS = 320
MAX_TARGET_CHARS = 400
#: Largest detail object, bytes of its JSON.
MAX_DETAIL_BYTES = 8192


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def canonical(fields: dict[str, Any]) -> bytes:
    """The bytes an entry's hash covers."""
    values = {k: fields.get(k) for k in HASHED_FIELDS}
    if isinstance(values["occurred_at"], datetime):
        values["occurred_at"] = _iso(values["occurred_at"])
    return json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def chain_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(fields)).hexdigest()


def _fields(entry: AuditEntry) -> dict[str, Any]:
    return {"seq": entry.seq, "occurred_at": entry.occurred_at, "actor": entry.actor, "action": entry.action,
            "target": entry.target, "detail": entry.detail, "ip": entry.ip}


def record(session: Session, *, actor: str, action: str, target: str, detail: dict | None = None,
           ip: str | None = None) -> None:
    """Append one entry in the caller's transaction (it commits or rolls back with the change)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; add it to mailer.audit.ACTIONS")
    if detail is not None and len(json.dumps(detail, default=str)) > MAX_DETAIL_BYTES:
        raise ValidationError(f"audit detail larger than {MAX_DETAIL_BYTES} bytes", field="detail")
    detail = json.loads(json.dumps(detail, default=str)) if detail is not None else None
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(CHAIN_LOCK_SQL), {"c": CHAIN_LOCK_CLASS})
    # The chain tail: the highest seq (unique index). Appends are serialized by the advisory
    # lock on PostgreSQL and by SQLite's single writer; seq is UNIQUE as a backstop.
    last = session.execute(select(AuditEntry.seq, AuditEntry.hash).order_by(AuditEntry.seq.desc()).limit(1)).first()
    seq, prev = (last.seq + 1, last.hash) if last else (1, GENESIS)
    entry = AuditEntry(seq=seq, occurred_at=utcnow(), actor=(actor or "unknown")[:MAX_ACTOR_CHARS], action=action,
                       target=(target or "")[:MAX_TARGET_CHARS], detail=detail, ip=(ip or None) and ip[:64],
                       prev_hash=prev)
    entry.hash = chain_hash(prev, _fields(entry))
    session.add(entry)
    session.flush()


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    head_hash: str
    #: The first entry whose hash or link does not hold (None when ok).
    first_bad_seq: int | None = None


def verify(session: Session) -> Verification:
    """Walk the chain in seq order; name the first entry that does not hold."""
    prev, count = GENESIS, 0
    # Streamed in seq order (unique index): memory stays flat on a long log.
    rows = session.execute(select(AuditEntry).order_by(AuditEntry.seq).execution_options(yield_per=1000)).scalars()
    for entry in rows:
        count += 1
        if entry.seq != count or entry.prev_hash != prev or chain_hash(prev, _fields(entry)) != entry.hash:
            return Verification(False, count, prev, entry.seq)
        prev = entry.hash
    return Verification(True, count, prev)


def entries(session: Session, *, action: str | None = None, since: datetime | None = None,
            until: datetime | None = None, limit: int | None = 100, before_seq: int | None = None
            ) -> Iterator[AuditEntry]:
    """Entries newest first, filtered; keyset by ``before_seq`` for paging."""
    q = select(AuditEntry)
    if action:
        q = q.where(AuditEntry.action == action)
    if since is not None:
        q = q.where(AuditEntry.occurred_at >= since)
    if until is not None:
        q = q.where(AuditEntry.occurred_at < until)
    if before_seq is not None:
        q = q.where(AuditEntry.seq < before_seq)
    # Newest first by seq (unique index, same order as time); LIMIT bounds a page.
    q = q.order_by(AuditEntry.seq.desc())
    if limit is not None:
        q = q.limit(limit)
    yield from session.execute(q).scalars()
