"""The database's clock decides: leases, claims, the sweeper and worker heartbeats.

A worker whose own clock (the :mod:`mailer.clock` seam, shifted with ``clock.skewed``)
runs ahead by more than the lease must not take over a live lease, must not send a
duplicate, and its sweeper must not take the live lease for expired; a worker whose clock
runs behind still takes over a lease that expired on the database's clock.  Heartbeats
are judged the same way, and a worker silent for a lease has the Dramatiq messages it took
put back in their queues (real Redis).  SQLite and PostgreSQL (docs/delivery.md,
"Running on many machines").
"""

from __future__ import annotations

import dramatiq
import pytest
from sqlalchemy import select, update

from mailer import clock
from mailer.db import db_now
from mailer.delivery import heartbeats, sweeper
from mailer.delivery import process as delivery
from mailer.models import Delivery, DeliveryStatus, WorkerHeartbeat
from mailer.notices import trigger as notices
from mailer.queue import port
from mailer.queue.broker import build_broker, setup
from tests.conftest import make_settings

pytestmark = pytest.mark.smtp

DATA = {"order_number": "1001", "new_eta": "2026-12-01"}


@pytest.fixture
def smtp_app_settings() -> dict:
    return {"base_url": "https://shop.example.com/m", "lease_s": 120}


def _row(app, delivery_id: int) -> Delivery:
    with app.session() as s:
        d = s.get(Delivery, delivery_id)
        s.expunge(d)
        return d


def _leased_by_a(app) -> int:
    """A notice claimed by worker A, whose lease is live on the database's clock."""
    d = notices.create(app, "order_delayed", to="skew@example.com", data=DATA).delivery_id
    assert not isinstance(delivery.claim(app, d, "worker-a:1:aaaaaa"), delivery.Outcome)
    return d


def test_a_worker_whose_clock_runs_ahead_does_not_take_over_a_live_lease(smtp_app, smtp_sink):
    # Given a delivery worker A leased a moment ago (lease 120 s)
    d = _leased_by_a(smtp_app)
    ahead_s = smtp_app.settings.lease_s + 600
    # When worker B, whose clock runs ten minutes past the lease ahead, tries it one by one,
    # and as part of a campaign slice
    with clock.skewed(ahead_s):
        assert clock.utcnow() > _row(smtp_app, d).lease_until  # by B's clock the lease is over
        with pytest.raises(delivery.LeaseHeld):
            delivery.process(smtp_app, d)
        assert delivery.claim_many(smtp_app, [d], "worker-b:1:bbbbbb") == []
        rest, _ = delivery.send_slices(smtp_app, [d], owner="worker-b:1:bbbbbb", slice_s=1.0)
    # Then the lease is still A's, and nothing was sent
    r = _row(smtp_app, d)
    assert r.status is DeliveryStatus.sending and r.lease_owner == "worker-a:1:aaaaaa"
    assert rest == [] and smtp_sink.received == []


@pytest.fixture
def broker(smtp_app):
    """The in-process broker, with no worker draining it (what the sweeper enqueued stays there)."""
    previous = dramatiq.broker.global_broker
    b = setup(smtp_app.settings)
    yield b
    b.close()
    if previous is not None:
        dramatiq.set_broker(previous)


def test_a_sweeper_whose_clock_runs_ahead_leaves_a_live_lease_alone(smtp_app, smtp_sink, broker):
    # Given a delivery worker A leased a moment ago
    d = _leased_by_a(smtp_app)
    before = _row(smtp_app, d).updated_at
    # When a sweeper whose clock runs far past the lease ahead sweeps
    with clock.skewed(smtp_app.settings.lease_s + 600):
        picked = sweeper.sweep(smtp_app)
    # Then it enqueues nothing and leaves the row as A left it
    assert picked == 0
    assert _row(smtp_app, d).updated_at == before
    assert broker.queues[port.QUEUE_TRANSACTIONAL].qsize() == 0
    # But once the lease expired on the database's clock, a sweeper running behind re-enqueues it
    with smtp_app.session() as s:
        s.execute(update(Delivery).where(Delivery.id == d).values(lease_until=db_now(-1)))
    with clock.skewed(-(smtp_app.settings.lease_s + 600)):
        assert sweeper.sweep(smtp_app) == 1
    assert broker.queues[port.QUEUE_TRANSACTIONAL].qsize() == 1


