"""Sending one delivery: rate tokens, claim under a lease, gate, compose, send, record.

The sequence, each database step its own short transaction:

0. **Look and wait**: read the row; if it is final, not due, or leased by a live worker,
   stop here.  Otherwise take the rate-limit tokens (recipient domain, then a relay
   with a free token, see :mod:`mailer.ratelimit`), sleeping if the limit is reached,
   before any lease exists, so waiting never eats into one.  With no limit set there is
   nothing to wait for and this read is skipped: the claim decides the same cases.
1. **Claim**: one conditional UPDATE moves the row to ``sending`` with a lease
   (``lease_owner``, ``lease_until``) only if it is ``queued``, a due ``scheduled``, or a
   ``sending`` whose lease expired (its worker died).  Anything else means the delivery
   is done or in another worker's hands: running twice sends once.
2. **Gate**: re-checked at send time, not only at enqueue: suppressions (always win),
   current consent for the mail's purpose, the marketing frequency cap.  On PostgreSQL
   the consent row is read ``FOR SHARE`` and that read transaction stays open until the
   relay has answered, so a withdrawal (which updates that row) commits only after an
   in-flight mail is through: no mail is accepted after a withdrawal has committed.
   A merged back-in-stock mail then lists only the products still wanted
   (:func:`products_still_wanted`), and the same read transaction loads the rest of
   what the mail needs (campaign options, tracking permission) into a plain
   :class:`~mailer.delivery.mail.MailContext` (:func:`load_mail`).
3. **Compose** that value: render, MIME, DKIM (``utf8`` headers only for
   internationalized addresses); composition reads no database.
4. **Send** over the chosen relay.
5. **Record** right after the SMTP reply: ``sent`` with the reply, or back to ``queued``
   for a retry (transient, with Dramatiq's exponential backoff and jitter, until the
   delivery is ``MAILER_RETRY_MAX_AGE_S`` old, then ``failed``), or ``failed`` plus a
   bounce record and, for hard bounces, a suppression (permanent; see
   :mod:`mailer.smtp_codes`).  A refusal about *us* (sender side: size, content, our IP,
   authentication, relaying, rate) is never a bounce against the customer: the delivery
   fails or retries with the reason, and :func:`sender_refusal` warns the operator and
   counts ``mailer_sender_refusals_total``.  The raw reply is always kept.

**The duplicate window.**  A crash (kill -9, power loss) after the relay accepted the
message in step 4 and before step 5 commits leaves the row ``sending`` with a lease
nobody renews; when the lease expires another worker claims it and sends it again.
Each worker thread has at most one message in that window (it handles one delivery
at a time), so a crash duplicates at most one message per thread of the dead process,
and in practice none (the window is one SMTP reply plus one commit).  Step 5 retries
its commit for up to half a lease while the database is unreachable, so a database
outage does not widen the window.  A connection that breaks after the message data
was sent but before the relay's reply arrived is the same case seen from the relay
side: the message may have been accepted, and the retry may duplicate it.  Everything
else (a crash before step 4, a lost broker message, a relay refusal) sends nothing twice.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, bindparam, exists, func, or_, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import lazyload

from mailer import metrics
from mailer.clock import utcnow
from mailer.consent import ledger as consent
from mailer.consent import suppressions
from mailer.db import db_now
from mailer.delivery.bounces import record_bounce, sender_refusal
from mailer.delivery.compose import compose
from mailer.delivery.mail import CampaignOptions, MailContext, Recipient
from mailer.errors import (
    DeliveryError,
    LeaseHeld,
    MailerError,
    PermanentDeliveryError,
    RateLimited,
    TemplateError,
    TransientDeliveryError,
    ValidationError,
)
from mailer.logs import log_context, worker_name
from mailer.models import (
    Campaign,
    CampaignStatus,
    ConsentEvent,
    ConsentState,
    Customer,
    Delivery,
    DeliveryStatus,
    LawfulBasis,
    Suppression,
)
from mailer.queue import port
from mailer.rendering import TRANSACTIONAL
from mailer.transport import ratelimit
from mailer.transport.senders import Senders, notice_lane
from mailer.transport.smtp_codes import SENDER

log = logging.getLogger("mailer.delivery")

#: Statuses after which a delivery is never touched again by the sender.
FINAL = frozenset({DeliveryStatus.sent, DeliveryStatus.failed, DeliveryStatus.bounced,
                   DeliveryStatus.suppressed, DeliveryStatus.skipped, DeliveryStatus.cancelled})

#: Seconds between attempts to commit a result while the database is unreachable.
RECORD_RETRY_PAUSE_S = 0.5


@dataclass(frozen=True)
class Outcome:
    delivery_id: int
    status: str
    detail: str = ""


def worker_id() -> str:
    """Who holds a lease: the worker's name (``MAILER_WORKER_NAME``, default host:pid), thread and a random part."""
    return f"{worker_name()}:{threading.get_ident()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class _Peek:
    status: DeliveryStatus
    to_address: str | None
    send_after: object
    lease_owner: str | None
    lease_until: object
    queue: str
    kind: str
    not_due: bool | None      # send_after is still ahead, on the database's clock
    lease_live: bool | None   # lease_until is not yet past, on the database's clock


def _peek(app, delivery_id: int) -> _Peek | None:
    with app.session() as s:
        # Primary-key read of the few columns that decide whether to wait for tokens at all;
        # "not due" and "leased" are judged on the database's clock, as the claim judges them.
        row = s.execute(select(Delivery.status, Delivery.to_address, Delivery.send_after, Delivery.lease_owner,
                               Delivery.lease_until, Delivery.queue, Delivery.kind,
                               Delivery.send_after > db_now(), Delivery.lease_until >= db_now())
                        .where(Delivery.id == delivery_id)).first()
    return None if row is None else _Peek(*row)


