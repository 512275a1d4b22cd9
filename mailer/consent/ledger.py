"""The consent ledger: append-only, hash-chained events, current state and double opt-in.

Every change of consent is a new row in ``consent_events``; rows are never updated or
deleted (database triggers refuse it).  Each event's ``hash`` is
``sha256(prev_hash || canonical_json(content))``, where the content holds no personal
data in clear: the address, IP and user agent enter as salted digests, while their
clear values live in ``consent_evidence`` and can be erased without breaking the chain.
Chain format 2 (every event appended since migration 0002) also hashes ``customer_id``
and ``chain_format``, so an event cannot be moved to another customer unnoticed; older
events keep format 1 (:data:`HASHED_FIELDS`) and still verify.

``consent_state`` keeps the outcome of the latest event per (customer, purpose).  No
Python code writes it: a database trigger on ``consent_events`` INSERT derives it in
the same transaction, and guard triggers refuse any other write (see migration 0002).
"May we mail C for P now" is one primary-key lookup joined, by primary key, to the
event the state row names, which must be a grant of that customer and purpose.

Double opt-in: :func:`request_double_opt_in` stores a ``consent_requests`` row and
returns a signed link (token purpose ``confirm``); :func:`mailer.notices.confirmation.send_confirmation` mails it
as the ``confirm_subscription`` notice.  Consent becomes current only when
:func:`confirm` runs for that link (``POST /confirm/{token}``, see
:mod:`mailer.web_consent`); confirming twice records one event.

Verification lives in :mod:`mailer.consent_verify`, the compliance export in :mod:`mailer.consent_export`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, case, exists, false, or_, select, text, true, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, aliased

from mailer import tokens
from mailer.addresses import email_hash
from mailer.clock import utcnow
from mailer.customers.records import by_email as customer_by_email  # the one lookup, under the CLI's name
from mailer.customers.records import get_or_create
from mailer.errors import Busy, ConsentError, TokenError
from mailer.instance_secrets import address_hash_salt
from mailer.models import (
    ConsentAction,
    ConsentEvent,
    ConsentEvidence,
    ConsentRequest,
    ConsentSource,
    ConsentState,
    Customer,
    LawfulBasis,
)
from mailer.settings import Settings

#: prev_hash of the first event in the chain.
GENESIS = "0" * 64
#: Class id (int4) of the PostgreSQL advisory lock that serializes appends so the chain
#: never forks; its second key is the schema's (:data:`CHAIN_LOCK_SQL`).
CHAIN_LOCK_CLASS = 0x6D61696C  # "mail"
#: The chain lock, per schema: each schema has its own ledger, so two schemas in one
#: database (tests, benchmarks, tenants) never wait for each other, while every session
#: of one schema takes the same lock.  ``current_schema()`` is the schema the ledger's
#: unqualified table names resolve to; a hashtext collision between two schemas only
#: makes them share a lock (they serialize; nothing forks).
CHAIN_LOCK_SQL = "SELECT pg_advisory_xact_lock(:c, hashtext(coalesce(current_schema(), '')))"
#: Token purpose of double opt-in links (its own signing key, see mailer.tokens).
CONFIRM_TOKEN_PURPOSE = "confirm"  # a token purpose label, not a secret  # nosec B105
#: The notice kind that carries the double opt-in link.
CONFIRM_KIND = "confirm_subscription"
#: A second sign-up for the same (customer, purpose) within this many seconds reuses the
#: pending request and sends no second mail (protects inboxes from form floods).
CONFIRM_RESEND_MIN_S = 600

#: Fields covered by a format-1 event's hash, in this order.
HASHED_FIELDS = ("seq", "subject_hash", "purpose", "action", "basis", "source", "occurred_at",
                 "recorded_at", "form_id", "wording_sha256", "wording_version", "confirmed_at",
                 "ip_digest", "user_agent_digest")
#: Fields covered by a format-2 event's hash: format 1's plus the customer and the format.
HASHED_FIELDS_V2 = HASHED_FIELDS + ("customer_id", "chain_format")
#: The chain format :func:`append` writes.
CHAIN_FORMAT = 2
CHAIN_FORMATS = {1: HASHED_FIELDS, 2: HASHED_FIELDS_V2}


def hashed_fields(chain_format: int | None) -> tuple[str, ...]:
    """The fields a hash of this chain format covers (None: format 1, as in old exports)."""
    try:
        return CHAIN_FORMATS[chain_format or 1]
    except (KeyError, TypeError):
        raise ConsentError(f"unknown consent chain format {chain_format!r}; known: 1, 2") from None


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="microseconds")


def canonical(fields: dict) -> bytes:
    """The bytes an event's hash covers, by its ``chain_format`` (absent: 1)."""
    return json.dumps({k: fields.get(k) for k in hashed_fields(fields.get("chain_format"))}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def chain_hash(prev_hash: str, fields: dict) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical(fields)).hexdigest()


