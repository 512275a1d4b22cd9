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

pytestmark = [pytest.mark.slow, pytest.mark.smtp, pytest.mark.postgres]

RECIPIENTS = 600


def test_redis_restarted_mid_campaign_loses_nothing(fault):
    # Given a private Redis, two workers of two threads each and a campaign to 600 consenting
    # customers (a queued row untouched for 5 s counts as lost)
    run = fault(consenting=RECIPIENTS, threads=2, worker_settings={"sweep_stale_s": 5})
    with run.live():
        run.workers.start(), run.workers.start()
        run.send()
        # When Redis dies a sixth of the way in and comes back empty two seconds later
        run.wait_received(RECIPIENTS // 6, "a sixth of the campaign")
        run.redis.kill()
        at_crash = run.received()
        time.sleep(2)
        run.redis.start()
        # Then the campaign still completes
        run.wait_completed()
    rows = run.deliveries()
    print(f"Redis killed at {at_crash} received")
    assert at_crash < RECIPIENTS
    # And every consenting recipient got exactly one message: nothing lost, nothing twice
    assert {r.customer_id for r in rows} == set(run.consenting)
    assert all(r.status is DeliveryStatus.sent for r in rows)
    counts = run.message_ids()
    assert set(counts) == {message_id(run.settings, r.id) for r in rows}
    assert set(counts.values()) == {1}
