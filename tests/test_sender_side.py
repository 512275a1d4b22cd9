"""Sender-side refusals (our message, IP, domain, authentication, rate) are never the recipient's fault.

Over a real SMTP server: such a reply fails (or retries) the delivery with the reason,
never counts as a soft bounce, never suppresses the customer, and tells the operator
(a warning naming relay, code, enhanced code and reason; a counter per relay and reason).
"""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from mailer import metrics
from mailer.delivery import bounces
from mailer.delivery import process as delivery
from mailer.delivery.compose import return_path
from mailer.errors import TransientDeliveryError
from mailer.models import Bounce, Delivery, DeliveryStatus, Suppression
from mailer.notices import trigger as notices
from tests.bounce_support import dsn
from tests.test_bounces_ingest import sent_delivery, write

pytestmark = pytest.mark.smtp

DATA = {"order_number": "1001", "new_eta": "2026-12-01"}


@pytest.fixture
def smtp_app_settings() -> dict:
    """``smtp_app`` (tests/conftest.py) suppresses after two soft bounces here."""
    return {"soft_bounce_limit": 2}


def new_notice(app, to: str, key: str) -> int:
    return notices.create(app, "order_delayed", to=to, data=DATA, key=key).delivery_id


@pytest.mark.parametrize("stage,reply,code,enhanced,reason", [
    ("data", "552 5.3.4 Message size exceeds fixed limit", 552, "5.3.4", "message too large"),
    ("data", "552 Message size exceeds fixed maximum message size", 552, None, "message too large"),
    ("data", "550 5.7.1 [203.0.113.5] Our system has detected that this message is likely unsolicited mail.",
     550, "5.7.1", "content refused as spam / policy"),
    ("data", "554 5.6.0 Message content rejected", 554, "5.6.0", "content refused as spam / policy"),
    ("rcpt", "550 5.7.606 Access denied, banned sending IP [203.0.113.5]", 550, "5.7.606",
     "sending IP or domain blocked"),
    ("rcpt", "554 5.7.1 Service unavailable; Client host [203.0.113.5] blocked using zen.spamhaus.org", 554,
     "5.7.1", "sending IP or domain blocked"),
    ("rcpt", "554 5.7.1 <x@example.org>: Relay access denied", 554, "5.7.1", "relaying denied"),
    ("rcpt", "553 5.1.8 <bounces+1@example.com>: Sender address rejected: Domain not found", 553, "5.1.8",
     "our sender refused"),
    ("rcpt", "530 5.7.0 Authentication required", 530, "5.7.0", "sender authentication failed"),
    ("rcpt", "550 5.7.1 Daily sending quota exceeded", 550, "5.7.1", "rate limited"),
])
def test_a_sender_side_refusal_fails_the_delivery_without_counting_against_the_customer(
        smtp_app, smtp_sink, caplog, stage, reply, code, enhanced, reason):
    # Given a relay that refuses our mail for a reason about us, more often than the soft-bounce limit (2)
    replies = smtp_sink.handler.data_replies if stage == "data" else smtp_sink.handler.rcpt_replies
    replies["carol@example.com"] = reply
    relay = smtp_sink.url
    before = metrics.sender_refusals(relay=relay, reason=reason)
    # When three notices to the same customer are processed
    with caplog.at_level(logging.WARNING, logger="mailer.delivery"):
        outs = [delivery.process(smtp_app, new_notice(smtp_app, "carol@example.com", f"k{i}")) for i in range(3)]
    # Then every one fails with the reason (none is "suppressed": the customer was never blamed)
    assert [o.status for o in outs] == ["failed"] * 3
    with smtp_app.session() as s:
        rows = s.execute(select(Delivery).order_by(Delivery.id)).scalars().all()
        assert [d.status for d in rows] == [DeliveryStatus.failed] * 3
        assert all(reason in d.reason and d.smtp_code == code for d in rows)
        # And no bounce is recorded against the address and nothing suppresses it
        assert s.execute(select(Bounce)).first() is None
        assert s.execute(select(Suppression)).first() is None
    # And the operator sees a warning naming relay, code, enhanced code and reason, and a counter per relay/reason
    warnings = [r.getMessage() for r in caplog.records if "sender-side refusal" in r.getMessage()]
    assert len(warnings) == 3
    assert all(relay in w and str(code) in w and str(enhanced or "none") in w and reason in w for w in warnings)
    assert metrics.sender_refusals(relay=relay, reason=reason) == before + 3
    assert smtp_sink.received == []


