"""Rate limits that hold across every worker thread, process and machine.

Two limits, both in messages per second and both off at 0:

* per SMTP relay: ``MAILER_RELAY_RATE`` (or ``?rate=N`` on one relay's URL);
* per recipient domain: ``MAILER_DOMAIN_RATE``.

They are Dramatiq's :class:`~dramatiq.rate_limits.BucketRateLimiter` (one-second
buckets) on the broker's Redis (:class:`~dramatiq.rate_limits.backends.RedisBackend`),
so every worker that shares the Redis shares the budget; with ``stub://`` (embedded,
unit tests) an in-memory backend stands in, which holds within the one process.

A sender that finds the bucket full sleeps until the next bucket begins (plus a little
jitter so waiting threads do not wake in lock-step) instead of spinning, for at most
``max_wait_s``; then it raises :class:`RateLimited`, a transient error, and the
delivery is retried later with backoff.  Tokens are taken before a delivery is claimed,
so waiting never eats into the lease.
"""

from __future__ import annotations

import logging
import random
import threading
import time

import redis
from dramatiq.rate_limits import BucketRateLimiter
from dramatiq.rate_limits.backends import RedisBackend, StubBackend

from mailer.errors import RateLimited, TransientDeliveryError
from mailer.settings import Settings

log = logging.getLogger("mailer.ratelimit")

#: Bucket length in milliseconds: limits are "messages per second".
BUCKET_MS = 1000
#: Longest a sender waits for a token before giving the delivery back for a later retry, seconds.
MAX_WAIT_S = 10.0
#: Random extra sleep after a bucket boundary, seconds (spreads the waiting threads).
JITTER_S = 0.05
#: Prefix of every rate-limit key in Redis.
KEY_PREFIX = "mailer:rate"


class Limiter:
    """Token buckets per key on a shared backend."""

    def __init__(self, backend, *, shared: bool):
        self.backend = backend
        #: True when the backend is Redis (limits hold across processes and machines).
        self.shared = shared
        self._limiters: dict[tuple[str, int, int], BucketRateLimiter] = {}
        self._lock = threading.Lock()

    def _limiter(self, key: str, rate: int, bucket_ms: int = BUCKET_MS) -> BucketRateLimiter:
        with self._lock:
            limiter = self._limiters.get((key, rate, bucket_ms))
            if limiter is None:
                limiter = self._limiters[(key, rate, bucket_ms)] = BucketRateLimiter(
                    self.backend, f"{KEY_PREFIX}:{key}", limit=rate, bucket=bucket_ms)
            return limiter

    def try_acquire(self, key: str, rate: int, *, bucket_ms: int = BUCKET_MS) -> bool:
        """Take one token for ``key`` if the current bucket (one second unless ``bucket_ms``) has one left."""
        if rate <= 0:
            return True
        try:
            with self._limiter(key, rate, bucket_ms).acquire(raise_on_failure=False) as acquired:
                return bool(acquired)
        except Exception as exc:
            raise TransientDeliveryError(f"rate limiter unavailable for {key}: {exc}") from exc

    def acquire(self, key: str, rate: int, *, max_wait_s: float = MAX_WAIT_S) -> float:
        """Take one token, sleeping bucket by bucket; return seconds waited or raise RateLimited."""
        if rate <= 0:
            return 0.0
        started = time.monotonic()
        while not self.try_acquire(key, rate):
            pause = seconds_to_next_bucket() + random.uniform(0, JITTER_S)  # retry jitter, no security use  # nosec B311
            if time.monotonic() - started + pause > max_wait_s:
                raise RateLimited(f"rate limit {rate}/s for {key} still reached after {max_wait_s:.0f} s; "
                                  "retrying later")
            time.sleep(pause)
        return time.monotonic() - started


def seconds_to_next_bucket(now: float | None = None) -> float:
    """How long until the current one-second bucket ends."""
    now_ms = int((time.time() if now is None else now) * 1000)
    return (BUCKET_MS - now_ms % BUCKET_MS) / 1000


def domain_key(address: str) -> str:
    """The per-domain key of a recipient (domain lower-cased)."""
    return "domain:" + address.rpartition("@")[2].lower()


def relay_key(relay_name: str) -> str:
    return "relay:" + relay_name


_limiters: dict[str, Limiter] = {}
_limiters_lock = threading.Lock()


def limiter_for(settings: Settings) -> Limiter:
    """The process-wide limiter for the configured broker (Redis, or in memory for stub://)."""
    url = settings.broker_url
    with _limiters_lock:
        limiter = _limiters.get(url)
        if limiter is None:
            if url.startswith("redis"):
                limiter = Limiter(RedisBackend(client=redis.Redis.from_url(url)), shared=True)
            else:
                limiter = Limiter(StubBackend(), shared=False)
            _limiters[url] = limiter
        return limiter


def reset() -> None:
    """Forget every limiter (tests; after fork)."""
    with _limiters_lock:
        _limiters.clear()