def event_fields(ev: ConsentEvent) -> dict:
    """An event's hashed content, as plain JSON values (format 2 adds customer_id and chain_format)."""
    fields = {
        "seq": ev.seq, "subject_hash": ev.subject_hash, "purpose": ev.purpose,
        "action": ev.action.value, "basis": ev.basis.value, "source": ev.source.value,
        "occurred_at": _iso(ev.occurred_at), "recorded_at": _iso(ev.recorded_at),
        "form_id": ev.form_id, "wording_sha256": ev.wording_sha256, "wording_version": ev.wording_version,
        "confirmed_at": _iso(ev.confirmed_at), "ip_digest": ev.ip_digest,
        "user_agent_digest": ev.user_agent_digest,
    }
    if (ev.chain_format or 1) >= 2:
        fields["customer_id"] = ev.customer_id
        fields["chain_format"] = ev.chain_format
    return fields


def _digest(settings: Settings, value: str | None) -> str | None:
    if value is None:
        return None
    return hashlib.sha256(address_hash_salt(settings) + value.encode("utf-8")).hexdigest()


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

    def cleaned(self) -> Proof:
        """Empty strings become None, so an export file (CSV has no null) round-trips exactly."""
        return Proof(ip=self.ip or None, user_agent=self.user_agent or None, form_id=self.form_id or None,
                     wording=self.wording or None, wording_version=self.wording_version or None,
                     confirmed_at=self.confirmed_at)

    def to_json(self) -> dict:
        return {"ip": self.ip, "user_agent": self.user_agent, "form_id": self.form_id, "wording": self.wording,
                "wording_version": self.wording_version}

    @classmethod
    def from_json(cls, data: dict) -> Proof:
        return cls(**{k: data.get(k) for k in ("ip", "user_agent", "form_id", "wording", "wording_version")})


#: PostgreSQL's SQLSTATE for lock_timeout (lock_not_available).
LOCK_NOT_AVAILABLE = "55P03"


def lock_chain(session: Session, settings: Settings | None = None) -> None:
    """Serialize appends until the transaction ends.

    On SQLite the lock is the database's single write lock, taken here by a write that
    changes nothing: until its first write a session reads outside any transaction (the
    driver begins one only at the first INSERT, UPDATE or DELETE), so without it the chain
    tail read next could predate a writer that commits meanwhile (a bulk import), and the
    append would then fail on the unique ``seq`` instead of waiting for it.

    The wait is bounded by ``MAILER_DB_LOCK_TIMEOUT_S`` for the rest of the transaction (the
    chain lock and the consent_state row the trigger rewrites): a session that holds them
    and went silent (a partitioned worker) is ended by the server's
    ``idle_in_transaction_session_timeout`` first, so a waiting withdrawal then proceeds;
    past the bound it fails with :class:`~mailer.errors.Busy`, having changed nothing.
    """
    if session.get_bind().dialect.name == "sqlite":
        # A DELETE that matches no row (WHERE 0) still begins a write transaction, so it
        # waits (busy timeout) for the write lock; the table's triggers fire per row, so none runs.
        with busy_on_lock_timeout():
            session.execute(text("DELETE FROM consent_derive_batches WHERE 0"))
        return
    if session.get_bind().dialect.name == "postgresql":
        timeout_s = settings.db_lock_timeout_s if settings is not None else Settings.db_lock_timeout_s
        with busy_on_lock_timeout():
            session.execute(text(f"SET LOCAL lock_timeout = {int(timeout_s) * 1000}"))  # nosec B608 - an int
            session.execute(text(CHAIN_LOCK_SQL), {"c": CHAIN_LOCK_CLASS})


@contextlib.contextmanager
def busy_on_lock_timeout() -> Iterator[None]:
    """Turn PostgreSQL's lock_timeout error, and SQLite's "database is locked" after its busy
    timeout (``mailer.db.SQLITE_BUSY_TIMEOUT_S``), into :class:`~mailer.errors.Busy` (retryable, clear)."""
    try:
        yield
    except OperationalError as exc:
        sqlite_locked = "database is locked" in str(exc.orig)
        if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE and not sqlite_locked:
            raise
        raise Busy("consent is being changed by another session that holds its lock (a worker "
                   "mailing this customer, or an import); nothing was recorded: try again in a "
                   "few seconds", retry_after_s=5) from None


