"""Benchmark: `mailer customers import` of 100,000 rows into SQLite (and PostgreSQL if reachable).

Run: python bench/import_customers.py [--rows 100000] [--no-pg]
Prints rows/s and wall time per database; figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import random
import resource
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailer import db  # noqa: E402
from mailer.customers.records import import_file  # noqa: E402
from mailer.settings import Settings  # noqa: E402

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
LOCALES = ["en", "pl", "zh-TW", "zh-CN", "ko", "fr", "ar", "pl-PL"]
ZONES = ["Europe/Warsaw", "Asia/Taipei", "Asia/Seoul", "Europe/Paris", "Asia/Dubai", "America/New_York"]
TAGS = ["VIP", "newsletter", "first_time", "lapsed", "wholesale"]


def make_csv(path: Path, rows: int) -> None:
    rng = random.Random(7)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["email", "first_name", "last_name", "locale", "timezone", "country", "tags", "total_spent",
                    "currency", "orders_count", "last_order_at", "predicted_spend_tier"])
        for i in range(rows):
            w.writerow([f"customer{i}@example{i % 50}.com", f"First{i}", f"Last{i}", rng.choice(LOCALES),
                        rng.choice(ZONES), rng.choice(["PL", "TW", "KR", "FR", "AE", "US"]),
                        ";".join(rng.sample(TAGS, rng.randint(0, 2))), f"{rng.uniform(0, 5000):.2f}",
                        rng.choice(["EUR", "PLN", "TWD"]), rng.randint(0, 30),
                        f"2026-{rng.randint(1, 11):02d}-{rng.randint(1, 28):02d}",
                        rng.choice(["high", "medium", "low", ""])])


def pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def run(url: str, path: Path, rows: int, label: str) -> None:
    db.upgrade(url)
    settings = Settings(database_url=url)
    t0 = time.perf_counter()
    result = import_file(settings, path)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    result2 = import_file(settings, path)  # every row is now an update
    second = time.perf_counter() - t0
    assert result.created == rows and not result.errors, (result.created, result.errors[:3])
    assert result2.updated == rows
    print(f"{label:10s} create {rows} rows: {first:6.2f} s ({rows / first:8.0f} rows/s); "
          f"update {rows} rows: {second:6.2f} s ({rows / second:8.0f} rows/s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--no-pg", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "customers.csv"
        make_csv(path, args.rows)
        print(f"CSV: {args.rows} rows, {path.stat().st_size / 1e6:.1f} MB")
        run(f"sqlite:///{tmp}/bench.db", path, args.rows, "SQLite")
        if not args.no_pg and pg_reachable():
            import sqlalchemy as sa

            schema = "bench_" + uuid.uuid4().hex[:8]
            admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(sa.text(f"CREATE SCHEMA {schema}"))
            try:
                run(f"{PG_URL}?options=-csearch_path%3D{schema}", path, args.rows, "PostgreSQL")
            finally:
                db.dispose_engines()
                with admin.connect() as c:
                    c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