# The per-mail statements are built once, with bind parameters: building a select() or
# update() costs about as much CPU (~0.1 ms) as running it (bench/campaign_throughput.py).
# Lease expiry, the expired-lease check and "due" are the database's clock (db_now), never
# the worker's: a host whose clock runs ahead cannot take over a live lease.
_CLAIM = (update(Delivery)
          .where(Delivery.id == bindparam("d_id"),
                 or_(Delivery.status == DeliveryStatus.queued,
                     and_(Delivery.status == DeliveryStatus.scheduled,
                          or_(Delivery.send_after.is_(None), Delivery.send_after <= db_now())),
                     and_(Delivery.status == DeliveryStatus.sending, Delivery.lease_until < db_now())))
          .values(status=DeliveryStatus.sending, lease_owner=bindparam("d_owner"),
                  lease_until=db_now(bindparam("d_lease_s")), attempts=Delivery.attempts + 1,
                  updated_at=db_now())
          .execution_options(synchronize_session=False))
_CLAIM_RETURNING = _CLAIM.returning(Delivery)
_CAMPAIGN_STATUS = select(Campaign.status).where(Campaign.id == bindparam("c_id"))


@functools.lru_cache(maxsize=64)
def _finish_stmt(names: tuple[str, ...]):
    """The lease-guarded UPDATE that records a result, setting the columns ``names``.

    A Core statement on the table (not the ORM entity), compiled once per set of
    columns and run on a plain connection: through ``Session.execute`` the ORM's
    per-statement work cost more CPU than the UPDATE itself (bench/delivery_path.py)."""
    table = Delivery.__table__
    return (table.update()
            .where(table.c.id == bindparam("d_id"), table.c.lease_owner == bindparam("d_owner"))
            .values({name: bindparam("v_" + name) for name in names}))


def _engine(app):
    """The engine behind the app's sessions (Core statements run on its connections)."""
    return app.sessions.kw["bind"]


def claim(app, delivery_id: int, owner: str) -> Delivery | Outcome:
    """Take the lease on a delivery, or say why not (final, not due, or held elsewhere)."""
    with app.session() as s:
        # One conditional UPDATE is the claim: two workers racing for the same row cannot
        # both match it, whatever the isolation level.
        # RETURNING hands back the claimed row in the same statement (one query per mail
        # less); only when nothing matched is the row read to say why.
        delivery = s.execute(_CLAIM_RETURNING, {"d_id": delivery_id, "d_owner": owner,
                                                "d_lease_s": float(app.settings.lease_s)}).scalar_one_or_none()
        if delivery is not None:
            return delivery
        delivery = s.get(Delivery, delivery_id)
        if delivery is None:
            return Outcome(delivery_id, "missing", "no such delivery")
        if delivery.status in FINAL:
            return Outcome(delivery_id, delivery.status.value, "already final")
        if delivery.status is DeliveryStatus.scheduled:
            return Outcome(delivery_id, "scheduled", f"not due before {delivery.send_after}")
        if delivery.status is DeliveryStatus.held:
            # Campaigns: held while its campaign is paused; resume re-enqueues it.
            return Outcome(delivery_id, "held", delivery.reason or "campaign paused")
        raise LeaseHeld(f"delivery {delivery_id} is leased by {delivery.lease_owner} until {delivery.lease_until}")


def _finish(app, delivery_id: int, owner: str, *, status: DeliveryStatus, reason: str | None = None,
            **values) -> bool:
    """Record a result if we still hold the lease; retries the commit while the DB is down."""
    deadline = time.monotonic() + app.settings.lease_s / 2
    while True:
        try:
            with _engine(app).begin() as conn:
                columns = dict(status=status, reason=reason, lease_owner=None, lease_until=None,
                               updated_at=utcnow(), **values)
                res = conn.execute(_finish_stmt(tuple(sorted(columns))),
                                   {"d_id": delivery_id, "d_owner": owner,
                                    **{"v_" + k: v for k, v in columns.items()}})
                if res.rowcount != 1:
                    log.error("delivery %s: lease lost before recording %s (another worker reclaimed it)",
                              delivery_id, status.value, extra={"delivery_id": delivery_id})
                return res.rowcount == 1
        except (OperationalError, DBAPIError) as exc:
            if not _is_connection_error(exc) or time.monotonic() > deadline:
                raise
            log.warning("delivery %s: database unreachable while recording %s; retrying", delivery_id,
                        status.value, extra={"delivery_id": delivery_id})
            time.sleep(RECORD_RETRY_PAUSE_S)


def _is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError) or bool(getattr(exc, "connection_invalidated", False))


@dataclass(frozen=True)
class Verdict:
    """The gate's answer: why the mail must not go out now (``blocked``, a status and a
    reason), or None if it may; and the consent purposes it found current (``granted``,
    None when consent was not consulted: transactional mail needs none)."""

    blocked: tuple[DeliveryStatus, str] | None = None
    granted: tuple[str, ...] | None = None


def gate(app, s, delivery: Delivery, customer: Customer | None, *, lock: bool = False) -> Verdict:
    """May this delivery go out now?  Campaign state, suppressions, consent, frequency cap.

    ``lock``: read the consent row ``FOR SHARE`` (PostgreSQL) so a withdrawal waits for
    the caller's transaction, which the caller keeps open until the relay answered.
    The gate only decides; :func:`products_still_wanted` trims a merged restock mail.
    """
    settings = app.settings
    if delivery.campaign_id is not None:
        # Campaigns: pause and cancel take effect for mail not yet sent, including a delivery
        # a worker claimed just before the pause (primary-key read of the campaign's status).
        campaign_status = s.execute(_CAMPAIGN_STATUS, {"c_id": delivery.campaign_id}).scalar_one_or_none()
        if campaign_status is CampaignStatus.cancelled:
            return Verdict((DeliveryStatus.cancelled, "campaign cancelled"))
        if campaign_status is CampaignStatus.paused:
            return Verdict((DeliveryStatus.held, "campaign paused"))
    hit = suppressions.suppression_for(s, delivery.to_hash, delivery.purpose)
    if hit is not None:
        return Verdict((DeliveryStatus.suppressed, f"suppressed: {hit.reason.value} ({hit.scope})"))
    if delivery.purpose == TRANSACTIONAL:
        return Verdict()
    if customer is None or customer.email is None:
        return Verdict((DeliveryStatus.skipped, "no customer record (erased?) for a marketing mail"))
    purposes = _consent_purposes(delivery)
    if lock and s.get_bind().dialect.name == "postgresql":
        # Share-lock the consent_state rows this mail depends on (primary key lookups);
        # SQLite has no FOR SHARE (the query would be a plain read, one per mail for
        # nothing) and relies on the re-check below alone.
        s.execute(select(ConsentState.granted)
                  .where(ConsentState.customer_id == customer.id, ConsentState.purpose.in_(purposes))
                  .with_for_update(read=True))
    granted = [p for p in purposes if consent.has_consent(s, settings, customer.id, p)]
    if not granted:
        return Verdict((DeliveryStatus.skipped, f"no current consent for {delivery.purpose}"))
    if settings.frequency_cap > 0:
        since = utcnow() - timedelta(hours=settings.frequency_window_hours)
        # Marketing mails sent to this customer in the window (ix_deliveries_customer_sent).
        sent = s.execute(select(func.count()).select_from(Delivery)
                         .where(Delivery.customer_id == customer.id, Delivery.sent_at >= since,
                                Delivery.purpose != TRANSACTIONAL, Delivery.id != delivery.id)).scalar_one()
        if sent >= settings.frequency_cap:
            return Verdict((DeliveryStatus.skipped, (f"frequency cap: {sent} marketing mails in the last "
                                                     f"{settings.frequency_window_hours} h")))
    return Verdict(granted=tuple(granted))


