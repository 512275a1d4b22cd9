"""Dramatiq actors: thin, take ids, safe to run twice; services do the work.

* ``send_notice(delivery_id)``       transactional queue, one delivery.
* ``send_batch(delivery_ids)``       bulk queue, a few hundred campaign deliveries.
* ``send_one_bulk(delivery_id)``     bulk queue, one delivery (retries out of a batch).
* ``sweep()``                        default queue: re-enqueue deliveries whose message was
                                     lost (broker restart, crash) and wake due scheduled ones.
* ``fan_out(campaign_id)``           bulk queue, a campaign's segment into deliveries.
* ``process_shop_webhook(id)``       default queue: one stored Shopify / WooCommerce delivery.
* ``write_back_consent(id)``         default queue: one consent change sent back to its shop.
* ``decide_ab_test(campaign_id)``    bulk queue, delayed until an A/B test's wait is over:
                                     pick the winner and fan the rest out with it.

Services never import this module: they send by actor name through
:mod:`mailer.queue.port` (whose ``ACTOR_QUEUES`` must name the same queues; a test
checks).  Only the worker side imports it; :func:`bind` declares every actor on the
broker a consuming process set up (the worker's boot, the demo, tests).
"""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.brokers.stub import StubBroker

from mailer.app import get_app
from mailer.automations.hooks import prediction_refit_hook, release_codes_hook
from mailer.campaigns import abtest, fanout
from mailer.campaigns.fanout import sweep_hook as campaigns_sweep_hook
from mailer.connectors import inbox as connector_inbox
from mailer.connectors import writeback as connector_writeback
from mailer.delivery import process as delivery_service
from mailer.delivery import sweeper
from mailer.queue import broker as queue_broker
from mailer.queue import port
from mailer.queue.port import QUEUE_BULK, QUEUE_DEFAULT, QUEUE_TRANSACTIONAL
from mailer.transport.senders import notice_lane

log = logging.getLogger("mailer.actors")

#: Order of work inside one worker process (Dramatiq: lower runs first).  A notice that
#: arrives while campaign batches wait in the worker's prefetch buffer goes before them.
PRIORITY_NOTICE = 0
PRIORITY_BULK = 100
#: A ``send_batch`` message works at most this long (seconds) and then hands its remaining
#: ids on as a new message, so some worker thread is free for a notice within about
#: this time / threads.  bench/notice_latency.py, 4 threads, during a campaign: notices
#: waited 35 s behind whole 200-id batches; with slices of 0.2 / 0.1 / 0.05 s the median
#: notice was accepted after 101 / 50 / 31 ms, at no measurable cost in mails per CPU-second.
BATCH_SLICE_S = 0.05

if dramatiq.broker.global_broker is None:  # imported without a configured broker (docs, tooling)
    dramatiq.set_broker(StubBroker())


def _retry_when(retries: int, exc: BaseException) -> bool:
    # Give up is decided by the delivery itself (retry_max_age_s); this only filters
    # which errors are worth another attempt.
    return delivery_service.is_retryable(exc)


_RETRY = dict(retry_when=_retry_when)


@dramatiq.actor(queue_name=QUEUE_TRANSACTIONAL, priority=PRIORITY_NOTICE, **_RETRY)
def send_notice(delivery_id: int) -> None:
    """One notice; campaign work of this process waits while it is sent (``notice_lane``)."""
    with notice_lane.notice():
        delivery_service.process(get_app(), delivery_id)


@dramatiq.actor(queue_name=QUEUE_BULK, priority=PRIORITY_BULK, **_RETRY)
def send_one_bulk(delivery_id: int) -> None:
    delivery_service.process(get_app(), delivery_id)


@dramatiq.actor(queue_name=QUEUE_BULK, priority=PRIORITY_BULK, **_RETRY)
def send_batch(delivery_ids: list[int]) -> None:
    """Send the deliveries slice by slice (:func:`mailer.delivery.process.send_slices`);
    one that must be retried goes on as its own message.

    After :data:`BATCH_SLICE_S` the ids not yet handled go on as a new message (enqueued
    before this one is acknowledged: a crash in between runs some ids twice, and the
    delivery lease makes that send once); so do they, a little later, when every
    sending thread is busy for a whole slice (a slow relay), so the worker thread is
    free for notices.
    """
    app = get_app()
    rest, delay_ms = delivery_service.send_slices(app, list(delivery_ids), owner=delivery_service.worker_id(),
                                                  slice_s=BATCH_SLICE_S)
    if rest:
        port.send(port.SEND_BATCH, rest, delay_ms=delay_ms or None)


@dramatiq.actor(queue_name=QUEUE_BULK, priority=PRIORITY_BULK, max_retries=20, min_backoff=1000,
                max_backoff=60_000)
def fan_out(campaign_id: int) -> None:
    """Fan out up to ``fanout.BATCHES_PER_MESSAGE`` batches, then continue in a new message."""
    if fanout.fan_out_step(get_app(), campaign_id):
        port.send(port.FAN_OUT, campaign_id)


@dramatiq.actor(queue_name=QUEUE_DEFAULT, max_retries=20, min_backoff=1000, max_backoff=300_000)
def process_shop_webhook(webhook_row_id: int) -> None:
    """Apply one stored shop delivery (claimed under a lease: running twice applies it once)."""
    connector_inbox.process(get_app(), webhook_row_id)


@dramatiq.actor(queue_name=QUEUE_DEFAULT, max_retries=0)
def write_back_consent(outbox_row_id: int) -> None:
    """Send one consent write-back; its own backoff lives in the row (the sweeper re-sends it when due)."""
    connector_writeback.send(get_app(), outbox_row_id)


@dramatiq.actor(queue_name=QUEUE_BULK, priority=PRIORITY_BULK, max_retries=20, min_backoff=1000,
                max_backoff=60_000)
def decide_ab_test(campaign_id: int) -> None:
    """Decide an A/B test whose wait is over (a no-op when early, decided or not running)."""
    abtest.decide(get_app(), campaign_id)


#: The extra sweeps every worker runs after the deliveries' (see mailer.delivery.sweeper.SweepHook).
SWEEP_HOOKS: tuple[sweeper.SweepHook, ...] = (campaigns_sweep_hook, abtest.sweep_hook, release_codes_hook,
                                              prediction_refit_hook, connector_inbox.sweep_hook,
                                              connector_writeback.sweep_hook)


@dramatiq.actor(queue_name=QUEUE_DEFAULT, max_retries=0)
def sweep() -> None:
    sweeper.sweep(get_app(), SWEEP_HOOKS)


ACTORS = (send_notice, send_one_bulk, send_batch, fan_out, sweep, process_shop_webhook, write_back_consent,
          decide_ab_test)


def bind(broker: dramatiq.Broker) -> None:
    """Declare every actor (and its queue) on ``broker``."""
    for actor in ACTORS:
        actor.broker = broker
        broker.declare_actor(actor)


def setup(settings, **broker_options) -> dramatiq.Broker:
    """For a process that consumes in-process (the demo, tests): set up the broker and declare the actors on it."""
    broker = queue_broker.setup(settings, **broker_options)
    bind(broker)
    return broker
