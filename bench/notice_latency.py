"""Benchmark: does an order-delay notice still arrive at once while a campaign drains?

Run: python bench/notice_latency.py [--quick] [--recipients 20000] [--notices 500] [--rate 10]
                                     [--db sqlite|postgresql] [--threads 4] [--delay-ms 50]
                                     [--connections 24] [--timeline] [--notice-process [THREADS]]
                                     [--env NAME=VALUE ...]

The stage of ``bench/campaign_throughput.py`` (one ``dramatiq`` worker process, Redis db 8,
DKIM RSA-2048, the lean sink on the other CPU, the seasonal-sale newsletter to N
recipients).  Once the campaign is draining (the sink has accepted its first mails), this
process sends ``--notices`` ``order_delayed`` notices at a steady ``--rate`` per second
through the product's own path (:func:`mailer.notices.create` + ``enqueue``, i.e. what
``notify()`` does), each to an existing customer with its own idempotency key.

Latency of a notice = the sink's acceptance time (it timestamps the final ``250`` per
``X-Mailer-Delivery`` header) minus the moment ``notify`` was called (also shown: minus
the moment the broker message was sent).  Only notices accepted while campaign mail was
still being accepted after them count as "under load"; the script says how many.

``--timeline`` boots the worker through ``bench/notice_timeline.py`` (bench-only wrappers
that timestamp each notice inside the worker) and prints where the time went, step by
step: Redis and the consumer's poll, the wait in the worker's work queue, claim, compose
(wall and the thread's own CPU), the SMTP exchange.  ``--notice-process`` runs the
recommended deployment: a second ``dramatiq`` command that consumes only the
``transactional`` queue (``mailer worker --queues transactional``) beside the campaign's
worker (``--queues bulk default``).  ``--env`` sets ``MAILER_*`` variables of the workers
(e.g. ``--env MAILER_NOTICE_THREADS=0``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from campaign_throughput import cpus, run_campaign
from common import dkim_keys, loadavg, percentile, print_machine
from sink import SinkProcess

NOTICE_KIND = "order_delayed"


def notice_sender(count: int, rate: float, campaign_n: int, results: dict):
    """The ``during`` hook: wait for the drain to start, then send notices at a steady rate."""

    def during(settings, sink, t_send) -> dict:
        from mailer.app import App
        from mailer.notices import trigger as notices

        app = App(settings)
        data = app.renderer.sample(NOTICE_KIND)
        # Start once the campaign is really draining (its first mails accepted).
        deadline = time.monotonic() + 120
        while sink.stats()["messages"] < min(200, campaign_n // 10) and time.monotonic() < deadline:
            time.sleep(0.05)
        interval = 1.0 / rate
        start = time.monotonic()
        sent: dict[str, tuple[float, float]] = {}
        for i in range(count):
            target = start + i * interval
            pause = target - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            t_call = time.time()
            result = notices.create(app, NOTICE_KIND, customer_id=1 + (i * 37) % campaign_n, data=data,
                                    key=f"bench-delay-{i}-{t_send}")
            t_enqueue = time.time()
            notices.enqueue(result)
            sent[str(result.delivery_id)] = (t_call, t_enqueue)
        behind = time.monotonic() - (start + (count - 1) * interval)
        results["sent"] = sent
        results["behind_s"] = behind
        results["campaign_accepted_at_last_notice"] = sink.stats()["messages"]
        return {"extra_messages": count}

    return during


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4,000 recipients, 100 notices")
    ap.add_argument("--recipients", type=int, default=None)
    ap.add_argument("--notices", type=int, default=None)
    ap.add_argument("--rate", type=float, default=10.0, help="notices per second")
    ap.add_argument("--db", default="sqlite", choices=["sqlite", "postgresql"])
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--delay-ms", type=float, default=0.0,
                    help="relay latency (bench/sink.py --delay-ms); it is subtracted from the figures below")
    ap.add_argument("--connections", type=int, default=0, help="MAILER_SMTP_CONNECTIONS of the worker")
    ap.add_argument("--timeline", action="store_true",
                    help="timestamp each notice's steps inside the worker (bench/notice_timeline.py)")
    ap.add_argument("--notice-process", type=int, nargs="?", const=2, default=0, metavar="THREADS",
                    help="a second worker command with THREADS threads (default 2) for the transactional queue only")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="a MAILER_* variable of the workers")
    args = ap.parse_args()
    n = args.recipients or (4000 if args.quick else 20_000)
    count = args.notices or (100 if args.quick else 500)
    print_machine(f"notice latency: {count} order_delayed notices at {args.rate:g}/s while {n} campaign mails drain")
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-notice-") as tmp_s:
        tmp = Path(tmp_s)
        keys = dkim_keys(tmp)
        _, sink_cpu = cpus() if not args.no_pin else (None, None)
        worker_env = dict(item.split("=", 1) for item in args.env)
        boot = "mailer.worker.boot"
        if args.timeline:
            worker_env["MAILER_BENCH_TIMELINE"] = str(tmp / "timeline")
            worker_env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                        str(Path(__file__).resolve().parent)])
            boot = "notice_timeline"
        extra: dict = {}
        if args.notice_process:
            # Two commands: the campaign's worker without the transactional queue, and one for notices only.
            extra = dict(workers=2, queues=(("bulk", "default"), ("transactional",)),
                         worker_threads=(args.threads, args.notice_process))
            worker_env.setdefault("MAILER_NOTICE_THREADS", "0")
        with SinkProcess(cpu=sink_cpu, delay_ms=args.delay_ms) as sink:
            r = run_campaign(args.db, n, tmp, threads=args.threads, keys=keys, ed25519=False, pin=not args.no_pin,
                             log_level=args.log_level, during=notice_sender(count, args.rate, n, results),
                             sink=sink, connections=args.connections, worker_env=worker_env, boot=boot,
                             **extra)
            times = sink.times()
            stats = sink.stats()
            timeline = [json.loads(line) for f in glob.glob(str(tmp / "timeline-*.jsonl"))
                        for line in Path(f).read_text().splitlines()] if args.timeline else []
    sent = results["sent"]
    lat_call, lat_enq, missing = [], [], 0
    last_campaign_ts = 0.0
    notice_ids = set(sent)
    # the sink records X-Mailer-Delivery values (<delivery id>.<HMAC>): keyed by the id
    times = {str(k).partition(".")[0]: v for k, v in times.items()}
    for key, ts in times.items():
        if key not in notice_ids:
            last_campaign_ts = max(last_campaign_ts, ts)
    under_load = 0
    for key, (t_call, t_enq) in sent.items():
        ts = times.get(key)
        if ts is None:
            missing += 1
            continue
        # The relay's own answer time is the same for any sender: what mailer adds is the rest.
        lat_call.append((ts - t_call) * 1000 - args.delay_ms)
        lat_enq.append((ts - t_enq) * 1000 - args.delay_ms)
        if ts < last_campaign_ts:
            under_load += 1
    print(f"   notices: {len(sent)} sent, {len(lat_call)} accepted by the sink, {missing} missing; "
          f"{under_load} accepted while campaign mail was still flowing; sender fell behind its schedule by "
          f"{results['behind_s']:.2f} s; campaign mails accepted when the last notice was sent: "
          f"{results['campaign_accepted_at_last_notice'] - len(sent)} of {n}")
    print(f"   relay latency {args.delay_ms:g} ms (subtracted), MAILER_SMTP_CONNECTIONS={args.connections}")
    for label, values in (("notify() -> accepted", lat_call), ("enqueue -> accepted", lat_enq)):
        print(f"   {label:22s} p50 {percentile(values, 50):7.1f} ms   p90 {percentile(values, 90):7.1f} ms   "
              f"p99 {percentile(values, 99):7.1f} ms   max {max(values):7.1f} ms   (target p50 < 50, p99 < 250)")
    print(f"   campaign meanwhile: {r['rate']:.0f} msg/s wall, {r['worker_cpu_ms_per_msg']:.2f} ms worker CPU per "
          f"mail (notices included); sink saw {stats['messages']} mails, {stats['unique_ids']} unique Message-IDs")
    if timeline:
        report_timeline(timeline, times, args.delay_ms)
    print(f"   load average at the end: {loadavg()}")


def report_timeline(rows: list[dict], accepted: dict, delay_ms: float) -> None:
    """Where each notice's time went: p50 / p90 / p99 of each step, in ms."""
    steps = {
        "enqueue -> fetched by a consumer": ("enqueued", "fetch"),
        "fetched -> worker thread starts": ("fetch", "start"),
        "thread starts -> claimed": ("start", "claimed"),
        "claimed -> compose starts (gate, load)": ("claimed", "compose0"),
        "compose (wall)": ("compose0", "compose1"),
        "compose ends -> SMTP starts": ("compose1", "smtp0"),
        "SMTP starts -> accepted (- relay)": ("smtp0", "accepted"),
    }
    print(f"   timeline of {len(rows)} notices inside the worker (ms; bench/notice_timeline.py):")
    for row in rows:
        ts = accepted.get(str(row["delivery_id"]))
        if ts is not None:
            row["accepted"] = ts - delay_ms / 1000.0
    for label, (a, b) in steps.items():
        values = [(row[b] - row[a]) * 1000 for row in rows if row.get(a) is not None and row.get(b) is not None]
        if values:
            print(f"     {label:40s} p50 {percentile(values, 50):7.1f}  p90 {percentile(values, 90):7.1f}  "
                  f"p99 {percentile(values, 99):7.1f}  max {max(values):7.1f}")
    cpu = [row["compose_cpu"] * 1000 for row in rows if "compose_cpu" in row]
    total_cpu = [row["cpu"] * 1000 for row in rows if "cpu" in row]
    if cpu:
        print(f"     compose thread CPU                       p50 {percentile(cpu, 50):7.1f}  "
              f"p99 {percentile(cpu, 99):7.1f}; whole notice thread CPU p50 {percentile(total_cpu, 50):.1f}  "
              f"p99 {percentile(total_cpu, 99):.1f}")
    by = {}
    for row in rows:
        key = (row.get("consumer", "?"), "lane thread" if row.get("lane_thread") else "worker thread")
        by.setdefault(key, []).append((row.get("accepted", row["end"]) - row["enqueued"]) * 1000)
    for (consumer, thread), values in sorted(by.items()):
        print(f"     fetched by {consumer:4s} consumer, run on a {thread:13s}: {len(values):4d} notices, enqueue -> "
              f"accepted p50 {percentile(values, 50):7.1f}  p99 {percentile(values, 99):7.1f}")
    ahead = [row.get("queued_ahead", 0) for row in rows]
    running = [row.get("batches_running", 0) for row in rows]
    print(f"     at fetch: items already in that work queue p50 {percentile(ahead, 50):.0f} max {max(ahead)}; "
          f"campaign messages being worked on p50 {percentile(running, 50):.0f} max {max(running)}")


if __name__ == "__main__":
    main()