def products_still_wanted(delivery: Delivery, granted: tuple[str, ...] | None) -> dict:
    """The data this send carries: for a merged back-in-stock mail, only the products
    whose restock request is still current (``granted``, from :func:`gate`).

    The customer may have withdrawn one request since the mail was merged.  The stored
    row keeps what was scheduled; only this send carries the kept products.  Any other
    mail carries its data unchanged.
    """
    if granted is None or len(granted) >= len(_consent_purposes(delivery)):
        return delivery.data
    keep = set(granted)
    products = [p for p in delivery.data["products"] if _restock_purpose(delivery, p) in keep]
    return {**delivery.data, "products": products, "sku": products[0].get("sku", delivery.data.get("sku"))}


def _restock_purpose(delivery: Delivery, product: dict) -> str:
    sku = product.get("sku") if isinstance(product, dict) else None
    return f"restock:{sku}" if sku else delivery.purpose


def _consent_purposes(delivery: Delivery) -> list[str]:
    """The consent purposes a marketing mail rests on: its own, or for a merged
    back-in-stock mail the ``restock:<sku>`` request of every product it lists."""
    products = (delivery.data or {}).get("products")
    if delivery.purpose.startswith("restock:") and isinstance(products, list) and products:
        return list(dict.fromkeys(_restock_purpose(delivery, p) for p in products))
    return [delivery.purpose]


class _CampaignOptionsCache:
    """Campaign options by (database URL, campaign id), read once per process through the
    caller's session: they never change once a campaign exists (a missing campaign is
    remembered as None too).  At most ``maxsize`` entries, least recently used dropped."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: collections.OrderedDict[tuple[str, int], CampaignOptions | None] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, s, settings, campaign_id: int) -> CampaignOptions | None:
        key = (settings.database_url, campaign_id)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        # Primary-key read, once per campaign per process (the lock is not held meanwhile).
        campaign = s.get(Campaign, campaign_id)
        options = CampaignOptions.of(campaign) if campaign is not None else None
        with self._lock:
            self._items[key] = options
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return options

    def cache_clear(self) -> None:
        with self._lock:
            self._items.clear()


#: Campaigns whose options one process remembers.
CAMPAIGN_OPTIONS_ENTRIES = 512

campaign_options = _CampaignOptionsCache(CAMPAIGN_OPTIONS_ENTRIES)


def tracked_source(delivery, options: CampaignOptions | None) -> bool:
    """Does this mail's sender track it: a campaign with tracking on, or an automation rule?"""
    if delivery.campaign_id:
        return options is not None and options.tracking
    return bool(getattr(delivery, "automation", None))


def tracking_allowed(s, settings, delivery: Delivery, customer: Customer | None,
                     options: CampaignOptions | None) -> bool:
    """Does the customer permit open and click tracking of this mail?

    Asked only when the answer matters (a marketing mail of a campaign with tracking
    on, or of an automation rule); otherwise False, and no query is made.  Without
    ``MAILER_TRACKING_REQUIRES_CONSENT`` the answer is yes; with it, the customer's
    current consent for the ``tracking`` purpose, read in the caller's transaction.
    """
    if delivery.purpose == TRANSACTIONAL or not delivery.id or not tracked_source(delivery, options):
        return False
    if not settings.tracking_requires_consent:
        return True
    if customer is None or customer.id is None:
        return False
    return consent.has_consent(s, settings, customer.id, "tracking")


def load_mail(s, settings, delivery: Delivery, customer: Customer | None, *, data: dict) -> MailContext:
    """Everything composing ``delivery`` needs, read in the caller's transaction ``s``.

    ``data`` is what this send carries (see :func:`products_still_wanted`).
    """
    options = campaign_options(s, settings, delivery.campaign_id) if delivery.campaign_id else None
    return MailContext.of(delivery, Recipient.of(customer), campaign=options, data=data,
                          tracking_allowed=tracking_allowed(s, settings, delivery, customer, options))


def _age_s(delivery: Delivery) -> float:
    """Seconds since the delivery became due (its send_after, or its creation)."""
    start = delivery.send_after or delivery.created_at
    return (utcnow() - start).total_seconds() if start else 0.0


def _reserve(app, to_address: str | None):
    """Take the domain token, then a relay with a free token; None when no pool is in use."""
    settings = app.settings
    if settings.domain_rate > 0 and to_address:
        waited = ratelimit.limiter_for(settings).acquire(ratelimit.domain_key(to_address), settings.domain_rate)
        if waited:
            log.debug("waited %.2f s for the %s rate limit", waited, ratelimit.domain_key(to_address))
    choose = getattr(app.transport, "choose", None)
    return choose() if choose is not None else None


def process(app, delivery_id: int, *, owner: str | None = None) -> Outcome:
    """Send one delivery if it is due and allowed; safe to call any number of times."""
    with log_context(delivery_id=delivery_id):
        return _process(app, delivery_id, owner or worker_id())


