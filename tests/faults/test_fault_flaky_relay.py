"""Fault 2: a relay that answers 451 at random and 550 5.1.1 for some addresses.

The SMTP server refuses 10 % of RCPT and DATA commands with ``451 4.3.0`` at random,
``550 5.1.1`` for a fixed set of addresses, and ``451`` forever for one address.  Every
other mail is delivered exactly once, the 550 addresses are suppressed with the reply
kept, the forever-451 address is given up after ``MAILER_RETRY_MAX_AGE_S``, and nothing
is left retrying.  The workers also expose Dramatiq's and mailer's Prometheus metrics,
and the counters add up to what the database says.
"""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailer.addresses import email_hash
from mailer.db import session_scope
from mailer.delivery.compose import message_id
from mailer.instance_secrets import address_hash_salt
from mailer.models import Bounce, DeliveryStatus, Suppression, SuppressionReason
from tests.faults.harness import wait_for
from tests.smtp_sink import free_port

pytestmark = [pytest.mark.slow, pytest.mark.smtp, pytest.mark.postgres]

RECIPIENTS = 400
HARD = {f"c{i:05d}@example.com" for i in (3, 77, 150, 222, 399)}
FOREVER_451 = "c00010@example.com"
#: Long enough that a delivery first tried late in the campaign on a loaded 2-core machine
#: still has retries left (the age counts from the delivery's creation at fan-out); the
#: forever-greylisted address is given up after it. Not a speed assertion.
MAX_AGE_S = 45


def scrape(port: int) -> dict[tuple, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[tuple, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_flaky_relay_delivers_everything_else_once_suppresses_hard_bounces_and_stops_retrying(fault, fault_dir):
    # Given a relay that is flaky, rejects some users and greylists one forever
    run = fault(consenting=RECIPIENTS, threads=2, worker_settings={"retry_max_age_s": MAX_AGE_S})
    run.sink.handler.flaky = 0.10
    run.sink.handler.rcpt_replies.update({a: f"550 5.1.1 <{a}>: Recipient address rejected: User unknown"
                                          for a in HARD})
    run.sink.handler.rcpt_replies[FOREVER_451] = "451 4.7.1 Greylisted, try again later"
    # And two workers of two threads each, exposing their metrics
    ports = [free_port(), free_port()]
    with run.live():
        for i, port in enumerate(ports):
            metrics_dir = fault_dir / f"metrics-{i}"
            metrics_dir.mkdir()
            run.workers.start(MAILER_METRICS_PORT=port, dramatiq_prom_db=metrics_dir)
        # When the campaign is sent
        run.send()
        # Then it completes, and the broker holds nothing more to retry
        run.wait_completed()
        wait_for(lambda: run.broker_backlog() == 0, 30, 0.2, "the broker to hold no message")
        metrics = [scrape(port) for port in ports]
    rows = run.deliveries()
    by_address = {r.to_address: r for r in rows}
    counts = run.message_ids()
    # Every other recipient got exactly one message
    for address, r in by_address.items():
        if address in HARD or address == FOREVER_451:
            continue
        assert r.status is DeliveryStatus.sent, (address, r)
        assert counts[message_id(run.settings, r.id)] == 1, address
    assert sum(counts.values()) == RECIPIENTS - len(HARD) - 1
    # The 550 addresses failed, are suppressed as hard bounces, and the raw reply is kept
    with session_scope(run.settings) as s:
        for address in HARD:
            r = by_address[address]
            assert r.status is DeliveryStatus.failed and "550 5.1.1" in r.smtp_reply
            h = email_hash(address, address_hash_salt(run.settings))
            sup = s.query(Suppression).filter_by(email_hash=h).one()
            assert sup.reason is SuppressionReason.hard_bounce and "5.1.1" in sup.detail  # the compact detail never holds the reply text or address
            assert s.query(Bounce).filter_by(email_hash=h, kind="hard").count() == 1
    # The address greylisted forever was retried with backoff, then given up
    r = by_address[FOREVER_451]
    assert r.status is DeliveryStatus.failed and r.attempts > 2 and "gave up" in r.reason, r
    assert "451 4.7.1" in r.smtp_reply
    # And the workers' Prometheus endpoints show Dramatiq's and mailer's counters, adding up
    def total(name, **labels):
        want = set(labels.items())
        return sum(v for m in metrics for (n, lab), v in m.items() if n == name and want <= set(lab))

    kind = "newsletter/test_news"
    assert total("mailer_deliveries_total", outcome="sent", queue="bulk", kind=kind) == RECIPIENTS - len(HARD) - 1
    assert total("mailer_deliveries_total", outcome="bounced", queue="bulk", kind=kind) == len(HARD)
    assert total("mailer_deliveries_total", outcome="failed", queue="bulk", kind=kind) == len(HARD) + 1
    assert total("mailer_deliveries_total", outcome="retried", queue="bulk", kind=kind) > 0
    assert total("dramatiq_messages_total", queue_name="bulk", actor_name="send_batch") > 0
