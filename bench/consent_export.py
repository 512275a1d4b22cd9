"""Benchmark: `mailer consent export` of 1,000,000 events, and verifying the file and the database.

Run:  python bench/consent_export.py [--events 1000000] [--no-pg] [--no-sqlite] [--keep]

The events are a correctly hashed chain written with bulk executemany inserts (no ORM;
tests/consent_support.py), with evidence rows and a wording on 70% of them.  Each
export runs in a fresh child process (the real CLI code path, `consent_export.export`),
which reports its wall time and peak resident memory (ru_maxrss); the file is then
verified on its own, and the database chain verified.  Targets (issue 5): export of
1,000,000 events < 20 s with < 150 MB peak memory.  Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

import sqlalchemy as sa  # noqa: E402

from mailer import db  # noqa: E402
from mailer.settings import Settings  # noqa: E402

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SECRET = "bench"


def child_export(url: str, fmt: str, out: str) -> None:
    """Runs in a fresh process: one export, then report time and peak RSS as JSON."""
    from mailer.consent import export as consent_export

    settings = Settings(database_url=url, secret_key=SECRET)
    t0 = time.perf_counter()
    with db.session_scope(settings) as s, open(out, "w", encoding="utf-8", newline="") as fh:
        summary = consent_export.export(s, settings, fh, fmt=fmt)
    dt = time.perf_counter() - t0
    print(json.dumps({"seconds": dt, "events": summary.events, "bytes": os.path.getsize(out),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def child_verify(url: str, path: str | None) -> None:
    from mailer.consent import verify as consent_verify

    t0 = time.perf_counter()
    if path:
        report = consent_verify.verify_file(path)
    else:
        settings = Settings(database_url=url, secret_key=SECRET)
        with db.session_scope(settings) as s:
            report = consent_verify.verify_db(s, settings)
    print(json.dumps({"seconds": time.perf_counter() - t0, "ok": report.ok, "events": report.events,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_child(*args: str) -> dict:
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(url: str, label: str, events: int, tmp: Path) -> None:
    for fmt in ("jsonl", "csv"):
        out = tmp / f"consent.{fmt}"
        r = run_child("--child-export", url, fmt, str(out))
        assert r["events"] == events, r
        print(f"{label:10} export {fmt:5} {r['events']:>9,} events  {r['seconds']:6.1f} s  "
              f"{r['events'] / r['seconds']:>9,.0f} events/s  file {r['bytes'] / 1e6:6.0f} MB  "
              f"peak RSS {r['peak_rss_mb']:5.0f} MB", flush=True)
        v = run_child("--child-verify", url, str(out))
        assert v["ok"] and v["events"] == events, v
        print(f"{label:10} verify --file {fmt:5}          {v['seconds']:6.1f} s  "
              f"{events / v['seconds']:>9,.0f} events/s  peak RSS {v['peak_rss_mb']:5.0f} MB", flush=True)
        out.unlink()
    v = run_child("--child-verify", url, "")
    assert v["ok"] and v["events"] == events, v
    print(f"{label:10} verify (database)              {v['seconds']:6.1f} s  {events / v['seconds']:>9,.0f} events/s  "
          f"peak RSS {v['peak_rss_mb']:5.0f} MB", flush=True)


def fill(url: str, events: int) -> None:
    from tests.consent_support import bulk_chain

    settings = Settings(database_url=url, secret_key=SECRET)
    t0 = time.perf_counter()
    bulk_chain(settings, events, with_state=False)
    print(f"wrote {events:,} chained events in {time.perf_counter() - t0:.1f} s ({url.split(':')[0]})", flush=True)
    db.dispose_engines()


def pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-export":
        child_export(*sys.argv[2:5])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--child-verify":
        child_verify(sys.argv[2], sys.argv[3] or None)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--keep", action="store_true", help="Keep (and reuse) bench-consent.db / schema bench_consent.")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"SQLAlchemy {sa.__version__}, SQLite {__import__('sqlite3').sqlite_version}", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if not args.no_sqlite:
            path = Path("bench-consent.db").resolve() if args.keep else tmp / "bench.db"
            url = f"sqlite:///{path}"
            if not path.exists():
                db.upgrade(url)
                fill(url, args.events)
            measure(url, "sqlite", args.events, tmp)
            db.dispose_engines()
        if not args.no_pg and pg_reachable():
            schema = "bench_consent" if args.keep else "bench_" + uuid.uuid4().hex[:8]
            admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                exists = c.execute(sa.text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :s"),
                                   {"s": schema}).first() is not None
                if not exists:
                    c.execute(sa.text(f"CREATE SCHEMA {schema}"))
            url = f"{PG_URL}?options=-csearch_path%3D{schema}"
            try:
                if not exists:
                    db.upgrade(url)
                    fill(url, args.events)
                measure(url, "postgresql", args.events, tmp)
            finally:
                db.dispose_engines()
                if not args.keep:
                    with admin.connect() as c:
                        c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
                admin.dispose()


if __name__ == "__main__":
    main()