def test_a_lease_expired_on_the_database_clock_is_taken_over_by_a_worker_running_behind(smtp_app, smtp_sink):
    # Given a delivery whose lease expired a second ago on the database's clock (worker A died)
    d = _leased_by_a(smtp_app)
    with smtp_app.session() as s:
        s.execute(update(Delivery).where(Delivery.id == d).values(lease_until=db_now(-1)))
    # When worker B, whose clock runs a lease and more behind, tries it
    with clock.skewed(-(smtp_app.settings.lease_s + 600)):
        outcome = delivery.process(smtp_app, d)
    # Then B takes it over and sends it once; its new lease was set by the database's clock
    assert outcome.status == "sent" and len(smtp_sink.received) == 1
    assert _row(smtp_app, d).attempts == 2


def test_the_peek_of_a_rate_limited_worker_also_judges_the_lease_on_the_database_clock(db_url, smtp_sink):
    # Given a worker with a domain rate limit (it looks at the row before taking tokens)
    from mailer.app import App

    app = App(make_settings(database_url=db_url, smtp_url=smtp_sink.url, domain_rate=1000))
    try:
        d = _leased_by_a(app)
        # When its clock runs far past the lease ahead / Then the live lease still holds
        with clock.skewed(app.settings.lease_s + 600), pytest.raises(delivery.LeaseHeld):
            delivery.process(app, d)
        assert smtp_sink.received == [] and _row(app, d).lease_owner == "worker-a:1:aaaaaa"
    finally:
        app.close()


def _beats(app) -> dict[str, WorkerHeartbeat]:
    with app.session() as s:
        rows = s.execute(select(WorkerHeartbeat)).scalars().all()
        for r in rows:
            s.expunge(r)
        return {r.worker_id: r for r in rows}


def test_heartbeats_are_written_and_judged_on_the_database_clock(app):
    # Given worker A beating, with its clock an hour behind
    with clock.skewed(-3600):
        heartbeats.beat(app, "broker-a")
    beat_at = _beats(app)["broker-a"].beat_at
    # Then its beat carries the database's time, not its own
    with app.session() as s:
        now = s.execute(select(db_now())).scalar_one()
    assert abs((now - beat_at).total_seconds()) < app.settings.lease_s
    # And a sweeper whose clock runs an hour ahead does not find it silent
    with clock.skewed(3600):
        assert heartbeats.silent(app) == []
        assert heartbeats.reap(app) == 0
    # But once A's last beat is older than a lease on the database's clock, it is silent
    with app.session() as s:
        s.execute(update(WorkerHeartbeat).values(beat_at=db_now(-(app.settings.lease_s + 1))))
    assert [r.worker_id for r in heartbeats.silent(app)] == ["broker-a"]
    # And a new beat brings it back, and a clean shutdown removes it
    heartbeats.beat(app, "broker-a")
    assert heartbeats.silent(app) == []
    heartbeats.leave(app, "broker-a")
    assert _beats(app) == {}


def test_a_silent_workers_taken_messages_go_back_to_their_queues(db_url, redis_url):
    # Given worker A (its own Redis broker) that took three send_batch messages and then went silent
    settings = make_settings(database_url=db_url, broker_url=redis_url)
    from mailer.app import App

    app = App(settings)
    dead = build_broker(settings)
    alive = build_broker(settings)
    previous = dramatiq.broker.global_broker
    try:
        for ids in ([1, 2], [3, 4], [5, 6]):
            dead.enqueue(dramatiq.Message(queue_name=port.QUEUE_BULK, actor_name=port.SEND_BATCH, args=(ids,),
                                          kwargs={}, options={}))
        taken = dead.consume(port.QUEUE_BULK, prefetch=3, timeout=100)
        assert next(taken) is not None  # fetched: the three now sit in A's unacknowledged set
        heartbeats.beat(app, dead.broker_id)
        with app.session() as s:
            s.execute(update(WorkerHeartbeat).values(beat_at=db_now(-(settings.lease_s + 1))))
        # When the sweeper of worker B (a live broker) reaps
        dramatiq.set_broker(alive)
        moved = heartbeats.reap(app)
        # Then A's three messages are back in the queue for B, A is marked reaped, and a second
        # sweeper doing the same moves nothing
        assert moved == 3
        got = []
        consumer = alive.consume(port.QUEUE_BULK, prefetch=3, timeout=100)
        for _ in range(20):
            m = next(consumer)
            if m is not None:
                got.append(m.args[0])
                consumer.ack(m)
            if len(got) == 3:
                break
        assert sorted(got) == [[1, 2], [3, 4], [5, 6]]
        assert _beats(app)[dead.broker_id].reaped_at is not None
        assert heartbeats.reap(app) == 0
    finally:
        if previous is not None:
            dramatiq.set_broker(previous)
        dead.close()
        alive.close()
        app.close()
