"""Signed Shopify deliveries per second through ``POST /webhooks/shopify``, and the time to acknowledge.

Usage: ``python bench/webhooks.py [--db sqlite|postgresql] [--rate 200] [--seconds 10] [--threads 16]
[--broker stub://]``.  Starts ``uvicorn mailer.web.app:app_from_env --factory --workers 1`` on
127.0.0.1 (a free port) on a fresh SQLite file or PostgreSQL schema, with the shop's secret in
MAILER_SHOPIFY_SECRETS, then sends ``rate x seconds`` deliveries at a fixed rate (open loop:
delivery i is due at i / rate seconds, whatever the earlier ones took), half ``orders/create``
and half ``checkouts/update`` in the documented shapes, each with its own webhook id.  Each
includes the HMAC check, the durable INSERT under the unique webhook id and the enqueue of
``process_shop_webhook`` (``--broker stub://`` keeps the queue in the server; nothing consumes
it, so this measures acknowledging, not applying).  Prints deliveries/s, p50/p99 of the time
from the request's due moment to its 200 (so a server falling behind shows in the figure), the
server process's CPU time per delivery and the load average.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import cpu_s, uvicorn_server
from pyspy import summarize

from mailer import db
from mailer.connectors.signing import sign
from tests import connector_payloads as P

PG_URL = os.environ.get("MAILER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SECRET = "bench-secret"  # nosec B105 - a benchmark's own secret
#: Most deliveries one run sends.
MAX_N = 200_000
#: py-spy samples per second with --profile.
PROFILE_HZ = 250


def _bodies() -> list[tuple[str, bytes]]:
    return [("orders/create", json.dumps(P.order(1001, multi_currency=True)).encode()),
            ("checkouts/update", json.dumps(P.checkout("bench-cart")).encode())]


def _offer(port: int, bodies: list, *, n: int, rate: float, threads: int, first: int,
           started: float) -> tuple[list[tuple[float, int, float]], list[str]]:
    """Send ``n`` deliveries at ``rate``/s from ``started`` (open loop); (latency s, index, how late the
    client sent it s) each, and errors."""
    latencies: list[tuple[float, int, float]] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            due = started + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            topic, raw, signature = bodies[i % len(bodies)]
            sent = time.perf_counter()
            conn.request("POST", "/webhooks/shopify", body=raw, headers={
                "Content-Type": "application/json", "X-Shopify-Topic": topic, "X-Shopify-Shop-Domain": P.SHOP,
                "X-Shopify-Webhook-Id": f"bench-{first + i}", "X-Shopify-Hmac-Sha256": signature})
            resp = conn.getresponse()
            resp.read()
            took = time.perf_counter() - due
            with lock:
                latencies.append((took, i, sent - due))
                if resp.status != 200:
                    errors.append(f"{i}: HTTP {resp.status}")
        conn.close()

    workers = [threading.Thread(target=client) for _ in range(max(1, threads))]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return latencies, errors


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--rate", type=float, default=200.0, help="deliveries per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=16, help="client connections")
    ap.add_argument("--broker", default="stub://")
    ap.add_argument("--warmup", type=int, default=0,
                    help="deliveries sent (and not counted) before the measured ones, at the same rate")
    ap.add_argument("--profile", type=Path, default=None,
                    help="py-spy record --idle of the server during the measured part, raw stacks to this file")
    args = ap.parse_args()
    n = max(1, min(int(args.rate * args.seconds), MAX_N))
    tmp = tempfile.mkdtemp(prefix="bench-webhooks-")
    schema = None
    if args.db == "sqlite":
        url = f"sqlite:///{tmp}/bench.db"
    else:
        schema = f"bench_webhooks_{uuid.uuid4().hex[:8]}"
        with sa.create_engine(PG_URL).begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    db.upgrade(url)
    env = {**os.environ, "MAILER_DATABASE_URL": url, "MAILER_BROKER_URL": args.broker,
           "MAILER_SMTP_URL": "memory://bench", "MAILER_SHOPIFY_SECRETS": f"{P.SHOP}={SECRET}"}
    bodies = [(topic, raw, sign(SECRET, raw)) for topic, raw in _bodies()]
    spy = None
    try:
        with uvicorn_server(env) as server:
            print(f"   server pid {server.pid}", flush=True)
            if args.warmup > 0:
                _offer(server.port, bodies, n=args.warmup, rate=args.rate, threads=args.threads, first=MAX_N,
                       started=time.perf_counter() + 0.1)
            if args.profile:
                if shutil.which("py-spy") is None:
                    raise SystemExit("--profile needs py-spy (pip install py-spy)")
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(server.pid), "--idle", "--threads",
                                        "--format", "raw", "--rate", str(PROFILE_HZ), "--output", str(args.profile)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            cpu0 = cpu_s(server.pid)
            started = time.perf_counter() + 0.5
            started_wall = time.time() + 0.5
            latencies, errors = _offer(server.port, bodies, n=n, rate=args.rate, threads=args.threads, first=0,
                                       started=started)
            elapsed_s = time.perf_counter() - started
            cpu_ms = (cpu_s(server.pid) - cpu0) * 1000 / n
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            with sa.create_engine(url).connect() as conn:
                stored = conn.execute(sa.text("SELECT count(*) FROM connector_webhooks")).scalar_one()
    finally:
        if schema:
            with sa.create_engine(PG_URL).begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    if errors:
        raise SystemExit(f"{len(errors)} deliveries not acknowledged, e.g. {errors[:3]}")
    q = statistics.quantiles([t for t, _, _ in latencies], n=100)
    slowest = sorted(latencies, reverse=True)[:5]
    print(f"{args.db}, broker {args.broker}, warm-up {args.warmup}: {n} signed deliveries offered at "
          f"{args.rate:.0f}/s, {stored} stored, {n / elapsed_s:.0f} deliveries/s; ack p50 {q[49] * 1000:.1f} ms, "
          f"p99 {q[98] * 1000:.1f} ms, max {slowest[0][0] * 1000:.1f} ms; server CPU {cpu_ms:.2f} ms per delivery; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("   slowest (sent late by): " + ", ".join(f"{t * 1000:.0f} ms at {i / args.rate:.2f} s ({late * 1000:.0f} ms)"
                                                for t, i, late in slowest))
    print(f"   started at {started_wall:.3f} (epoch s)")
    if args.profile and args.profile.exists():
        print(summarize(args.profile, top=15))


if __name__ == "__main__":
    main()