def _rate_limited(app) -> bool:
    """Can taking rate-limit tokens make this worker wait (a domain or relay limit is set)?"""
    return app.settings.domain_rate > 0 or getattr(app.transport, "limiter", None) is not None


def _process(app, delivery_id: int, owner: str) -> Outcome:
    if not _rate_limited(app):
        # The peek only keeps us from waiting for tokens for a delivery we would not send;
        # without limits the claim alone decides the same cases (final, held, not due,
        # leased elsewhere) and one query per mail is saved (bench/campaign_throughput.py).
        relay = _reserve(app, None)
        return _claimed(app, delivery_id, owner, relay)
    peek = _peek(app, delivery_id)
    if peek is None:
        return Outcome(delivery_id, "missing", "no such delivery")
    if peek.status in FINAL:
        return Outcome(delivery_id, peek.status.value, "already final")
    if peek.status is DeliveryStatus.held:  # campaigns: its campaign is paused; resume re-enqueues it
        return Outcome(delivery_id, "held", "campaign paused")
    if peek.status is DeliveryStatus.scheduled and peek.send_after is not None and peek.not_due:
        return Outcome(delivery_id, "scheduled", f"not due before {peek.send_after}")
    if peek.status is DeliveryStatus.sending and peek.lease_until is not None and peek.lease_live:
        raise LeaseHeld(f"delivery {delivery_id} is leased by {peek.lease_owner} until {peek.lease_until}")
    try:
        relay = _reserve(app, peek.to_address)
    except RateLimited:
        metrics.count("rate_limited", queue=peek.queue, kind=peek.kind)
        raise
    return _claimed(app, delivery_id, owner, relay)


def _claimed(app, delivery_id: int, owner: str, relay) -> Outcome:
    """Claim, then gate, compose, send and record (steps 1-5 of the module docstring)."""
    settings = app.settings
    claimed = claim(app, delivery_id, owner)
    if isinstance(claimed, Outcome):
        return claimed
    delivery = claimed
    kind, queue = delivery.kind, delivery.queue
    if delivery.attempts > 1 and _age_s(delivery) > settings.retry_max_age_s:
        reason = (f"gave up after {delivery.attempts - 1} attempts over {settings.retry_max_age_s} s; "
                  f"last: {delivery.smtp_reply or delivery.reason or 'no reply'}")
        _finish(app, delivery_id, owner, status=DeliveryStatus.failed, reason=reason)
        metrics.count("failed", queue=queue, kind=kind)
        log.warning("delivery %s failed: %s", delivery_id, reason)
        return Outcome(delivery_id, "failed", reason)
    try:
        step, value = _attempt(app, delivery, relay)
    except TransientDeliveryError as exc:
        return _record_transient(app, delivery, owner, exc)
    except PermanentDeliveryError as exc:
        _record_permanent(app, delivery, owner, exc)
        return Outcome(delivery_id, "failed", str(exc))
    except BaseException as exc:
        # Database trouble or a bug before anything was sent: hand the lease back (best
        # effort, retried while the database is down) so a retry need not wait for it.
        try:
            _finish(app, delivery_id, owner, status=DeliveryStatus.queued, reason=f"error: {exc}"[:500])
        except Exception:
            log.warning("delivery %s: could not release the lease after %r", delivery_id, exc)
        raise
    if step == "blocked":
        status, reason = value
        _finish(app, delivery_id, owner, status=status, reason=reason)
        metrics.count(status.value, queue=queue, kind=kind)
        log.info("delivery %s %s: %s", delivery_id, status.value, reason)
        return Outcome(delivery_id, status.value, reason)
    if step == "invalid":
        # A broken template or header never half-sends: fail this delivery, keep the reason.
        _finish(app, delivery_id, owner, status=DeliveryStatus.failed, reason=str(value))
        metrics.count("failed", queue=queue, kind=kind)
        log.error("delivery %s failed to compose: %s", delivery_id, value)
        return Outcome(delivery_id, "failed", str(value))
    composed, result = value
    _finish(app, delivery_id, owner, status=DeliveryStatus.sent, sent_at=utcnow(),
            message_id=composed.message_id, smtp_code=result.code, smtp_reply=result.reply,
            relay=result.relay)
    metrics.count("sent", queue=queue, kind=kind)
    log.info("delivery %s sent via %s: %s", delivery_id, result.relay, result.reply)
    return Outcome(delivery_id, "sent", result.reply)


def _attempt(app, delivery: Delivery, relay):
    """Gate, load, compose and send inside one read transaction (see the module docstring, step 2).

    Returns ("blocked", (status, reason)), ("invalid", error) or ("sent", (composed, result));
    delivery errors from the relay propagate.
    """
    settings = app.settings
    s = app.sessions()
    try:
        # Without the customer's tags (Customer.tags loads "selectin": a second query per
        # mail that nothing on the send path reads; bench/campaign_throughput.py).
        customer = (s.get(Customer, delivery.customer_id, options=[lazyload(Customer.tags)])
                    if delivery.customer_id else None)
        verdict = gate(app, s, delivery, customer, lock=True)
        if verdict.blocked is not None:
            return "blocked", verdict.blocked
        mail = load_mail(s, settings, delivery, customer, data=products_still_wanted(delivery, verdict.granted))
        try:
            composed = compose(settings, app.renderer, app.signer, mail)
        except (TemplateError, ValidationError) as exc:
            return "invalid", exc
        send = app.transport.send
        if relay is not None:
            result = send(envelope_from=composed.envelope_from, recipient=composed.recipient,
                          message=composed.message, relay=relay)
        else:
            result = send(envelope_from=composed.envelope_from, recipient=composed.recipient,
                          message=composed.message)
        return "sent", (composed, result)
    finally:
        # Ends the read transaction (releasing the consent lock); it wrote nothing, and a
        # connection that died meanwhile must not hide the relay's answer.
        with contextlib.suppress(Exception):
            s.rollback()
        with contextlib.suppress(Exception):
            s.close()


