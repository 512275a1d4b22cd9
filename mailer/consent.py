"""The consent ledger: append-only, hash-chained events and the current-state query.

Every change of consent is a new row in ``consent_events``; rows are never updated or
deleted (database triggers refuse it).  Each event's ``hash`` is
``sha256(prev_hash || canonical_json(content))``, where the content holds no personal
data in clear: the address, IP and user agent enter as salted digests, while their
clear values live in ``consent_evidence`` and can be erased without breaking the chain.

``consent_state`` keeps the outcome of the latest event per (customer, purpose), updated
in the same transaction as the append, so "may we mail C for P now" is one primary-key
lookup, and segments join it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from mailer.addresses import email_hash
from mailer.clock import utcnow
from mailer.errors import ConsentError
from mailer.models import (
    ConsentAction,
    ConsentEvent,
    ConsentEvidence,
    ConsentSource,
    ConsentState,
    Customer,
    LawfulBasis,
)
from mailer.settings import Settings

#: prev_hash of the first event in the chain.
GENESIS = "0" * 64
#: PostgreSQL advisory lock key that serializes appends so the chain never forks.
CHAIN_LOCK_KEY = 0x6D61696C  # "mail"

#: Fields covered by an event's hash, in this order.
HASHED_FIELDS = ("seq", "subject_hash", "purpose", "action", "basis", "source", "occurred_at",
                 "recorded_at", "form_id", "wording_sha256", "wording_version", "confirmed_at",
                 "ip_digest", "user_agent_digest")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def canonical(fields: dict) -> bytes:
    """The bytes an event's hash covers (also used by ``verify --file``)."""
    return json.dumps({k: fields.get(k) for k in HASHED_FIELDS}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def chain_hash(prev_hash: str, fields: dict) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(fields)).hexdigest()


def event_fields(ev: ConsentEvent) -> dict:
    """An event's hashed content, as plain JSON values."""
    return {
        "seq": ev.seq, "subject_hash": ev.subject_hash, "purpose": ev.purpose,
        "action": ev.action.value, "basis": ev.basis.value, "source": ev.source.value,
        "occurred_at": _iso(ev.occurred_at), "recorded_at": _iso(ev.recorded_at),
        "form_id": ev.form_id, "wording_sha256": ev.wording_sha256, "wording_version": ev.wording_version,
        "confirmed_at": _iso(ev.confirmed_at), "ip_digest": ev.ip_digest,
        "user_agent_digest": ev.user_agent_digest,
    }


def _digest(settings: Settings, value: str | None) -> str | None:
    if value is None:
        return None
    return hashlib.sha256(settings.effective_hash_salt + value.encode("utf-8")).hexdigest()


def purpose_ok(settings: Settings, purpose: str) -> str:
    """Validate a consent purpose name: a configured one or ``restock:<sku>``."""
    if purpose in settings.purposes or (purpose.startswith("restock:") and len(purpose) > len("restock:")):
        return purpose
    raise ConsentError(f"unknown consent purpose {purpose!r}; configured: {', '.join(settings.purposes)}, "
                       "or restock:<sku>")


@dataclass(frozen=True)
class Proof:
    """How consent was given or withdrawn (GDPR Art. 7(1))."""

    ip: str | None = None
    user_agent: str | None = None
    form_id: str | None = None
    wording: str | None = None
    wording_version: str | None = None
    confirmed_at: datetime | None = None


def _lock_chain(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CHAIN_LOCK_KEY})


def append(session: Session, settings: Settings, *, customer: Customer, purpose: str,
           action: ConsentAction | str, source: ConsentSource | str,
           basis: LawfulBasis | str = LawfulBasis.consent, occurred_at: datetime | None = None,
           proof: Proof | None = None) -> ConsentEvent:
    """Append one consent event, extend the chain and update the current state."""
    purpose_ok(settings, purpose)
    action = ConsentAction(action)
    source = ConsentSource(source)
    basis = LawfulBasis(basis)
    if basis is LawfulBasis.soft_opt_in and action is ConsentAction.granted and not settings.soft_opt_in:
        raise ConsentError("soft opt-in is switched off for this deployment (MAILER_SOFT_OPT_IN=0)")
    if customer.email is None:
        raise ConsentError(f"customer {customer.id} was erased; no consent can be recorded")
    proof = proof or Proof()
    now = utcnow()
    occurred_at = occurred_at or now
    _lock_chain(session)
    # The chain tail: the highest seq. Appends are serialized by the advisory lock on
    # PostgreSQL and by SQLite's single writer; seq is UNIQUE as a backstop.
    last = session.execute(select(ConsentEvent.seq, ConsentEvent.hash)
                           .order_by(ConsentEvent.seq.desc()).limit(1)).first()
    seq, prev = (last.seq + 1, last.hash) if last else (1, GENESIS)
    ev = ConsentEvent(
        seq=seq, customer_id=customer.id, subject_hash=email_hash(customer.email, settings.effective_hash_salt),
        purpose=purpose, action=action, basis=basis, source=source, occurred_at=occurred_at, recorded_at=now,
        form_id=proof.form_id, wording=proof.wording, wording_version=proof.wording_version,
        wording_sha256=hashlib.sha256(proof.wording.encode("utf-8")).hexdigest() if proof.wording else None,
        confirmed_at=proof.confirmed_at, ip_digest=_digest(settings, proof.ip),
        user_agent_digest=_digest(settings, proof.user_agent), prev_hash=prev,
    )
    ev.hash = chain_hash(prev, event_fields(ev))
    session.add(ev)
    session.flush()
    session.add(ConsentEvidence(event_id=ev.id, email=customer.email, ip=proof.ip, user_agent=proof.user_agent))
    _update_state(session, ev)
    return ev


def _update_state(session: Session, ev: ConsentEvent) -> None:
    state = session.get(ConsentState, (ev.customer_id, ev.purpose))
    if state is not None and state.updated_at > ev.occurred_at:
        return  # a later event already decided the current state (back-dated import)
    if state is None:
        state = ConsentState(customer_id=ev.customer_id, purpose=ev.purpose)
        session.add(state)
    state.granted = ev.action is ConsentAction.granted
    state.basis = ev.basis
    state.event_id = ev.id
    state.updated_at = ev.occurred_at


def has_consent(session: Session, settings: Settings, customer_id: int, purpose: str,
                at: datetime | None = None) -> bool:
    """Does the customer have consent for ``purpose`` now (or at time ``at``)?

    Soft opt-in counts only while the deployment allows it.
    """
    if at is None:
        # Current state: one primary-key lookup.
        row = session.execute(select(ConsentState.granted, ConsentState.basis)
                              .where(ConsentState.customer_id == customer_id, ConsentState.purpose == purpose)
                              ).first()
    else:
        # Historical state: the latest event at or before ``at``, walking
        # ix_consent_events_customer_purpose backwards.
        row = session.execute(
            select(ConsentEvent.action == ConsentAction.granted, ConsentEvent.basis)
            .where(ConsentEvent.customer_id == customer_id, ConsentEvent.purpose == purpose,
                   ConsentEvent.occurred_at <= at)
            .order_by(ConsentEvent.occurred_at.desc(), ConsentEvent.id.desc()).limit(1)).first()
    if row is None or not row[0]:
        return False
    return row[1] is LawfulBasis.consent or settings.soft_opt_in
