"""Header injection, RFC 2047 encoding and SMTPUTF8: what a mail's headers may carry."""

from __future__ import annotations

from email import message_from_bytes, message_from_string, policy

import pytest

from mailer.app import App, set_app
from mailer.clock import utcnow
from mailer.delivery import process as delivery
from mailer.errors import HeaderInjection
from mailer.message.mime import MailParts, build, format_address, unstructured
from mailer.models import Delivery, DeliveryStatus
from mailer.notices import trigger as notices
from tests.conftest import make_settings
from tests.smtp_sink import SMTPSink

DATA = {"order_number": "1001", "new_eta": "2026-12-01"}


def parts(**changes) -> MailParts:
    base = dict(from_name="Northwind Shop", from_address="shop@example.com", to_name="Alice",
                to_address="alice@example.com", subject="Hello", text="t", html="<p>h</p>",
                message_id="<1.x@example.com>", date=utcnow())
    base.update(changes)
    return MailParts(**base)


#: Every kind of line break the header rule flattens (the ones the issue names first).
LINE_BREAKS = ["\r\n", "\n", "\r", "\u2028", "\x85", "\u2029", "\x0b", "\x0c", "\r\n\t "]


@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_line_breaks_in_header_text_are_flattened_never_a_new_header(brk):
    # Given a subject, both display names and an extra header value that try to start a Bcc header
    raw = build(parts(subject=f"Hi{brk}Bcc: victim@example.net", to_name=f"Alice{brk}Bcc: victim@example.net",
                      from_name=f"Shop{brk}X-Evil: 1",
                      headers=[("List-Id", f"<a.example.com>{brk}Bcc: victim@example.net")]))
    # Then the strict parser finds no injected header, and each value is one line with one space
    msg = message_from_bytes(raw, policy=policy.strict)
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert msg["Subject"] == "Hi Bcc: victim@example.net"
    assert msg["To"].addresses[0].display_name == "Alice Bcc: victim@example.net"
    assert msg["To"].addresses[0].addr_spec == "alice@example.com"
    assert msg["From"].addresses[0].display_name == "Shop X-Evil: 1"
    assert msg["List-Id"] == "<a.example.com> Bcc: victim@example.net"
    head = raw.split(b"\r\n\r\n", 1)[0]
    # And the head holds no line break but CRLF (between fields and in folds)
    assert b"\n" not in head.replace(b"\r\n", b"") and b"\r" not in head.replace(b"\r\n", b"")
    assert "\u2028".encode() not in head and b"\xc2\x85" not in head


@pytest.mark.parametrize("field,changes", [
    ("Subject", dict(subject="Hi\x00there")),
    ("Subject", dict(subject="Hi\x1b[31mthere")),
    ("Subject", dict(subject="Hi\x7fthere")),
    ("Subject", dict(subject="Hi\x9bthere")),
    ("To", dict(to_name="Alice\x00")),
    ("From", dict(from_name="Shop\x1b")),
    ("To", dict(to_address="alice@example.com>\r\nBcc: <victim@example.net")),
    ("To", dict(to_address="alice@example.com\u2028")),
    ("To", dict(to_address="alice@example.com, victim@example.net")),
    ("List-Id", dict(headers=[("List-Id", "<a.example.com>\x00")])),
    ("X-Evil: 1\r\nBcc", dict(headers=[("X-Evil: 1\r\nBcc", "victim@example.net")])),
    ("X-Evil\u2028", dict(headers=[("X-Evil\u2028", "1")])),
])
def test_other_control_characters_and_line_breaks_outside_text_are_refused_naming_the_header(field, changes):
    # Given a control character that is not a line break in text, or any in an address or field name
    with pytest.raises(HeaderInjection) as info:
        build(parts(**changes))
    # Then the mail is refused, naming the header
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


@pytest.mark.parametrize("brk", ["\r\n", "\n", "\r", "\u2028", "\x85"])
def test_line_breaks_from_data_and_customer_names_are_flattened_end_to_end(app, brk):
    # Given a notice whose data puts a line break into the subject, to a customer whose name has one
    from mailer.customers.records import get_or_create
    from mailer.transport import memory

    with app.session() as s:
        c = get_or_create(s, app.settings, "grace@example.com", locale="en")
        c.first_name, c.last_name = f"Grace{brk}Bcc: victim@example.net", "Hopper"
    created = notices.create(app, "order_delayed", to="grace@example.com",
                             data={"order_number": f"1{brk}Bcc: victim@example.net", "new_eta": "2026-12-01"})
    # When it is sent
    assert delivery.process(app, created.delivery_id).status == "sent"
    # Then there is no Bcc header, the subject and the display name are one line each, and only the customer got it
    (sent,) = memory.outbox("default")
    msg = message_from_bytes(sent.raw, policy=policy.strict)
    assert msg["Bcc"] is None and sent.recipient == "grace@example.com"
    assert "1 Bcc: victim@example.net" in msg["Subject"] and brk not in msg["Subject"]
    assert msg["To"].addresses[0].display_name == "Grace Bcc: victim@example.net Hopper"
