"""Benchmark: counting and streaming segments over 1,000,000 customers (~30% consented).

Run:  python bench/segments.py [--customers 1000000] [--consent-share 0.3] [--no-pg] [--no-sqlite]
                               [--keep [--schema NAME]] [--only vip,high_spend_tier]

Builds the data set with bulk loads (executemany on SQLite, COPY on PostgreSQL): customers
with tags, spend, orders, tiers, dates, locales; a valid consent chain whose current
state grants ``newsletter`` to ~30%; 1% of those suppressed; opens and clicks for the
engagement segment.  Then, per database, for every shipped segment: ``count`` (best of
3, warm) and a full ``stream`` (default batch size 500) with recipients/s, plus the
process's resident memory while streaming.  Targets (issue 5): count < 1 s, stream
>= 200,000 recipients/s with flat memory.  Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import os
import platform
import pstats
import random
import socket
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from mailer import db, segments  # noqa: E402
from mailer.addresses import email_hash  # noqa: E402
from mailer.consent import ledger as consent
from mailer.instance_secrets import address_hash_salt
from mailer.settings import Settings  # noqa: E402

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
NOW = datetime.now(UTC)
LOCALES = ["en", "pl", "pl-PL", "zh-TW", "zh-CN", "ko", "fr", "ar", None]
ZONES = ["Europe/Warsaw", "Asia/Taipei", "Asia/Seoul", "Europe/Paris", "Asia/Dubai", "America/New_York"]
COUNTRIES = ["PL", "TW", "KR", "FR", "AE", "US", None]
TAGS = ["VIP", "newsletter", "first_time", "lapsed", "wholesale"]
TIERS = ["high", "medium", "low", None]
#: --profile: cProfile each stream and print its top functions.
PROFILE = False
SHIPPED = ["newsletter_all", "vip", "first_time_buyers", "high_spend_tier", "lapsed_90_days", "engaged_30_days"]
#: Rows per executemany / COPY chunk.
CHUNK = 20_000


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def ts(value):
    """SQLite storage of an aware UTC datetime (what SQLAlchemy writes); other values unchanged."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(value, datetime) else value


def generate(n: int, share: float, salt: bytes, seed: int = 5):
    """Yield (table, row tuple) for every row of the data set, in insert order by table."""
    rng = random.Random(seed)
    customers, tags, events, states, sups, tracking = [], [], [], [], [], []
    prev = consent.GENESIS
    seq = 0
    wording_sha = hashlib.sha256(b"Yes, send me the newsletter.").hexdigest()
    for cid in range(1, n + 1):
        email = f"customer{cid}@example{cid % 50}.com"
        h = email_hash(email, salt)
        orders = rng.choice([0, 0, 1, 1, 2, 3, 5, 8, 13])
        last = NOW - timedelta(days=rng.randrange(0, 400), seconds=rng.randrange(86400)) if orders else None
        created = NOW - timedelta(days=rng.randrange(0, 1500))
        customers.append((cid, email, h, f"First{cid}", f"Last{cid}", rng.choice(LOCALES), rng.choice(ZONES),
                          rng.choice(COUNTRIES), round(rng.uniform(0, 3000) if orders else 0, 2),
                          rng.choice(["EUR", "PLN", "TWD"]), orders, last, rng.choice(TIERS), "{}",
                          created, created))
        for t in rng.sample(TAGS, rng.choice([0, 0, 1, 1, 2])):
            tags.append((cid, t))
        if rng.random() < share:
            seq += 1
            when = created + timedelta(hours=1)
            fields = {"seq": seq, "subject_hash": h, "purpose": "newsletter", "action": "granted",
                      "basis": "consent", "source": "signup_form", "occurred_at": consent._iso(when),
                      "recorded_at": consent._iso(when), "form_id": "footer", "wording_sha256": wording_sha,
                      "wording_version": "v1", "confirmed_at": None, "ip_digest": None, "user_agent_digest": None}
            hh = consent.chain_hash(prev, fields)
            events.append((seq, seq, cid, h, "newsletter", "granted", "consent", "signup_form", when, when,
                           "footer", "v1", wording_sha, prev, hh))
            states.append((cid, "newsletter", True, "consent", seq, when))
            prev = hh
            if rng.random() < 0.01:
                sups.append((len(sups) + 1, h, "hard_bounce", "all", NOW))
        if rng.random() < 0.15:
            for _ in range(rng.randint(1, 3)):
                tracking.append((len(tracking) + 1, cid, rng.choice(["open", "click", "machine_open"]),
                                 NOW - timedelta(days=rng.randrange(0, 90))))
    return customers, tags, events, states, sups, tracking


COLS = {
    "customers": "id, email, email_hash, first_name, last_name, locale, timezone, country, total_spent, currency, "
                 "orders_count, last_order_at, predicted_spend_tier, attributes, created_at, updated_at",
    "customer_tags": "customer_id, tag",
    "consent_events": "id, seq, customer_id, subject_hash, purpose, action, basis, source, occurred_at, recorded_at, "
                      "form_id, wording_version, wording_sha256, prev_hash, hash",
    "consent_state": "customer_id, purpose, granted, basis, event_id, updated_at",
    "suppressions": "id, email_hash, reason, scope, created_at",
    "tracking_events": "id, customer_id, kind, occurred_at",
}