def append(session: Session, settings: Settings, *, customer: Customer, purpose: str,
           action: ConsentAction | str, source: ConsentSource | str,
           basis: LawfulBasis | str = LawfulBasis.consent, occurred_at: datetime | None = None,
           proof: Proof | None = None) -> ConsentEvent:
    """Append one consent event and extend the chain; the database derives the current state."""
    purpose_ok(settings, purpose)
    try:
        action = ConsentAction(action)
        source = ConsentSource(source)
        basis = LawfulBasis(basis)
    except ValueError as exc:
        raise ConsentError(f"{exc}; actions: {', '.join(a.value for a in ConsentAction)}; sources: "
                           f"{', '.join(s.value for s in ConsentSource)}; bases: "
                           f"{', '.join(b.value for b in LawfulBasis)}") from None
    if basis is LawfulBasis.soft_opt_in and action is ConsentAction.granted and not settings.soft_opt_in:
        raise ConsentError("soft opt-in is switched off for this deployment (MAILER_SOFT_OPT_IN=0)")
    if customer.email is None:
        raise ConsentError(f"customer {customer.id} was erased; no consent can be recorded")
    proof = (proof or Proof()).cleaned()
    now = utcnow()
    occurred_at = occurred_at or now
    if occurred_at.tzinfo is None:
        raise ConsentError("occurred_at must carry a time zone (UTC)")
    lock_chain(session, settings)
    # The chain tail: the highest seq. Appends are serialized by the advisory lock on
    # PostgreSQL and by SQLite's single writer; seq is UNIQUE as a backstop.
    last = session.execute(select(ConsentEvent.seq, ConsentEvent.hash)
                           .order_by(ConsentEvent.seq.desc()).limit(1)).first()
    seq, prev = (last.seq + 1, last.hash) if last else (1, GENESIS)
    ev = ConsentEvent(
        seq=seq, customer_id=customer.id, subject_hash=email_hash(customer.email, address_hash_salt(settings)),
        purpose=purpose, action=action, basis=basis, source=source, occurred_at=occurred_at, recorded_at=now,
        form_id=proof.form_id, wording=proof.wording, wording_version=proof.wording_version,
        wording_sha256=hashlib.sha256(proof.wording.encode("utf-8")).hexdigest() if proof.wording else None,
        confirmed_at=proof.confirmed_at, ip_digest=_digest(settings, proof.ip),
        user_agent_digest=_digest(settings, proof.user_agent), prev_hash=prev, chain_format=CHAIN_FORMAT,
    )
    ev.hash = chain_hash(prev, event_fields(ev))
    session.add(ev)
    with busy_on_lock_timeout():  # the trigger rewrites the consent_state row (a worker may hold it)
        session.flush()
    session.add(ConsentEvidence(event_id=ev.id, email=customer.email, ip=proof.ip, user_agent=proof.user_agent))
    # The consent_events_derive_state trigger has just rewritten the state row; a copy this
    # session loaded before is stale now.
    stale = session.identity_map.get(session.identity_key(ConsentState, (ev.customer_id, ev.purpose)))
    if stale is not None:
        session.expire(stale)
    return ev


def granted_state_join():
    """consent_state joined, by primary key, to the event each row names, kept only where
    that event is a grant of the same customer and purpose.

    A state row that was flipped, inserted or re-pointed behind the ledger's back (with
    the guard triggers dropped) does not pass: the row alone is never trusted.
    """
    cs, ev = ConsentState.__table__.c, ConsentEvent.__table__
    # The join is the primary key (ev.id = cs.event_id); the grant check rides on it inside
    # one CASE.  As plain join clauses, the customer and purpose equalities (which the key
    # already implies for every honest row) each multiplied PostgreSQL's row estimate by
    # 1/300,000, so a 300,000-row segment was planned as one row: a parallel hash join of
    # the whole consent log and a suppression scan per recipient, minutes for a 500-row
    # first page instead of 25 ms.  A CASE is opaque to the estimator (selectivity 0.5)
    # and means the same on every database.
    matches = case((and_(ev.c.customer_id == cs.customer_id, ev.c.purpose == cs.purpose,
                         ev.c.action == ConsentAction.granted.value), true()), else_=false())
    return ConsentState.__table__.join(ev, and_(ev.c.id == cs.event_id, matches))


