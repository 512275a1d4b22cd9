"""Worker heartbeats: which worker processes are alive, judged on the database's clock.

Every worker process writes its row of ``worker_heartbeats`` every ``MAILER_HEARTBEAT_S``
(:func:`beat`, from the worker's heartbeat thread, :mod:`mailer.worker.middleware`), with
``beat_at`` set by the database (:class:`mailer.db.db_now`), never by the worker's own
clock.  The sweeper (:func:`reap`) treats a worker silent for ``MAILER_LEASE_S`` as dead
(killed, its machine gone, or cut off from the database) and puts the Dramatiq messages it
had taken but not acknowledged (prefetched ``send_batch`` messages, the one it was running)
back in their queues at once, through :func:`mailer.queue.port.requeue_held`, instead of
waiting for ``MAILER_SWEEP_STALE_S``.  The deliveries it had leased come back by their
lease's expiry on the same clock, so a dead host's work resumes within about
``MAILER_LEASE_S`` + ``MAILER_HEARTBEAT_S`` + ``MAILER_SWEEP_INTERVAL_S``.

Putting a message back twice is harmless: every actor is safe to run twice and a
delivery's claim sends it once.  A worker that was only cut off and comes back beats
again (its ``reaped_at`` is cleared) and carries on; the messages it still holds are then
processed twice, and sent once.
"""

from __future__ import annotations

import logging
import os
import socket

from sqlalchemy import bindparam, delete, insert, select, update

from mailer import metrics
from mailer.db import db_now
from mailer.logs import worker_name
from mailer.models import WorkerHeartbeat
from mailer.queue import port

log = logging.getLogger("mailer.heartbeats")

#: Rows of workers reaped this long ago (seconds) are deleted by the sweeper.
FORGET_REAPED_S = 24 * 3600

_H = WorkerHeartbeat.__table__.c
# The beat: one UPDATE by primary key, the time from the database's clock.
_BEAT = (update(WorkerHeartbeat.__table__).where(_H.worker_id == bindparam("w_id"))
         .values(beat_at=db_now(), reaped_at=None, name=bindparam("w_name")))


def _engine(app):
    return app.sessions.kw["bind"]


def beat(app, worker_id: str) -> None:
    """Say this worker process is alive: its row's ``beat_at`` = the database's now."""
    name = worker_name()
    with _engine(app).begin() as conn:
        if conn.execute(_BEAT, {"w_id": worker_id, "w_name": name}).rowcount == 1:
            return
        # First beat of this process (or its row was forgotten): insert it.
        conn.execute(insert(WorkerHeartbeat.__table__).values(
            worker_id=worker_id, name=name, host=socket.gethostname()[:255], pid=os.getpid(),
            started_at=db_now(), beat_at=db_now(), reaped_at=None))


def leave(app, worker_id: str) -> None:
    """A clean shutdown: forget this worker (Dramatiq hands its prefetched messages back itself)."""
    with _engine(app).begin() as conn:
        # Primary-key delete of this process's own row.
        conn.execute(delete(WorkerHeartbeat.__table__).where(_H.worker_id == worker_id))


def silent(app) -> list:
    """Workers whose last beat is older than ``MAILER_LEASE_S`` on the database's clock and
    that nobody reaped yet: (worker_id, name, host, pid, beat_at)."""
    with _engine(app).connect() as conn:
        # A range on ix_worker_heartbeats_beat_at; a handful of rows (one per worker process).
        return list(conn.execute(select(_H.worker_id, _H.name, _H.host, _H.pid, _H.beat_at)
                                 .where(_H.beat_at < db_now(-float(app.settings.lease_s)), _H.reaped_at.is_(None))
                                 .order_by(_H.beat_at)).all())


def reap(app) -> int:
    """Put the messages of every silent worker back in work; returns how many went back.

    The messages go back first (one atomic step in Redis, which empties the dead worker's
    set of taken messages, so a second sweeper doing the same moves nothing), then the row
    is marked reaped, by a conditional UPDATE that still needs it silent.
    """
    moved = 0
    lease_s = float(app.settings.lease_s)
    rows = silent(app)
    if not rows:
        return 0
    for row in rows:
        n = port.requeue_held(row.worker_id)
        moved += n
        metrics.count_reaped(n)
        with _engine(app).begin() as conn:
            # Only if it is still silent: a worker that beat meanwhile is alive again.
            conn.execute(update(WorkerHeartbeat.__table__)
                         .where(_H.worker_id == row.worker_id, _H.reaped_at.is_(None),
                                _H.beat_at < db_now(-lease_s))
                         .values(reaped_at=db_now()))
        log.warning("worker %s (host %s, pid %s) silent since %s, longer than the lease (%s s): "
                    "%d of its messages put back in their queues", row.name, row.host, row.pid, row.beat_at,
                    app.settings.lease_s, n)
    with _engine(app).begin() as conn:
        # Forget long-reaped workers (range on reaped_at over a handful of rows).
        conn.execute(delete(WorkerHeartbeat.__table__)
                     .where(_H.reaped_at.is_not(None), _H.reaped_at < db_now(-float(FORGET_REAPED_S))))
    return moved
