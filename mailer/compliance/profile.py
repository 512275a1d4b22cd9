"""The customer profile read model: everything the console shows about one customer.

Attributes and tags; current consent per purpose with its full history and proof (the
wording text found by its SHA-256, IP, user agent, double opt-in confirmation); pending
double opt-ins; deliveries with their status and SMTP replies; tracking events;
suppressions of the address; automation sends still waiting.  It reads, never writes.

Each list is bounded (``*_MAX_ROWS``, newest first) so a profile of a customer with
years of mail stays one fast page; the GDPR access export (mailer/gdpr/requests.py)
is where everything is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer.automations import views as automation_views
from mailer.consent import suppressions
from mailer.errors import NotFound
from mailer.models import (
    ConsentEvent,
    ConsentEvidence,
    ConsentRequest,
    ConsentState,
    Customer,
    Delivery,
    Suppression,
    TrackingEvent,
    Wording,
)

#: Most deliveries shown on a profile (newest first).
DELIVERIES_MAX_ROWS = 100
#: Most tracking events shown on a profile (newest first).
TRACKING_MAX_ROWS = 100
#: Most consent events read for one customer (newest kept).
CONSENT_EVENTS_MAX_ROWS = 1000
#: Most pending automation sends shown.
PENDING_MAX_ROWS = 100


@dataclass(frozen=True)
class ConsentProof:
    """One ledger event of this customer, with its proof."""

    seq: int
    purpose: str
    action: str
    basis: str
    source: str
    occurred_at: datetime
    recorded_at: datetime
    form_id: str | None
    wording_version: str | None
    wording_sha256: str | None
    #: The exact wording shown, found by its hash (None when it was never registered).
    wording_text: str | None
    #: When the double opt-in link was followed (None: single opt-in or a withdrawal).
    confirmed_at: datetime | None
    ip: str | None
    user_agent: str | None
    hash: str


@dataclass
class PurposeConsent:
    purpose: str
    granted: bool
    basis: str | None
    since: datetime | None
    #: Events for this purpose, newest first.
    history: list[ConsentProof] = field(default_factory=list)


@dataclass
class Profile:
    customer: Customer
    tags: list[str]
    attributes: dict[str, Any]
    consent: list[PurposeConsent]
    pending_confirmations: list[ConsentRequest]
    deliveries: list[Delivery]
    tracking: list[TrackingEvent]
    suppressions: list[Suppression]
    pending_sends: list[automation_views.Pending]


def _wording_texts(session: Session, hashes: set[str]) -> dict[str, str]:
    if not hashes:
        return {}
    # wordings is small (versions × locales); one IN lookup for this profile's hashes.
    rows = session.execute(select(Wording.sha256, Wording.text).where(Wording.sha256.in_(sorted(hashes))))
    return {sha: text for sha, text in rows}


def consent_history(session: Session, customer_id: int) -> list[ConsentProof]:
    """The customer's ledger events with their proof, newest first."""
    # ix_consent_events_customer_purpose (customer_id first) finds them; evidence by primary key.
    rows = session.execute(
        select(ConsentEvent, ConsentEvidence).outerjoin(ConsentEvidence, ConsentEvidence.event_id == ConsentEvent.id)
        .where(ConsentEvent.customer_id == customer_id).order_by(ConsentEvent.seq.desc())
        .limit(CONSENT_EVENTS_MAX_ROWS)).all()
    texts = _wording_texts(session, {ev.wording_sha256 for ev, _ in rows if ev.wording_sha256})
    return [ConsentProof(seq=ev.seq, purpose=ev.purpose, action=ev.action.value, basis=ev.basis.value,
                         source=ev.source.value, occurred_at=ev.occurred_at, recorded_at=ev.recorded_at,
                         form_id=ev.form_id, wording_version=ev.wording_version, wording_sha256=ev.wording_sha256,
                         wording_text=texts.get(ev.wording_sha256 or "") or ev.wording, confirmed_at=ev.confirmed_at,
                         ip=evi.ip if evi else None, user_agent=evi.user_agent if evi else None, hash=ev.hash)
            for ev, evi in rows]


def load(session: Session, customer_id: int) -> Profile:
    """The profile of one customer (NotFound when there is no such customer)."""
    customer = session.get(Customer, customer_id)
    if customer is None:
        raise NotFound(f"customer {customer_id}")
    history = consent_history(session, customer_id)
    states = {s.purpose: s for s in session.execute(
        select(ConsentState).where(ConsentState.customer_id == customer_id)).scalars()}
    purposes = sorted(set(states) | {p.purpose for p in history})
    consent = []
    for purpose in purposes:
        st = states.get(purpose)
        consent.append(PurposeConsent(purpose=purpose, granted=bool(st and st.granted),
                                      basis=st.basis.value if st else None, since=st.updated_at if st else None,
                                      history=[p for p in history if p.purpose == purpose]))
    pending_confirmations = list(session.execute(
        select(ConsentRequest).where(ConsentRequest.customer_id == customer_id, ConsentRequest.confirmed_at.is_(None))
        .order_by(ConsentRequest.id.desc())).scalars())
    # ix_deliveries_customer_sent starts with customer_id: one customer's rows, then newest first.
    deliveries = list(session.execute(select(Delivery).where(Delivery.customer_id == customer_id)
                                      .order_by(Delivery.id.desc()).limit(DELIVERIES_MAX_ROWS)).scalars())
    # ix_tracking_customer_kind starts with customer_id.
    tracking = list(session.execute(select(TrackingEvent).where(TrackingEvent.customer_id == customer_id)
                                    .order_by(TrackingEvent.id.desc()).limit(TRACKING_MAX_ROWS)).scalars())
    sups = suppressions.for_address(session, customer.email_hash)
    pending = (automation_views.pending(session, email=customer.email, limit=PENDING_MAX_ROWS)
               if customer.email else [])
    return Profile(customer=customer, tags=customer.tag_names, attributes=dict(customer.attributes or {}),
                   consent=consent, pending_confirmations=pending_confirmations, deliveries=deliveries,
                   tracking=tracking, suppressions=sups, pending_sends=pending)


__all__ = ["load", "consent_history", "Profile", "PurposeConsent", "ConsentProof"]
