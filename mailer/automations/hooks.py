"""The automations' sweeper hook: reward codes whose mail ended unsent go back to their pool.

Importing this module registers :func:`release_codes_hook` in :data:`mailer.sweeper.HOOKS`
(once; :mod:`mailer.automations` imports it, and :mod:`mailer.actors` imports that).
"""

from __future__ import annotations

from mailer import codes as codes_service

#: The sweeper hook returns unsent reward codes to their pools at most this often, seconds.
RELEASE_INTERVAL_S = 300
_last_release = {"at": 0.0}


def release_codes_hook(app) -> None:
    """Sweeper hook: codes whose mail ended unsent (cancelled, skipped, suppressed) go back to their pool."""
    import time as _time

    now = _time.monotonic()
    if _last_release["at"] and now - _last_release["at"] < RELEASE_INTERVAL_S:
        return
    _last_release["at"] = now
    with app.session() as s:
        codes_service.release_unsent(s)


def _register_hook() -> None:
    from mailer import sweeper

    if release_codes_hook not in sweeper.HOOKS:
        sweeper.HOOKS.append(release_codes_hook)


_register_hook()
