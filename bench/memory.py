"""Benchmark: a worker's memory stays flat as a campaign grows (20,000 vs 200,000 recipients).

Run: python bench/memory.py [--quick] [--small 20000] [--large 200000] [--db sqlite|postgresql] [--threads 4]
                            [--connections 24] [--env MALLOC_ARENA_MAX=2 ...]

Two campaigns on the stage of ``bench/campaign_throughput.py`` (one ``dramatiq`` worker
process, Redis db 8, DKIM RSA-2048, the seasonal-sale newsletter, the lean sink on the
other CPU), one of ``--small`` and one of ``--large`` recipients, each in a fresh database
and a fresh worker.  Figures: the worker process's peak RSS (``VmHWM`` in /proc; the
dramatiq master that only supervises is shown apart), and its RSS sampled every 2 s
against how many mails the sink had accepted, so growth would show as a slope.
Target: peak RSS under 150 MB, and the large campaign's peak within a few MB of the small one's.
When the last mail has reached the sink, where the worker's RSS is: anonymous (heap, malloc
arenas, thread stacks) against mapped files (``/proc/<pid>/smaps_rollup``), its threads,
sockets and open SQLite files.  ``--env`` adds variables to the worker's environment (to
compare e.g. ``MALLOC_ARENA_MAX`` or ``MAILER_*`` settings).

``--quick``: 5,000 vs 50,000.  The full run sends 220,000 mails and takes as long as the
worker needs for them (see docs/benchmarks.md for the rate).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from campaign_throughput import run_campaign  # noqa: E402
from common import dkim_keys, format_memory_detail, loadavg, memory_detail, print_machine  # noqa: E402

#: Peak RSS the worker process must stay under, MB.
TARGET_MB = 150


def timeline(samples: list[tuple[int, int]], n: int) -> str:
    """RSS at about 10 %, 25 %, 50 %, 75 % and 100 % of the campaign."""
    if not samples:
        return "no samples"
    points = []
    for share in (0.10, 0.25, 0.50, 0.75, 1.0):
        target = share * n
        best = min(samples, key=lambda s: abs(s[0] - target))
        points.append(f"{best[0]:>7} mails: {best[1] / 1024:5.1f} MB")
    return "; ".join(points)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="5,000 vs 50,000 recipients")
    ap.add_argument("--small", type=int, default=None)
    ap.add_argument("--large", type=int, default=None)
    ap.add_argument("--db", default="sqlite", choices=["sqlite", "postgresql"])
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--connections", type=int, default=0, help="MAILER_SMTP_CONNECTIONS of the worker")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="added to the worker's environment (repeatable)")
    args = ap.parse_args()
    worker_env = dict(item.split("=", 1) for item in args.env)
    small = args.small or (5000 if args.quick else 20_000)
    large = args.large or (50_000 if args.quick else 200_000)
    print_machine(f"worker memory: {small} vs {large} recipients ({args.db})")
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp_s:
        tmp = Path(tmp_s)
        keys = dkim_keys(tmp)
        if worker_env:
            print(f"   worker environment added: {worker_env}")

        def at_end(workers) -> dict:
            return {"detail": {pid: memory_detail(pid) for pid in (p for w in workers for p in w.worker_pids())}}

        for n in (small, large):
            r = run_campaign(args.db, n, tmp / str(n), threads=args.threads, keys=keys, ed25519=False,
                             pin=not args.no_pin, log_level=args.log_level, connections=args.connections,
                             worker_env=worker_env, at_end=at_end)
            print(f"   {n:>7} recipients: worker process peak RSS {r['peak_rss_mb']:.1f} MB "
                  f"(dramatiq master {max(r['master_rss_mb']):.1f} MB); RSS over time: {timeline(r['rss_samples'], n)}")
            for pid, d in r["at_end"]["detail"].items():
                print(f"            at the end, worker process {pid}: {format_memory_detail(d)}")
            out.append(r)
    a, b = out
    growth = b["peak_rss_mb"] - a["peak_rss_mb"]
    print(f"   peak RSS {a['peak_rss_mb']:.1f} MB at {small} vs {b['peak_rss_mb']:.1f} MB at {large} "
          f"({growth:+.1f} MB for {large / small:.0f}x the recipients); target < {TARGET_MB} MB and flat: "
          f"{'met' if max(a['peak_rss_mb'], b['peak_rss_mb']) < TARGET_MB and growth < 10 else 'NOT met'}")
    print(f"   load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
