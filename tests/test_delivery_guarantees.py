"""Delivery guarantees over a real SMTP server: once, retried, bounced, suppressed, leased."""

from __future__ import annotations

import io
import json
import logging
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from mailer import metrics
from mailer.app import App
from mailer.clock import utcnow
from mailer.delivery import process as delivery
from mailer.errors import TransientDeliveryError
from mailer.logs import make_handler
from mailer.models import Bounce, Delivery, DeliveryStatus, Suppression, SuppressionReason
from mailer.notices import trigger as notices
from tests.conftest import make_settings
from tests.smtp_sink import SMTPSink

pytestmark = pytest.mark.smtp

DATA = {"order_number": "1001", "new_eta": "2026-12-01"}


@pytest.fixture
def smtp_app_settings() -> dict:
    """``smtp_app`` (tests/conftest.py) suppresses after two soft bounces here."""
    return {"soft_bounce_limit": 2}


def new_notice(app, to: str, key: str | None = None) -> int:
    return notices.create(app, "order_delayed", to=to, data=DATA, key=key).delivery_id


def row(app, delivery_id: int) -> Delivery:
    with app.session() as s:
        d = s.get(Delivery, delivery_id)
        s.expunge(d)
        return d


def test_processing_twice_sends_once(smtp_app, smtp_sink):
    d = new_notice(smtp_app, "once@example.com")
    first = delivery.process(smtp_app, d)
    second = delivery.process(smtp_app, d)
    assert (first.status, second.status) == ("sent", "sent") and second.detail == "already final"
    assert len(smtp_sink.received) == 1
    # The same idempotency key gives the same delivery
    assert new_notice(smtp_app, "twice@example.com", "k1") == new_notice(smtp_app, "twice@example.com", "k1")


def test_enqueued_twice_through_the_broker_sends_once(app, stub_broker):
    from mailer.transport import memory
    from mailer.worker import actors

    d = new_notice(app, "broker@example.com")
    actors.send_notice.send(d)
    actors.send_notice.send(d)
    stub_broker.drain()
    assert len(memory.outbox("default")) == 1


def test_transient_reply_is_kept_and_retried_until_it_goes_through(smtp_app, smtp_sink):
    # Given a relay that answers 451 for this recipient
    smtp_sink.handler.rcpt_replies["later@example.com"] = "451 4.7.1 Greylisted, try again"
    d = new_notice(smtp_app, "later@example.com")
    # When the worker tries, it hands the error to Dramatiq's Retries and the row waits, reply kept
    with pytest.raises(TransientDeliveryError):
        delivery.process(smtp_app, d)
    r = row(smtp_app, d)
    assert r.status is DeliveryStatus.queued and r.smtp_code == 451 and "Greylisted" in r.smtp_reply
    assert delivery.is_retryable(TransientDeliveryError("x"))
    # Then once the relay accepts, the retry sends it exactly once
    del smtp_sink.handler.rcpt_replies["later@example.com"]
    assert delivery.process(smtp_app, d).status == "sent"
    assert len(smtp_sink.received) == 1 and row(smtp_app, d).attempts == 2


def test_retries_end_after_the_configured_age(db_url, smtp_sink):
    app = App(make_settings(database_url=db_url, smtp_url=smtp_sink.url, retry_max_age_s=0))
    try:
        smtp_sink.handler.rcpt_replies["never@example.com"] = "451 4.3.0 try again later"
        d = new_notice(app, "never@example.com")
        out = delivery.process(app, d)
        assert out.status == "failed" and "gave up after 1 attempts" in out.detail
        r = row(app, d)
        assert r.status is DeliveryStatus.failed and r.smtp_reply == "451 4.3.0 try again later"
    finally:
        app.close()


def test_hard_bounce_suppresses_the_address_for_every_later_mail(smtp_app, smtp_sink):
    smtp_sink.handler.rcpt_replies["gone@example.com"] = "550 5.1.1 <gone@example.com>: User unknown"
    d = new_notice(smtp_app, "gone@example.com")
    out = delivery.process(smtp_app, d)
    assert out.status == "failed"
    with smtp_app.session() as s:
        sup = s.execute(select(Suppression)).scalar_one()
        assert sup.reason is SuppressionReason.hard_bounce and "5.1.1" in sup.detail  # the compact detail never holds the reply text or address
        b = s.execute(select(Bounce)).scalar_one()
        assert (b.kind, b.status_code, b.raw) == ("hard", "5.1.1", "550 5.1.1 <gone@example.com>: User unknown")
    # A later notice to the same address is not even attempted
    later = new_notice(smtp_app, "gone@example.com", "again")
    assert delivery.process(smtp_app, later).status == "suppressed"
    assert smtp_sink.received == []


def test_soft_bounces_suppress_after_the_configured_number(smtp_app, smtp_sink):
    smtp_sink.handler.data_replies["full@example.com"] = "552 5.2.2 Mailbox full"
    outs = [delivery.process(smtp_app, new_notice(smtp_app, "full@example.com", f"k{i}")).status for i in range(3)]
    # soft_bounce_limit=2: two soft bounces are counted, then the address is suppressed
    assert outs == ["failed", "failed", "suppressed"]
    with smtp_app.session() as s:
        assert s.execute(select(Suppression.reason)).scalars().all() == [SuppressionReason.soft_bounce]


