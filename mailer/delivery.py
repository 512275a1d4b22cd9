"""Sending one delivery: claim under a lease, gate, compose, send, record.

The sequence, each step its own short transaction:

1. **Claim**: one conditional UPDATE moves the row to ``sending`` with a lease
   (``lease_owner``, ``lease_until``) only if it is ``queued``, a due ``scheduled``, or a
   ``sending`` whose lease expired (its worker died).  Anything else means the delivery
   is done or in another worker's hands: running twice sends once.
2. **Gate**: re-checked at send time, not only at enqueue: suppressions (always win),
   current consent for the mail's purpose, the marketing frequency cap.
3. **Compose**: render, MIME, DKIM; no database locks held.
4. **Send** over the relay.
5. **Record** right after the SMTP reply: ``sent`` with the reply, or back to ``queued``
   for a retry (transient), or ``failed`` and a suppression (permanent).

The duplicate window: a crash after the relay accepted the message (step 4) and before
step 5 commits leaves the row ``sending``; when its lease expires another worker sends
it again.  Each worker thread has at most one message in that window, and step 5
retries its commit for up to half a lease before giving up, so a database blip does
not widen it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import OperationalError

from mailer import consent, metrics, suppressions
from mailer.clock import utcnow
from mailer.compose import compose
from mailer.errors import (
    MailerError,
    PermanentDeliveryError,
    TemplateError,
    TransientDeliveryError,
    ValidationError,
)
from mailer.models import Bounce, Customer, Delivery, DeliveryStatus, SuppressionReason
from mailer.rendering import TRANSACTIONAL

log = logging.getLogger("mailer.delivery")

#: Statuses after which a delivery is never touched again by the sender.
FINAL = frozenset({DeliveryStatus.sent, DeliveryStatus.failed, DeliveryStatus.bounced,
                   DeliveryStatus.suppressed, DeliveryStatus.skipped, DeliveryStatus.cancelled})

#: Seconds between attempts to commit a result while the database is unreachable.
RECORD_RETRY_PAUSE_S = 0.5


class LeaseHeld(TransientDeliveryError):
    """Another worker holds a live lease on this delivery; try again after it expires."""


@dataclass(frozen=True)
class Outcome:
    delivery_id: int
    status: str
    detail: str = ""


def worker_id() -> str:
    """Who holds a lease: host, process, thread and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:6]}"


def claim(app, delivery_id: int, owner: str) -> Delivery | Outcome:
    """Take the lease on a delivery, or say why not (final, not due, or held elsewhere)."""
    now = utcnow()
    lease_until = now + timedelta(seconds=app.settings.lease_s)
    with app.session() as s:
        # One conditional UPDATE is the claim: two workers racing for the same row cannot
        # both match it, whatever the isolation level.
        res = s.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id,
                   or_(Delivery.status == DeliveryStatus.queued,
                       and_(Delivery.status == DeliveryStatus.scheduled,
                            or_(Delivery.send_after.is_(None), Delivery.send_after <= now)),
                       and_(Delivery.status == DeliveryStatus.sending, Delivery.lease_until < now)))
            .values(status=DeliveryStatus.sending, lease_owner=owner, lease_until=lease_until,
                    attempts=Delivery.attempts + 1, updated_at=now)
            .execution_options(synchronize_session=False))
        delivery = s.get(Delivery, delivery_id)
        if delivery is None:
            return Outcome(delivery_id, "missing", "no such delivery")
        if res.rowcount == 1:
            return delivery
        if delivery.status in FINAL:
            return Outcome(delivery_id, delivery.status.value, "already final")
        if delivery.status is DeliveryStatus.scheduled:
            return Outcome(delivery_id, "scheduled", f"not due before {delivery.send_after}")
        raise LeaseHeld(f"delivery {delivery_id} is leased by {delivery.lease_owner} until {delivery.lease_until}")


def _finish(app, delivery_id: int, owner: str, *, status: DeliveryStatus, reason: str | None = None,
            **values) -> bool:
    """Record a result if we still hold the lease; retries the commit while the DB is down."""
    deadline = time.monotonic() + app.settings.lease_s / 2
    while True:
        try:
            with app.session() as s:
                res = s.execute(update(Delivery)
                                .where(Delivery.id == delivery_id, Delivery.lease_owner == owner)
                                .values(status=status, reason=reason, lease_owner=None, lease_until=None,
                                        updated_at=utcnow(), **values)
                                .execution_options(synchronize_session=False))
                return res.rowcount == 1
        except OperationalError:
            if time.monotonic() > deadline:
                raise
            log.warning("delivery %s: database unreachable while recording %s; retrying", delivery_id,
                        status.value, extra={"delivery_id": delivery_id})
            time.sleep(RECORD_RETRY_PAUSE_S)


def gate(app, s, delivery: Delivery, customer: Customer | None) -> tuple[DeliveryStatus, str] | None:
    """Why this delivery must not go out now, or None if it may."""
    settings = app.settings
    hit = suppressions.suppression_for(s, delivery.to_hash, delivery.purpose)
    if hit is not None:
        return DeliveryStatus.suppressed, f"suppressed: {hit.reason.value} ({hit.scope})"
    if delivery.purpose == TRANSACTIONAL:
        return None
    if customer is None or customer.email is None:
        return DeliveryStatus.skipped, "no customer record (erased?) for a marketing mail"
    if not consent.has_consent(s, settings, customer.id, delivery.purpose):
        return DeliveryStatus.skipped, f"no current consent for {delivery.purpose}"
    if settings.frequency_cap > 0:
        since = utcnow() - timedelta(hours=settings.frequency_window_hours)
        # Marketing mails sent to this customer in the window (ix_deliveries_customer_sent).
        sent = s.execute(select(func.count()).select_from(Delivery)
                         .where(Delivery.customer_id == customer.id, Delivery.sent_at >= since,
                                Delivery.purpose != TRANSACTIONAL, Delivery.id != delivery.id)).scalar_one()
        if sent >= settings.frequency_cap:
            return DeliveryStatus.skipped, (f"frequency cap: {sent} marketing mails in the last "
                                            f"{settings.frequency_window_hours} h")
    return None


