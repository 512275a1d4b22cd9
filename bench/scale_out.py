"""Benchmark: two worker processes against one, and the distributed rate limit across them.

Run: python bench/scale_out.py [--quick] [--recipients 10000] [--db sqlite|postgresql] [--threads 4]
                                [--rate 100]

Three campaigns on the stage of ``bench/campaign_throughput.py`` (Redis db 8, DKIM
RSA-2048, the seasonal-sale newsletter, the lean sink), each in a fresh database:

1. one ``dramatiq mailer.worker.boot --processes 1`` worker;
2. ``--processes 2`` (two worker processes, same machine);
3. ``--processes 2`` again with ``MAILER_RELAY_RATE=--rate``: the Redis-backed limiter is
   shared by both processes, so per calendar second (the limiter's buckets) the sink may
   see ``--rate`` mails plus at most the mails still in flight when the second began (one
   per worker thread); over any run of seconds never more (see :func:`max_excess`).

Nothing is pinned here: the processes, the sink, Redis and the database share the
machine's cores as the scheduler likes.  Besides the rate ratio the script prints the
CPU every party used per mail, so "the machine is the limit" can be read off directly:
two processes cannot beat one by more than (cores available) / (CPU per mail of all parties).
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from campaign_throughput import run_campaign  # noqa: E402
from common import dkim_keys, loadavg, print_machine  # noqa: E402
from sink import SinkProcess  # noqa: E402


def max_excess(counts: list[int], rate: int) -> int:
    """The most mails above ``rate`` per second over any run of consecutive calendar seconds.

    The limiter counts tokens in calendar-second buckets (Redis keys per epoch second); a
    mail is accepted by the sink a little after its token was taken, so a second may show
    the few mails whose token came from the second before.  Each worker thread carries at
    most one such mail, so with the limit holding the excess never passes the thread count.
    """
    best = current = 0
    for c in counts:
        current = max(0, current) + (c - rate)
        best = max(best, current)
    return best


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    tck = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tck, total / tck


def one(kind: str, n: int, tmp: Path, keys, *, processes: int, threads: int, log_level: str,
        rate: int = 0) -> dict:
    with SinkProcess() as sink:
        busy0, total0 = machine_cpu_s()
        r = run_campaign(kind, n, tmp, threads=threads, keys=keys, ed25519=False, pin=False, log_level=log_level,
                         processes=processes, sink=sink, quiet=True,
                         settings_overrides={"relay_rate": rate} if rate else None)
        busy1, total1 = machine_cpu_s()
        times = sink.times()
    per_second = collections.Counter(math.floor(t) for t in times.values())
    r["max_per_second"] = max(per_second.values()) if per_second else 0
    if per_second:
        first, last = min(per_second), max(per_second)
        r["per_second"] = [per_second.get(k, 0) for k in range(first, last + 1)]
    r["machine_busy_share"] = (busy1 - busy0) / max(1e-9, total1 - total0)
    r["machine_cpu_ms_per_msg"] = (busy1 - busy0) / n * 1000
    return r


def show(label: str, r: dict) -> None:
    ok = r["counts"].get("sent", 0) == r["n"] and r["unique_ids"] == r["n"]
    worker_cores = r["worker_cpu_s"] / r["elapsed_s"]
    print(f"   {label:34s} {r['rate']:6.0f} msg/s ({r['elapsed_s']:.1f} s); worker CPU {r['worker_cpu_ms_per_msg']:.2f} "
          f"ms/msg, the worker processes used {worker_cores:.2f} cores; whole machine "
          f"{r['machine_cpu_ms_per_msg']:.2f} ms CPU/msg, busy {r['machine_busy_share'] * 100:.0f}%"
          f"; max {r['max_per_second']} mails in one second; {'all sent once' if ok else 'MISMATCH ' + str(r['counts'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3,000 recipients per run")
    ap.add_argument("--recipients", type=int, default=None)
    ap.add_argument("--db", default="sqlite", choices=["sqlite", "postgresql"])
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--rate", type=int, default=100, help="MAILER_RELAY_RATE for the third run, mails/s")
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--rate-only", action="store_true", help="only the rate-limited run")
    args = ap.parse_args()
    n = args.recipients or (3000 if args.quick else 10_000)
    print_machine(f"scale-out: {n} recipients, 1 vs 2 worker processes x {args.threads} threads ({args.db})")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp_s:
        tmp = Path(tmp_s)
        keys = dkim_keys(tmp)
        if not args.rate_only:
            r1 = one(args.db, n, tmp / "one", keys, processes=1, threads=args.threads, log_level=args.log_level)
            show("1 process", r1)
            time.sleep(2)
            r2 = one(args.db, n, tmp / "two", keys, processes=2, threads=args.threads, log_level=args.log_level)
            show("2 processes", r2)
        r3 = one(args.db, n, tmp / "limited", keys, processes=2, threads=args.threads, log_level=args.log_level,
                 rate=args.rate)
        show(f"2 processes, MAILER_RELAY_RATE={args.rate}", r3)
    print(f"   mails per calendar second with the limit: {' '.join(map(str, r3.get('per_second', [])))}")
    in_flight = 2 * args.threads  # one mail between token and acceptance per worker thread
    excess = max_excess(r3.get("per_second", []), args.rate)
    print(f"   rate limit {args.rate}/s across 2 processes: {r3['rate']:.0f} msg/s on average; max "
          f"{r3['max_per_second']} in one calendar second; over any run of consecutive seconds at most {excess} "
          f"mails above {args.rate}/s (allowed: the {in_flight} mails in flight, one per worker thread): "
          f"{'holds' if excess <= in_flight and r3['rate'] <= args.rate else 'EXCEEDED'}")
    if args.rate_only:
        return
    ratio = r2["rate"] / r1["rate"]
    cores = os.cpu_count() or 1
    # What two processes could reach if CPU were the only limit: all cores over the machine CPU per mail.
    cpu_bound = cores / (r2["machine_cpu_ms_per_msg"] / 1000)
    print(f"   2 processes / 1 process: {ratio:.2f}x (target >= 1.7x); one process alone kept "
          f"{r1['machine_busy_share'] * 100:.0f}% of the machine busy; {cores} cores at "
          f"{r2['machine_cpu_ms_per_msg']:.2f} ms of machine CPU per mail (workers, sink, Redis, database and "
          f"whatever else runs) cap any number of processes near {cpu_bound:.0f} msg/s = "
          f"{cpu_bound / r1['rate']:.2f}x one process; the sink used {r2['sink_cpu_ms_per_msg']:.2f} ms per mail "
          f"(it could take {1000 / max(0.01, r2['sink_cpu_ms_per_msg']):.0f} msg/s on its own core)")
    print(f"   load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
