"""A notice travels notify() -> broker -> worker -> database -> MJML -> real SMTP server."""

from __future__ import annotations

from email import message_from_bytes, policy

import pytest
from sqlalchemy import select

from mailer import notify
from mailer.errors import InvalidAddress, MissingField, UnknownKind
from mailer.models import Delivery, DeliveryStatus

DATA = {"order_number": "1001", "new_eta": "2026-12-01"}


@pytest.mark.smtp
def test_notice_arrives_at_smtp_server_with_both_parts_and_message_id(smtp_app, smtp_worker, smtp_sink):
    # Given a configured app delivering to a real SMTP server
    # When a notice is triggered and the worker drains the queue
    delivery_id = notify("order_delayed", to="Alice@Example.com", data=DATA, settings=smtp_app.settings)
    smtp_worker.drain()
    # Then exactly one message arrived, with subject, text and HTML parts and its Message-ID
    assert len(smtp_sink.received) == 1
    got = smtp_sink.received[0]
    assert got.rcpt_tos == ["alice@example.com"]
    msg = message_from_bytes(got.raw, policy=policy.strict)
    assert "1001" in msg["Subject"]
    assert "1001" in msg.get_body(("plain",)).get_content()
    assert "<html" in msg.get_body(("html",)).get_content()
    # And the delivery row says sent, with the same Message-ID and the SMTP reply
    with smtp_app.session() as s:
        d = s.get(Delivery, delivery_id)
        assert d.status is DeliveryStatus.sent
        assert d.message_id == msg["Message-ID"]
        assert d.smtp_code == 250 and "queued" in d.smtp_reply
        assert d.sent_at is not None


@pytest.mark.smtp
def test_same_idempotency_key_twice_sends_one_mail(smtp_app, smtp_worker, smtp_sink):
    first = notify("order_delayed", to="bob@example.com", data=DATA, idempotency_key="k-1",
                   settings=smtp_app.settings)
    second = notify("order_delayed", to="bob@example.com", data=DATA, idempotency_key="k-1",
                    settings=smtp_app.settings)
    smtp_worker.drain()
    assert first == second
    assert len(smtp_sink.received) == 1


@pytest.mark.parametrize("kind,to,data,error,field", [
    ("no_such_kind", "a@example.com", DATA, UnknownKind, "kind"),
    ("order_delayed", "a@example.com", {"order_number": "1"}, MissingField, "data.new_eta"),
    ("order_delayed", "not-an-address", DATA, InvalidAddress, "email"),
    ("order_delayed", "a@example.com\r\nBcc: x@evil.test", DATA, InvalidAddress, "email"),
])
def test_bad_trigger_gives_clear_error_and_enqueues_nothing(app, stub_broker, kind, to, data, error, field):
    with pytest.raises(error) as info:
        notify(kind, to=to, data=data, settings=app.settings)
    assert info.value.field == field
    with app.session() as s:
        assert s.execute(select(Delivery)).first() is None
    assert stub_broker.queues and all(stub_broker.queues[q].qsize() == 0 for q in stub_broker.queues)
