"""Revenue attribution at shop scale: orders against tracking events, batch and stream; a big campaign report.

Usage::

    python bench/attribution.py [--db sqlite|postgresql|both] [--orders N] [--events N]
                                [--customers N] [--stream N] [--seed S] [--full]

``--full`` is the issue's size: 1,000,000 orders against 10,000,000 tracking events
(200,000 customers, 10 campaigns: 2,000,000 deliveries).  The defaults are a tenth of that.

Bulk generation (seeded numpy, written with ``executemany`` on SQLite and ``COPY`` on
PostgreSQL, into a schema made by the real migrations): ``--customers`` customers; 10
campaigns over 60 days, each mailed to every customer (campaign 1 is the
``--customers``-recipient campaign the report renders); ``--events`` tracking events on
random deliveries: 55% human opens, 25% machine opens, 20% clicks, each within 3 days of
its campaign's send; ``--orders`` orders at random times in the 60 days, 30% in a
second currency.

Timed, through the product's code (:mod:`mailer.customers.attribution`):

* **stream**: the first ``--stream`` orders one by one, each in its own transaction, as
  ``order_placed`` events are (``attribute_order``);
* **batch**: every order, ``ATTRIBUTE_BATCH_ORDERS`` per statement and transaction
  (``attribute_range``, a backfill or an import); then the stream sample is checked to
  agree with the batch result, order by order;
* **report**: ``mailer campaign report``'s HTML for campaign 1 (``--customers`` recipients).

``--report-only`` measures only the report at the issue's size: ONE campaign mailed to
``--customers`` (200,000) recipients with ``--events`` (1,000,000) tracking events (54% human
opens, 25% machine opens, 19% clicks over 8 links, 2% unsubscribes, within 3 days).  The
rollups the report reads are filled the two ways the product fills them: 90% of the events
are bulk-loaded into a schema at revision 0019 and migration 0021 backfills them
(``INSERT ... SELECT ... GROUP BY``, timed), the last 10% are bulk-loaded at head, where the
triggers count them (timed, against the same load before the upgrade).  Then
``html_report`` is timed (best of 3 after one warm-up), the old count-at-read queries
(tests/report_oracle.py) once, and the report's figures, chart and links are checked
equal to theirs.

Prints rows per second, peak memory (``ru_maxrss`` of the process, which includes the
generator's arrays) and the ``tracemalloc`` peak of each timed step.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import resource
import sys
import time
import tracemalloc
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailer import db
from mailer.campaigns import reports
from mailer.customers import attribution
from mailer.models import Attribution
from mailer.settings import Settings

PG_URL = os.environ.get("MAILER_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CAMPAIGNS = 10
SPAN_DAYS = 60
START = datetime(2026, 9, 1, tzinfo=UTC)
#: Rows generated and written per chunk (bounds the generator's memory).
CHUNK = 500_000
KINDS = np.array(["open", "machine_open", "click"])
KIND_P = [0.55, 0.25, 0.20]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _ts(seconds: np.ndarray, sep: str) -> np.ndarray:
    """Seconds after START as text timestamps (microseconds), vectorized."""
    base = np.datetime64(START.replace(tzinfo=None), "us")
    text = np.datetime_as_string(base + (seconds * 1e6).astype("timedelta64[us]"), unit="us")
    return np.char.replace(text, "T", sep) if sep != "T" else text


class Writer:
    """Bulk rows into one table: executemany on SQLite, COPY on PostgreSQL."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self.pg = engine.dialect.name == "postgresql"

    def write(self, table: str, columns: list[str], rows) -> None:
        with self.engine.begin() as conn:
            raw = conn.connection.dbapi_connection
            cur = raw.cursor()
            if self.pg:
                buf = io.StringIO()
                for r in rows:
                    buf.write("\t".join("\\N" if v is None else str(v) for v in r))
                    buf.write("\n")
                with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    copy.write(buf.getvalue())
            else:
                marks = ", ".join("?" for _ in columns)
                cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)


