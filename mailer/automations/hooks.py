"""The automations' sweeper hook: reward codes whose mail ended unsent go back to their pool.

The worker's boot hands it to the sweeper (:data:`mailer.worker.actors.SWEEP_HOOKS`).
"""

from __future__ import annotations

import time

from mailer.automations import codes as codes_service

#: The sweeper hook returns unsent reward codes to their pools at most this often, seconds.
RELEASE_INTERVAL_S = 300
_last_release = {"at": 0.0}


def release_codes_hook(app) -> None:
    """Sweeper hook: codes whose mail ended unsent (cancelled, skipped, suppressed) go back to their pool."""
    now = time.monotonic()
    if _last_release["at"] and now - _last_release["at"] < RELEASE_INTERVAL_S:
        return
    _last_release["at"] = now
    with app.session() as s:
        codes_service.release_unsent(s)