def test_a_live_lease_blocks_others_and_an_expired_one_is_taken_over(smtp_app, smtp_sink):
    # Given a worker that claimed the delivery and died before sending
    d = new_notice(smtp_app, "crash@example.com")
    claimed = delivery.claim(smtp_app, d, "dead-worker")
    assert isinstance(claimed, Delivery)
    # Then while its lease lives nobody else sends
    with pytest.raises(delivery.LeaseHeld):
        delivery.process(smtp_app, d)
    # And after it expires the next worker sends it, once
    with smtp_app.session() as s:
        s.execute(update(Delivery).where(Delivery.id == d).values(lease_until=utcnow() - timedelta(seconds=1)))
    assert delivery.process(smtp_app, d).status == "sent"
    assert len(smtp_sink.received) == 1


def test_the_documented_duplicate_window_is_one_message(smtp_app, smtp_sink, monkeypatch):
    # Given a worker that dies right after the relay accepted, before recording (kill -9 there)
    d = new_notice(smtp_app, "window@example.com")
    real_finish = delivery._finish

    class Killed(BaseException):
        pass

    def dies_before_recording_sent(app, delivery_id, owner, *, status, **kw):
        if status is DeliveryStatus.sent:
            raise Killed()
        return real_finish(app, delivery_id, owner, status=status, **kw)

    monkeypatch.setattr(delivery, "_finish", dies_before_recording_sent)
    with pytest.raises(Killed):
        delivery.process(smtp_app, d)
    monkeypatch.setattr(delivery, "_finish", real_finish)
    assert row(smtp_app, d).status is DeliveryStatus.sending and len(smtp_sink.received) == 1
    # When its lease expires another worker sends it again: the one duplicate of the window
    with smtp_app.session() as s:
        s.execute(update(Delivery).where(Delivery.id == d).values(lease_until=utcnow() - timedelta(seconds=1)))
    assert delivery.process(smtp_app, d).status == "sent"
    ids = [r.message["Message-ID"] for r in smtp_sink.received]
    assert len(ids) == 2 and ids[0] == ids[1] == row(smtp_app, d).message_id
    # And after that it is final: no third copy
    assert delivery.process(smtp_app, d).detail == "already final" and len(smtp_sink.received) == 2


def test_dead_relay_fails_over_to_the_next_one(db_url, smtp_sink):
    from tests.smtp_sink import free_port

    dead = f"smtp://127.0.0.1:{free_port()}?timeout=2"
    # Weight 0 makes the live relay failover-only, so the dead primary is always tried first
    # (with 100:1 weights the live one was picked first about once a hundred runs).
    app = App(make_settings(database_url=db_url, smtp_url=dead, smtp_relays=smtp_sink.url + "#0"))
    try:
        d = new_notice(app, "failover@example.com")
        assert delivery.process(app, d).status == "sent"
        assert len(smtp_sink.received) == 1 and row(app, d).relay == smtp_sink.url.replace("smtp://", "smtp://")
        dead_relay = app.transport.relays[0]
        assert dead_relay.down_until > 0
    finally:
        app.close()


def test_internationalized_mail_goes_to_the_relay_that_offers_smtputf8(db_url):
    plain, utf8 = SMTPSink(smtputf8=False).start(), SMTPSink(smtputf8=True).start()
    app = App(make_settings(database_url=db_url, smtp_url=plain.url + "#100", smtp_relays=utf8.url + "#1"))
    try:
        d = new_notice(app, "zoë@example.com")
        assert delivery.process(app, d).status == "sent"
        assert plain.received == [] and len(utf8.received) == 1 and utf8.received[0].smtputf8
    finally:
        app.close()
        plain.stop()
        utf8.stop()


def test_logs_are_json_lines_carrying_the_delivery_id(smtp_app, smtp_sink):
    # Given mailer's JSON handler on the mailer logger
    stream = io.StringIO()
    handler = make_handler(stream, fmt="json")
    logger = logging.getLogger("mailer")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        smtp_sink.handler.rcpt_replies["logs@example.com"] = "451 4.3.0 later"
        d = new_notice(smtp_app, "logs@example.com")
        with pytest.raises(TransientDeliveryError):
            delivery.process(smtp_app, d)
        del smtp_sink.handler.rcpt_replies["logs@example.com"]
        delivery.process(smtp_app, d)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    mine = [line for line in lines if line["logger"] == "mailer.delivery"]
    assert len(mine) >= 2 and all(line["delivery_id"] == d for line in mine)
    assert {"time", "level", "message", "pid"} <= set(mine[0])


def test_counters_by_outcome_queue_and_kind(smtp_app, smtp_sink):
    before = metrics.value("sent", queue="transactional", kind="order_delayed")
    delivery.process(smtp_app, new_notice(smtp_app, "count@example.com"))
    assert metrics.value("sent", queue="transactional", kind="order_delayed") == before + 1
