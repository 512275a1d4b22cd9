"""The Dramatiq broker: Redis in production, the in-process stub for the demo and unit tests.

``MAILER_BROKER_URL=redis://host:port/db`` gives a :class:`RedisBroker`;
``stub://`` gives a :class:`StubBroker` that an in-process :class:`dramatiq.Worker` drains.
Queues: ``transactional`` (notices; never waits behind a newsletter) and ``bulk``
(campaign batches), plus ``default`` for housekeeping.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from mailer.metrics import make_middleware
from mailer.queue.port import QUEUE_BULK, QUEUE_DEFAULT, QUEUE_TRANSACTIONAL, QUEUES
from mailer.settings import Settings

__all__ = ["QUEUES", "QUEUE_BULK", "QUEUE_DEFAULT", "QUEUE_TRANSACTIONAL", "MailerRedisBroker", "build_broker",
           "middleware", "setup"]

#: A single actor run may take at most this long (milliseconds) before TimeLimit interrupts it.
TIME_LIMIT_MS = 10 * 60_000
#: Longest an idle ``transactional`` consumer sleeps between polls of Redis, milliseconds.
#: Dramatiq's Redis consumer polls (no blocking pop) with a backoff growing to the worker
#: timeout (1 s by default), so an order notice arriving after a quiet second waited up to
#: 1 s before a worker even saw it.  Only this queue polls faster (about 2 % of a core per
#: idle worker process; bench/notice_latency.py); bulk and default keep Dramatiq's backoff.
NOTICE_POLL_MS = 20


class MailerRedisBroker(RedisBroker):
    """Dramatiq's Redis broker, polling the ``transactional`` queue at least every NOTICE_POLL_MS."""

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000):
        if queue_name == QUEUE_TRANSACTIONAL:
            timeout = min(timeout, NOTICE_POLL_MS)
        return super().consume(queue_name, prefetch, timeout)


def middleware(settings: Settings, *, prometheus: bool = False) -> list:
    mw = [
        AgeLimit(),
        TimeLimit(time_limit=TIME_LIMIT_MS),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(max_retries=10_000, min_backoff=settings.retry_min_backoff_ms,
                max_backoff=settings.retry_max_backoff_ms),
        CurrentMessage(),
    ]
    if prometheus:
        mw.append(make_middleware())  # Dramatiq's Prometheus middleware, served on MAILER_METRICS_PORT
    return mw


def build_broker(settings: Settings, *, prometheus: bool = False, **redis_options) -> dramatiq.Broker:
    """A broker for ``settings.broker_url`` with mailer's middleware."""
    url = settings.broker_url
    if url.startswith("stub"):
        broker: dramatiq.Broker = StubBroker(middleware=middleware(settings))
    else:
        # heartbeat/maintenance: how soon a killed worker's unacknowledged messages are requeued.
        redis_options.setdefault("heartbeat_timeout", settings.broker_heartbeat_ms)
        redis_options.setdefault("maintenance_chance", settings.broker_maintenance_chance)
        broker = MailerRedisBroker(url=url, middleware=middleware(settings, prometheus=prometheus), **redis_options)
    for queue in QUEUES:
        broker.declare_queue(queue)
    return broker


def setup(settings: Settings, *, prometheus: bool = False, **redis_options) -> dramatiq.Broker:
    """Build the broker and make it Dramatiq's global broker, which :mod:`mailer.queue.port` sends through.

    A process that also consumes (a worker, the demo, a test) then declares the actors on
    it with :func:`mailer.worker.actors.bind`.
    """
    broker = build_broker(settings, prometheus=prometheus, **redis_options)
    dramatiq.set_broker(broker)
    return broker
