"""Benchmark: how fast one worker process drains a campaign, against the transport ceiling and a naive sender.

Run: python bench/campaign_throughput.py [--quick] [--recipients 20000] [--db both|sqlite|postgresql]
                                          [--threads 4] [--ed25519] [--no-pin] [--log-level INFO]
                                          [--profile DIR] [--skip-reference] [--delays 0,50]
                                          [--connections 24]

Each campaign runs once per relay latency in ``--delays`` (``bench/sink.py --delay-ms``:
the sink answers each message's data that many ms late, as a relay far away does), with
``MAILER_SMTP_CONNECTIONS=--connections``; the summary prints every target met or not.

``--profile DIR`` records the worker with py-spy (``pip install py-spy``) while the
campaign drains and prints the functions holding the GIL most often.

For each database (SQLite, then PostgreSQL in a schema of its own):

1. N customers with newsletter consent are written in bulk; the shipped
   ``newsletter/seasonal_sale`` (tracking on, ~36 KB per mail) is created as a campaign
   to segment ``newsletter_all`` through :func:`mailer.campaigns.create`.
2. One ``python -m dramatiq mailer.worker.boot --processes 1`` worker (pinned to CPU 0) with
   DKIM RSA-2048 on (``--ed25519``: dual-signed) sends it through the real path
   (``campaigns.send`` -> fan-out actor -> ``send_batch`` -> delivery.process) over Redis
   (db 8) to ``bench/sink.py``, a lean asyncio SMTP sink pinned to the other CPU.
3. Figures: messages/s from ``send`` to the sink's last acceptance, the worker's CPU per
   message (from /proc, master and worker process), so messages per worker-CPU-second,
   and the sink's own CPU per message.  Every delivery must be ``sent`` and the sink
   must have seen N unique Message-IDs.

In the same run (once, after the first database):

(a) transport ceiling: N pre-built messages (500 distinct ones, cycled) over one reused
    smtplib connection to the same sink;
(b) naive reference: per message Jinja-render the MJML source, compile it with MJML,
    build ``EmailMessage`` (html + text), sign with dkimpy RSA-2048 and send over one
    reused smtplib connection, on a sample (``--naive-sample``, 300) and extrapolated.
"""

from __future__ import annotations

import argparse
import os
import smtplib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (  # noqa: E402
    TEMPLATE,
    Database,
    Worker,
    bench_settings,
    create_campaign,
    databases,
    delivery_counts,
    dkim_keys,
    flush_redis,
    loadavg,
    populate,
    print_machine,
    send_campaign,
    status_kb,
    wait_for_sink,
)
from sink import SinkProcess  # noqa: E402

#: Longest a campaign may take before the benchmark gives up, seconds.
CAMPAIGN_TIMEOUT_S = 1800


def cpus() -> tuple[set[int] | None, int | None]:
    """(worker CPUs, sink CPU): the worker on CPU 0, the sink on the last CPU."""
    n = os.cpu_count() or 1
    if n < 2:
        return None, None
    return {0}, n - 1