def has_consent(session: Session, settings: Settings, customer_id: int, purpose: str,
                at: datetime | None = None) -> bool:
    """Does the customer have consent for ``purpose`` now (or at time ``at``)?

    Soft opt-in counts only while the deployment allows it.
    """
    if at is None:
        # Current state: one primary-key lookup, joined by primary key to the event it
        # names (a grant of this customer and purpose), which no later event overrides.
        later = aliased(ConsentEvent)
        row = session.execute(
            select(ConsentState.granted, ConsentEvent.basis).select_from(granted_state_join())
            .where(ConsentState.customer_id == customer_id, ConsentState.purpose == purpose,
                   ~exists().where(later.customer_id == customer_id, later.purpose == purpose,
                                   or_(later.occurred_at > ConsentEvent.occurred_at,
                                       and_(later.occurred_at == ConsentEvent.occurred_at,
                                            later.id > ConsentEvent.id))))).first()
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


def current_purposes(session: Session, settings: Settings, customer_id: int) -> list[str]:
    """The purposes a customer may be mailed for now (granted, and soft opt-in allowed)."""
    # consent_state's primary key starts with customer_id: one short range scan, each row
    # confirmed against the grant it names (primary-key join).
    rows = session.execute(select(ConsentState.purpose, ConsentEvent.basis).select_from(granted_state_join())
                           .where(ConsentState.customer_id == customer_id, ConsentState.granted.is_(True))
                           .order_by(ConsentState.purpose)).all()
    return [p for p, b in rows if b is LawfulBasis.consent or settings.soft_opt_in]


# -- conveniences for the CLI, the web endpoints and other capabilities ---------------------
def _customer(session: Session, settings: Settings, customer: Customer | None, email: str | None, *,
              create: bool) -> Customer:
    if (customer is None) == (email is None):
        raise ConsentError("give exactly one of customer or email")
    if customer is not None:
        return customer
    if create:
        return get_or_create(session, settings, email)
    return customer_by_email(session, email)


def grant(session: Session, settings: Settings, *, purpose: str, source: ConsentSource | str,
          customer: Customer | None = None, email: str | None = None,
          basis: LawfulBasis | str = LawfulBasis.consent, occurred_at: datetime | None = None,
          proof: Proof | None = None) -> ConsentEvent:
    """Record a single opt-in grant (the customer is created when the address is new)."""
    customer = _customer(session, settings, customer, email, create=True)
    return append(session, settings, customer=customer, purpose=purpose, action=ConsentAction.granted,
                  source=source, basis=basis, occurred_at=occurred_at, proof=proof)


def withdraw(session: Session, settings: Settings, *, purpose: str, customer: Customer | None = None,
             email: str | None = None, source: ConsentSource | str = ConsentSource.admin,
             occurred_at: datetime | None = None, proof: Proof | None = None) -> ConsentEvent:
    """Record a withdrawal; always appended, even when no consent was current (it is proof too)."""
    customer = _customer(session, settings, customer, email, create=False)
    state = session.get(ConsentState, (customer.id, purpose))
    basis = state.basis if state is not None else LawfulBasis.consent
    return append(session, settings, customer=customer, purpose=purpose, action=ConsentAction.withdrawn,
                  source=source, basis=basis, occurred_at=occurred_at, proof=proof)


# -- double opt-in ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PendingConfirmation:
    """A stored double opt-in request and the signed link that confirms it."""

    request_id: int
    customer_id: int
    purpose: str
    token: str
    url: str
    expires_at: datetime
    #: False when a recent pending request was reused (no second mail is sent).
    created: bool = True
    #: True when the customer already had current consent (nothing stored, nothing sent).
    already_granted: bool = False
    #: Further requests of the same sign-up that this one link confirms too (a form with
    #: several purposes mails one confirmation, see :func:`combine`).
    also: tuple[int, ...] = ()
    #: Every purpose the link confirms (this one first).
    purposes: tuple[str, ...] = ()


def confirm_url(settings: Settings, token: str) -> str:
    return f"{settings.base_url.rstrip('/')}/confirm/{token}"


def _confirm_token(settings: Settings, request: ConsentRequest, also: tuple[int, ...] = ()) -> str:
    ttl = max(1, int((request.expires_at - utcnow()).total_seconds()))
    payload: dict = {"r": request.id}
    if also:
        payload["a"] = list(also)
    return tokens.sign(settings.signing_keys, CONFIRM_TOKEN_PURPOSE, payload, ttl_s=ttl)