def _record_transient(app, delivery: Delivery, owner: str, exc: TransientDeliveryError) -> Outcome:
    """Back to ``queued`` and re-raise for Dramatiq's backoff, or ``failed`` once too old."""
    settings = app.settings
    if _age_s(delivery) > settings.retry_max_age_s:
        reason = (f"gave up after {delivery.attempts} attempts over {settings.retry_max_age_s} s; "
                  f"last: {exc}")
        _finish(app, delivery.id, owner, status=DeliveryStatus.failed, reason=reason, smtp_code=exc.code,
                smtp_reply=exc.reply)
        metrics.count("failed", queue=delivery.queue, kind=delivery.kind)
        log.warning("delivery %s failed: %s", delivery.id, reason)
        return Outcome(delivery.id, "failed", reason)
    _finish(app, delivery.id, owner, status=DeliveryStatus.queued, reason=str(exc), smtp_code=exc.code,
            smtp_reply=exc.reply)
    metrics.count("retried", queue=delivery.queue, kind=delivery.kind)
    if exc.side == SENDER:
        sender_refusal(delivery, relay=exc.relay, code=exc.code, enhanced=exc.enhanced,
                       reason=exc.reason or "", reply=exc.reply, effect="will retry")
    else:
        log.warning("delivery %s: transient failure, will retry: %s", delivery.id, exc)
    raise exc


def _record_permanent(app, delivery: Delivery, owner: str, exc: PermanentDeliveryError) -> None:
    """A permanent refusal: fail the delivery and, for bounces, suppress the address."""
    outcome = exc.outcome or "fail"
    reason = exc.reason if exc.reason is not None else str(exc)
    _finish(app, delivery.id, owner, status=DeliveryStatus.failed, reason=str(exc), smtp_code=exc.code,
            smtp_reply=exc.reply)
    metrics.count("failed", queue=delivery.queue, kind=delivery.kind)
    if exc.side == SENDER:
        # Our fault (size, content, IP, authentication, relaying, rate): never a bounce
        # against the customer, never a suppression; the operator is told instead.
        sender_refusal(delivery, relay=exc.relay, code=exc.code, enhanced=exc.enhanced,
                       reason=reason, reply=exc.reply, effect="failed")
        return
    if outcome in ("hard", "soft"):
        with app.session() as s:
            record_bounce(app.settings, s, delivery, kind=outcome, status_code=exc.enhanced or (
                str(exc.code) if exc.code else None), reason=reason, raw=exc.reply)
    log.warning("delivery %s: permanent failure (%s): %s", delivery.id, outcome, exc)


def is_retryable(exc: BaseException) -> bool:
    """Which exceptions the send actors hand to Dramatiq's Retries."""
    if isinstance(exc, (TransientDeliveryError, OperationalError, DBAPIError)):
        return True
    if isinstance(exc, DeliveryError):
        return False
    return not isinstance(exc, MailerError)


# -- campaign slices: many deliveries per statement (send_batch) ----------------------------
#
# ``send_batch`` hands its ids here.  A slice of up to CLAIM_SLICE ids is claimed in one
# statement, gated with one query per check for the whole slice, then each mail is
# composed and sent, and its result recorded right after its own SMTP reply (on the
# worker thread itself, or on a sending thread of mailer.transport.senders when
# MAILER_SMTP_CONNECTIONS is set).  With a rate limit set every delivery goes through
# process() one by one instead: its tokens are taken before its claim (module docstring,
# step 0), so waiting for a token never eats into a lease.

#: Deliveries claimed by one statement; about one BATCH_SLICE_S of composing on one core.
CLAIM_SLICE = 16
#: Deliveries claimed by one statement at the least, however long a mail took lately: the
#: claim and the gate's four to five queries are paid per slice (docs/benchmarks.md,
#: "third pass"); notices have their own lane threads (MAILER_NOTICE_THREADS), which no
#: slice holds up.
CLAIM_SLICE_MIN = 8
#: A slice sends no further mail once this share of the lease has passed since its claim
#: (the rest go on as a new message): past the lease another worker may have them.
SLICE_LEASE_SHARE = 0.5
#: When every sending thread is busy for a whole slice (a slow or dead relay), the ids not
#: yet claimed go on as a new message this much later (milliseconds), freeing the worker thread.
HAND_ON_DELAY_MS = 200

_D = Delivery.__table__.c
#: What the send path reads of a claimed delivery (attribute names as on Delivery).
_CLAIM_COLUMNS = (_D.id, _D.kind, _D.campaign_id, _D.customer_id, _D.to_address, _D.to_hash, _D.locale, _D.data,
                  _D.purpose, _D.queue, _D.status, _D.attempts, _D.send_after, _D.created_at, _D.smtp_reply,
                  _D.reason, _D.variant, _D.automation)
# The slice's claim: the same conditional UPDATE as claim(), over a list of ids, so each
# row is leased (or not) on its own by the one statement: a row another worker holds,
# or one that is final, held or not yet due, does not match and is simply not returned.
# RETURNING (SQLite >= 3.35, PostgreSQL) hands back what the send path needs of the rows
# it leased, so nothing is read twice.
_CLAIM_MANY = (Delivery.__table__.update()
               .where(_D.id.in_(bindparam("d_ids", expanding=True)),
                      or_(_D.status == DeliveryStatus.queued,
                          and_(_D.status == DeliveryStatus.scheduled,
                               or_(_D.send_after.is_(None), _D.send_after <= db_now())),
                          and_(_D.status == DeliveryStatus.sending, _D.lease_until < db_now())))
               .values(status=DeliveryStatus.sending, lease_owner=bindparam("d_owner"),
                       lease_until=db_now(bindparam("d_lease_s")), attempts=_D.attempts + 1,
                       updated_at=db_now())
               .returning(*_CLAIM_COLUMNS))

_C = Campaign.__table__.c
# Pause and cancel take effect for mail not yet sent: the slice's campaigns' status, by primary key.
_CAMPAIGN_STATUSES = select(_C.id, _C.status).where(_C.id.in_(bindparam("c_ids", expanding=True)))
_S = Suppression.__table__.c
# Every suppression of the slice's addresses (ix_suppressions_email_hash; a handful per
# address at most); which scope stops which purpose is decided per mail, in Python.
_SUPPRESSIONS = (select(_S.email_hash, _S.scope, _S.reason)
                 .where(_S.email_hash.in_(bindparam("hashes", expanding=True))).order_by(_S.id))