# -- the campaign through the product -------------------------------------------------------------
def run_campaign(kind: str, n: int, tmp: Path, *, threads: int, keys, ed25519: bool, pin: bool,
                 log_level: str, processes: int = 1, workers: int = 1, during=None, sink=None,
                 settings_overrides: dict | None = None, quiet: bool = False, profile: Path | None = None,
                 delay_ms: float = 0.0, connections: int = 0, worker_env: dict | None = None,
                 at_end=None, boot: str = "mailer.worker.boot", queues: tuple[tuple[str, ...], ...] = (),
                 worker_threads: tuple[int, ...] = ()) -> dict:
    """Populate, create, send and drain one campaign; returns the figures.

    ``during(settings, sink, t_send)`` runs (in this process) while the campaign drains and
    its return value lands in the result as ``during``.  ``workers`` > 1 starts that many
    separate ``dramatiq`` commands (the scale-out benchmark).  ``worker_env`` adds to the
    workers' environment, ``boot`` is the module they boot, and ``queues`` (one tuple of
    queue names per command) lets each command consume only some queues, with
    ``worker_threads`` threads (one count per command; else ``threads``); ``at_end(workers)``
    runs once every mail reached the sink, before the workers stop (its return value lands
    in the result as ``at_end``).
    """
    flush_redis()
    tmp.mkdir(parents=True, exist_ok=True)
    database = Database(kind, tmp / kind)
    worker_cpus, sink_cpu = cpus() if pin else (None, None)
    own_sink = sink is None
    sink = sink or SinkProcess(cpu=sink_cpu, delay_ms=delay_ms)
    started: list[Worker] = []
    try:
        t = time.perf_counter()
        overrides = dict(settings_overrides or {})
        if connections:
            overrides.setdefault("smtp_connections", connections)
        settings = bench_settings(database.url, sink.url, keys, ed25519=ed25519, **overrides)
        populate(settings, n)
        cid = create_campaign(settings, f"bench {kind} {n}")
        setup_s = time.perf_counter() - t
        for i in range(workers):
            extra = {"queues": queues[i]} if i < len(queues) else {}
            w = Worker(settings, tmp, threads=worker_threads[i] if i < len(worker_threads) else threads,
                       processes=processes, cpus=worker_cpus if workers == 1 else None,
                       extra_env={"MAILER_LOG_LEVEL": log_level, **(worker_env or {})}, index=i, boot=boot,
                       **extra).start()
            started.append(w)
        for w in started:
            w.wait_ready()
        time.sleep(1.0)  # let the consumers settle into their idle polling
        sink.reset()
        split0 = [w.cpu_split() for w in started]
        cpu0 = [sum(x) for x in split0]
        sink_cpu0 = sink.stats()["cpu_s"]
        peak_rss = [0]
        samples: list[tuple[int, int]] = []  # (messages accepted, worker processes' RSS kB)
        last_sample = [0.0]

        def tick(stats) -> None:
            rss = sum(w.rss_kb() for w in started)
            peak_rss[0] = max(peak_rss[0], rss)
            if time.monotonic() - last_sample[0] >= 2.0:
                samples.append((stats["messages"], rss))
                last_sample[0] = time.monotonic()

        recorder = None
        if profile is not None:
            from pyspy import Recorder

            recorder = Recorder(started[0].proc.pid, profile)
            time.sleep(1.0)  # py-spy attaches
        t_send = send_campaign(settings, cid)
        result_during = during(settings, sink, t_send) if during else None
        extra = (result_during or {}).get("extra_messages", 0)
        stats = wait_for_sink(sink, n + extra, timeout_s=CAMPAIGN_TIMEOUT_S, worker=started[0], on_tick=tick)
        split1 = [w.cpu_split() for w in started]
        cpu1 = [sum(x) for x in split1]
        if recorder is not None:
            recorder.stop()
        hwm = [w.peak_rss_kb() for w in started]
        result_end = at_end(started) if at_end else None
        master_hwm = [status_kb(w.proc.pid, "VmHWM") / 1024 for w in started]
        # Give the last _finish() commits a moment, then check every delivery is recorded as sent.
        deadline = time.monotonic() + 30
        counts = delivery_counts(settings, cid)
        while counts.get("sent", 0) < n and time.monotonic() < deadline:
            time.sleep(0.2)
            counts = delivery_counts(settings, cid)
        elapsed = stats["last_ts"] - t_send if stats["last_ts"] else float("nan")
        worker_cpu = sum(cpu1) - sum(cpu0)
        out = {
            "db": kind, "n": n, "delay_ms": getattr(sink, "delay_ms", 0.0), "connections": settings.smtp_connections, "expected": n + extra, "threads": threads, "processes": processes * workers, "setup_s": setup_s, "elapsed_s": elapsed,
            "rate": stats["messages"] / elapsed, "worker_cpu_s": worker_cpu,
            "worker_cpu_ms_per_msg": worker_cpu / max(1, stats["messages"]) * 1000,
            "per_core_rate": stats["messages"] / worker_cpu if worker_cpu else float("nan"),
            "sink_cpu_ms_per_msg": (stats["cpu_s"] - sink_cpu0) / max(1, stats["messages"]) * 1000,
            "messages": stats["messages"], "unique_ids": stats["unique_ids"],
            "bytes_per_msg": stats["bytes"] / max(1, stats["messages"]), "counts": counts,
            "peak_rss_mb": max(hwm) / 1024, "rss_mb_during": peak_rss[0] / 1024, "during": result_during,
            "rss_samples": samples, "master_rss_mb": master_hwm, "at_end": result_end,
            "per_worker_cpu_s": [b - a for a, b in zip(cpu0, cpu1)], "load": loadavg(),
            "worker_sys_ms_per_msg": sum(b[1] - a[1] for a, b in zip(split0, split1)) / max(1, stats["messages"]) * 1000,
        }
        if not quiet:
            report_campaign(out)
        return out
    finally:
        for w in started:
            w.stop()
        if own_sink:
            sink.stop()
        database.drop()
        flush_redis()


