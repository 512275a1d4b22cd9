"""Sign-ups per second through ``POST /f/{form_id}`` under uvicorn with one worker process.

Usage: ``python bench/signup.py [--db sqlite|postgresql] [--n 300] [--broker stub://]``.
Starts ``uvicorn mailer.web.app:app_from_env --factory --workers 1`` on 127.0.0.1 (a free
port), on a fresh SQLite file or a fresh PostgreSQL schema, with the sign-up budgets off,
then posts ``n`` sign-ups of distinct addresses one after another (a bounded loop, localhost
only).  Each includes the form check, the pending request, the wording registration and the
confirmation mail's store and enqueue (``--broker``: ``stub://`` keeps the queue in the
server process; ``redis://127.0.0.1:6379/N`` enqueues to Redis; nothing consumes it).
Prints sign-ups/s and p50/p99 latency.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import free_port, uvicorn_server

from mailer import db

PG_URL = os.environ.get("MAILER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
#: Most sign-ups one run posts.
MAX_N = 100_000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--broker", default="stub://")
    args = ap.parse_args()
    n = max(1, min(args.n, MAX_N))
    tmp = tempfile.mkdtemp(prefix="bench-signup-")
    schema = None
    if args.db == "sqlite":
        url = f"sqlite:///{tmp}/bench.db"
    else:
        schema = f"bench_signup_{uuid.uuid4().hex[:8]}"
        with sa.create_engine(PG_URL).begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    db.upgrade(url)
    port = free_port()
    env = {**os.environ, "MAILER_DATABASE_URL": url, "MAILER_BROKER_URL": args.broker,
           "MAILER_SMTP_URL": "memory://bench", "MAILER_BASE_URL": f"http://127.0.0.1:{port}",
           "MAILER_SIGNUP_IP_PER_MINUTE": "0", "MAILER_SIGNUP_ADDRESS_PER_HOUR": "0"}
    try:
        with uvicorn_server(env, port=port):
            latencies: list[float] = []
            started = time.perf_counter()
            for i in range(n):
                body = urllib.parse.urlencode({"email": f"bench{i}@example.com", "locale": "pl"}).encode()
                req = urllib.request.Request(f"http://127.0.0.1:{port}/f/newsletter", data=body,
                                             headers={"Accept": "application/json"})
                t0 = time.perf_counter()
                with urllib.request.urlopen(req, timeout=30) as r:  # nosec B310 - localhost
                    r.read()
                    if r.status != 200:
                        raise SystemExit(f"sign-up {i}: HTTP {r.status}")
                latencies.append(time.perf_counter() - t0)
            elapsed_s = time.perf_counter() - started
    finally:
        if schema:
            with sa.create_engine(PG_URL).begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    q = statistics.quantiles(latencies, n=100)
    print(f"{args.db}, broker {args.broker}: {n} sign-ups in {elapsed_s:.1f} s = {n / elapsed_s:.0f} sign-ups/s; "
          f"p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
