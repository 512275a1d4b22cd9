"""Benchmark: `mailer consent import` of 1,000,000 rows into SQLite and PostgreSQL (if reachable).

Run: python bench/consent_import.py [--rows 1000000] [--no-pg] [--pg-url URL]
Writes a CSV of consent events (every column filled: grants with double opt-in proof,
some withdrawals, 1 row in 3 for an address seen before), imports it with
``mailer.consent.importer.import_file`` in a child process per database, and prints
events/s, the child's peak RSS and whether ``consent verify`` passes afterwards.
Figures go to docs/benchmarks.md.

The import holds the consent chain's advisory lock for its whole transaction; the lock
is keyed by schema (``mailer.consent.ledger.CHAIN_LOCK_SQL``) and the benchmark makes a
schema of its own, so it no longer blocks other consent writes in the same database.
``--pg-url`` still lets it run in a database of its own, so that its load on the server
(not its lock) stays out of others' way.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
AGENTS = ["Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
          "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
          "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"]


def make_csv(path: Path, rows: int) -> None:
    rng = random.Random(11)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["email", "purpose", "action", "occurred_at", "source", "ip", "user_agent", "wording_id",
                    "wording_version", "confirmed_at", "external_id"])
        for i in range(rows):
            person = i if i % 3 else rng.randrange(max(1, i))  # every third row: an address seen before
            day, sec = rng.randint(1, 28), rng.randint(0, 86_399)
            at = f"2024-{rng.randint(1, 12):02d}-{day:02d}T{sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}Z"
            granted = rng.random() < 0.9
            w.writerow([f"subscriber{person}@example{person % 97}.com", rng.choice(["newsletter", "product_updates"]),
                        "granted" if granted else "withdrawn", at, "signup_form" if granted else "unsubscribe_link",
                        f"198.51.{rng.randint(0, 255)}.{rng.randint(1, 254)}", rng.choice(AGENTS),
                        "footer-form", "2024-01", at if granted else "", f"ext-{person}"])


def pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def child(url: str, path: Path) -> None:
    """Import into ``url`` (migrated here), verify, print one JSON line."""
    from mailer import db
    from mailer.consent import importer
    from mailer.consent import verify as consent_verify
    from mailer.settings import Settings

    db.upgrade(url)
    settings = Settings(database_url=url, secret_key="bench-secret-key-0123456789abcdef")
    t0, c0 = time.perf_counter(), time.process_time()
    result = importer.import_file(settings, path)
    took, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert not result.errors, result.errors[:3]
    rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    with db.session_scope(settings) as s:
        report = consent_verify.verify_db(s, settings)
    verify_s = time.perf_counter() - t0
    print(json.dumps({"events": result.events, "customers": result.customers_created, "seconds": took, "cpu_s": cpu, "load": os.getloadavg()[0],
                      "rss_mb": rss_import, "verify_ok": report.ok, "verify_s": verify_s}))


def run(url: str, path: Path, label: str) -> None:
    out = subprocess.run([sys.executable, __file__, "--child", url, str(path)], check=True, capture_output=True,
                         text=True, cwd=ROOT)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{label:10s} {r['events']} events ({r['customers']} new customers): {r['seconds']:7.1f} s "
          f"({r['events'] / r['seconds']:8.0f} events/s; importer CPU {r['cpu_s']:.1f} s, load {r['load']:.1f}); peak RSS {r['rss_mb']:.0f} MB; "
          f"verify {'OK' if r['verify_ok'] else 'FAILED'} in {r['verify_s']:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--pg-url", default=PG_URL, help="PostgreSQL database to use (a schema is made per run)")
    ap.add_argument("--child", nargs=2, metavar=("URL", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    from bench.common import print_machine

    print_machine("consent import")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "consents.csv"
        make_csv(path, args.rows)
        print(f"CSV: {args.rows} rows, {path.stat().st_size / 1e6:.1f} MB")
        if not args.no_sqlite:
            run(f"sqlite:///{tmp}/bench.db", path, "SQLite")
        if not args.no_pg and pg_reachable():
            import sqlalchemy as sa

            schema = "bench_" + uuid.uuid4().hex[:8]
            admin = sa.create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(sa.text(f"CREATE SCHEMA {schema}"))
            try:
                run(f"{args.pg_url}?options=-csearch_path%3D{schema}", path, "PostgreSQL")
            finally:
                with admin.connect() as c:
                    c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
                admin.dispose()


if __name__ == "__main__":
    main()
