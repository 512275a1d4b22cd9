"""Time: every timestamp mailer stores is timezone-aware UTC, taken from here.

This is the worker's own clock.  What several machines must agree on (lease expiry, the
expired-lease check at claim, the sweeper, worker heartbeats) is compared against the
database's clock instead (:class:`mailer.db.db_now`), so a host whose clock is wrong
cannot take over a live lease.  :func:`skewed` shifts this clock, for the tests and the
drills that show it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

#: How far this process's clock is shifted from the system's (only :func:`skewed` sets it).
_skew = [timedelta(0)]


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC) + _skew[0]


@contextlib.contextmanager
def skewed(seconds: float) -> Iterator[None]:
    """Run with this process's clock ``seconds`` ahead (negative: behind), as a host whose
    clock drifted would: for tests and drills, never in production code."""
    previous = _skew[0]
    _skew[0] = previous + timedelta(seconds=seconds)
    try:
        yield
    finally:
        _skew[0] = previous
