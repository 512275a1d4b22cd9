"""Benchmark: two worker processes against one, and the distributed rate limit across them.

Run: python bench/scale_out.py [--quick] [--recipients 10000] [--db sqlite|postgresql] [--threads 4]
                                [--rate 100]

Three campaigns on the stage of ``bench/campaign_throughput.py`` (Redis db 8, DKIM
RSA-2048, the seasonal-sale newsletter, the lean sink), each in a fresh database:

1. one ``dramatiq mailer.boot --processes 1`` worker;
2. ``--processes 2`` (two worker processes, same machine);
3. ``--processes 2`` again with ``MAILER_RELAY_RATE=--rate``: the Redis-backed limiter is
   shared by both processes, so the sink must never see more than ``--rate`` mails in
   any one-second bucket (counted from its per-mail acceptance times).

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
    # The first and last seconds are partial; the limit must hold in every one of them anyway.
    r["max_per_second"] = max(per_second.values()) if per_second else 0
    r["seconds"] = len(per_second)
    r["machine_busy_share"] = (busy1 - busy0) / max(1e-9, total1 - total0)
    r["machine_cpu_ms_per_msg"] = (busy1 - busy0) / n * 1000
    return r


def show(label: str, r: dict) -> None:
    ok = r["counts"].get("sent", 0) == r["n"] and r["unique_ids"] == r["n"]
    print(f"   {label:34s} {r['rate']:6.0f} msg/s ({r['elapsed_s']:.1f} s); worker CPU {r['worker_cpu_ms_per_msg']:.2f} "
          f"ms/msg; whole machine {r['machine_cpu_ms_per_msg']:.2f} ms CPU/msg, busy {r['machine_busy_share'] * 100:.0f}%"
          f"; max {r['max_per_second']} mails in one second; {'all sent once' if ok else 'MISMATCH ' + str(r['counts'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3,000 recipients per run")
    ap.add_argument("--recipients", type=int, default=None)
    ap.add_argument("--db", default="sqlite", choices=["sqlite", "postgresql"])
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--rate", type=int, default=100, help="MAILER_RELAY_RATE for the third run, mails/s")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args()
    n = args.recipients or (3000 if args.quick else 10_000)
    print_machine(f"scale-out: {n} recipients, 1 vs 2 worker processes x {args.threads} threads ({args.db})")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp_s:
        tmp = Path(tmp_s)
        keys = dkim_keys(tmp)
        r1 = one(args.db, n, tmp / "one", keys, processes=1, threads=args.threads, log_level=args.log_level)
        show("1 process", r1)
        time.sleep(2)
        r2 = one(args.db, n, tmp / "two", keys, processes=2, threads=args.threads, log_level=args.log_level)
        show("2 processes", r2)
        r3 = one(args.db, n, tmp / "limited", keys, processes=2, threads=args.threads, log_level=args.log_level,
                 rate=args.rate)
        show(f"2 processes, MAILER_RELAY_RATE={args.rate}", r3)
    ratio = r2["rate"] / r1["rate"]
    cores = os.cpu_count() or 1
    # What two processes could reach if CPU were the only limit: all cores over the machine CPU per mail.
    cpu_bound = cores / (r2["machine_cpu_ms_per_msg"] / 1000)
    print(f"   2 processes / 1 process: {ratio:.2f}x (target >= 1.7x); one process alone kept "
          f"{r1['machine_busy_share'] * 100:.0f}% of the machine busy; {cores} cores at "
          f"{r2['machine_cpu_ms_per_msg']:.2f} ms of machine CPU per mail cap any number of processes near "
          f"{cpu_bound:.0f} msg/s = {cpu_bound / r1['rate']:.2f}x one process")
    print(f"   rate limit {args.rate}/s across 2 processes: at most {r3['max_per_second']} mails in any one-second "
          f"bucket, {r3['rate']:.0f} msg/s on average: {'holds' if r3['max_per_second'] <= args.rate else 'EXCEEDED'}")
    print(f"   load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
