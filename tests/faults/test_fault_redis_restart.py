"""Fault 3: Redis restarted (empty) in the middle of a campaign; nothing is lost.

The broker runs on a private ``redis-server`` without persistence.  It is killed while
the campaign is being sent and started again empty, so every queued message, delayed
retry and in-flight acknowledgement is gone.  The database is the source of truth: the
sweeper in each worker re-enqueues what the broker lost, and every consenting recipient
still gets exactly one message.
"""

from __future__ import annotations

import time

import pytest

from mailer.delivery.compose import message_id
from mailer.models import DeliveryStatus
from tests.faults.harness import (
    FINISH_TIMEOUT_S,
    RedisServer,
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

pytestmark = [pytest.mark.slow, pytest.mark.smtp, pytest.mark.postgres]

RECIPIENTS = 600


def test_redis_restarted_mid_campaign_loses_nothing(pg_schema, fault_dir):
    # Given a private Redis, two workers and a campaign to 600 consenting customers
    redis_server = RedisServer(fault_dir / "logs")
    redis_server.start()
    sink = SMTPSink().start()
    settings, stage, env_kwargs = prepare(fault_dir, database_url=pg_schema.url(), broker_url=redis_server.url,
                                          sink=sink, consenting=RECIPIENTS)
    # (a queued row untouched for 5 s counts as lost)
    workers = Workers(worker_env(database_url=pg_schema.url(), sweep_stale_s=5, **env_kwargs),
                      fault_dir / "logs", threads=2)
    try:
        workers.start(), workers.start()
        send_campaign(settings, stage.campaign_id)
        # When Redis dies a sixth of the way in and comes back empty two seconds later
        wait_for(lambda: len(sink.received) >= RECIPIENTS // 6, 120, what="a sixth of the campaign")
        redis_server.kill()
        at_crash = len(sink.received)
        time.sleep(2)
        redis_server.start()
        # Then the campaign still completes
        wait_for(lambda: campaign_status(settings, stage.campaign_id)[0] == "completed", FINISH_TIMEOUT_S, 0.5,
                 "the campaign to complete")
    except AssertionError:
        print(workers.logs())
        print(campaign_status(settings, stage.campaign_id))
        raise
    finally:
        workers.stop_all()
        sink.stop()
        redis_server.kill()
    rows = deliveries(settings, stage.campaign_id)
    print(f"Redis killed at {at_crash} received")
    assert at_crash < RECIPIENTS
    # And every consenting recipient got exactly one message: nothing lost, nothing twice
    assert {r.customer_id for r in rows} == set(stage.consenting)
    assert all(r.status is DeliveryStatus.sent for r in rows)
    counts = message_ids(sink)
    assert set(counts) == {message_id(settings, r.id) for r in rows}
    assert set(counts.values()) == {1}
