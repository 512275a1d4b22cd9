"""Fault: a worker killed with SIGKILL mid-campaign is replaced within about a lease.

Two real ``dramatiq`` worker processes (one thread each) send a campaign; worker A is
killed with SIGKILL a quarter of the way in, with ``send_batch`` messages prefetched and
deliveries leased.  Dramatiq's own dead-worker requeue is switched off here (its heartbeat
timeout set to an hour) and the sweeper's stale rule too (``MAILER_SWEEP_STALE_S`` an
hour), so only mailer's heartbeat (:mod:`mailer.delivery.heartbeats`, on the database's
clock) can bring A's taken messages back, and only lease expiry A's leased deliveries.

Worker B finishes the campaign.  The stall, from the kill until nothing is held by A any
more (its taken messages back in their queues, its leases expired and taken over; see
tests/faults/takeover_support.py), stays within a generous multiple of ``MAILER_LEASE_S`` +
``MAILER_HEARTBEAT_S`` + ``MAILER_SWEEP_INTERVAL_S``: a liveness bound, not a speed target.
Every consenting recipient gets the mail exactly once, apart from at most one duplicate
(the window: one message per thread of the killed process).
"""

from __future__ import annotations

import time

import pytest

from tests.faults.harness import FINISH_TIMEOUT_S, PROGRESS_TIMEOUT_S, duplicates, wait_for
from tests.faults.takeover_support import held_by, wait_back_in_work

pytestmark = [pytest.mark.slow, pytest.mark.smtp, pytest.mark.postgres]

CONSENTING = 1200
LEASE_S = 6
HEARTBEAT_S = 1
SWEEP_INTERVAL_S = 1
#: Generous multiple of one takeover (lease + heartbeat + sweep interval) the stall must stay within.
LIVENESS_FACTOR = 8


def test_a_killed_workers_batches_resume_within_about_a_lease_and_nothing_is_sent_twice(fault):
    # Given a campaign to 1,200 consenting customers, two workers of one thread each, and no
    # rescue but mailer's heartbeat and lease expiry (Dramatiq's requeue and the stale rule an hour away)
    run = fault(consenting=CONSENTING, threads=1,
                worker_settings={"lease_s": LEASE_S, "heartbeat_s": HEARTBEAT_S,
                                 "sweep_interval_s": SWEEP_INTERVAL_S, "sweep_stale_s": 3600,
                                 "broker_heartbeat_ms": 3_600_000, "broker_maintenance_chance": 1000,
                                 "log_level": "WARNING"})
    bound_s = LIVENESS_FACTOR * (LEASE_S + HEARTBEAT_S + SWEEP_INTERVAL_S)
    with run.live():
        a = run.workers.start(MAILER_WORKER_NAME="host-a")
        run.workers.start(MAILER_WORKER_NAME="host-b")
        # When the campaign is sent and worker A is killed with SIGKILL a quarter of the way in,
        # while it holds work
        run.send()
        run.wait_received(CONSENTING // 4, "a quarter of the campaign")
        wait_for(lambda: (lambda h: h.leased_ids or h.queued_ids)(held_by(run.settings, run.redis.url, "host-a")),
                 PROGRESS_TIMEOUT_S, 0.05, "worker A to hold work")
        run.workers.kill9(a)
        killed_at = time.monotonic()
        at_kill = run.received()
        held = held_by(run.settings, run.redis.url, "host-a")
        # Then everything A held (its taken messages, its leases) is back in work within a
        # generous multiple of one takeover (lease + heartbeat + sweep interval)
        stall_s = wait_back_in_work(run.settings, run.redis.url, "host-a", held, since=killed_at,
                                    timeout_s=FINISH_TIMEOUT_S)
        # And worker B completes the campaign
        run.wait_completed()
        logs = run.workers.full_logs()
    status, by_status = run.status()
    print(f"killed at {at_kill} received, holding {held.message_count} messages ({len(held.queued_ids)} queued "
          f"deliveries) and {len(held.leased_ids)} leases; back in work after {stall_s:.1f} s (bound {bound_s} s); "
          f"final {by_status}")
    assert status == "completed" and by_status == {"sent": CONSENTING}
    # And A's taken messages were put back by the heartbeat rule (B's sweeper says so)
    assert "silent since" in logs and "put back in their queues" in logs
    # And the stall stayed within the bound (a liveness check), and A really held work
    assert stall_s <= bound_s
    assert held.worker_id is not None and (held.message_count or held.leased_ids)
    # And every recipient got the mail once, apart from at most one duplicate (one thread killed)
    counts = run.message_ids()
    assert len(counts) == CONSENTING
    assert duplicates(counts) <= 1
