"""Data subject requests: access/portability export, erasure, and tracking retention.

* :func:`export` (GDPR Art. 15 and 20): everything held about one address, as a
  JSON-ready dict: profile, tags, consent (current state, every event with its proof,
  pending requests), deliveries, tracking events, suppressions, bounces, shop events,
  reward codes and ratings.
* :func:`erase` (Art. 17): records a withdrawal for every purpose still granted,
  adds an ``erased`` suppression (scope ``all``) keyed by the salted address hash, then
  removes the personal data: the profile, tags, addresses and data in deliveries, raw shop
  webhook bodies not yet applied, IP
  and user agent in tracking, the clear-text proof in ``consent_evidence`` and pending
  consent requests.  Consent events stay: they only ever held the address as its
  salted hash, so the chain still verifies.  Re-importing the address later creates a
  fresh customer, but the tombstone keeps every mail to it suppressed.
* :func:`purge_tracking`: deletes tracking events older than the retention period.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from mailer.addresses import ascii_form, email_hash, normalize
from mailer.clock import utcnow
from mailer.consent import ledger as consent
from mailer.consent import suppressions
from mailer.errors import NotFound, ValidationError
from mailer.instance_secrets import address_hash_salt
from mailer.models import (
    Bounce,
    BounceReport,
    ConnectorWebhook,
    ConsentEvent,
    ConsentEvidence,
    ConsentRequest,
    ConsentSource,
    ConsentState,
    CsatRating,
    Customer,
    CustomerTag,
    Delivery,
    DeliveryStatus,
    RewardCode,
    ShopEvent,
    Suppression,
    SuppressionReason,
    TrackingEvent,
)
from mailer.settings import Settings

#: Export document format version.
EXPORT_VERSION = 1
#: Tracking rows deleted per statement while purging (keeps each statement short).
PURGE_BATCH_ROWS = 10_000
#: What replaces an erased address inside free text (SMTP replies, reasons).
ERASED_TEXT = "[erased]"
#: form_id of the withdrawals recorded by an erasure.
ERASURE_FORM_ID = "gdpr-erasure"


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _row(obj, skip: tuple[str, ...] = ()) -> dict:
    return {c.key: _plain(getattr(obj, c.key)) for c in obj.__table__.columns if c.key not in skip}


def _subject(settings: Settings, email: str) -> tuple[str, str]:
    address = normalize(email)
    return address, email_hash(address, address_hash_salt(settings))


def _customer_ids(session: Session, address: str, subject: str) -> list[int]:
    # The live customer plus erased husks that carried this address (same hash).
    return list(session.execute(select(Customer.id).where(
        or_(Customer.email == address, Customer.email_hash == subject)).order_by(Customer.id)).scalars())


def export(session: Session, settings: Settings, email: str) -> dict:
    """Everything held about ``email``, machine-readable (raises NotFound when nothing is)."""
    address, subject = _subject(settings, email)
    ids = _customer_ids(session, address, subject)
    customers = [session.get(Customer, i) for i in ids]
    # Every consent event about this address, by its salted hash (ix_consent_events_subject_hash),
    # with the clear-text proof where it has not been erased.
    events = session.execute(
        select(ConsentEvent, ConsentEvidence).outerjoin(ConsentEvidence, ConsentEvidence.event_id == ConsentEvent.id)
        .where(ConsentEvent.subject_hash == subject).order_by(ConsentEvent.seq)).all()
    by_customer = Delivery.customer_id.in_(ids) if ids else False
    # ix_deliveries_to_hash and ix_deliveries_customer_sent serve the two halves of the OR.
    deliveries = session.execute(select(Delivery).where(or_(Delivery.to_hash == subject, by_customer))
                                 .order_by(Delivery.id)).scalars().all()
    sups = session.execute(select(Suppression).where(Suppression.email_hash == subject)
                           .order_by(Suppression.id)).scalars().all()
    bounces = session.execute(select(Bounce).where(Bounce.email_hash == subject).order_by(Bounce.id)).scalars().all()
    if not ids and not events and not deliveries and not sups and not bounces:
        raise NotFound(f"nothing is held about {address}")
    tracking, states, requests, shop, rewards, ratings = [], [], [], [], [], []
    if ids:
        tracking = session.execute(select(TrackingEvent).where(TrackingEvent.customer_id.in_(ids))
                                   .order_by(TrackingEvent.id)).scalars().all()
        states = session.execute(select(ConsentState).where(ConsentState.customer_id.in_(ids))
                                 .order_by(ConsentState.customer_id, ConsentState.purpose)).scalars().all()
        requests = session.execute(select(ConsentRequest).where(ConsentRequest.customer_id.in_(ids))
                                   .order_by(ConsentRequest.id)).scalars().all()
        shop = session.execute(select(ShopEvent).where(ShopEvent.customer_id.in_(ids))
                               .order_by(ShopEvent.id)).scalars().all()
        rewards = session.execute(select(RewardCode).where(RewardCode.customer_id.in_(ids))
                                  .order_by(RewardCode.id)).scalars().all()
        ratings = session.execute(select(CsatRating).where(CsatRating.customer_id.in_(ids))
                                  .order_by(CsatRating.id)).scalars().all()
    return {
        "format": "mailer-subject-access-export",
        "version": EXPORT_VERSION,
        "exported_at": utcnow().isoformat(),
        "subject": {"email": address, "email_hash": subject,
                    "note": "email_hash is a salted HMAC-SHA256 of the address, used in the consent log "
                            "and the suppression list"},
        "profiles": [_row(c) | {"tags": c.tag_names} for c in customers],
        "consent": {
            "current": [_row(s) for s in states],
            "events": [_row(ev) | {"evidence": _row(evi, skip=("event_id",)) if evi else None}
                       for ev, evi in events],
            "requests": [_row(r) for r in requests],
        },
        "deliveries": [_row(d, skip=("lease_owner", "lease_until")) for d in deliveries],
        "tracking_events": [_row(t) for t in tracking],
        "suppressions": [_row(s) for s in sups],
        "bounces": [_row(b) for b in bounces],
        "shop_events": [_row(e) for e in shop],
        "reward_codes": [_row(r) for r in rewards],
        "csat_ratings": [_row(r) for r in ratings],
    }


def export_json(doc: dict) -> str:
    """The access export as the file ``mailer gdpr export`` writes (and the console downloads)."""
    return json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=False) + "\n"


@dataclass
class Erasure:
    """What one erasure changed (counts of rows)."""

    email_hash: str
    customers: int = 0
    withdrawals: int = 0
    evidence: int = 0
    consent_requests: int = 0
    deliveries: int = 0
    deliveries_cancelled: int = 0
    tracking_events: int = 0
    suppressions: int = 0
    bounces: int = 0
    shop_events: int = 0
    csat_ratings: int = 0
    bounce_reports: int = 0
    shop_webhooks: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def erase(session: Session, settings: Settings, email: str) -> Erasure:
    """Erase the person's personal data, keep a suppression tombstone; safe to repeat."""
    address, subject = _subject(settings, email)
    now = utcnow()
    report = Erasure(email_hash=subject)
    live = session.execute(select(Customer).where(Customer.email == address)).scalar_one_or_none()
    if live is not None:
        # The ledger shows processing stopped: a withdrawal for every purpose still granted.
        granted = session.execute(select(ConsentState.purpose).where(
            ConsentState.customer_id == live.id, ConsentState.granted.is_(True)).order_by(ConsentState.purpose)
        ).scalars().all()
        for purpose in granted:
            consent.withdraw(session, settings, customer=live, purpose=purpose, source=ConsentSource.admin,
                             proof=consent.Proof(form_id=ERASURE_FORM_ID))
            report.withdrawals += 1
    suppressions.suppress(session, address_hash=subject, email=None, reason=SuppressionReason.erased,
                          detail=f"erasure request (GDPR Art. 17) on {now:%Y-%m-%d}")
    ids = _customer_ids(session, address, subject)
    session.flush()
    # Clear-text proof of every event about this address (found by its hash); the events stay.
    event_ids = select(ConsentEvent.id).where(ConsentEvent.subject_hash == subject)
    report.evidence = session.execute(delete(ConsentEvidence).where(ConsentEvidence.event_id.in_(event_ids))
                                      .execution_options(synchronize_session=False)).rowcount
    if ids:
        report.consent_requests = session.execute(delete(ConsentRequest).where(ConsentRequest.customer_id.in_(ids))
                                                  .execution_options(synchronize_session=False)).rowcount
        session.execute(delete(CustomerTag).where(CustomerTag.customer_id.in_(ids))
                        .execution_options(synchronize_session=False))
        report.customers = session.execute(
            update(Customer).where(Customer.id.in_(ids), Customer.erased_at.is_(None))
            .values(email=None, first_name=None, last_name=None, locale=None, timezone=None, country=None,
                    currency=None, total_spent=Decimal("0"), orders_count=0, last_order_at=None,
                    predicted_spend_tier=None, attributes={}, erased_at=now, updated_at=now)
            .execution_options(synchronize_session=False)).rowcount
        report.tracking_events = session.execute(
            update(TrackingEvent).where(TrackingEvent.customer_id.in_(ids),
                                        or_(TrackingEvent.ip.is_not(None), TrackingEvent.user_agent.is_not(None)))
            .values(ip=None, user_agent=None).execution_options(synchronize_session=False)).rowcount
        report.shop_events = session.execute(
            update(ShopEvent).where(ShopEvent.customer_id.in_(ids)).values(data={})
            .execution_options(synchronize_session=False)).rowcount
        report.csat_ratings = session.execute(
            update(CsatRating).where(CsatRating.customer_id.in_(ids), CsatRating.comment.is_not(None))
            .values(comment=None).execution_options(synchronize_session=False)).rowcount
    mine = or_(Delivery.to_hash == subject, Delivery.customer_id.in_(ids)) if ids else Delivery.to_hash == subject
    # Nothing still waiting may go out (the gate would suppress it anyway; this says why).
    report.deliveries_cancelled = session.execute(
        update(Delivery).where(mine, Delivery.status.in_((DeliveryStatus.queued, DeliveryStatus.scheduled)))
        .values(status=DeliveryStatus.cancelled, reason="erased (GDPR Art. 17)", updated_at=now)
        .execution_options(synchronize_session=False)).rowcount
    scrub = lambda col: func.replace(func.replace(col, address, ERASED_TEXT), ascii_form(address), ERASED_TEXT)  # noqa: E731
    report.deliveries = session.execute(
        update(Delivery).where(mine)
        .values(to_address=None, data={}, smtp_reply=scrub(Delivery.smtp_reply), reason=scrub(Delivery.reason))
        .execution_options(synchronize_session=False)).rowcount
    report.suppressions = session.execute(
        update(Suppression).where(Suppression.email_hash == subject, Suppression.email.is_not(None))
        .values(email=None).execution_options(synchronize_session=False)).rowcount
    # Details written before raw copies were kept apart may quote the address: scrub them.
    session.execute(
        update(Suppression).where(Suppression.email_hash == subject, Suppression.detail.is_not(None))
        .values(detail=scrub(Suppression.detail)).execution_options(synchronize_session=False))
    report.bounces = session.execute(
        update(Bounce).where(Bounce.email_hash == subject, Bounce.raw.is_not(None)).values(raw=None)
        .execution_options(synchronize_session=False)).rowcount
    report.bounce_reports = session.execute(
        delete(BounceReport).where(BounceReport.email_hash == subject)
        .execution_options(synchronize_session=False)).rowcount
    # A shop's webhook deliveries keep their raw body only until applied (pending or failed
    # ones): those naming the address lose it.  Few rows carry a body, so the scan is short.
    for row in session.execute(select(ConnectorWebhook).where(ConnectorWebhook.body.is_not(None))).scalars():
        if address in (row.body or "").lower() or ascii_form(address) in (row.body or "").lower():
            row.body = None
            row.detail = ((row.detail or "") + "; body erased (GDPR Art. 17)").lstrip("; ")
            report.shop_webhooks += 1
    session.flush()
    session.expire_all()
    return report


