"""Worker middleware: the sweeper thread every worker process runs (a Dramatiq middleware)."""

from __future__ import annotations

import logging
import threading

import dramatiq

from mailer.delivery import sweeper
from mailer.worker.actors import SWEEP_HOOKS

log = logging.getLogger("mailer.sweeper")


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
