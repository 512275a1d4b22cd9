"""Measuring a takeover: what a killed worker held, and how long until it was all back in work.

Used by tests/faults/test_fault_takeover.py and bench/takeover.py.  Right after a worker
named ``name`` (``MAILER_WORKER_NAME``) is killed, :func:`held_by` reads what it held:

* the Dramatiq messages it had taken and not acknowledged (Redis:
  ``dramatiq:__acks__.<its broker id>.<queue>``, its broker id from ``worker_heartbeats``)
  and the deliveries they name that were still waiting (``queued``);
* the deliveries it had leased (``sending``, ``lease_owner`` starting with its name).

:func:`wait_back_in_work` then waits until none of that is held any more: its taken
messages are back in their queues (the set is gone) and none of its leases is still its
own.  That moment minus the kill is the stall a takeover costs; how long the mails then
take to go out depends on the queue in front of them, not on the takeover.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis
import sqlalchemy as sa

from mailer import db
from mailer.models import Delivery, DeliveryStatus, WorkerHeartbeat

NAMESPACE = "dramatiq"


@dataclass
class Held:
    worker_id: str | None
    ack_keys: list[str]
    message_count: int
    queued_ids: set[int]
    leased_ids: set[int]


def _ack_keys(client, worker_id: str) -> list[str]:
    return sorted(k.decode() for k in client.scan_iter(f"{NAMESPACE}:__acks__.{worker_id}.*"))


def _stalest_broker(client, min_silence_ms: int = 1500) -> str | None:
    """Without heartbeat rows (``MAILER_HEARTBEAT_S=0``): the broker id whose Dramatiq
    heartbeat in Redis went silent last, among those silent a while (the killed worker: live
    workers poll Redis many times a second; the process that sent the campaign fell silent
    long before)."""
    silent = client.zrangebyscore(f"{NAMESPACE}:__heartbeats__", 0, time.time() * 1000 - min_silence_ms,
                                  withscores=True)
    return silent[-1][0].decode() if silent else None


def held_by(settings, redis_url: str, name: str) -> Held:
    """What worker ``name`` held in Redis and in the database at this moment."""
    with db.session_scope(settings) as s:
        worker_id = s.execute(sa.select(WorkerHeartbeat.worker_id).where(WorkerHeartbeat.name == name)
                              .order_by(WorkerHeartbeat.started_at.desc())).scalars().first()
        # The worker's leases: its name starts every lease_owner it writes.
        leased = set(s.execute(sa.select(Delivery.id).where(Delivery.status == DeliveryStatus.sending,
                                                            Delivery.lease_owner.like(f"{name}:%"))).scalars())
    client = redis.Redis.from_url(redis_url)
    try:
        if worker_id is None:
            worker_id = _stalest_broker(client)
        keys = _ack_keys(client, worker_id) if worker_id else []
        ids: set[int] = set()
        count = 0
        for key in keys:
            queue = key[len(f"{NAMESPACE}:__acks__.{worker_id}."):]  # "bulk", "bulk.DQ", ...
            for message_id in client.smembers(key):
                data = client.hget(f"{NAMESPACE}:{queue}.msgs", message_id)
                if data is None:
                    continue
                count += 1
                args = json.loads(data).get("args") or []
                for arg in args[:1]:
                    ids.update(arg if isinstance(arg, list) else [arg] if isinstance(arg, int) else [])
    finally:
        client.close()
    if ids:
        with db.session_scope(settings) as s:
            ids = set(s.execute(sa.select(Delivery.id).where(Delivery.id.in_(sorted(ids)),
                                                             Delivery.status == DeliveryStatus.queued)).scalars())
    return Held(worker_id, keys, count, ids, leased)


def still_held(settings, redis_url: str, name: str, held: Held) -> bool:
    """Does the dead worker still hold any of it (taken messages or its own leases)?"""
    client = redis.Redis.from_url(redis_url)
    try:
        if held.worker_id and any(client.exists(k) for k in held.ack_keys):
            return True
    finally:
        client.close()
    if not held.leased_ids:
        return False
    with db.session_scope(settings) as s:
        # The dead worker's leases among those it held at the kill (primary keys).
        return s.execute(sa.select(sa.func.count()).select_from(Delivery)
                         .where(Delivery.id.in_(sorted(held.leased_ids)), Delivery.status == DeliveryStatus.sending,
                                Delivery.lease_owner.like(f"{name}:%"))).scalar_one() > 0


def wait_back_in_work(settings, redis_url: str, name: str, held: Held, *, since: float,
                      timeout_s: float) -> float:
    """Seconds from ``since`` (the kill, ``time.monotonic()``) until nothing is held by ``name``."""
    deadline = since + timeout_s
    while time.monotonic() < deadline:
        if not still_held(settings, redis_url, name, held):
            return time.monotonic() - since
        time.sleep(0.1)
    raise AssertionError(f"worker {name}'s work was still held {timeout_s} s after its death")


def all_final(settings, ids: set[int]) -> bool:
    if not ids:
        return True
    with db.session_scope(settings) as s:
        # Primary-key lookups of the ids in question.
        return s.execute(sa.select(sa.func.count()).select_from(Delivery)
                         .where(Delivery.id.in_(sorted(ids)),
                                Delivery.status.in_([DeliveryStatus.queued, DeliveryStatus.sending]))).scalar_one() == 0