def process(app, delivery_id: int, *, owner: str | None = None) -> Outcome:
    """Send one delivery if it is due and allowed; safe to call any number of times."""
    owner = owner or worker_id()
    claimed = claim(app, delivery_id, owner)
    if isinstance(claimed, Outcome):
        return claimed
    delivery = claimed
    settings = app.settings
    with app.session() as s:
        customer = s.get(Customer, delivery.customer_id) if delivery.customer_id else None
        blocked = gate(app, s, delivery, customer)
        if customer is not None:
            s.expunge(customer)
    kind, queue = delivery.kind, delivery.queue
    if blocked is not None:
        status, reason = blocked
        _finish(app, delivery_id, owner, status=status, reason=reason)
        metrics.count(status.value, queue=queue, kind=kind)
        log.info("delivery %s %s: %s", delivery_id, status.value, reason, extra={"delivery_id": delivery_id})
        return Outcome(delivery_id, status.value, reason)
    if delivery.created_at and utcnow() - delivery.created_at > timedelta(seconds=settings.retry_max_age_s) \
            and delivery.attempts > 1:
        reason = f"gave up after {delivery.attempts - 1} attempts over {settings.retry_max_age_s} s"
        _finish(app, delivery_id, owner, status=DeliveryStatus.failed, reason=reason)
        metrics.count("failed", queue=queue, kind=kind)
        return Outcome(delivery_id, "failed", reason)
    try:
        composed = compose(settings, app.renderer, app.signer, delivery, customer)
    except (TemplateError, ValidationError) as exc:
        # A broken template or header never half-sends: fail this delivery, keep the reason.
        _finish(app, delivery_id, owner, status=DeliveryStatus.failed, reason=str(exc))
        metrics.count("failed", queue=queue, kind=kind)
        log.error("delivery %s failed to compose: %s", delivery_id, exc, extra={"delivery_id": delivery_id})
        return Outcome(delivery_id, "failed", str(exc))
    try:
        result = app.transport.send(envelope_from=composed.envelope_from, recipient=composed.recipient,
                                    message=composed.message)
    except TransientDeliveryError as exc:
        _finish(app, delivery_id, owner, status=DeliveryStatus.queued, reason=str(exc),
                smtp_code=exc.code, smtp_reply=exc.reply)
        metrics.count("retried", queue=queue, kind=kind)
        log.warning("delivery %s: transient failure, will retry: %s", delivery_id, exc,
                    extra={"delivery_id": delivery_id})
        raise
    except PermanentDeliveryError as exc:
        _record_permanent(app, delivery, owner, exc)
        return Outcome(delivery_id, "failed", str(exc))
    _finish(app, delivery_id, owner, status=DeliveryStatus.sent, sent_at=utcnow(),
            message_id=composed.message_id, smtp_code=result.code, smtp_reply=result.reply,
            relay=result.relay)
    metrics.count("sent", queue=queue, kind=kind)
    log.info("delivery %s sent via %s: %s", delivery_id, result.relay, result.reply,
             extra={"delivery_id": delivery_id})
    return Outcome(delivery_id, "sent", result.reply)


def _record_permanent(app, delivery: Delivery, owner: str, exc: PermanentDeliveryError) -> None:
    """A permanent refusal: fail the delivery and, for bounces, suppress the address."""
    outcome = getattr(exc, "outcome", "fail")
    reason = getattr(exc, "reason", str(exc))
    _finish(app, delivery.id, owner, status=DeliveryStatus.failed, reason=str(exc), smtp_code=exc.code,
            smtp_reply=exc.reply)
    metrics.count("failed", queue=delivery.queue, kind=delivery.kind)
    if outcome not in ("hard", "soft"):
        return
    with app.session() as s:
        s.add(Bounce(delivery_id=delivery.id, email_hash=delivery.to_hash, kind=outcome,
                     status_code=exc.enhanced or (str(exc.code) if exc.code else None), reason=reason,
                     raw=exc.reply))
        s.flush()
        if outcome == "hard":
            suppressions.suppress(s, address_hash=delivery.to_hash, email=delivery.to_address,
                                  reason=SuppressionReason.hard_bounce, detail=f"{exc.reply} ({reason})")
            metrics.count("bounced", queue=delivery.queue, kind=delivery.kind)
        else:
            soft = s.execute(select(func.count()).select_from(Bounce)
                             .where(Bounce.email_hash == delivery.to_hash, Bounce.kind == "soft")).scalar_one()
            if soft >= app.settings.soft_bounce_limit:
                suppressions.suppress(s, address_hash=delivery.to_hash, email=delivery.to_address,
                                      reason=SuppressionReason.soft_bounce,
                                      detail=f"{soft} soft bounces; last: {exc.reply}")
    log.warning("delivery %s: permanent failure (%s): %s", delivery.id, outcome, exc,
                extra={"delivery_id": delivery.id})


def is_retryable(exc: BaseException) -> bool:
    """Which exceptions the send actors hand to Dramatiq's Retries."""
    if isinstance(exc, (TransientDeliveryError, OperationalError)):
        return True
    return not isinstance(exc, MailerError)