_K = Customer.__table__.c
# The slice's customers by primary key, only the columns a mail shows (no tags).
_CUSTOMERS = (select(_K.id, _K.email, _K.first_name, _K.last_name, _K.currency)
              .where(_K.id.in_(bindparam("k_ids", expanding=True))))
_F = Delivery.__table__.c
# Marketing mails sent to the slice's customers within the window, per customer
# (ix_deliveries_customer_sent: a range per customer), the slice's own rows excluded.
_SENT_IN_WINDOW = (select(_F.customer_id, func.count())
                   .where(_F.customer_id.in_(bindparam("k_ids", expanding=True)), _F.sent_at >= bindparam("since"),
                          _F.purpose != TRANSACTIONAL, _F.id.not_in(bindparam("d_ids", expanding=True)))
                   .group_by(_F.customer_id))


def _current_consent_stmt(lock: bool):
    """The slice's current grants: consent_state rows (primary key ranges of the slice's
    customers) joined by primary key to the grant event each names, which no later event
    of the same customer and purpose overrides (as :func:`mailer.consent.ledger.has_consent`
    asks it for one).  ``lock``: ``FOR SHARE OF consent_state`` (PostgreSQL), so a
    withdrawal of any of these rows waits until the slice's mails are through."""
    cs, ev = ConsentState.__table__.c, ConsentEvent.__table__.c
    later = ConsentEvent.__table__.alias("later")
    stmt = (select(cs.customer_id, cs.purpose, ev.basis).select_from(consent.granted_state_join())
            .where(cs.customer_id.in_(bindparam("k_ids", expanding=True)),
                   cs.purpose.in_(bindparam("purposes", expanding=True)),
                   ~exists().where(later.c.customer_id == cs.customer_id, later.c.purpose == cs.purpose,
                                   or_(later.c.occurred_at > ev.occurred_at,
                                       and_(later.c.occurred_at == ev.occurred_at, later.c.id > ev.id)))))
    return stmt.with_for_update(read=True, of=ConsentState.__table__) if lock else stmt


_CONSENT = _current_consent_stmt(False)
_CONSENT_FOR_SHARE = _current_consent_stmt(True)


def claim_many(app, delivery_ids: list[int], owner: str) -> list:
    """Lease every delivery of ``delivery_ids`` that may be sent now, in one statement;
    returns the leased rows (attribute access like a Delivery), in the order given."""
    if not delivery_ids:
        return []
    with _engine(app).begin() as conn:
        rows = conn.execute(_CLAIM_MANY, {"d_ids": list(delivery_ids), "d_owner": owner,
                                          "d_lease_s": float(app.settings.lease_s)}).all()
    order = {d: i for i, d in enumerate(delivery_ids)}
    return sorted(rows, key=lambda r: order.get(r.id, 0))


@dataclass(frozen=True)
class _Cleared:
    """A delivery of a slice that passed the gate: the mail to compose."""

    delivery: object
    mail: MailContext


def gate_slice(app, s, rows: list, *, lock: bool = False) -> dict[int, tuple[DeliveryStatus, str] | _Cleared]:
    """:func:`gate` and :func:`load_mail` for a whole slice: one query per check.

    Same checks, same order, same answers as :func:`gate` per delivery: campaign state,
    suppressions (always win), the customer, current consent for every purpose the mail
    rests on, the frequency cap (counting the mails this slice clears, too); then what
    composing needs (campaign options, tracking permission).
    """
    settings = app.settings
    out: dict[int, tuple[DeliveryStatus, str] | _Cleared] = {}
    if not rows:
        return out
    campaign_ids = sorted({r.campaign_id for r in rows if r.campaign_id is not None})
    statuses = dict(s.execute(_CAMPAIGN_STATUSES, {"c_ids": campaign_ids}).all()) if campaign_ids else {}
    hits: dict[str, list[tuple[str, object]]] = collections.defaultdict(list)
    for h, scope, reason in s.execute(_SUPPRESSIONS, {"hashes": sorted({r.to_hash for r in rows})}):
        hits[h].append((scope, reason))
    customer_ids = sorted({r.customer_id for r in rows if r.customer_id is not None})
    customers = {c.id: c for c in s.execute(_CUSTOMERS, {"k_ids": customer_ids})} if customer_ids else {}
    marketing = [r for r in rows if r.purpose != TRANSACTIONAL]
    purposes = sorted({p for r in marketing for p in _consent_purposes(r)}
                      | ({"tracking"} if settings.tracking_requires_consent and marketing else set()))
    granted: set[tuple[int, str]] = set()
    if marketing and customer_ids:
        stmt = _CONSENT_FOR_SHARE if lock and s.get_bind().dialect.name == "postgresql" else _CONSENT
        for cid, purpose, basis in s.execute(stmt, {"k_ids": customer_ids, "purposes": purposes}):
            if basis is LawfulBasis.consent or settings.soft_opt_in:
                granted.add((cid, purpose))
    sent: dict[int, int] = {}
    if settings.frequency_cap > 0 and marketing and customer_ids:
        since = utcnow() - timedelta(hours=settings.frequency_window_hours)
        sent = dict(s.execute(_SENT_IN_WINDOW, {"k_ids": customer_ids, "since": since,
                                                "d_ids": [r.id for r in rows]}).all())
    for r in rows:
        status = statuses.get(r.campaign_id) if r.campaign_id is not None else None
        if status is CampaignStatus.cancelled:
            out[r.id] = (DeliveryStatus.cancelled, "campaign cancelled")
            continue
        if status is CampaignStatus.paused:
            out[r.id] = (DeliveryStatus.held, "campaign paused")
            continue
        scopes = ("all",) if r.purpose == TRANSACTIONAL else ("all", "marketing", r.purpose)
        hit = next(((scope, reason) for scope, reason in hits.get(r.to_hash, ()) if scope in scopes), None)
        if hit is not None:
            reason = hit[1].value if hasattr(hit[1], "value") else hit[1]
            out[r.id] = (DeliveryStatus.suppressed, f"suppressed: {reason} ({hit[0]})")
            continue
        customer = customers.get(r.customer_id) if r.customer_id is not None else None
        verdict_granted: tuple[str, ...] | None = None
        if r.purpose != TRANSACTIONAL:
            if customer is None or customer.email is None:
                out[r.id] = (DeliveryStatus.skipped, "no customer record (erased?) for a marketing mail")
                continue
            ok = tuple(p for p in _consent_purposes(r) if (customer.id, p) in granted)
            if not ok:
                out[r.id] = (DeliveryStatus.skipped, f"no current consent for {r.purpose}")
                continue
            if settings.frequency_cap > 0:
                count = sent.get(customer.id, 0)
                if count >= settings.frequency_cap:
                    out[r.id] = (DeliveryStatus.skipped, (f"frequency cap: {count} marketing mails in the last "
                                                          f"{settings.frequency_window_hours} h"))
                    continue
                sent[customer.id] = count + 1  # this mail counts against the next one in the slice
            verdict_granted = ok
        recipient = (Recipient(id=customer.id, first_name=customer.first_name, last_name=customer.last_name,
                               currency=customer.currency) if customer is not None else None)
        options = campaign_options(s, settings, r.campaign_id) if r.campaign_id else None
        tracked = (r.purpose != TRANSACTIONAL and tracked_source(r, options) and bool(r.id)
                   and (not settings.tracking_requires_consent
                        or (customer is not None and (customer.id, "tracking") in granted)))
        mail = MailContext.of(r, recipient, campaign=options, tracking_allowed=tracked,
                              data=products_still_wanted(r, verdict_granted))
        out[r.id] = _Cleared(r, mail)
    return out