def generate(engine: sa.Engine, *, customers: int, events: int, orders: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    w = Writer(engine)
    sep = "T" if w.pg else " "
    tz = "+00" if w.pg else ""
    now = _ts(np.array([SPAN_DAYS * 86400.0]), sep)[0] + tz
    started = time.perf_counter()
    for lo in range(0, customers, CHUNK):
        ids = range(lo + 1, min(customers, lo + CHUNK) + 1)
        w.write("customers", ["id", "email", "email_hash", "total_spent", "orders_count", "attributes", "created_at",
                              "updated_at"],
                [(i, f"c{i}@example.com", f"h{i}", 0, 0, "{}", now, now) for i in ids])
    sent_s = np.sort(rng.uniform(0, (SPAN_DAYS - 3) * 86400, CAMPAIGNS))
    w.write("campaigns", ["id", "name", "template", "segment", "purpose", "subjects", "data", "status", "tracking",
                          "cursor", "fanout_done", "created_at"],
            [(c + 1, f"Campaign {c + 1}", "newsletter/product_launch", "newsletter_all", "newsletter", "{}", "{}",
              "completed", True if w.pg else 1, customers, True if w.pg else 1, now) for c in range(CAMPAIGNS)])
    # Deliveries: campaign c to customer k has id c * customers + k (so a delivery id decodes to both).
    for c in range(CAMPAIGNS):
        when = _ts(np.array([sent_s[c]]), sep)[0] + tz
        for lo in range(0, customers, CHUNK):
            ks = range(lo + 1, min(customers, lo + CHUNK) + 1)
            w.write("deliveries", ["id", "idempotency_key", "kind", "campaign_id", "customer_id", "to_address",
                                   "to_hash", "locale", "data", "purpose", "queue", "status", "attempts",
                                   "created_at", "sent_at"],
                    [(c * customers + k, f"campaign:{c + 1}:{k}", "newsletter/product_launch", c + 1, k,
                      f"c{k}@example.com", f"h{k}", "en", "{}", "newsletter", "bulk", "sent", 1, when, when)
                     for k in ks])
    made_deliveries = time.perf_counter()
    for lo in range(0, events, CHUNK):
        n = min(CHUNK, events - lo)
        camp = rng.integers(0, CAMPAIGNS, n)
        cust = rng.integers(1, customers + 1, n)
        at = _ts(sent_s[camp] + rng.exponential(8 * 3600, n).clip(0, 3 * 86400), sep)
        kind = rng.choice(KINDS, n, p=KIND_P)
        w.write("tracking_events", ["id", "delivery_id", "campaign_id", "customer_id", "kind", "url", "occurred_at"],
                [(lo + i + 1, int(camp[i]) * customers + int(cust[i]), int(camp[i]) + 1, int(cust[i]), kind[i],
                  "https://shop.example.com/p" if kind[i] == "click" else None, at[i] + tz) for i in range(n)])
    made_events = time.perf_counter()
    for lo in range(0, orders, CHUNK):
        n = min(CHUNK, orders - lo)
        cust = rng.integers(1, customers + 1, n)
        at = _ts(rng.uniform(0, SPAN_DAYS * 86400, n), sep)
        amount = np.round(rng.gamma(2.0, 40.0, n), 2)
        pln = rng.random(n) < 0.3
        w.write("orders", ["id", "customer_id", "shop_order_id", "placed_at", "total", "currency", "total_shop",
                           "status", "created_at", "updated_at"],
                [(lo + i + 1, int(cust[i]), f"o{lo + i + 1}", at[i] + tz, f"{amount[i]:.2f}",
                  "PLN" if pln[i] else "EUR", None if pln[i] else f"{amount[i]:.2f}", "placed", now, now)
                 for i in range(n)])
    done = time.perf_counter()
    if not w.pg:
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
    return {"deliveries": CAMPAIGNS * customers, "generate_s": round(done - started, 1),
            "deliveries_s": round(made_deliveries - started, 1), "events_s": round(made_events - made_deliveries, 1),
            "orders_s": round(done - made_events, 1)}


REPORT_KINDS = np.array(["open", "machine_open", "click", "unsubscribe"])
REPORT_KIND_P = [0.54, 0.25, 0.19, 0.02]
REPORT_LINKS = np.array([f"https://shop.example.com/p/{i}?utm_source=mailer" for i in range(8)])
#: Share of the --report-only events loaded before migration 0021 (backfilled); the rest fire the triggers.
BACKFILLED_SHARE = 0.9


def _report_events(w: Writer, rng, *, first_id: int, n: int, customers: int, sent_s: float, sep: str, tz: str) -> None:
    for lo in range(0, n, CHUNK):
        m = min(CHUNK, n - lo)
        cust = rng.integers(1, customers + 1, m)
        at = _ts(sent_s + rng.exponential(8 * 3600, m).clip(0, 3 * 86400), sep)
        kind = rng.choice(REPORT_KINDS, m, p=REPORT_KIND_P)
        link = rng.choice(REPORT_LINKS, m)
        w.write("tracking_events", ["id", "delivery_id", "campaign_id", "customer_id", "kind", "url", "occurred_at"],
                [(first_id + lo + i, int(cust[i]), 1, int(cust[i]), kind[i],
                  link[i] if kind[i] == "click" else None, at[i] + tz) for i in range(m)])


def _proc_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a local process (a PostgreSQL backend), None if unreadable."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report_only(url: str, args) -> dict:
    """One campaign, --customers recipients, --events events: the report, rollups against the oracle."""
    from tests import report_oracle

    db.upgrade(url, "0019")
    engine = db.get_engine(url)
    rng = np.random.default_rng(args.seed)
    w = Writer(engine)
    sep, tz = ("T", "+00") if w.pg else (" ", "")
    now = _ts(np.array([SPAN_DAYS * 86400.0]), sep)[0] + tz
    out: dict = {"db": engine.dialect.name, "recipients": args.customers, "events": args.events}
    t0 = time.perf_counter()
    for lo in range(0, args.customers, CHUNK):
        ids = range(lo + 1, min(args.customers, lo + CHUNK) + 1)
        w.write("customers", ["id", "email", "email_hash", "total_spent", "orders_count", "attributes", "created_at",
                              "updated_at"],
                [(i, f"c{i}@example.com", f"h{i}", 0, 0, "{}", now, now) for i in ids])
    when = _ts(np.array([86400.0]), sep)[0] + tz
    w.write("campaigns", ["id", "name", "template", "segment", "purpose", "subjects", "data", "status", "tracking",
                          "cursor", "fanout_done", "created_at"],
            [(1, "Campaign 1", "newsletter/product_launch", "newsletter_all", "newsletter", "{}", "{}", "completed",
              True if w.pg else 1, args.customers, True if w.pg else 1, now)])
    for lo in range(0, args.customers, CHUNK):
        ks = range(lo + 1, min(args.customers, lo + CHUNK) + 1)
        w.write("deliveries", ["id", "idempotency_key", "kind", "campaign_id", "customer_id", "to_address", "to_hash",
                               "locale", "data", "purpose", "queue", "status", "attempts", "created_at", "sent_at"],
                [(k, f"campaign:1:{k}", "newsletter/product_launch", 1, k, f"c{k}@example.com", f"h{k}", "en", "{}",
                  "newsletter", "bulk", "sent", 1, when, when) for k in ks])
    early = int(args.events * BACKFILLED_SHARE)
    late = args.events - early
    # The same size as the trigger-counted load, loaded before the upgrade: the triggers' cost is the difference.
    plain = min(late, early)
    _report_events(w, rng, first_id=1, n=early - plain, customers=args.customers, sent_s=86400.0, sep=sep, tz=tz)
    t2 = time.perf_counter()
    _report_events(w, rng, first_id=early - plain + 1, n=plain, customers=args.customers, sent_s=86400.0, sep=sep,
                   tz=tz)
    t3 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE"))
    t4 = time.perf_counter()
    db.upgrade(url)  # migration 0021: the triggers, then the backfill of `early` events
    t5 = time.perf_counter()
    _report_events(w, rng, first_id=early + 1, n=late, customers=args.customers, sent_s=86400.0, sep=sep, tz=tz)
    t6 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE"))
    out["generate_s"] = round(t2 - t0, 1)
    out["load_without_triggers"] = {"events": plain, "s": round(t3 - t2, 1)}
    out["backfill_0021"] = {"events": early, "s": round(t5 - t4, 1)}
    out["load_with_triggers"] = {"events": late, "s": round(t6 - t5, 1),
                                 "events_per_s": round(late / (t6 - t5))}
    factory = db.session_factory(url)

    def report():
        with factory.begin() as s:
            return reports.html_report(s, 1)

    report()  # warm-up
    # Wall time without tracemalloc (which slows every Python allocation several fold and is
    # not the product's cost); the memory peak from one more run under tracemalloc.
    times = []
    for _ in range(3):
        t = time.perf_counter()
        page = report()
        times.append(time.perf_counter() - t)
    _, traced_s, peak = _timed("report", report)
    # CPU seconds of one report, which a loaded machine does not inflate the way it does wall
    # time: this process (all of SQLite's work) plus, on PostgreSQL, the server backend that ran
    # it (from /proc, when the server runs on this machine).
    server_cpu = []

    def measured_report():
        with factory.begin() as s:
            pid = s.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() if w.pg else None
            before = _proc_cpu_s(pid)
            reports.html_report(s, 1)
            after = _proc_cpu_s(pid)
            if before is not None and after is not None:
                server_cpu.append(after - before)

    cpu0 = time.process_time()
    measured_report()
    out["report"] = {"load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()), "best_s": round(min(times), 3),
                     "runs_s": [round(t, 3) for t in times], "cpu_s": round(time.process_time() - cpu0, 3),
                     "server_cpu_s": round(server_cpu[0], 3) if server_cpu else None, "bytes": len(page),
                     "tracemalloc_peak_mb": round(peak, 1),
                     "wall_under_tracemalloc_s": round(traced_s, 3)}
    with factory.begin() as s:
        t7 = time.perf_counter()
        figures = report_oracle.figures(s, 1)
        chart = report_oracle.timeline(s, 1)
        links = report_oracle.top_links(s, 1)
        out["count_at_read_s"] = round(time.perf_counter() - t7, 3)
        f = reports.figures(s, 1)
        mine = {k: getattr(f, k) for k in figures}
        out["figures"] = mine
        out["rollups_equal_count_at_read"] = (mine == figures and reports.timeline(s, 1) == chart
                                              and reports.top_links(s, 1) == links)
    out["ru_maxrss_mb"] = round(_rss_mb(), 1)
    db.dispose_engines()
    return out


def _timed(label: str, fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, elapsed, peak / 2**20


def run(url: str, args) -> dict:
    db.upgrade(url)
    engine = db.get_engine(url)
    settings = Settings(database_url=url, broker_url="stub://")
    gen = generate(engine, customers=args.customers, events=args.events, orders=args.orders, seed=args.seed)
    factory = db.session_factory(url)
    out = {"db": engine.dialect.name, **gen}

    def stream():
        for oid in range(1, args.stream + 1):
            with factory.begin() as s:
                attribution.attribute_order(s, settings, oid)

    _, t, peak = _timed("stream", stream)
    out["stream"] = {"orders": args.stream, "s": round(t, 2), "per_order_ms": round(t / max(args.stream, 1) * 1000, 3),
                     "orders_per_s": round(args.stream / t), "tracemalloc_peak_mb": round(peak, 1)}
    with factory.begin() as s:
        streamed = {r.order_id: (r.delivery_id, r.basis) for r in s.execute(sa.select(Attribution)).scalars()}
        s.execute(sa.delete(Attribution))

    def batch():
        added = 0
        step = attribution.ATTRIBUTE_BATCH_ORDERS
        for lo in range(1, args.orders + 1, step):
            with factory.begin() as s:
                added += attribution.attribute_range(s, settings, lo, min(lo + step - 1, args.orders))
        return added

    added, t, peak = _timed("batch", batch)
    out["batch"] = {"orders": args.orders, "attributed": added, "s": round(t, 2), "orders_per_s": round(args.orders / t),
                    "tracemalloc_peak_mb": round(peak, 1)}
    with factory.begin() as s:
        batched = {r.order_id: (r.delivery_id, r.basis) for r in s.execute(
            sa.select(Attribution).where(Attribution.order_id <= args.stream)).scalars()}
        by_basis = dict(s.execute(sa.select(Attribution.basis, sa.func.count()).group_by(Attribution.basis)).all())
    out["batch"]["by_basis"] = by_basis
    out["stream_agrees_with_batch"] = streamed == batched

    def report():
        with factory.begin() as s:
            return reports.html_report(s, 1)

    page, t, peak = _timed("report", report)
    out["report"] = {"recipients": args.customers, "s": round(t, 3), "bytes": len(page),
                     "tracemalloc_peak_mb": round(peak, 1)}
    out["ru_maxrss_mb"] = round(_rss_mb(), 1)
    db.dispose_engines()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    p.add_argument("--orders", type=int, default=100_000)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--customers", type=int, default=200_000)
    p.add_argument("--stream", type=int, default=2_000, help="orders attributed one by one (the event path)")
    p.add_argument("--seed", type=int, default=20)
    p.add_argument("--full", action="store_true", help="1,000,000 orders against 10,000,000 tracking events")
    p.add_argument("--dir", default="/tmp", help="where the SQLite file goes")
    p.add_argument("--report-only", action="store_true",
                   help="only the report: one campaign, --customers recipients, --events events")
    args = p.parse_args()
    if args.full:
        args.orders, args.events = 1_000_000, 10_000_000
    if args.report_only:
        print(f"# report bench: one campaign, {args.customers:,} recipients, {args.events:,} tracking events; "
              f"{platform.python_version()} on {os.cpu_count()} cores, load {os.getloadavg()}", flush=True)
    else:
        print(f"# attribution bench: {args.orders:,} orders, {args.events:,} tracking events, {args.customers:,} "
              f"customers, {CAMPAIGNS} campaigns; {platform.python_version()} on {os.cpu_count()} cores", flush=True)
    for name in (("sqlite", "postgresql") if args.db == "both" else (args.db,)):
        if name == "sqlite":
            path = Path(args.dir) / f"bench_attribution_{uuid.uuid4().hex[:8]}.db"
            url = f"sqlite:///{path}"
            try:
                print((report_only if args.report_only else run)(url, args), flush=True)
            finally:
                path.unlink(missing_ok=True)
        else:
            schema = "bench_" + uuid.uuid4().hex[:10]
            admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(sa.text(f"CREATE SCHEMA {schema}"))
            sep = "&" if "?" in PG_URL else "?"
            try:
                print((report_only if args.report_only else run)(f"{PG_URL}{sep}options=-csearch_path%3D{schema}", args),
                      flush=True)
            finally:
                with admin.connect() as c:
                    c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
                admin.dispose()


if __name__ == "__main__":
    main()
