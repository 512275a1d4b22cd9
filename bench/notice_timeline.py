"""Bench-only worker boot: where a notice's time goes inside the worker (bench/notice_latency.py --timeline).

``dramatiq notice_timeline`` (with ``bench/`` on ``PYTHONPATH``) boots the worker exactly as
``mailer.worker.boot`` does, then wraps a few functions of this process, without changing
what they do, to timestamp every notice's steps (``time.time()``, the clock the sink and
the benchmark use) and write one JSON line per notice to ``$MAILER_BENCH_TIMELINE-<pid>.jsonl``:

* ``fetch``: a Dramatiq consumer took the message off Redis and put it on its work queue
  (which consumer: the process's own worker or the notice lane; how many items its work
  queue already held; how many campaign messages were being worked on then);
* ``start``: a worker thread began the ``send_notice`` actor (which thread);
* ``claimed``: the delivery's claim (conditional UPDATE) returned;
* ``compose0`` / ``compose1``: around composing the mail (with the thread's own CPU time,
  so wall time the thread did not run shows: the GIL or the core was elsewhere);
* ``smtp0`` / ``smtp1``: around the SMTP exchange (the sink's acceptance lies between);
* ``end``: the actor returned (the result recorded), with the thread CPU of the whole notice.

Nothing here is imported by mailer; it exists to profile, not to ship.
"""

from __future__ import annotations

import json
import os
import threading
import time

import dramatiq.worker as dramatiq_worker
from dramatiq.middleware import CurrentMessage

from mailer.app import get_app
from mailer.delivery import process as delivery_process
from mailer.queue.port import QUEUE_TRANSACTIONAL
from mailer.worker import (
    actors,
    boot,  # the whole worker set-up, as `dramatiq mailer.worker.boot`
)
from mailer.worker.middleware import NoticeLaneMiddleware

OUT = os.environ["MAILER_BENCH_TIMELINE"]
_write_lock = threading.Lock()
_local = threading.local()
_fetched: dict[str, dict] = {}
_batches_running = [0]
_out_file = [None]


def _lane_queue():
    for mw in boot.broker.middleware:
        if isinstance(mw, NoticeLaneMiddleware) and mw.lane is not None:
            return mw.lane.work_queue
    return None


def _write(rec: dict) -> None:
    with _write_lock:
        if _out_file[0] is None:
            # open for the process's life (one line per notice, line-buffered): no `with`
            _out_file[0] = open(f"{OUT}-{os.getpid()}.jsonl", "a", buffering=1)  # noqa: SIM115
        _out_file[0].write(json.dumps(rec) + "\n")


_orig_handle = dramatiq_worker._ConsumerThread.handle_message


def _handle_message(self, message):
    if message.queue_name == QUEUE_TRANSACTIONAL:
        lane_q = _lane_queue()
        _fetched[message.message_id] = {
            "fetch": time.time(), "queued_ahead": self.work_queue.qsize(),
            "consumer": "lane" if lane_q is not None and self.work_queue is lane_q else "main",
            "batches_running": _batches_running[0]}
    return _orig_handle(self, message)


dramatiq_worker._ConsumerThread.handle_message = _handle_message

_orig_notice = actors.send_notice.fn
_orig_batch = actors.send_batch.fn


def _send_notice(delivery_id: int) -> None:
    msg = CurrentMessage.get_current_message()
    lane_q = _lane_queue()
    rec = {"delivery_id": delivery_id, "enqueued": msg.message_timestamp / 1000.0 if msg else None,
           **_fetched.pop(msg.message_id if msg else "", {}), "start": time.time(),
           "thread": threading.current_thread().name, "lane_thread": False}
    if lane_q is not None:
        rec["lane_thread"] = getattr(threading.current_thread(), "work_queue", None) is lane_q
    cpu0 = time.thread_time()
    _local.rec = rec
    try:
        _orig_notice(delivery_id)
    finally:
        _local.rec = None
        rec["end"] = time.time()
        rec["cpu"] = time.thread_time() - cpu0
        _write(rec)


def _send_batch(delivery_ids):
    _batches_running[0] += 1
    try:
        return _orig_batch(delivery_ids)
    finally:
        _batches_running[0] -= 1


actors.send_notice.fn = _send_notice
actors.send_batch.fn = _send_batch

_orig_claim = delivery_process.claim
_orig_compose = delivery_process.compose


def _claim(app, delivery_id, owner):
    out = _orig_claim(app, delivery_id, owner)
    rec = getattr(_local, "rec", None)
    if rec is not None:
        rec["claimed"] = time.time()
    return out


def _compose(*args, **kwargs):
    rec = getattr(_local, "rec", None)
    if rec is None:
        return _orig_compose(*args, **kwargs)
    rec["compose0"], c0 = time.time(), time.thread_time()
    try:
        return _orig_compose(*args, **kwargs)
    finally:
        rec["compose1"], rec["compose_cpu"] = time.time(), time.thread_time() - c0


delivery_process.claim = _claim
delivery_process.compose = _compose

_transport = get_app().transport
_orig_send = _transport.send


def _send(*args, **kwargs):
    rec = getattr(_local, "rec", None)
    if rec is None:
        return _orig_send(*args, **kwargs)
    rec["smtp0"] = time.time()
    try:
        return _orig_send(*args, **kwargs)
    finally:
        rec["smtp1"] = time.time()


_transport.send = _send