def report_campaign(r: dict) -> None:
    ok = r["counts"].get("sent", 0) == r["n"] and r["unique_ids"] == r["expected"]
    print(f"   {r['db']:10s} {r['n']} recipients, relay {r['delay_ms']:.0f} ms, {r['processes']} process(es) x "
          f"{r['threads']} threads, {r['connections']} connections: "
          f"{r['rate']:7.0f} msg/s wall ({r['elapsed_s']:.1f} s); worker CPU {r['worker_cpu_ms_per_msg']:.2f} ms/msg "
          f"(system {r['worker_sys_ms_per_msg']:.2f}) = {r['per_core_rate']:.0f} msg per worker-CPU-second; sink CPU {r['sink_cpu_ms_per_msg']:.2f} ms/msg; "
          f"{r['bytes_per_msg'] / 1024:.1f} KB/msg; peak RSS {r['peak_rss_mb']:.0f} MB; load {r['load']}")
    print(f"              deliveries {r['counts']}; sink unique Message-IDs {r['unique_ids']} "
          f"({'all sent, none twice' if ok else 'MISMATCH'}); setup {r['setup_s']:.1f} s")


# -- (a) the transport ceiling ----------------------------------------------------------------------
def prebuilt_messages(settings, count: int) -> list[tuple[str, str, bytes]]:
    """``count`` distinct, finished, DKIM-signed messages composed by the product."""
    from mailer.clock import utcnow
    from mailer.delivery.compose import compose
    from mailer.delivery.mail import MailContext
    from mailer.message.dkim import Signer
    from mailer.models import Delivery
    from mailer.rendering import Renderer

    renderer = Renderer(settings)
    signer = Signer.from_settings(settings)
    data = renderer.sample(TEMPLATE)
    out = []
    for i in range(count):
        d = Delivery(id=10_000_000 + i, kind=TEMPLATE, to_address=f"ceiling{i}@example.com", to_hash="x" * 64,
                     locale="en", data=data, purpose="newsletter", created_at=utcnow())
        c = compose(settings, renderer, signer, MailContext.of(d))
        out.append((c.envelope_from, c.recipient, c.message))
    return out


def transport_ceiling(settings, sink: SinkProcess, n: int) -> dict:
    msgs = prebuilt_messages(settings, min(500, n))
    sink.reset()
    conn = smtplib.SMTP("127.0.0.1", sink.port)
    conn.ehlo()
    c0, t0 = os.times(), time.perf_counter()
    for i in range(n):
        sender, rcpt, body = msgs[i % len(msgs)]
        conn.mail(sender)
        conn.rcpt(rcpt)
        code, _ = conn.data(body)
        assert code == 250, code
    elapsed = time.perf_counter() - t0
    c1 = os.times()
    conn.quit()
    stats = sink.stats()
    assert stats["messages"] == n, stats
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return {"rate": n / elapsed, "client_cpu_ms": cpu / n * 1000, "bytes_per_msg": stats["bytes"] / n}


