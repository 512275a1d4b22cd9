"""The benchmarks' measuring instrument: bench/sink.py counts what it is sent, exactly.

The sink runs as its own process (as in the benchmarks); these tests send to it with
smtplib and with mailer's own SMTP transport and compare its counters with what was
sent.  No timing is asserted anywhere.
"""

from __future__ import annotations

import importlib.util
import smtplib

import pytest

from mailer.settings import PROJECT_ROOT

pytestmark = pytest.mark.smtp


def _sink_module():
    spec = importlib.util.spec_from_file_location("bench_sink", PROJECT_ROOT / "bench" / "sink.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def sink():
    s = _sink_module().SinkProcess()
    yield s
    s.stop()


def _mail(n: int, *, message_id: str | None = None, body: str = "Hello.\r\n", delivery: int | None = None) -> bytes:
    head = ["From: shop@example.com", f"To: c{n}@example.com", f"Subject: test {n}",
            f"Message-ID: {message_id or f'<{n}.bench@example.com>'}"]
    if delivery is not None:
        head.append(f"X-Mailer-Delivery: {delivery}")
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


def test_counts_messages_bytes_and_unique_message_ids(sink):
    # Given 25 mails over one reused connection, one of them repeating an earlier Message-ID,
    # one of 300 KB (its end marker arrives in a later read than its start), one with a line
    # holding a single dot (smtplib stuffs it; it must not end the message early)
    mails = [_mail(i, delivery=1000 + i) for i in range(22)]
    mails.append(_mail(22, message_id="<3.bench@example.com>"))  # a duplicate of mail 3
    mails.append(_mail(23, body=("x" * 998 + "\r\n") * 300))
    mails.append(_mail(24, body="before\r\n.\r\nafter\r\n"))
    conn = smtplib.SMTP("127.0.0.1", sink.port)
    conn.ehlo()
    # When they are sent, with an RSET (an abandoned transaction) in the middle
    for i, raw in enumerate(mails):
        if i == 10:
            conn.mail("bounces@example.com")
            conn.rset()
        conn.sendmail("bounces@example.com", [f"c{i}@example.com"], raw)
    conn.quit()
    stats = sink.stats()
    # Then the sink counted every mail once, and the duplicate Message-ID once only
    assert stats["messages"] == 25
    assert stats["unique_ids"] == 24
    assert stats["connections"] == 1
    # and the bytes it counted cover the mails as they went over the wire (dot-stuffed, so never fewer)
    assert stats["bytes"] >= sum(len(m) for m in mails)
    # and it timestamped exactly the mails carrying X-Mailer-Delivery, by that header's value
    times = sink.times()
    assert sorted(times) == sorted(str(1000 + i) for i in range(22))
    assert all(stats["first_ts"] <= t <= stats["last_ts"] for t in times.values())


def test_reset_and_refusals(sink):
    # Given a sink that has seen two mails
    conn = smtplib.SMTP("127.0.0.1", sink.port)
    conn.ehlo()
    for i in range(2):
        conn.sendmail("b@example.com", ["c@example.com"], _mail(i))
    assert sink.stats()["messages"] == 2
    # When the counters are reset
    sink.reset()
    # Then it starts from zero
    assert sink.stats()["messages"] == 0 and sink.times() == {}
    # and it refuses DATA before RCPT and unknown commands, counting nothing
    assert conn.mail("b@example.com")[0] == 250
    assert conn.docmd("DATA")[0] == 503
    assert conn.docmd("VRFY", "x")[0] == 502
    conn.quit()
    assert sink.stats()["messages"] == 0


def test_mailer_transport_delivers_to_the_sink(sink):
    # Given mailer's own SMTP transport pointed at the sink (as the benchmark workers use it)
    from mailer.transport.smtp import SMTPTransport

    transport = SMTPTransport(sink.url)
    # When it sends five mails, one to an internationalized address (needs SMTPUTF8)
    try:
        for i in range(4):
            result = transport.send(envelope_from="bounces+1@example.com", recipient=f"c{i}@example.com",
                                    message=_mail(i, delivery=i))
            assert result.code == 250
        assert transport.supports_smtputf8()
        transport.send(envelope_from="bounces+1@example.com", recipient="zoë@example.com",
                       message=_mail(9, delivery=9))
    finally:
        transport.close()
    # Then the sink has all five, each Message-ID once
    stats = sink.stats()
    assert stats["messages"] == 5 and stats["unique_ids"] == 5
    assert sorted(sink.times()) == ["0", "1", "2", "3", "9"]