class _SliceLock:
    """The slice's read transaction (its ``FOR SHARE`` consent locks on PostgreSQL), ended
    when the last of its mails has its relay's answer, on whichever thread that is."""

    def __init__(self, session, pending: int):
        self.session = session
        self.pending = pending
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.pending += 1

    def done(self) -> None:
        with self._lock:
            self.pending -= 1
            last = self.pending == 0
        if last:
            _end_read(self.session)


_PING = select(1)


def _slice_holds(s, claimed_at: float, lease_s: float) -> bool:
    """May the slice send its next mail: are its leases (by the local clock since the claim)
    and, on PostgreSQL, its read transaction with the ``FOR SHARE`` consent locks still its own?

    A relay that answers slowly (or a cut link) can keep one mail's reply waiting longer
    than ``MAILER_DB_IDLE_IN_TRANSACTION_S``: the server then ends the read session and its
    locks are gone, so a withdrawal may have committed since the gate, and past the lease
    another worker may have claimed the rest.  The ``SELECT 1`` (one round trip per mail
    after the first of a slice) finds a session the server ended, and restarts its
    idle-in-transaction clock while the slice is healthy.
    """
    if time.monotonic() - claimed_at > lease_s * SLICE_LEASE_SHARE:
        return False
    if s.get_bind().dialect.name != "postgresql":
        return True
    try:
        s.execute(_PING)
    except (OperationalError, DBAPIError):
        return False
    return True


def _end_read(s) -> None:
    # The read transaction wrote nothing; a connection that died meanwhile must not hide
    # the relay's answer.
    with contextlib.suppress(Exception):
        s.rollback()
    with contextlib.suppress(Exception):
        s.close()


_senders_lock = threading.Lock()
_senders: dict[tuple[int, int], object] = {}


def senders_for(app):
    """This process's sending threads for ``app`` (None when ``MAILER_SMTP_CONNECTIONS`` is 0)."""
    n = app.settings.smtp_connections
    if n <= 0:
        return None
    key = (id(app), os.getpid())
    with _senders_lock:
        pool = _senders.get(key)
        if pool is None:
            pool = _senders[key] = Senders(n)
        return pool


#: Recent wall time per mail of a slice in this process, seconds (a moving average; 0 = none yet).
_mail_wall_s = [0.0]


def send_slices(app, delivery_ids: list[int], *, owner: str, slice_s: float) -> tuple[list[int], int]:
    """Send ``delivery_ids`` slice by slice for about ``slice_s`` seconds.

    Returns the ids not handled yet, to go on as a new message, and the delay (ms) for
    it; ``([], 0)`` when all were handled.  A delivery that must be retried goes on as
    its own ``send_one_bulk`` message.
    """
    started = time.monotonic()
    senders = senders_for(app)
    per_row = _rate_limited(app)
    i = 0
    while i < len(delivery_ids):
        if i and time.monotonic() - started > slice_s:
            return list(delivery_ids[i:]), 0
        # A slice is claimed whole, so it is sized to end within slice_s (at the wall time a
        # mail took in this process lately): the worker thread is then free for a notice
        # after about slice_s even when the process gets only part of a core.  But never
        # below CLAIM_SLICE_MIN: on a loaded machine the fit fell to one mail, and the
        # slice's claim and gate queries then ran once per mail (bench/delivery_path.py).
        fit = int((slice_s - (time.monotonic() - started)) / _mail_wall_s[0]) if _mail_wall_s[0] > 0 else CLAIM_SLICE
        want = 1 if per_row else max(1, min(CLAIM_SLICE, len(delivery_ids) - i, max(CLAIM_SLICE_MIN, fit)))
        got = want
        if senders is not None:
            got = senders.reserve(want, timeout_s=slice_s)
            if not got:
                # Every sending thread is busy (a slow or dead relay): give the worker thread back.
                return list(delivery_ids[i:]), HAND_ON_DELAY_MS
        chunk = list(delivery_ids[i:i + got])
        i += got
        try:
            if per_row:
                _one_or_queue(app, chunk[0], owner, senders)
            else:
                t0 = time.monotonic()
                _send_slice(app, chunk, owner, senders, got)
                per_mail = (time.monotonic() - t0) / len(chunk)
                _mail_wall_s[0] = per_mail if _mail_wall_s[0] <= 0 else 0.8 * _mail_wall_s[0] + 0.2 * per_mail
        except Exception as exc:
            if not is_retryable(exc):
                raise
            # Database or broker trouble: this slice and the rest go on later (rows already
            # final are not claimed again; a lease we could not hand back expires).
            log.warning("send_batch: %s; %d deliveries handed on", exc, len(delivery_ids) - i + got)
            return list(delivery_ids[i - got:]), app.settings.retry_min_backoff_ms
    return [], 0


