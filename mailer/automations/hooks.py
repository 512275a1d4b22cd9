"""The automations' sweeper hooks: reward codes whose mail ended unsent go back to their pool;
the daily prediction refit, followed by the prediction triggers.

The worker's boot hands it to the sweeper (:data:`mailer.worker.actors.SWEEP_HOOKS`).
"""

from __future__ import annotations

import time

from mailer.automations import codes as codes_service
from mailer.automations.predicted import raise_prediction_events
from mailer.customers.predictions import daily_refit_hook

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



def prediction_refit_hook(app) -> None:
    """Sweeper hook: the once-a-day refit and rescore, then ``churn_risk_became`` / ``expected_order_due``.

    A worker that dies between the score and the triggers loses no crossing: the next
    score's pass compares the figures with the triggers' state again.
    """
    outcome = daily_refit_hook(app)
    if outcome is not None:
        raise_prediction_events(app, as_of=outcome.fit.models.as_of)
