"""Rate limits per relay and per recipient domain, shared through Redis by every process."""

from __future__ import annotations

import collections
import multiprocessing
import time

import pytest

from mailer.transport import ratelimit
from mailer.transport.memory import MemoryTransport
from mailer.transport.pool import Relay, RelayPool, parse_relays, relay_rate
from mailer.transport.ratelimit import Limiter, RateLimited
from tests.conftest import make_settings


def _bucket() -> int:
    return int(time.time() * 1000) // ratelimit.BUCKET_MS


def _take(url: str, key: str, rate: int, n: int, out) -> None:
    """In a separate process: take n tokens, recording the bucket each one certainly fell in."""
    ratelimit.reset()
    limiter = ratelimit.limiter_for(make_settings(broker_url=url))
    got = []
    for _ in range(n):
        while True:
            before = _bucket()
            try:
                limiter.acquire(key, rate, max_wait_s=30)
            except RateLimited:
                continue
            after = _bucket()
            got.append((before, after))
            break
    out.put(got)


@pytest.mark.redis
def test_limit_holds_across_processes_sharing_redis(redis_url):
    # Given two worker processes sharing one Redis and a limit of 8 messages per second
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_take, args=(redis_url, "domain:example.org", 8, 16, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    tokens = [t for r in results for t in r]
    assert len(tokens) == 32
    # Then no one-second bucket handed out more than 8 tokens in total
    per_bucket = collections.Counter(before for before, after in tokens if before == after)
    assert per_bucket and max(per_bucket.values()) <= 8
    # And the 32 tokens were spread over at least four buckets (the limit did hold them back)
    assert len({b for t in tokens for b in t}) >= 4


def test_in_memory_limiter_for_the_stub_broker_refuses_past_the_limit():
    limiter = ratelimit.limiter_for(make_settings(broker_url="stub://"))
    assert not limiter.shared
    # Three quick tries at 1/s span at most two buckets: at least one is refused
    refused = 0
    for _ in range(3):
        try:
            limiter.acquire("relay:test-once", 1, max_wait_s=0)
        except RateLimited:
            refused += 1
    assert refused >= 1
    # 0 means unlimited
    assert all(limiter.try_acquire("relay:unlimited", 0) for _ in range(100))


def test_waiting_sleeps_until_the_next_bucket_instead_of_spinning():
    limiter = Limiter(ratelimit.StubBackend(), shared=False)
    calls = 0
    real = limiter.try_acquire

    def counting(key, rate):
        nonlocal calls
        calls += 1
        return real(key, rate)

    limiter.try_acquire = counting  # type: ignore[method-assign]
    for _ in range(3):
        limiter.acquire("domain:slow.example", 1, max_wait_s=5)
    # Three tokens at 1/s: each refusal is followed by a sleep to the next bucket, so only a
    # handful of attempts are made (a spinning loop would make thousands)
    assert 3 <= calls <= 8


def test_relay_rates_come_from_the_url_or_the_setting():
    assert relay_rate("smtp://relay.example:587?rate=25&starttls=1", 5) == 25
    assert relay_rate("smtp://relay.example:587", 5) == 5
    assert parse_relays("smtp://a:25#3", "smtp://b:25#1, smtp://c:25") == [
        ("smtp://a:25", 3), ("smtp://b:25", 1), ("smtp://c:25", 1)]
    pool = RelayPool.from_settings(make_settings(smtp_url="memory://a?rate=2", smtp_relays="memory://b#1",
                                                 relay_rate=7))
    assert [(r.name, r.weight, r.rate) for r in pool.relays] == [("memory://a", 1, 2), ("memory://b", 1, 7)]


def test_pool_moves_to_another_relay_when_the_chosen_one_is_at_its_limit():
    # Given a preferred relay limited to 2 per second and a backup without limit
    limiter = Limiter(ratelimit.StubBackend(), shared=False)
    a = Relay(MemoryTransport("memory://ra"), weight=1000, rate=2)
    b = Relay(MemoryTransport("memory://rb"), weight=1, rate=0)
    pool = RelayPool([a, b], limiter)
    # When 20 messages are routed within the same second
    while True:
        start = _bucket()
        chosen = [pool.choose(max_wait_s=0).name for _ in range(20)]
        if _bucket() == start:
            break
    # Then the preferred relay took at most its 2, and the rest went to the backup
    assert chosen.count("memory://ra") <= 2 and chosen.count("memory://rb") >= 18


def test_weights_split_the_traffic():
    pool = RelayPool([Relay(MemoryTransport("memory://w3"), 3), Relay(MemoryTransport("memory://w1"), 1)])
    names = collections.Counter(pool.choose().name for _ in range(4000))
    ratio = names["memory://w3"] / names["memory://w1"]
    assert 2.5 < ratio < 3.6