def load_sqlite(path: Path, data) -> None:
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    for table, rows in zip(COLS, data):
        if table == "consent_state":
            continue  # derived from consent_events by the database's trigger (migration 0002)
        cols = COLS[table]
        marks = ", ".join("?" * len(cols.split(",")))
        conn.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", (tuple(map(ts, r)) for r in rows))
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()


def load_pg(url: str, schema: str, data) -> None:
    import psycopg

    raw = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(raw, options=f"-csearch_path={schema}") as conn:
        with conn.cursor() as cur:
            cur.execute("SET session_replication_role = replica")  # bulk load: skip FK triggers
            for table, rows in zip(COLS, data):
                with cur.copy(f"COPY {table} ({COLS[table]}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            cur.execute("SET session_replication_role = origin")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")


def measure(url: str, label: str, settings: Settings) -> list[dict]:
    results = []
    with db.session_scope(settings) as s:
        # Every stream examines all consenting customers, whatever the segment keeps.
        consenting = s.execute(sa.text("SELECT count(*) FROM consent_state WHERE purpose = 'newsletter' "
                                       "AND granted")).scalar()
    for name in SHIPPED:
        seg = segments.load(settings, name)
        with db.session_scope(settings) as s:
            segments.count(s, settings, seg)  # warm
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                n = segments.count(s, settings, seg)
                best = min(best, time.perf_counter() - t0)
            rss0 = rss_mb()
            peak = rss0
            prof = cProfile.Profile() if PROFILE else None
            c0 = time.process_time()
            t0 = time.perf_counter()
            streamed = 0
            pages = 0
            if prof:
                prof.enable()
            for page in segments.stream(s, settings, seg):
                streamed += len(page)
                pages += 1
                if pages % 50 == 0:
                    peak = max(peak, rss_mb())
            if prof:
                prof.disable()
            dt = time.perf_counter() - t0
            client_cpu = time.process_time() - c0
        assert streamed == n, (name, streamed, n)
        row = {"db": label, "segment": name, "recipients": n, "count_s": best, "stream_s": dt,
               "rate": n / dt if dt else float("inf"), "scan_rate": consenting / dt if dt else float("inf"),
               "rss_start_mb": rss0, "rss_growth_mb": peak - rss0}
        results.append(row)
        print(f"{label:10} {name:18} {n:>8} recipients  count {best * 1000:7.1f} ms  stream {dt:6.2f} s "
              f"= {row['rate']:>9,.0f} recipients/s ({row['scan_rate']:>9,.0f} consenting customers examined/s)  "
              f"RSS {rss0:4.0f} MB (+{peak - rss0:.1f} MB while streaming); this process's CPU "
              f"{client_cpu / dt:.0%} of the stream's wall time", flush=True)
        if prof:
            pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    return results


def pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--consent-share", type=float, default=0.3)
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--keep", action="store_true",
                    help="Keep the data set (bench-segments.db here, PostgreSQL schema bench_segments) and reuse "
                         "it on the next run.")
    ap.add_argument("--schema", default="bench_segments",
                    help="PostgreSQL schema kept by --keep (one of your own when others run this bench too)")
    ap.add_argument("--only", default="", help="comma-separated segment names to measure (default: every shipped one)")
    ap.add_argument("--profile", action="store_true", help="cProfile each stream (slower) and print its top functions")
    args = ap.parse_args()
    global PROFILE
    PROFILE = args.profile
    if args.only:
        SHIPPED[:] = [n for n in SHIPPED if n in args.only.split(",")]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"SQLAlchemy {sa.__version__}, SQLite {__import__('sqlite3').sqlite_version}", flush=True)
    # One data set is generated for both databases, so both are seeded with one pinned salt.
    base = Settings(secret_key="bench", hash_salt="bench-salt", segments_dir=ROOT / "segments")
    data = None

    def dataset():
        nonlocal data
        if data is None:
            t0 = time.perf_counter()
            data = generate(args.customers, args.consent_share, address_hash_salt(base))
            print(f"generated {len(data[0]):,} customers, {len(data[2]):,} consenting, {len(data[4]):,} suppressed, "
                  f"{len(data[5]):,} tracking events in {time.perf_counter() - t0:.1f} s", flush=True)
        return data

    if not args.no_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path("bench-segments.db").resolve() if args.keep else Path(tmp) / "bench.db"
            url = f"sqlite:///{path}"
            if not path.exists():
                db.upgrade(base.replace(database_url=url))
                t0 = time.perf_counter()
                load_sqlite(path, dataset())
                print(f"SQLite loaded in {time.perf_counter() - t0:.1f} s", flush=True)
            measure(url, "sqlite", base.replace(database_url=url))
            db.dispose_engines()
    if not args.no_pg and pg_reachable():
        schema = args.schema if args.keep else "bench_" + uuid.uuid4().hex[:8]
        admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            exists = c.execute(sa.text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :s"),
                               {"s": schema}).first() is not None
            if not exists:
                c.execute(sa.text(f"CREATE SCHEMA {schema}"))
        url = f"{PG_URL}?options=-csearch_path%3D{schema}"
        try:
            if not exists:
                db.upgrade(base.replace(database_url=url))
                t0 = time.perf_counter()
                load_pg(PG_URL, schema, dataset())
                print(f"PostgreSQL loaded in {time.perf_counter() - t0:.1f} s", flush=True)
            measure(url, "postgresql", base.replace(database_url=url))
        finally:
            db.dispose_engines()
            if not args.keep:
                with admin.connect() as c:
                    c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
            admin.dispose()


if __name__ == "__main__":
    main()