# -- (b) the naive reference ------------------------------------------------------------------------
def naive_reference(settings, sink: SinkProcess, sample: int) -> dict:
    """EmailMessage + dkimpy RSA + MJML compiled per message, over one reused smtplib connection."""
    from email.message import EmailMessage
    from email.utils import format_datetime, make_msgid

    import dkim
    import mjml
    from mailer.rendering.i18n import text_direction

    from mailer import rendering
    from mailer.clock import utcnow

    renderer = rendering.Renderer(settings)
    data = renderer.sample(TEMPLATE)
    spec = renderer.spec(TEMPLATE)
    # The layout-resolved MJML source with its per-recipient Jinja, as a naive sender would keep it.
    loader = rendering._MarkedLoader(renderer.root)
    cenv = rendering._compile_env(loader)
    cctx = {"locale": "en", "lang": "en", "dir": "ltr", "align": "left", "start": "left", "end": "right",
            "t": renderer.strings("en"), "kind": TEMPLATE, "marketing": True, "newsletter": True}
    marked = cenv.get_template(f"{TEMPLATE}/en.mjml").render(cctx)
    source = rendering._LineMap(marked, loader.files).text
    mjml_tpl = renderer.env.from_string(source)
    subject_tpl = renderer.env.from_string(spec.subjects["en"])
    text_tpl = renderer.compiled(TEMPLATE, "en").text
    key = Path(settings.dkim_rsa_key).read_bytes()
    sink.reset()
    conn = smtplib.SMTP("127.0.0.1", sink.port)
    conn.ehlo()
    c0, t0 = os.times(), time.perf_counter()
    for i in range(sample):
        ctx = {"store_name": settings.store_name, "store_address": settings.store_address,
               "timezone": settings.default_timezone, "currency": "EUR", "first_name": f"First{i}",
               "last_name": "Example", "email": f"naive{i}@example.com", "delivery_id": i,
               "unsubscribe_url": f"{settings.base_url}/u/naive{i}", "preferences_url": f"{settings.base_url}/p/{i}",
               "kind": TEMPLATE, "locale": "en", "dir": text_direction("en"), "format_locale": "en", **data}
        ctx["subject"] = subject_tpl.render(ctx)
        ctx["preheader"] = ""
        html = mjml.mjml2html(mjml_tpl.render(ctx), fonts={})
        msg = EmailMessage()
        msg["From"] = settings.from_address
        msg["To"] = f"First{i} Example <naive{i}@example.com>"
        msg["Subject"] = ctx["subject"]
        msg["Date"] = format_datetime(utcnow())
        msg["Message-ID"] = make_msgid(domain="example.com")
        msg["List-Unsubscribe"] = f"<{ctx['unsubscribe_url']}>"
        msg.set_content(text_tpl.render(ctx))
        msg.add_alternative(html, subtype="html")
        raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
        sig = dkim.sign(raw, b"mailer", b"example.com", key, include_headers=[b"from", b"to", b"subject", b"date",
                                                                             b"message-id", b"list-unsubscribe"])
        conn.sendmail(f"bounces+{i}@example.com", [f"naive{i}@example.com"], sig + raw)
    elapsed = time.perf_counter() - t0
    c1 = os.times()
    conn.quit()
    stats = sink.stats()
    assert stats["messages"] == sample, stats
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return {"rate": sample / elapsed, "cpu_ms": cpu / sample * 1000, "per_core_rate": sample / cpu,
            "bytes_per_msg": stats["bytes"] / sample}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 recipients, naive sample 100")
    ap.add_argument("--recipients", type=int, default=None)
    ap.add_argument("--db", default="both", choices=["both", "sqlite", "postgresql"])
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--ed25519", action="store_true", help="dual-sign (RSA-2048 + Ed25519)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin worker and sink to separate CPUs")
    ap.add_argument("--naive-sample", type=int, default=None)
    ap.add_argument("--log-level", default="INFO", help="the worker's MAILER_LOG_LEVEL (INFO: one line per mail)")
    ap.add_argument("--profile", type=Path, default=None,
                    help="record the worker with py-spy into this folder and print the top functions")
    ap.add_argument("--skip-reference", action="store_true", help="only the campaign (no ceiling, no naive)")
    ap.add_argument("--delays", default="0,50",
                    help="relay latencies to run, milliseconds, comma-separated (bench/sink.py --delay-ms)")
    ap.add_argument("--connections", type=int, default=24,
                    help="MAILER_SMTP_CONNECTIONS of the worker (0: one connection per worker thread)")
    args = ap.parse_args()
    delays = [float(d) for d in args.delays.split(",") if d.strip()]
    n = args.recipients or (2000 if args.quick else 20_000)
    naive_n = args.naive_sample or (100 if args.quick else 300)
    print_machine(f"campaign throughput: {n} recipients, DKIM RSA-2048{' + Ed25519' if args.ed25519 else ''}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-campaign-") as tmp_s:
        tmp = Path(tmp_s)
        keys = dkim_keys(tmp)
        for kind in databases(args.db):
            prof = None
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                prof = args.profile / f"worker-{kind}.txt"
            for delay in delays:
                results.append(run_campaign(kind, n, tmp / f"{kind}-{delay:g}ms", threads=args.threads, keys=keys, ed25519=args.ed25519,
                                            pin=not args.no_pin, log_level=args.log_level,
                                            profile=prof if delay == delays[0] else None, delay_ms=delay,
                                            connections=args.connections))
                if prof is not None and delay == delays[0]:
                    from pyspy import summarize

                    print(summarize(prof, top=30))
        ceiling = naive = None
        if not args.skip_reference:
            _, sink_cpu = cpus() if not args.no_pin else (None, None)
            with SinkProcess(cpu=sink_cpu) as sink:
                settings = bench_settings("sqlite:///:memory:", sink.url, keys, ed25519=args.ed25519)
                ceiling = transport_ceiling(settings, sink, n)
                print(f"   (a) transport ceiling: {n} pre-built messages over one smtplib connection: "
                      f"{ceiling['rate']:7.0f} msg/s; client CPU {ceiling['client_cpu_ms']:.2f} ms/msg "
                      f"({ceiling['bytes_per_msg'] / 1024:.1f} KB/msg)")
                naive = naive_reference(settings, sink, naive_n)
                print(f"   (b) naive reference (EmailMessage + dkimpy RSA + MJML per message), {naive_n} messages: "
                      f"{naive['rate']:7.0f} msg/s; CPU {naive['cpu_ms']:.2f} ms/msg = {naive['per_core_rate']:.0f} "
                      f"msg per CPU-second")
    print("   summary (targets: >= 450 msg per worker-CPU-s on SQLite, >= 350 on PostgreSQL; >= 5x naive;"
          " at 50 ms relay latency >= 80% of the 0 ms rate):")
    target = {"sqlite": 450, "postgresql": 350}
    by_db: dict[str, dict[float, dict]] = {}
    for r in results:
        by_db.setdefault(r["db"], {})[r["delay_ms"]] = r
        line = (f"     {r['db']:10s} relay {r['delay_ms']:3.0f} ms: {r['rate']:6.0f} msg/s wall, "
                f"{r['per_core_rate']:6.0f} msg per worker-CPU-s "
                f"({'met' if r['per_core_rate'] >= target[r['db']] else 'NOT met'}: >= {target[r['db']]})")
        if naive is not None:
            wall_x, cpu_x = r["rate"] / naive["rate"], r["per_core_rate"] / naive["per_core_rate"]
            line += (f"; vs naive {wall_x:.1f}x wall, {cpu_x:.1f}x per CPU "
                     f"({'met' if min(wall_x, cpu_x) >= 5 else 'NOT met'}: >= 5x)")
        if ceiling is not None:
            line += f"; vs transport ceiling {r['rate'] / ceiling['rate']:.2f}"
        print(line)
    for db_kind, runs in by_db.items():
        if 0.0 in runs:
            for delay, r in sorted(runs.items()):
                if delay > 0:
                    share = r["rate"] / runs[0.0]["rate"]
                    print(f"     {db_kind:10s} at {delay:.0f} ms the worker sends {share:.0%} of its 0 ms rate "
                          f"({'met' if share >= 0.8 else 'NOT met'}: >= 80%)")
    print(f"   load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
