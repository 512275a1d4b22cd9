"""The enqueue port: the one way services hand work to the workers.

Services never import the Dramatiq actors.  They name an actor (:data:`SEND_NOTICE`,
:data:`SEND_BATCH`, :data:`DECIDE_AB_TEST`, ...) and this module builds a :class:`dramatiq.Message` for it and
gives it to the broker that the process configured (``dramatiq.set_broker``, done by
:func:`mailer.queue.broker.setup` or the worker's boot).  The actors themselves are
declared by :mod:`mailer.worker.actors`, which only the worker side imports; a web or
CLI process can enqueue without them.

Two ways to send:

* :func:`send` raises when the broker refuses (an actor handing on its remaining work
  must fail, so Dramatiq retries it).
* :func:`enqueue_stored` is for work whose row is already committed: when the broker is
  down it logs and returns False, and the sweeper sends the row later
  (:mod:`mailer.delivery.sweeper`).  That rule is written here once.
"""

from __future__ import annotations

import logging

import dramatiq

from mailer.errors import NoBroker

log = logging.getLogger("mailer.queue")

QUEUE_TRANSACTIONAL = "transactional"
QUEUE_BULK = "bulk"
QUEUE_DEFAULT = "default"
QUEUES = (QUEUE_TRANSACTIONAL, QUEUE_BULK, QUEUE_DEFAULT)

# Actor names, as declared by mailer.worker.actors.
SEND_NOTICE = "send_notice"
SEND_ONE_BULK = "send_one_bulk"
SEND_BATCH = "send_batch"
FAN_OUT = "fan_out"
SWEEP = "sweep"
PROCESS_SHOP_WEBHOOK = "process_shop_webhook"
WRITE_BACK_CONSENT = "write_back_consent"
DECIDE_AB_TEST = "decide_ab_test"

#: The queue each actor consumes from (the worker's declarations must agree: a test checks).
ACTOR_QUEUES = {
    SEND_NOTICE: QUEUE_TRANSACTIONAL,
    SEND_ONE_BULK: QUEUE_BULK,
    SEND_BATCH: QUEUE_BULK,
    FAN_OUT: QUEUE_BULK,
    SWEEP: QUEUE_DEFAULT,
    PROCESS_SHOP_WEBHOOK: QUEUE_DEFAULT,
    WRITE_BACK_CONSENT: QUEUE_DEFAULT,
    DECIDE_AB_TEST: QUEUE_BULK,
}


def current_broker() -> dramatiq.Broker:
    """The broker this process set; never Dramatiq's implicit RabbitMQ default."""
    broker = dramatiq.broker.global_broker
    if broker is None:
        raise NoBroker("no broker configured in this process: call mailer.queue.broker.setup(settings)")
    return broker


def send(actor_name: str, *args, delay_ms: int | None = None) -> dramatiq.Message:
    """Send a message to ``actor_name``'s queue; raises when the broker refuses it."""
    queue = ACTOR_QUEUES[actor_name]
    message = dramatiq.Message(queue_name=queue, actor_name=actor_name, args=args, kwargs={}, options={})
    return current_broker().enqueue(message, delay=delay_ms)


def enqueue_stored(actor_name: str, *args, delay_ms: int | None = None, delivery_id: int | None = None) -> bool:
    """Send a message for work already committed; broker down: log, return False, the sweeper sends it."""
    try:
        send(actor_name, *args, delay_ms=delay_ms)
    except Exception as exc:
        log.error("%s%s stored but not enqueued (%s); the sweeper will enqueue it", actor_name,
                  f" for delivery {delivery_id}" if delivery_id is not None else "", exc,
                  extra={"delivery_id": delivery_id} if delivery_id is not None else {})
        return False
    return True


def enqueue_delivery(delivery_id: int, queue: str, *, delay_ms: int | None = None) -> bool:
    """A stored single delivery: a notice on the transactional queue, a bulk one on its own."""
    actor = SEND_NOTICE if queue == QUEUE_TRANSACTIONAL else SEND_ONE_BULK
    return enqueue_stored(actor, delivery_id, delay_ms=delay_ms, delivery_id=delivery_id)


def enqueue_batches(delivery_ids: list[int], batch_size: int, *, delay_ms: int | None = None) -> bool:
    """Stored bulk deliveries in ``send_batch`` messages of ``batch_size`` ids; broker down: False."""
    size = max(1, batch_size)
    try:
        for i in range(0, len(delivery_ids), size):
            send(SEND_BATCH, list(delivery_ids[i:i + size]), delay_ms=delay_ms)
    except Exception as exc:
        log.error("%d bulk deliveries stored but not enqueued (%s); the sweeper will enqueue them",
                  len(delivery_ids), exc)
        return False
    return True


def requeue_held(worker_id: str) -> int:
    """Put back in their queues the messages a dead worker process had taken and not
    acknowledged (its Dramatiq broker id ``worker_id``); returns how many.  The sweeper
    calls it for a worker whose heartbeat stopped (:mod:`mailer.delivery.heartbeats`).
    A broker that keeps no such record (the in-process stub) has nothing to put back."""
    requeue = getattr(current_broker(), "requeue_worker", None)
    return requeue(worker_id) if requeue is not None else 0