def _one_or_queue(app, delivery_id: int, owner: str, senders) -> None:
    job = functools.partial(_one, app, delivery_id, owner, senders is not None)
    if senders is None:
        job()
    else:
        senders.submit(job)


def _one(app, delivery_id: int, owner: str, on_sender: bool) -> None:
    """One delivery through :func:`process` (rate limits set), as ``send_batch`` handles it."""
    try:
        process(app, delivery_id, owner=owner)
    except LeaseHeld:
        return  # another worker has it
    except Exception as exc:
        if not is_retryable(exc):
            if on_sender:
                log.exception("delivery %s: not retried: %s", delivery_id, exc)
                return
            raise
        _retry_later(app, delivery_id)


def _retry_later(app, delivery_id: int) -> None:
    port.send(port.SEND_ONE_BULK, delivery_id, delay_ms=app.settings.retry_min_backoff_ms)


def _send_slice(app, ids: list[int], owner: str, senders, reserved: int) -> None:
    """Claim ``ids`` in one statement, gate them together, compose and send each."""
    settings = app.settings
    submitted = 0
    try:
        claimed_at = time.monotonic()  # no later than the leases' start
        rows = claim_many(app, ids, owner)
        if not rows:
            return
        s = app.sessions()
        lock = _SliceLock(s, 1)  # the one held here, until every mail is handed to a sender
        try:
            cleared = []
            try:
                verdicts = gate_slice(app, s, rows, lock=True)
            except BaseException as exc:
                for r in rows:
                    _release(app, r.id, owner, exc)
                raise
            for r in rows:
                verdict = verdicts[r.id]
                if r.attempts > 1 and _age_s(r) > settings.retry_max_age_s:
                    reason = (f"gave up after {r.attempts - 1} attempts over {settings.retry_max_age_s} s; "
                              f"last: {r.smtp_reply or r.reason or 'no reply'}")
                    _finish(app, r.id, owner, status=DeliveryStatus.failed, reason=reason)
                    metrics.count("failed", queue=r.queue, kind=r.kind)
                    log.warning("delivery %s failed: %s", r.id, reason, extra={"delivery_id": r.id})
                    continue
                if not isinstance(verdict, _Cleared):
                    status, reason = verdict
                    _finish(app, r.id, owner, status=status, reason=reason)
                    metrics.count(status.value, queue=r.queue, kind=r.kind)
                    log.info("delivery %s %s: %s", r.id, status.value, reason, extra={"delivery_id": r.id})
                    continue
                cleared.append(verdict)
            for n, item in enumerate(cleared):
                r = item.delivery
                if n and not _slice_holds(s, claimed_at, settings.lease_s):
                    # Its consent locks or leases may be gone: no further mail on this gate;
                    # the rest are handed back and go on as a new message (gated again).
                    stop = TransientDeliveryError("slice stopped: its consent read locks or leases may be gone")
                    for later in cleared[n:]:
                        _release(app, later.delivery.id, owner, stop)
                    raise stop
                try:
                    notice_lane.wait_turn()  # a notice of this process goes first (transport/senders.py)
                    composed = compose(settings, app.renderer, app.signer, item.mail)
                except (TemplateError, ValidationError) as exc:
                    _finish(app, r.id, owner, status=DeliveryStatus.failed, reason=str(exc))
                    metrics.count("failed", queue=r.queue, kind=r.kind)
                    log.error("delivery %s failed to compose: %s", r.id, exc, extra={"delivery_id": r.id})
                    continue
                except BaseException as exc:
                    for later in cleared[n:]:
                        _release(app, later.delivery.id, owner, exc)
                    raise
                lock.add()
                job = functools.partial(_deliver, app, r, owner, composed, lock, senders is not None)
                if senders is None:
                    try:
                        job()
                    except BaseException as exc:
                        for later in cleared[n + 1:]:  # not sent: their leases go back at once
                            _release(app, later.delivery.id, owner, exc)
                        raise
                else:
                    submitted += 1
                    senders.submit(job)
        finally:
            lock.done()
    finally:
        if senders is not None:
            senders.release(reserved - submitted)


def _release(app, delivery_id: int, owner: str, exc: BaseException) -> None:
    """Hand a lease back after trouble before anything was sent (best effort)."""
    try:
        _finish(app, delivery_id, owner, status=DeliveryStatus.queued, reason=f"error: {exc}"[:500])
    except Exception:
        log.warning("delivery %s: could not release the lease after %r", delivery_id, exc)


def _deliver(app, delivery, owner: str, composed, lock: _SliceLock, on_sender: bool) -> None:
    """Send one composed mail and record the relay's answer right after it (steps 4 and 5)."""
    with log_context(delivery_id=delivery.id):
        try:
            try:
                result = app.transport.send(envelope_from=composed.envelope_from, recipient=composed.recipient,
                                            message=composed.message)
            finally:
                lock.done()
        except TransientDeliveryError as exc:
            try:
                _record_transient(app, delivery, owner, exc)
            except TransientDeliveryError:
                _retry_later(app, delivery.id)
            return
        except PermanentDeliveryError as exc:
            _record_permanent(app, delivery, owner, exc)
            return
        except BaseException as exc:
            _release(app, delivery.id, owner, exc)
            if on_sender and isinstance(exc, Exception):
                log.exception("delivery %s: not sent: %s", delivery.id, exc)
                return
            raise
        _finish(app, delivery.id, owner, status=DeliveryStatus.sent, sent_at=utcnow(),
                message_id=composed.message_id, smtp_code=result.code, smtp_reply=result.reply,
                relay=result.relay)
        metrics.count("sent", queue=delivery.queue, kind=delivery.kind)
        log.info("delivery %s sent via %s: %s", delivery.id, result.relay, result.reply)