def is_erased(session: Session, settings: Settings, email: str) -> bool:
    """Does an erasure tombstone exist for this address?"""
    _, subject = _subject(settings, email)
    return session.execute(select(Suppression.id).where(Suppression.email_hash == subject,
                                                        Suppression.reason == SuppressionReason.erased)
                           .limit(1)).first() is not None


def purge_tracking(session: Session, settings: Settings, older_than_days: int | None = None) -> int:
    """Delete tracking events older than ``older_than_days`` (default: the retention setting)."""
    days = settings.tracking_retention_days if older_than_days is None else older_than_days
    if days < 0:
        raise ValidationError(f"--tracking-older-than must be 0 or more days, got {days}",
                              field="older_than_days")
    cutoff = utcnow() - timedelta(days=days)
    total = 0
    while True:
        # Bounded batches by id through ix_tracking_occurred_at, so one purge of millions
        # of rows never builds one giant statement.
        batch = select(TrackingEvent.id).where(TrackingEvent.occurred_at < cutoff).limit(PURGE_BATCH_ROWS)
        deleted = session.execute(delete(TrackingEvent).where(TrackingEvent.id.in_(batch.scalar_subquery()))
                                  .execution_options(synchronize_session=False)).rowcount
        total += deleted
        if deleted < PURGE_BATCH_ROWS:
            return total


__all__ = ["export", "export_json", "erase", "purge_tracking", "is_erased", "Erasure"]