def test_a_temporary_sender_side_deferral_is_retried_and_alerts(smtp_app, smtp_sink, caplog):
    # Given a relay that defers us (rate / reputation) with a 4.7.0
    smtp_sink.handler.rcpt_replies["dan@example.com"] = "421 4.7.0 Try again later, closing connection. (EHLO)"
    reason = "deferred (rate / reputation)"
    before = metrics.sender_refusals(relay=smtp_sink.url, reason=reason)
    d = new_notice(smtp_app, "dan@example.com", "one")
    # When the delivery is processed
    with caplog.at_level(logging.WARNING, logger="mailer.delivery"), pytest.raises(TransientDeliveryError):
        delivery.process(smtp_app, d)
    # Then it is queued for a retry with the reply kept, nothing is counted against the customer
    with smtp_app.session() as s:
        row = s.get(Delivery, d)
        assert row.status is DeliveryStatus.queued and row.smtp_code == 421 and "4.7.0" in row.smtp_reply
        assert s.execute(select(Bounce)).first() is None and s.execute(select(Suppression)).first() is None
    # And the operator is told
    assert metrics.sender_refusals(relay=smtp_sink.url, reason=reason) == before + 1
    assert any("sender-side refusal" in r.getMessage() and "4.7.0" in r.getMessage() for r in caplog.records)
    # When the relay accepts again, the mail goes out
    del smtp_sink.handler.rcpt_replies["dan@example.com"]
    assert delivery.process(smtp_app, d).status == "sent"


def test_recipient_side_soft_bounces_still_count_next_to_sender_side_refusals(smtp_app, smtp_sink):
    # Given a customer whose mail was refused once for our size and once for a full mailbox
    smtp_sink.handler.data_replies["erin@example.com"] = "552 5.3.4 Message size exceeds fixed limit"
    delivery.process(smtp_app, new_notice(smtp_app, "erin@example.com", "a"))
    delivery.process(smtp_app, new_notice(smtp_app, "erin@example.com", "b"))
    smtp_sink.handler.data_replies["erin@example.com"] = "552 5.2.2 Mailbox full"
    assert delivery.process(smtp_app, new_notice(smtp_app, "erin@example.com", "c")).status == "failed"
    # Then only the full mailbox is a soft bounce, and the limit (2) is not reached by our own faults
    with smtp_app.session() as s:
        assert s.execute(select(Bounce.kind)).scalars().all() == ["soft"]
        assert s.execute(select(Suppression)).first() is None
    # When the mailbox is full once more, the address is suppressed (the second soft bounce)
    delivery.process(smtp_app, new_notice(smtp_app, "erin@example.com", "d"))
    with smtp_app.session() as s:
        assert len(s.execute(select(Suppression)).scalars().all()) == 1


@pytest.mark.parametrize("status,diagnostic", [
    ("5.7.1", "smtp; 550 5.7.1 This message is likely unsolicited mail"),
    ("4.7.0", "smtp; 421 4.7.0 Try again later, closing connection"),
    ("5.3.4", "smtp; 552 5.3.4 Message size exceeds fixed limit"),
])
def test_a_later_dsn_about_us_never_counts_or_suppresses(app, tmp_path, caplog, status, diagnostic):
    # Given three delivered mails to one address (above the soft-bounce limit) and DSNs about us for each
    results = []
    with caplog.at_level(logging.WARNING, logger="mailer.delivery"):
        for i in range(max(3, app.settings.soft_bounce_limit + 1)):
            d = sent_delivery(app, "frank@example.org")
            report = write(tmp_path, f"dsn{i}.eml", dsn(to=return_path(app.settings, d.id), message_id=d.message_id,
                                                        recipient="frank@example.org", status=status,
                                                        diagnostic=diagnostic))
            # When each is ingested
            results += bounces.ingest(app, [report])
    # Then none is a soft or hard bounce, nothing is suppressed, and the operator is told each time
    assert {r.outcome for r in results} == {"sender"}
    with app.session() as s:
        assert not s.execute(select(Bounce).where(Bounce.kind.in_(["soft", "hard"]))).first()
        assert s.execute(select(Suppression)).first() is None
    assert sum("sender-side refusal" in r.getMessage() for r in caplog.records) == len(results)
