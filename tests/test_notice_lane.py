"""The notice lane: a notice is not kept waiting by campaign work in the same worker process.

Two parts (docs/delivery.md, "Notices during a campaign"): threads that take only the
transactional queue (``MAILER_NOTICE_THREADS``, :class:`NoticeLaneMiddleware`), and
campaign work that waits at its next step while a notice is in flight
(:data:`mailer.transport.senders.notice_lane`).
"""

from __future__ import annotations

import threading

import dramatiq
from dramatiq.brokers.stub import StubBroker

from mailer.queue.port import QUEUE_BULK, QUEUE_TRANSACTIONAL
from mailer.transport.senders import NoticeFirst, Senders
from mailer.worker.middleware import NoticeLaneMiddleware, NoticeLaneWorker

#: Generous bound for a thread to get somewhere on a loaded machine (a hang guard, not a timing assertion).
HANG_S = 30


def test_a_notice_is_taken_while_every_worker_thread_is_inside_campaign_work():
    # Given a worker with one thread and the notice lane, and a campaign job that holds that thread
    broker = StubBroker()
    broker.emit_after("process_boot")
    lane = NoticeLaneMiddleware(threads=1)
    broker.add_middleware(lane)
    release, bulk_running, notice_sent = threading.Event(), threading.Event(), threading.Event()

    @dramatiq.actor(broker=broker, queue_name=QUEUE_BULK, priority=100)
    def campaign_slice():
        bulk_running.set()
        release.wait(HANG_S)

    @dramatiq.actor(broker=broker, queue_name=QUEUE_TRANSACTIONAL, priority=0)
    def notice():
        notice_sent.set()

    # (the process's worker takes only bulk work here: a real one also consumes notices, and its
    # consumer may prefetch a notice before the lane's does; that race is documented, not tested)
    worker = dramatiq.Worker(broker, queues={QUEUE_BULK}, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        campaign_slice.send()
        assert bulk_running.wait(HANG_S)
        # When a notice arrives while the campaign job still holds the worker's only thread
        notice.send()
        # Then the lane sends it, and the campaign job is still running
        assert notice_sent.wait(HANG_S)
        assert not release.is_set()
        # And the lane consumes only the transactional queue (and its delay queue)
        assert isinstance(lane.lane, NoticeLaneWorker)
        assert {q.removesuffix(".DQ") for q in lane.lane.consumers} == {QUEUE_TRANSACTIONAL}
    finally:
        release.set()
        worker.stop(timeout=HANG_S * 1000)
    # And it stops with the process's worker
    assert lane.lane is None


def test_no_lane_when_notice_threads_is_zero():
    # Given MAILER_NOTICE_THREADS=0
    broker = StubBroker()
    lane = NoticeLaneMiddleware(threads=0)
    broker.add_middleware(lane)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    @dramatiq.actor(broker=broker, queue_name=QUEUE_TRANSACTIONAL)
    def notice():
        pass

    # When the worker starts, Then no lane worker is made, and the worker consumes notices itself
    worker.start()
    try:
        assert lane.lane is None
        assert QUEUE_TRANSACTIONAL in worker.consumers
    finally:
        worker.stop(timeout=HANG_S * 1000)


def test_campaign_work_waits_while_a_notice_is_in_flight():
    # Given a notice being sent
    gate = NoticeFirst(priority_s=3600)
    passed = threading.Event()

    def campaign_step():
        gate.wait_turn()
        passed.set()

    with gate.notice():
        assert gate.active == 1
        step = threading.Thread(target=campaign_step)
        # When campaign work reaches its next step
        step.start()
        step.join(0.2)
        # Then it waits
        assert step.is_alive() and not passed.is_set()
    # And goes on as soon as the notice is sent
    step.join(HANG_S)
    assert passed.is_set() and gate.active == 0


def test_a_notice_stuck_on_a_slow_relay_loses_its_priority():
    # Given a notice in flight longer than its priority (a fake clock)
    now = [1000.0]
    gate = NoticeFirst(priority_s=0.25, clock=lambda: now[0])
    with gate.notice():
        now[0] += 0.3
        # When campaign work reaches its next step, Then it does not wait
        assert gate.active == 0
        assert gate.wait_turn() == 0.0


def test_sending_threads_wait_for_the_notice_before_their_next_job():
    # Given sending threads and a notice in flight
    import mailer.transport.senders as senders_module

    gate = NoticeFirst(priority_s=3600)
    saved, senders_module.notice_lane = senders_module.notice_lane, gate
    senders = Senders(1, name="test-lane")
    ran = threading.Event()
    try:
        with gate.notice():
            assert senders.reserve(1, timeout_s=HANG_S) == 1
            # When a campaign job is submitted
            senders.submit(ran.set)
            # Then it does not run while the notice is in flight
            assert not ran.wait(0.2)
        # And runs right after
        assert ran.wait(HANG_S)
        assert senders.wait_idle(HANG_S)
    finally:
        senders.close()
        senders_module.notice_lane = saved


def test_a_notice_waiting_for_its_relay_does_not_hold_campaign_work_back():
    # Given a notice in flight, now waiting for the relay's answer
    gate = NoticeFirst(priority_s=3600)
    with gate.notice():
        with gate.relay_wait():
            # When campaign work reaches its next step, Then it goes on at once
            assert gate.active == 0
            assert gate.wait_turn() == 0.0
        # And once the relay answered, the notice has priority again for recording its result
        assert gate.active == 1
    assert gate.active == 0


def test_relay_wait_outside_a_notice_changes_nothing():
    # Given a notice in flight on another thread
    gate = NoticeFirst(priority_s=3600)
    seen = []
    with gate.notice():
        # When a campaign mail's send (no notice on this thread) waits for its relay
        def campaign_send():
            with gate.relay_wait():
                seen.append(gate.active)

        t = threading.Thread(target=campaign_send)
        t.start()
        t.join(HANG_S)
        # Then the notice keeps its priority
        assert seen == [1]
