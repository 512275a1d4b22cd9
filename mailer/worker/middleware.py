"""Worker middleware: the sweeper and heartbeat threads, the notice lane and the notice
templates' warm-up every worker process runs (Dramatiq middleware)."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import dramatiq
from dramatiq.worker import _WorkerMiddleware

from mailer.delivery import heartbeats, sweeper
from mailer.queue.port import QUEUE_TRANSACTIONAL
from mailer.worker.actors import SWEEP_HOOKS

log = logging.getLogger("mailer.sweeper")
heartbeat_log = logging.getLogger("mailer.heartbeats")
warm_log = logging.getLogger("mailer.rendering")


class SweeperMiddleware(dramatiq.Middleware):
    """Runs :func:`sweep` in a background thread of every worker process."""

    def __init__(self, app_getter, interval_s: float):
        self.app_getter = app_getter
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker, worker):
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mailer-sweeper", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker, worker):
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                sweeper.sweep(self.app_getter(), SWEEP_HOOKS)
            except Exception:
                log.exception("sweep failed; retrying in %s s", self.interval_s)


class HeartbeatMiddleware(dramatiq.Middleware):
    """Writes this worker process's heartbeat (:func:`mailer.delivery.heartbeats.beat`) every
    ``interval_s`` seconds from a background thread, under its Dramatiq broker id (what its
    taken messages are filed under in Redis); a clean shutdown removes the row.

    The thread beats whatever the actors are doing, so a busy worker is never taken for a
    dead one; a beat that fails (database unreachable) is logged once until one succeeds.
    """

    def __init__(self, app_getter, interval_s: float):
        self.app_getter = app_getter
        self.interval_s = interval_s
        self.worker_id = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker, worker):
        self.worker_id = str(getattr(broker, "broker_id", "") or uuid.uuid4())
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mailer-heartbeat", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker, worker):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
        try:
            heartbeats.leave(self.app_getter(), self.worker_id)
        except Exception as exc:
            heartbeat_log.warning("could not remove this worker's heartbeat row (%s); it is reaped later", exc)

    def _run(self) -> None:
        failing = False
        while True:
            try:
                heartbeats.beat(self.app_getter(), self.worker_id)
                if failing:
                    heartbeat_log.info("heartbeat written again")
                failing = False
            except Exception as exc:
                if not failing:
                    heartbeat_log.warning("heartbeat not written (%s); retrying every %s s", exc, self.interval_s)
                failing = True
            if self._stop.wait(self.interval_s):
                return
class NoticeLaneWorker(dramatiq.Worker):
    """A Dramatiq worker that consumes only the transactional queue, inside a worker process.

    Started without the worker-boot events (the process's own worker already sent them:
    one sweeper, one Prometheus registration), stopped with the process's worker.
    Uses Dramatiq's ``_WorkerMiddleware`` (how a worker gets its queues' consumers), as
    ``Worker.start`` does.
    """

    def start(self) -> None:
        # What Broker.add_middleware does for it, without its warning about a second
        # middleware of one type (the process's worker has its own _WorkerMiddleware).
        consumers = _WorkerMiddleware(self)
        self.broker.middleware.append(consumers)
        for queue_name in self.broker.get_declared_queues():
            consumers.after_declare_queue(self.broker, queue_name)
        for queue_name in self.broker.get_declared_delay_queues():
            consumers.after_declare_delay_queue(self.broker, queue_name)
        for _ in range(self.worker_threads):
            self._add_worker()


class NoticeLaneMiddleware(dramatiq.Middleware):
    """``MAILER_NOTICE_THREADS`` threads per worker process that take only notices.

    Dramatiq's worker threads take prefetched messages by priority, so a notice goes
    before campaign batches; but when every thread is inside a campaign slice the notice
    waits for one to finish.  These threads never take campaign work: a notice their
    consumer fetches is picked up at once.  The process's own worker still consumes the
    transactional queue too (ahead of bulk work): measured with the lane alone taking
    notices, its two threads were too few at 10 notices/s on a busy machine
    (bench/notice_latency.py, docs/benchmarks.md: p50 1.4 s).
    """

    def __init__(self, threads: int):
        self.threads = threads
        self.lane: NoticeLaneWorker | None = None

    def after_worker_boot(self, broker, worker):
        if self.threads <= 0 or isinstance(worker, NoticeLaneWorker):
            return
        self.lane = NoticeLaneWorker(broker, queues={QUEUE_TRANSACTIONAL}, worker_threads=self.threads,
                                     worker_timeout=worker.worker_timeout)
        self.lane.start()
        log.info("notice lane: %d thread(s) on the %s queue", self.threads, QUEUE_TRANSACTIONAL)

    def before_worker_shutdown(self, broker, worker):
        lane, self.lane = self.lane, None
        if lane is not None and worker is not lane:
            lane.stop()


class TemplateWarmupMiddleware(dramatiq.Middleware):
    """Compiles every notice kind in every locale (:meth:`mailer.rendering.Renderer.warm`)
    in a background thread when a worker process that consumes the transactional queue
    boots, so no notice pays a template compile (50 to 75 ms of CPU each; 56 of them, about
    3 s of CPU once per process) while a campaign competes for the core.

    The worker takes messages at once: a notice that arrives before its template is warm
    compiles it itself, as it always did.  A process for campaigns only
    (``mailer worker -Q bulk -Q default``) skips it.
    """

    def __init__(self, app_getter):
        self.app_getter = app_getter
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker, worker):
        if isinstance(worker, NoticeLaneWorker) or (worker.consumer_whitelist and QUEUE_TRANSACTIONAL not in worker.consumer_whitelist):
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mailer-template-warmup", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker, worker):
        self._stop.set()

    def _run(self) -> None:
        started = time.monotonic()
        try:
            count = self.app_getter().renderer.warm(stop=self._stop)
        except Exception:
            warm_log.exception("notice templates not warmed; each compiles on its first notice")
            return
        warm_log.info("notice templates warmed: %d compiled in %.1f s", count, time.monotonic() - started)
