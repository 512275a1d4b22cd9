"""Helpers for the compliance console tests: a customer with consent proof, mail and a suppression."""

from __future__ import annotations

from datetime import UTC, datetime

from mailer import db
from mailer.consent import ledger as consent
from mailer.consent import wordings
from mailer.customers import records
from mailer.models import ConsentEvent, CustomerTag, Delivery, DeliveryStatus, TrackingEvent, TrackingKind
from mailer.settings import Settings

WORDING = "Yes, send me the Northwind newsletter. I can unsubscribe at any time."
WORDING_SHA = wordings.sha256(WORDING)
IP = "203.0.113.7"
UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"
SCRIPT = "<script>alert(1)</script>"


def seed_person(settings: Settings, email: str = "ada@example.com", *, first_name: str = "Ada",
                last_name: str = "Lovelace", tags=("VIP",), attributes: dict | None = None,
                confirmed: bool = True) -> int:
    """A customer who granted newsletter with full proof (wording registered, IP, user agent,
    double opt-in confirmed), withdrew loyalty, got one mail with an SMTP reply and opened it."""
    with db.session_scope(settings) as s:
        wordings.register(s, {"en": wordings.Version("newsletter", "en", "2026-01", WORDING, WORDING_SHA)})
        c = records.get_or_create(s, settings, email, locale="en", first_name=first_name)
        c.last_name = last_name
        c.attributes = dict(attributes or {"shoe_size": "42"})
        for t in tags:
            s.add(CustomerTag(customer_id=c.id, tag=t))
        when = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        consent.grant(s, settings, customer=c, purpose="newsletter", source="signup_form", occurred_at=when,
                      proof=consent.Proof(ip=IP, user_agent=UA, form_id="footer", wording=WORDING,
                                          wording_version="2026-01",
                                          confirmed_at=when if confirmed else None))
        consent.grant(s, settings, customer=c, purpose="loyalty", source="checkout", occurred_at=when)
        consent.withdraw(s, settings, customer=c, purpose="loyalty", source="preference_centre")
        d = Delivery(idempotency_key=f"test:{email}", kind="order_delayed", customer_id=c.id, to_address=c.email,
                     to_hash=c.email_hash, locale="en", data={}, purpose="transactional",
                     status=DeliveryStatus.sent, smtp_code=250, smtp_reply="250 2.0.0 Ok: queued as ABC123",
                     sent_at=when)
        s.add(d)
        s.flush()
        s.add(TrackingEvent(delivery_id=d.id, customer_id=c.id, kind=TrackingKind.open, ip=IP, user_agent=UA))
        return c.id


def head_seq(settings: Settings) -> int:
    with db.session_scope(settings) as s:
        return s.query(ConsentEvent).count()
