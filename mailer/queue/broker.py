"""The Dramatiq broker: Redis in production, the in-process stub for the demo and unit tests.

``MAILER_BROKER_URL=redis://host:port/db`` gives a :class:`RedisBroker`;
``stub://`` gives a :class:`StubBroker` that an in-process :class:`dramatiq.Worker` drains.
Queues: ``transactional`` (notices; never waits behind a newsletter) and ``bulk``
(campaign batches), plus ``default`` for housekeeping.
"""

from __future__ import annotations

import logging
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import BrokerConnectionError
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


#: Moves a dead worker's taken-but-unacknowledged messages back to their queues, as Dramatiq's
#: own maintenance does, but for one worker named by the caller (who judged it dead on the
#: database's clock) and at once.  KEYS[1]: namespace; ARGV[1]: the dead worker's broker id;
#: ARGV[2..]: queue names (delay queues included).  Atomic: a second run moves nothing.
_REQUEUE_WORKER_LUA = """
local ns = KEYS[1]
local dead = ARGV[1]
local moved = 0
for i = 2, #ARGV do
    local queue = ns .. ":" .. ARGV[i]
    local acks = ns .. ":__acks__." .. dead .. "." .. ARGV[i]
    local ids = redis.call("smembers", acks)
    for _, id in ipairs(ids) do
        if redis.call("hexists", queue .. ".msgs", id) > 0 then
            redis.call("rpush", queue, id)
            moved = moved + 1
        end
    end
    redis.call("del", acks)
end
redis.call("zrem", ns .. ":__heartbeats__", dead)
return moved
"""


class MailerRedisBroker(RedisBroker):
    """Dramatiq's Redis broker, polling the ``transactional`` queue at least every NOTICE_POLL_MS,
    and able to put a dead worker's taken messages back (:meth:`requeue_worker`)."""

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000):
        if queue_name == QUEUE_TRANSACTIONAL:
            timeout = min(timeout, NOTICE_POLL_MS)
        return super().consume(queue_name, prefetch, timeout)

    def requeue_worker(self, worker_id: str) -> int:
        """Put the messages worker ``worker_id`` (a broker id) took and never acknowledged back
        in their queues, delayed ones in their delay queues; returns how many moved."""
        queues = sorted(self.get_declared_queues() | self.get_declared_delay_queues())
        script = getattr(self, "_requeue_worker_script", None)
        if script is None:
            script = self._requeue_worker_script = self.client.register_script(_REQUEUE_WORKER_LUA)
        return int(script(keys=[self.namespace], args=[worker_id, *queues]))


#: Seconds between redis-py's checks that an idle broker connection still answers.
HEALTH_CHECK_S = 30
#: Dramatiq's consumer threads log here when Redis cannot be reached (each retry, every 3 s).
CONSUMER_LOGGER = "dramatiq.worker._ConsumerThread"
#: The name Dramatiq 2.x gives a consumer thread's logger (``get_logger(__name__, "ConsumerThread(%s)")``).
CONSUMER_LOGGER_FORMAT = "dramatiq.worker.ConsumerThread(%s)"
#: Errors this far apart (seconds) belong to two outages; closer, to one (logged once).
OUTAGE_GAP_S = 60.0
#: Errors a broker outage raises in Dramatiq's consumer: Redis' own, Dramatiq's wrapper, and the
#: ``IndexError: pop from empty list`` of its message cache seen during a partition.
OUTAGE_ERRORS = (redis.RedisError, BrokerConnectionError, IndexError, OSError)


class OutageLogFilter(logging.Filter):
    """Logs a Redis outage once, as one line without a traceback, instead of a critical
    traceback and a "Restarting consumer" line from every consumer thread every 3 s.

    Dramatiq's consumer already retries by itself; this changes only what is logged.
    An error that is not about reaching the broker passes unchanged.
    """

    def __init__(self, clock=time.monotonic):
        super().__init__()
        self._clock = clock
        self._last_s: float | None = None

    def _outage(self, record: logging.LogRecord) -> BaseException | None:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
        elif record.args and isinstance(record.args, tuple) and isinstance(record.args[0], BaseException):
            exc = record.args[0]
        else:
            return None
        return exc if isinstance(exc, OUTAGE_ERRORS) else None

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        in_outage = self._last_s is not None and now - self._last_s < OUTAGE_GAP_S
        if record.getMessage().startswith("Restarting consumer"):
            return not in_outage
        exc = self._outage(record)
        if exc is None:
            return True
        self._last_s = now
        if in_outage:
            return False
        record.msg = ("broker unreachable (%s: %s); Dramatiq's consumers retry every few seconds, and "
                      "this is logged once per outage")
        record.args = (type(exc).__name__, exc)
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.ERROR, "ERROR"
        return True


_outage_filter = OutageLogFilter()


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
        # Keepalives: a Redis peer behind a cut link is noticed by the OS, not after hours.
        redis_options.setdefault("socket_keepalive", True)
        redis_options.setdefault("health_check_interval", HEALTH_CHECK_S)
        broker = MailerRedisBroker(url=url, middleware=middleware(settings, prometheus=prometheus), **redis_options)
    for queue in QUEUES:
        broker.declare_queue(queue)
    if not url.startswith("stub"):
        for name in consumer_logger_names(broker):
            consumer_log = logging.getLogger(name)
            if _outage_filter not in consumer_log.filters:
                consumer_log.addFilter(_outage_filter)
    return broker


def consumer_logger_names(broker: dramatiq.Broker) -> list[str]:
    """The loggers Dramatiq's consumer threads log to: one per queue and delay queue
    (``dramatiq.worker.ConsumerThread(<queue>)``). A filter on a parent logger would not see
    their records (logging applies a logger's filters only to its own calls), so the outage
    filter goes on each of them."""
    queues = set(broker.get_declared_queues()) | set(broker.get_declared_delay_queues())
    return [CONSUMER_LOGGER] + [CONSUMER_LOGGER_FORMAT % q for q in sorted(queues)]


def setup(settings: Settings, *, prometheus: bool = False, **redis_options) -> dramatiq.Broker:
    """Build the broker and make it Dramatiq's global broker, which :mod:`mailer.queue.port` sends through.

    A process that also consumes (a worker, the demo, a test) then declares the actors on
    it with :func:`mailer.worker.actors.bind`.
    """
    broker = build_broker(settings, prometheus=prometheus, **redis_options)
    dramatiq.set_broker(broker)
    return broker
