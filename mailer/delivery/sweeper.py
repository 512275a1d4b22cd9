"""The sweeper: the database, not the broker, is the source of truth for what to send.

Every ``MAILER_SWEEP_INTERVAL_S`` each worker process looks for deliveries whose
Dramatiq message may be gone (Redis restarted without persistence, a crash between
commit and enqueue, a worker killed while it held a lease) and for scheduled
deliveries that are now due, and enqueues them: transactional ones one message each,
bulk ones in ``send_batch`` messages of ``MAILER_BATCH_SIZE``.

What counts as lost: a ``queued`` row nobody touched for ``MAILER_SWEEP_STALE_S``
(set it above the longest time a message may wait in a busy queue: a row swept while
its message still waits is merely enqueued twice, and the claim sends it once), and a
``sending`` row whose lease expired (its worker died between claim and record).
A conditional UPDATE of ``updated_at`` decides which sweeper enqueues a row, so many
worker processes do not enqueue the same row twice; and if they did, the claim in
:mod:`mailer.delivery` still sends it once.

Every comparison with "now" (due, stale, lease expired) and the ``updated_at`` stamp use
the database's clock (:class:`mailer.db.db_now`), not this worker's: a sweeper whose clock
runs ahead does not take a live lease for expired.  Then the sweeper reaps workers whose
heartbeat stopped (:func:`mailer.delivery.heartbeats.reap`): the Dramatiq messages a dead
worker had taken go back to their queues within about a lease, not ``MAILER_SWEEP_STALE_S``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from sqlalchemy import and_, or_, select, update

from mailer.db import db_now
from mailer.delivery import heartbeats
from mailer.models import Delivery, DeliveryStatus
from mailer.queue import port

log = logging.getLogger("mailer.sweeper")

#: Rows re-enqueued per sweep at most (the next sweep takes the rest).
SWEEP_LIMIT = 5000


class SweepHook(Protocol):
    """An extra sweep another capability runs after the deliveries' (campaign fan-out, reward codes).

    A hook takes the :class:`~mailer.app.App`, does its own short transactions, and is
    safe to run at every interval and on many workers at once.  The worker's boot hands
    the hooks in (:data:`mailer.worker.actors.SWEEP_HOOKS`); a hook that raises is logged
    and the others still run, as Dramatiq isolates its middleware hooks.
    """

    __name__: str

    def __call__(self, app) -> None: ...


def run_hooks(app, hooks: Sequence[Callable[[object], None]]) -> int:
    """Run each hook; one failing never stops the others. Returns how many failed."""
    failed = 0
    for hook in hooks:
        try:
            hook(app)
        except Exception:
            failed += 1
            log.exception("sweep hook %s failed; the other hooks still ran", getattr(hook, "__name__", hook))
    return failed


def sweep(app, hooks: Sequence[SweepHook] = ()) -> int:
    """Enqueue lost and due deliveries, then run ``hooks``; return how many deliveries were enqueued."""
    now = db_now()
    stale = db_now(-float(app.settings.sweep_stale_s))
    with app.session() as s:
        # Candidates: due scheduled rows, queued rows untouched for sweep_stale_s, and
        # sending rows whose lease expired (their worker died), all on the database's clock.
        # Uses ix_deliveries_status_send_after.
        cond = or_(
            and_(Delivery.status == DeliveryStatus.scheduled, Delivery.send_after <= now),
            and_(Delivery.status == DeliveryStatus.queued,
                 or_(and_(Delivery.updated_at.is_(None), Delivery.created_at < stale),
                     Delivery.updated_at < stale),
                 or_(Delivery.send_after.is_(None), Delivery.send_after <= now)),
            and_(Delivery.status == DeliveryStatus.sending, Delivery.lease_until < now),
        )
        rows = s.execute(select(Delivery.id, Delivery.queue, Delivery.updated_at).where(cond)
                         .order_by(Delivery.id).limit(SWEEP_LIMIT)).all()
        picked: list[tuple[int, str]] = []
        for row in rows:
            # Only the sweeper whose UPDATE matches the old updated_at enqueues this row.
            res = s.execute(update(Delivery).where(
                Delivery.id == row.id,
                Delivery.updated_at.is_(None) if row.updated_at is None else Delivery.updated_at == row.updated_at)
                .values(updated_at=db_now()).execution_options(synchronize_session=False))
            if res.rowcount == 1:
                picked.append((row.id, row.queue))
    bulk = [d for d, queue in picked if queue != port.QUEUE_TRANSACTIONAL]
    try:
        for delivery_id, queue in picked:
            if queue == port.QUEUE_TRANSACTIONAL:
                port.send(port.SEND_NOTICE, delivery_id)
        size = max(1, app.settings.batch_size)
        for i in range(0, len(bulk), size):
            port.send(port.SEND_BATCH, bulk[i:i + size])
    except Exception:
        # Broker down: the rows were stamped, so they come round again after sweep_stale_s.
        log.exception("sweeper could not enqueue %d deliveries; they will be swept again", len(picked))
        raise
    if picked:
        log.info("sweeper enqueued %d deliveries (%d bulk in batches of %d)", len(picked), len(bulk),
                 app.settings.batch_size)
    try:
        heartbeats.reap(app)
    except Exception:
        log.exception("reaping silent workers failed; the next sweep tries again")
    run_hooks(app, hooks)
    return len(picked)