#: Most purposes one confirmation link may cover (a form lists a handful at most).
MAX_PURPOSES_PER_LINK = 20


def combine(session: Session, settings: Settings, pending: list[PendingConfirmation]) -> PendingConfirmation | None:
    """One link for the requests of one sign-up that were newly stored (None when none were).

    A form with several purposes stores one request per purpose (each is its own proof),
    but the person gets ONE mail whose link confirms them all; requests reused within
    :data:`CONFIRM_RESEND_MIN_S` or already granted are not mailed again.
    """
    fresh = [p for p in pending if p.created and not p.already_granted]
    if not fresh:
        return None
    if len(fresh) == 1:
        return fresh[0]
    if len({p.customer_id for p in fresh}) != 1 or len(fresh) > MAX_PURPOSES_PER_LINK:
        raise ConsentError("one confirmation link covers the requests of one customer, at most "
                           f"{MAX_PURPOSES_PER_LINK}")
    first = fresh[0]
    also = tuple(p.request_id for p in fresh[1:])
    token = _confirm_token(settings, session.get(ConsentRequest, first.request_id), also)
    return PendingConfirmation(first.request_id, first.customer_id, first.purpose, token, confirm_url(settings, token),
                               min(p.expires_at for p in fresh), also=also,
                               purposes=tuple(p.purpose for p in fresh))


def request_double_opt_in(session: Session, settings: Settings, *, purpose: str,
                          source: ConsentSource | str = ConsentSource.signup_form,
                          customer: Customer | None = None, email: str | None = None,
                          basis: LawfulBasis | str = LawfulBasis.consent,
                          proof: Proof | None = None, locale: str | None = None) -> PendingConfirmation:
    """Store a pending request and mint its link; consent is NOT granted until confirmed.

    Commit the session, then call :func:`mailer.notices.confirmation.send_confirmation`
    (or use :func:`mailer.notices.confirmation.double_opt_in`).
    """
    purpose_ok(settings, purpose)
    source, basis = ConsentSource(source), LawfulBasis(basis)
    customer = _customer(session, settings, customer, email, create=True)
    if customer.email is None:
        raise ConsentError(f"customer {customer.id} was erased; no consent can be requested")
    if locale and not customer.locale:
        customer.locale = locale
    now = utcnow()
    if has_consent(session, settings, customer.id, purpose):
        return PendingConfirmation(0, customer.id, purpose, "", "", now, created=False, already_granted=True)
    # The newest open request for this (customer, purpose); requests are few per customer.
    recent = session.execute(
        select(ConsentRequest).where(ConsentRequest.customer_id == customer.id, ConsentRequest.purpose == purpose,
                                     ConsentRequest.confirmed_at.is_(None), ConsentRequest.expires_at > now)
        .order_by(ConsentRequest.requested_at.desc()).limit(1)).scalar_one_or_none()
    if recent is not None and (now - recent.requested_at).total_seconds() < CONFIRM_RESEND_MIN_S:
        token = _confirm_token(settings, recent)
        return PendingConfirmation(recent.id, customer.id, purpose, token, confirm_url(settings, token),
                                   recent.expires_at, created=False)
    request = ConsentRequest(customer_id=customer.id, purpose=purpose, basis=basis, source=source,
                             requested_at=now, expires_at=now + timedelta(hours=settings.confirm_link_ttl_hours),
                             proof=(proof or Proof()).cleaned().to_json())
    session.add(request)
    session.flush()
    token = _confirm_token(settings, request)
    return PendingConfirmation(request.id, customer.id, purpose, token, confirm_url(settings, token),
                               request.expires_at)




@dataclass(frozen=True)
class ConfirmResult:
    #: "confirmed" (this call recorded consent) or "already_confirmed" (an earlier call did).
    status: str
    request_id: int
    purpose: str
    event_id: int | None
    locale: str | None
    #: Every purpose the link covers, this request's first (a multi-purpose sign-up).
    purposes: tuple[str, ...] = ()


