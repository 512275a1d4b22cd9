"""Sending threads: ``MAILER_SMTP_CONNECTIONS`` concurrent SMTP connections per worker process.

A relay far away answers each message after tens of milliseconds; a worker thread that
waits for that answer does nothing else meanwhile, so with four threads and a 50 ms
relay a process sends at most 80 mails/s whatever its CPU.  :class:`Senders` keeps
``n`` threads, each of which holds its own connection to every relay it sends to (the
SMTP transport keeps one connection per thread and reopens it after an error), so up
to ``n`` messages per relay are on their way at once while the worker threads go on
claiming and composing.

Each job (send one message, record its result) runs start to finish on one sending
thread: a result is committed right after its own SMTP reply, and a sending thread has
at most one message between the relay's acceptance and that commit.

Work is admitted by *slots*: :meth:`Senders.reserve` hands out at most ``2 * n`` (one
message on the wire and one waiting per thread), so a worker thread claims only as many
deliveries as can start soon, and waits at most a given time when every slot is taken
(a slow or dead relay): the caller then hands its work on instead of holding a worker
thread, which must stay free for notices.  Notices never go through here: they are
sent by the worker thread that handles them, over that thread's own connection.

Notices first (:data:`notice_lane`, a :class:`NoticeFirst`): while a notice is being
sent in this process, campaign work waits at its next step (a sending thread before
its next job, a worker thread before composing its next mail), so the notice's thread
has the GIL and the process's share of a core to itself.  Not while it waits for its
relay (:meth:`NoticeFirst.relay_wait`, around every SMTP exchange): that is no CPU, and
a 50 ms relay would otherwise pause the campaign 50 ms per notice.  A notice keeps its
priority for at most :data:`NOTICE_PRIORITY_S` at a time, so a notice stuck on a slow
database does not stall the campaign.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger("mailer.transport.senders")

#: Jobs admitted per sending thread: one on the wire, one waiting.
SLOTS_PER_THREAD = 2
#: How long one notice in flight keeps campaign work waiting, seconds (bench/notice_latency.py).
NOTICE_PRIORITY_S = 0.25


class NoticeFirst:
    """Campaign work waits while a notice of this process is in flight (see the module docstring)."""

    def __init__(self, priority_s: float = NOTICE_PRIORITY_S, clock=time.monotonic):
        self.priority_s = priority_s
        self.clock = clock
        self._cond = threading.Condition()
        self._deadlines: dict[object, float] = {}
        self._mine = threading.local()

    @contextlib.contextmanager
    def notice(self):
        """Around sending one notice: campaign work waits until it ends (or its priority runs out)."""
        token = object()
        with self._cond:
            self._deadlines[token] = self.clock() + self.priority_s
        self._mine.token = token
        try:
            yield
        finally:
            self._mine.token = None
            with self._cond:
                self._deadlines.pop(token, None)
                self._cond.notify_all()

    @contextlib.contextmanager
    def relay_wait(self):
        """Around a notice's SMTP exchange: the relay's answer is waiting, not CPU, so campaign
        work goes on meanwhile (a 50 ms relay would otherwise pause it 50 ms per notice); the
        notice has priority again for recording its result.  A no-op on other threads."""
        token = getattr(self._mine, "token", None)
        if token is None:
            yield
            return
        with self._cond:
            self._deadlines.pop(token, None)
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._deadlines[token] = self.clock() + self.priority_s

    @property
    def active(self) -> int:
        """Notices in flight that still have priority."""
        now = self.clock()
        with self._cond:
            return sum(1 for d in self._deadlines.values() if d > now)

    def wait_turn(self) -> float:
        """Called by campaign work between steps: wait while a notice has priority; the seconds waited."""
        if not self._deadlines:  # the common case, without taking the lock
            return 0.0
        started = self.clock()
        with self._cond:
            while True:
                now = self.clock()
                live = [d for d in self._deadlines.values() if d > now]
                if not live:
                    return now - started
                self._cond.wait(max(live) - now)


#: The process's one notice lane (the ``send_notice`` actor enters it; campaign work yields to it).
notice_lane = NoticeFirst()


class Senders:
    """``n`` sending threads fed from one queue, admission by slots (see the module docstring)."""

    def __init__(self, n: int, *, name: str = "mailer-send"):
        if n < 1:
            raise ValueError("Senders needs at least one thread")
        self.n = n
        self.name = name
        self.capacity = n * SLOTS_PER_THREAD
        self._free = self.capacity
        self._cond = threading.Condition()
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._pid = os.getpid()
        self._closed = False

    # -- admission --------------------------------------------------------------------------
    def reserve(self, most: int, timeout_s: float) -> int:
        """Take up to ``most`` slots, waiting up to ``timeout_s`` for at least one; 0 if none came free."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._free <= 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return 0
                self._cond.wait(left)
            got = min(most, self._free)
            self._free -= got
            return got

    def release(self, count: int) -> None:
        """Give back slots that were reserved and not used."""
        if count <= 0:
            return
        with self._cond:
            self._free += count
            self._cond.notify_all()

    @property
    def busy(self) -> int:
        """Slots taken (jobs waiting or running, or reserved for jobs about to be submitted)."""
        with self._cond:
            return self.capacity - self._free

    # -- running ----------------------------------------------------------------------------
    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` on a sending thread; the caller reserved its slot, which frees when it ends."""
        self._start()
        self._jobs.put(job)

    def _start(self) -> None:
        if self._threads and self._pid == os.getpid():
            return
        with self._cond:
            if self._pid != os.getpid():  # forked: the parent's threads do not exist here
                self._threads, self._pid = [], os.getpid()
            if not self._threads:
                for i in range(self.n):
                    t = threading.Thread(target=self._run, name=f"{self.name}-{i}", daemon=True)
                    t.start()
                    self._threads.append(t)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                notice_lane.wait_turn()
                job()
            except BaseException:  # a job records its own outcome; this only keeps the thread alive
                log.exception("sending thread: job failed")
            finally:
                # The job holds its composed message (~40 KB): not kept while this thread idles.
                job = None
                self.release(1)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no slot is taken (tests, shutdown); True if that happened in time."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._free < self.capacity:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        """Stop the threads after the jobs already submitted."""
        threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)
        for t in threads:
            t.join(timeout=5)
