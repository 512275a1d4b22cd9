"""Header injection, RFC 2047 encoding and SMTPUTF8: what a mail's headers may carry."""

from __future__ import annotations

from email import message_from_bytes, message_from_string, policy

import pytest

from mailer import delivery, notices
from mailer.app import App, set_app
from mailer.clock import utcnow
from mailer.errors import HeaderInjection
from mailer.mime import MailParts, build, format_address, unstructured
from mailer.models import Delivery, DeliveryStatus
from tests.conftest import make_settings
from tests.smtp_sink import SMTPSink

DATA = {"order_number": "1001", "new_eta": "2026-12-01"}


def parts(**changes) -> MailParts:
    base = dict(from_name="Northwind Shop", from_address="shop@example.com", to_name="Alice",
                to_address="alice@example.com", subject="Hello", text="t", html="<p>h</p>",
                message_id="<1.x@example.com>", date=utcnow())
    base.update(changes)
    return MailParts(**base)


@pytest.mark.parametrize("field,changes", [
    ("Subject", dict(subject="Hi\r\nBcc: victim@example.net")),
    ("Subject", dict(subject="Hi\nBcc: victim@example.net")),
    ("Subject", dict(subject="Hi\rthere")),
    ("Subject", dict(subject="Hi\x00there")),
    ("Subject", dict(subject="Hi\u2028Bcc: x@example.net")),
    ("Subject", dict(subject="Hi\x85there")),
    ("To", dict(to_name="Alice\r\nBcc: victim@example.net")),
    ("To", dict(to_address="alice@example.com>\r\nBcc: <victim@example.net")),
    ("To", dict(to_address="alice@example.com, victim@example.net")),
    ("From", dict(from_name="Shop\nX-Evil: 1")),
    ("List-Id", dict(headers=[("List-Id", "<a.example.com>\r\nBcc: victim@example.net")])),
    ("X-Evil: 1\r\nBcc", dict(headers=[("X-Evil: 1\r\nBcc", "victim@example.net")])),
])
def test_cr_lf_and_control_characters_are_refused_naming_the_header(field, changes):
    with pytest.raises(HeaderInjection) as info:
        build(parts(**changes))
    assert info.value.field == field
    assert field.split(":")[0] in str(info.value)


def test_unencodable_text_is_refused_clearly():
    # A lone surrogate cannot be written in any encoding a mail may use
    with pytest.raises(HeaderInjection, match="cannot be encoded"):
        build(parts(subject="broken \udc80 text"))


def test_non_ascii_name_and_subject_are_rfc2047_encoded_and_round_trip():
    # Given a Polish subject and display names, long enough to need folding
    subject = "Zażółć gęślą jaźń — wyprzedaż do -50% na wszystkie kurtki i płaszcze zimowe!"
    raw = build(parts(subject=subject, to_name="Łucja Żółkiewska", from_name="Sklep Północ"))
    head = raw.split(b"\r\n\r\n", 1)[0]
    # Then every header line is 7-bit ASCII and at most 78 characters long
    assert head.isascii()
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    assert b"=?utf-8?b?" in head
    # And the strict standard-library parser reads back exactly what went in
    msg = message_from_bytes(raw, policy=policy.strict)
    assert msg["Subject"] == subject
    assert msg["To"].addresses[0].display_name == "Łucja Żółkiewska"
    assert msg["From"].addresses[0].display_name == "Sklep Północ"
    assert msg.get_body(("plain",)).get_content() == "t"


def test_ascii_that_looks_like_an_encoded_word_is_encoded_so_it_reads_literally():
    raw = build(parts(subject="=?utf-8?b?SGFja2Vk?=", to_name="=?utf-8?q?Admin?="))
    msg = message_from_bytes(raw, policy=policy.strict)
    assert msg["Subject"] == "=?utf-8?b?SGFja2Vk?="
    assert msg["To"].addresses[0].display_name == "=?utf-8?q?Admin?="


def test_specials_in_an_ascii_name_are_quoted():
    assert format_address('Smith, John "JJ"', "j@example.com") == '"Smith, John \\"JJ\\"" <j@example.com>'
    assert unstructured("Subject", "") == "Subject:"