def pending_request(session: Session, settings: Settings, token: str) -> ConsentRequest:
    """The request a confirmation link points to; TokenError when forged or expired (unless confirmed)."""
    # The MAC is checked first; expiry is judged from the stored request, so a link that
    # was already followed still answers "already confirmed" after it expired.
    payload = tokens.verify(settings.signing_keys, CONFIRM_TOKEN_PURPOSE, token, now=0)
    request_id = payload.get("r")
    if not isinstance(request_id, int):
        raise TokenError("confirmation token carries no request id")
    request = session.get(ConsentRequest, request_id)
    if request is None:
        raise TokenError("this confirmation link is no longer valid (the request was removed)")
    if request.confirmed_at is None and request.expires_at <= utcnow():
        raise TokenError(f"this confirmation link expired at {request.expires_at:%Y-%m-%d %H:%M} UTC; "
                         "please sign up again")
    return request


def _linked_requests(session: Session, settings: Settings, token: str, first: ConsentRequest) -> list[ConsentRequest]:
    """The further requests a combined link names (same customer only; the MAC was checked)."""
    also = tokens.verify(settings.signing_keys, CONFIRM_TOKEN_PURPOSE, token, now=0).get("a") or []
    if not isinstance(also, list) or len(also) >= MAX_PURPOSES_PER_LINK:
        raise TokenError("confirmation token names too many requests")
    out = []
    for rid in also:
        req = session.get(ConsentRequest, rid) if isinstance(rid, int) else None
        if req is not None and req.customer_id == first.customer_id:
            out.append(req)
    return out


def link_purposes(session: Session, settings: Settings, token: str) -> tuple[str, ...]:
    """Every purpose a confirmation link covers (for the page that asks)."""
    first = pending_request(session, settings, token)
    return (first.purpose, *(r.purpose for r in _linked_requests(session, settings, token, first)))


def confirm(session: Session, settings: Settings, token: str, *, ip: str | None = None,
            user_agent: str | None = None) -> ConfirmResult:
    """Follow a double opt-in link: record the grant(s) once; a second call changes nothing.

    A combined link (:func:`combine`) confirms every request it names, each with its own
    proof; the result is "confirmed" when this call recorded at least one of them.
    """
    request = pending_request(session, settings, token)
    linked = _linked_requests(session, settings, token, request)
    purposes = (request.purpose, *(r.purpose for r in linked))
    first = _confirm_one(session, settings, request, ip=ip, user_agent=user_agent)
    recorded = first.status == "confirmed"
    for other in linked:
        if other.expires_at <= utcnow() and other.confirmed_at is None:
            continue
        recorded = _confirm_one(session, settings, other, ip=ip, user_agent=user_agent).status == "confirmed" \
            or recorded
    return ConfirmResult("confirmed" if recorded else "already_confirmed", first.request_id, first.purpose,
                         first.event_id, first.locale, purposes)


def _confirm_one(session: Session, settings: Settings, request: ConsentRequest, *, ip: str | None,
                 user_agent: str | None) -> ConfirmResult:
    """Record one request's grant once (the conditional UPDATE decides between racing clicks)."""
    customer = session.get(Customer, request.customer_id)
    locale = customer.locale if customer else None
    if request.confirmed_at is not None:
        return ConfirmResult("already_confirmed", request.id, request.purpose, request.event_id, locale)
    now = utcnow()
    # Conditional UPDATE as the claim: of two clicks racing, exactly one matches the row.
    won = session.execute(update(ConsentRequest)
                          .where(ConsentRequest.id == request.id, ConsentRequest.confirmed_at.is_(None))
                          .values(confirmed_at=now)
                          .execution_options(synchronize_session=False)).rowcount == 1
    if not won:
        session.refresh(request)
        return ConfirmResult("already_confirmed", request.id, request.purpose, request.event_id, locale)
    if customer is None or customer.email is None:
        raise ConsentError("this address was erased; the confirmation cannot be recorded")
    signup = Proof.from_json(request.proof or {})
    proof = Proof(ip=signup.ip, user_agent=signup.user_agent, form_id=signup.form_id, wording=signup.wording,
                  wording_version=signup.wording_version, confirmed_at=now)
    ev = append(session, settings, customer=customer, purpose=request.purpose, action=ConsentAction.granted,
                source=request.source, basis=request.basis, occurred_at=now, proof=proof)
    # A sign-up form's first name waits in the request until the address owner confirms it.
    first_name = (request.proof or {}).get("first_name")
    if isinstance(first_name, str) and first_name and not customer.first_name:
        customer.first_name = first_name
    session.refresh(request)
    request.event_id = ev.id
    request.proof = dict(request.proof or {}) | {"confirm_ip": ip, "confirm_user_agent": user_agent}
    return ConfirmResult("confirmed", request.id, request.purpose, ev.id, locale)
