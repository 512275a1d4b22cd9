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
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mailer import db
from mailer.connectors.signing import sign
from tests import connector_payloads as P

_REPO = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("MAILER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SECRET = "bench-secret"  # nosec B105 - a benchmark's own secret
#: Longest wait for the server to answer /healthz, seconds.
START_TIMEOUT_S = 60
#: Most deliveries one run sends.
MAX_N = 200_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _bodies() -> list[tuple[str, bytes]]:
    return [("orders/create", json.dumps(P.order(1001, multi_currency=True)).encode()),
            ("checkouts/update", json.dumps(P.checkout("bench-cart")).encode())]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--rate", type=float, default=200.0, help="deliveries per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=16, help="client connections")
    ap.add_argument("--broker", default="stub://")
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
    port = _free_port()
    env = {**os.environ, "MAILER_DATABASE_URL": url, "MAILER_BROKER_URL": args.broker,
           "MAILER_SMTP_URL": "memory://bench", "MAILER_SHOPIFY_SECRETS": f"{P.SHOP}={SECRET}",
           "PYTHONPATH": str(_REPO)}
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "mailer.web.app:app_from_env", "--factory",
                               "--workers", "1", "--host", "127.0.0.1", "--port", str(port),
                               "--log-level", "warning", "--no-access-log"], env=env)
    bodies = [(topic, raw, sign(SECRET, raw)) for topic, raw in _bodies()]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n))
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)  # nosec B310 - localhost
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("server did not start") from None
                time.sleep(0.2)
        cpu0 = _cpu_s(server.pid)
        started = time.perf_counter() + 0.5

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    break
                due = started + i / args.rate
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                topic, raw, signature = bodies[i % len(bodies)]
                conn.request("POST", "/webhooks/shopify", body=raw, headers={
                    "Content-Type": "application/json", "X-Shopify-Topic": topic, "X-Shopify-Shop-Domain": P.SHOP,
                    "X-Shopify-Webhook-Id": f"bench-{i}", "X-Shopify-Hmac-Sha256": signature})
                resp = conn.getresponse()
                resp.read()
                took = time.perf_counter() - due
                with lock:
                    latencies.append(took)
                    if resp.status != 200:
                        errors.append(f"{i}: HTTP {resp.status}")
            conn.close()

        threads = [threading.Thread(target=client) for _ in range(max(1, args.threads))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed_s = time.perf_counter() - started
        cpu_ms = (_cpu_s(server.pid) - cpu0) * 1000 / n
        with sa.create_engine(url).connect() as conn:
            stored = conn.execute(sa.text("SELECT count(*) FROM connector_webhooks")).scalar_one()
    finally:
        server.terminate()
        server.wait(30)
        if schema:
            with sa.create_engine(PG_URL).begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    if errors:
        raise SystemExit(f"{len(errors)} deliveries not acknowledged, e.g. {errors[:3]}")
    q = statistics.quantiles(latencies, n=100)
    print(f"{args.db}, broker {args.broker}: {n} signed deliveries offered at {args.rate:.0f}/s, {stored} stored, "
          f"{n / elapsed_s:.0f} deliveries/s; ack p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms; server CPU {cpu_ms:.2f} ms per delivery; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
