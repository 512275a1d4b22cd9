"""Worker middleware: the sweeper and the heartbeat threads every worker process runs (Dramatiq middleware)."""

from __future__ import annotations

import logging
import threading
import uuid

import dramatiq

from mailer.delivery import heartbeats, sweeper
from mailer.worker.actors import SWEEP_HOOKS

log = logging.getLogger("mailer.sweeper")
heartbeat_log = logging.getLogger("mailer.heartbeats")


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
