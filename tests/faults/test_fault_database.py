"""Fault 5: the database unreachable for a few seconds in the middle of a campaign.

The workers reach PostgreSQL through a TCP proxy.  While they send a campaign the proxy
resets every connection and refuses new ones for four seconds.  Actors fail and are
retried; a result that could not be recorded is recorded once the database is back
(the record step retries for half a lease); nothing is marked sent that the SMTP
server did not receive, and every recipient gets exactly one message.
"""

from __future__ import annotations

import time

import pytest

from mailer.delivery.compose import message_id
from mailer.models import DeliveryStatus
from tests.faults.harness import (
    FINISH_TIMEOUT_S,
    TcpProxy,
    Workers,
    campaign_status,
    deliveries,
    message_ids,
    prepare,
    send_campaign,
    wait_for,
    worker_env,
)
from tests.smtp_sink import SMTPSink

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.smtp, pytest.mark.postgres]

RECIPIENTS = 500
OUTAGE_S = 4


def test_database_outage_mid_campaign_marks_nothing_sent_that_was_not_sent(pg_schema, redis_url, fault_dir):
    sink = SMTPSink().start()
    settings, stage, env_kwargs = prepare(fault_dir, database_url=pg_schema.url(), broker_url=redis_url,
                                          sink=sink, consenting=RECIPIENTS)
    proxy = TcpProxy("127.0.0.1", 5432)
    # A 20 s lease: the record step keeps retrying for 10 s, longer than the outage.
    workers = Workers(worker_env(database_url=pg_schema.url(proxy.port), lease_s=20, **env_kwargs),
                      fault_dir / "logs", threads=2)
    try:
        workers.start(), workers.start()
        send_campaign(settings, stage.campaign_id)
        # When the database becomes unreachable a fifth of the way in, for four seconds
        wait_for(lambda: len(sink.received) >= RECIPIENTS // 5, 120, what="a fifth of the campaign")
        proxy.cut()
        at_cut = len(sink.received)
        time.sleep(OUTAGE_S)
        during = len(sink.received) - at_cut
        proxy.restore()
        # Then the campaign completes
        wait_for(lambda: campaign_status(settings, stage.campaign_id)[0] == "completed", FINISH_TIMEOUT_S, 0.5,
                 "the campaign to complete")
    except AssertionError:
        print(workers.logs())
        raise
    finally:
        workers.stop_all()
        sink.stop()
        proxy.close()
    print(f"cut at {at_cut} received; {during} arrived during the outage")
    rows = deliveries(settings, stage.campaign_id)
    counts = message_ids(sink)
    # Nothing is marked sent that the SMTP server did not receive...
    sent_ids = {r.message_id for r in rows if r.status is DeliveryStatus.sent}
    assert sent_ids <= set(counts)
    # ...and everything it received is marked sent, each recipient exactly once
    assert all(r.status is DeliveryStatus.sent for r in rows) and len(rows) == RECIPIENTS
    assert set(counts) == {message_id(settings, r.id) for r in rows}
    # Nothing twice beyond the documented window: a worker thread whose mail the relay
    # accepted while the database was cut may resend it once after its lease expires
    # (seen about once in five CI runs). 2 processes x 2 threads = at most 4.
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= 4, f"{duplicates} duplicates"
    # And the workers did meet the outage (they logged the failed database calls)
    logs = workers.full_logs()
    assert "OperationalError" in logs or "database unreachable" in logs