def test_internationalized_address_needs_utf8_mode():
    with pytest.raises(HeaderInjection, match="needs SMTPUTF8"):
        build(parts(to_address="józef@example.com"))
    raw = build(parts(to_address="józef@example.com", to_name="Józef", subject="Cześć", utf8=True))
    # RFC 6532: raw UTF-8 headers (the standard library parses them from text, not bytes)
    assert "To: Józef <józef@example.com>".encode() in raw
    msg = message_from_string(raw.decode("utf-8"), policy=policy.SMTPUTF8)
    assert msg["To"].addresses[0].addr_spec == "józef@example.com" and msg["Subject"] == "Cześć"


# -- end to end over a real SMTP server -------------------------------------------------------
def _app(db_url, sink):
    app = App(make_settings(database_url=db_url, smtp_url=sink.url))
    set_app(app)
    return app


@pytest.mark.smtp
def test_internationalized_address_goes_out_with_smtputf8_when_the_relay_offers_it(db_url):
    sink = SMTPSink(smtputf8=True).start()
    app = _app(db_url, sink)
    try:
        created = notices.create(app, "order_delayed", to="józef@bücher.example", data=DATA)
        out = delivery.process(app, created.delivery_id)
        assert out.status == "sent", out
        (got,) = sink.received
        assert got.smtputf8 is True and got.rcpt_tos == ["józef@bücher.example"]
        msg = message_from_string(got.raw.decode("utf-8"), policy=policy.SMTPUTF8)
        assert msg["To"].addresses[0].addr_spec == "józef@bücher.example"
    finally:
        app.close()
        sink.stop()
        set_app(None)


@pytest.mark.smtp
def test_internationalized_address_fails_clearly_when_the_relay_lacks_smtputf8(db_url):
    sink = SMTPSink(smtputf8=False).start()
    app = _app(db_url, sink)
    try:
        created = notices.create(app, "order_delayed", to="józef@example.com", data=DATA)
        out = delivery.process(app, created.delivery_id)
        # Then nothing is sent, the delivery failed for good, and the reason says why
        assert out.status == "failed"
        assert sink.received == []
        with app.session() as s:
            d = s.get(Delivery, created.delivery_id)
            assert d.status is DeliveryStatus.failed
            assert "SMTPUTF8" in d.reason and "józef@example.com" in d.reason
        # And an ASCII local part at an IDN domain needs no SMTPUTF8: punycode in envelope and header
        ok = notices.create(app, "order_delayed", to="anna@bücher.example", data=DATA)
        assert delivery.process(app, ok.delivery_id).status == "sent"
        (got,) = sink.received
        assert got.rcpt_tos == ["anna@xn--bcher-kva.example"] and got.raw.isascii()
    finally:
        app.close()
        sink.stop()
        set_app(None)


def test_notice_whose_subject_would_carry_a_control_character_is_refused_before_anything_is_stored(
        app, stub_broker):
    from sqlalchemy import select

    # Given data that puts an escape character into the subject
    with pytest.raises(HeaderInjection) as info:
        notices.notify("order_delayed", to="a@example.com", data={"order_number": "1\x1b[31m",
                                                                   "new_eta": "2026-12-01"}, settings=app.settings)
    # Then the trigger is refused naming the header, and nothing is stored or enqueued
    assert info.value.field == "Subject"
    with app.session() as s:
        assert s.execute(select(Delivery)).first() is None
    assert all(q.qsize() == 0 for q in stub_broker.queues.values())


def test_line_breaks_in_data_never_become_a_header(app):
    # Given data with CR/LF and a Bcc header in it (the subject renderer folds whitespace)
    created = notices.create(app, "order_delayed", to="a@example.com",
                             data={"order_number": "1\r\nBcc: victim@example.net", "new_eta": "2026-12-01"})
    assert delivery.process(app, created.delivery_id).status == "sent"
    # Then the mail has no Bcc header and its subject is one line
    from mailer.transport import memory

    (sent,) = memory.outbox("default")
    msg = message_from_bytes(sent.raw, policy=policy.strict)
    assert msg["Bcc"] is None and "\n" not in msg["Subject"] and sent.recipient == "a@example.com"
