"""Benchmark: server time of the console's pages on the 1,000,000-customer data set of bench/segments.py.

Run:  python bench/console.py [--customers 1000000] [--requests 60] [--no-pg] [--no-sqlite] [--keep]

Builds the data set with bench/segments.py's generator and bulk loaders (customers with
tags, ~30% consenting with a hash chain, suppressions, tracking), then times, per
database, p50 and p95 of:

* the dashboard and the campaign list (console-core's and console-marketer's pages),
* a customer search (e-mail prefixes, name prefixes and "first last"),
* a customer profile (consent history with proof, mail, tracking, suppressions).

Each figure is the server time of one request through the HTTP app (FastAPI in
process, starlette's TestClient, logged in as an admin: routing, the role check,
the queries, the Jinja page), warm.  A page whose route is not on this branch is timed
as its service function instead, and the output says so in the ``through`` column.
Target (issue 16): p95 < 300 ms each.  Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import sqlalchemy as sa  # noqa: E402
from common import loadavg, percentile, print_machine  # noqa: E402

import segments as seg_bench  # noqa: E402  (bench/segments.py: generator and loaders)
from mailer import db  # noqa: E402
from mailer.instance_secrets import address_hash_salt  # noqa: E402
from mailer.settings import Settings  # noqa: E402

TARGET_P95_MS = 300.0
BENCH_PASSWORD = "bench-console-password-1"  # a throwaway account in a throwaway database  # nosec B105


def _queries(n: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(10):
        cid = rng.randrange(1, n + 1)
        out += [f"customer{cid}", f"customer{cid}@example{cid % 50}.com", f"first{cid}", f"last{cid}",
                f"first{cid} last{cid}"]
    out += ["customer1", "first9", "customer"]  # short prefixes: many matches, the LIMIT decides
    return out


def _profiles(settings: Settings, rng: random.Random) -> list[int]:
    with db.session_scope(settings) as s:
        # Customers with a consent event (a history to show), plus any customer.
        with_consent = list(s.execute(sa.text("SELECT customer_id FROM consent_events WHERE customer_id IS NOT NULL "
                                              "ORDER BY seq DESC LIMIT 200")).scalars())
        top = s.execute(sa.text("SELECT max(id) FROM customers")).scalar()
    return rng.sample(with_consent, min(20, len(with_consent))) + [rng.randrange(1, top + 1) for _ in range(10)]


class Http:
    """The HTTP app in process with a logged-in admin, when the console is on this branch."""

    def __init__(self, settings: Settings):
        from starlette.testclient import TestClient

        from mailer.app import App
        from mailer.web.app import create_app
        from tests.console_support import login, make_console_user

        self.app = App(settings)
        self.client = TestClient(create_app(app=self.app))
        email = f"bench-admin-{uuid.uuid4().hex[:8]}@example.com"  # a kept data set gets one per run
        make_console_user(settings, email, "admin", password=BENCH_PASSWORD)
        login(self.client, email, BENCH_PASSWORD)

    def serves(self, url: str) -> bool:
        """Is this page on the branch? (A 404 from routing means another helper's page is not merged yet.)"""
        return self.client.get(url, follow_redirects=False).status_code != 404

    def get(self, url: str) -> None:
        r = self.client.get(url, follow_redirects=False)
        if r.status_code != 200:
            raise SystemExit(f"GET {url}: HTTP {r.status_code}: {r.text[:300]}")


def _http(settings: Settings) -> Http | None:
    try:
        import mailer.web.console.auth  # noqa: F401  (console-core's; absent before the merge)
        import tests.console_support  # noqa: F401
    except ImportError as exc:
        print(f"console not importable here ({exc}): timing service functions", flush=True)
        return None
    return Http(settings)


def _services(settings: Settings):
    """The same work as each page, called as service functions (for pages not on this branch)."""
    from mailer.compliance import profile, search

    def dashboard(_):
        from mailer import dashboard as figures  # console-core's service behind /console/
        with db.session_scope(settings) as s:
            figures.build(s)

    def campaigns(_):
        from mailer.campaigns import service
        with db.session_scope(settings) as s:
            service.list_campaigns(s)

    def customer_search(q):
        with db.session_scope(settings) as s:
            search.search(s, q)

    def customer_profile(cid):
        with db.session_scope(settings) as s:
            profile.load(s, cid)

    return {"dashboard": dashboard, "campaign list": campaigns, "customer search": customer_search,
            "customer profile": customer_profile}


def measure(settings: Settings, label: str, n: int, requests: int) -> list[dict]:
    rng = random.Random(16)
    queries, profiles = _queries(n, rng), _profiles(settings, rng)
    http = _http(settings)
    services = _services(settings)
    plan = [("dashboard", "/console/", "/console/", [None]),
            ("campaign list", "/console/campaigns", "/console/campaigns", [None]),
            ("customer search", "/console/customers", "/console/customers?q={}", queries),
            ("customer profile", "/console/customers/{customer_id}", "/console/customers/{}", profiles)]
    rows = []
    for name, _route, url, args in plan:
        through_http = http is not None and http.serves(url.format(args[0]) if args[0] is not None else url)
        if through_http:
            def call(a, url=url):
                http.get(url.format(a) if a is not None else url)
        else:
            call = services[name]
        try:
            call(args[0])  # warm
        except Exception as exc:  # a page of another helper not on this branch yet
            print(f"{label:10} {name:16} not measured: {type(exc).__name__}: {exc}", flush=True)
            continue
        times = []
        for i in range(requests):
            a = args[i % len(args)]
            t0 = time.perf_counter()
            call(a)
            times.append((time.perf_counter() - t0) * 1000)
        p50, p95 = percentile(times, 50), percentile(times, 95)
        row = {"db": label, "page": name, "through": "HTTP" if through_http else "service", "p50": p50,
               "p95": p95, "ok": p95 < TARGET_P95_MS}
        rows.append(row)
        print(f"{label:10} {name:16} via {row['through']:7}  p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  "
              f"({requests} requests; target p95 < {TARGET_P95_MS:.0f} ms: {'met' if row['ok'] else 'MISSED'})",
              flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--consent-share", type=float, default=0.3)
    ap.add_argument("--requests", type=int, default=60, help="Timed requests per page (after one warm-up).")
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--keep", action="store_true", help="Keep the data set (bench-console.db, PostgreSQL schema "
                                                        "bench_console) and reuse it next time.")
    args = ap.parse_args()
    print_machine("console pages")
    base = Settings(secret_key="bench", hash_salt="bench-salt", segments_dir=ROOT / "segments",
                    templates_dir=ROOT / "templates", automations_dir=ROOT / "automations",
                    broker_url="stub://", smtp_url="memory://default")
    data = None

    def dataset():
        nonlocal data
        if data is None:
            t0 = time.perf_counter()
            data = seg_bench.generate(args.customers, args.consent_share, address_hash_salt(base))
            print(f"generated {len(data[0]):,} customers in {time.perf_counter() - t0:.1f} s", flush=True)
        return data

    if not args.no_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path("bench-console.db").resolve() if args.keep else Path(tmp) / "bench.db"
            url = f"sqlite:///{path}"
            if not path.exists():
                db.upgrade(base.replace(database_url=url))
                t0 = time.perf_counter()
                seg_bench.load_sqlite(path, dataset())
                print(f"SQLite loaded in {time.perf_counter() - t0:.1f} s", flush=True)
            else:
                db.upgrade(base.replace(database_url=url))  # a kept data set follows new migrations
            measure(base.replace(database_url=url), "sqlite", args.customers, args.requests)
            db.dispose_engines()
    if not args.no_pg and seg_bench.pg_reachable():
        schema = "bench_console" if args.keep else "bench_" + uuid.uuid4().hex[:8]
        admin = sa.create_engine(seg_bench.PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            exists = c.execute(sa.text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :s"),
                               {"s": schema}).first() is not None
            if not exists:
                c.execute(sa.text(f"CREATE SCHEMA {schema}"))
        url = f"{seg_bench.PG_URL}?options=-csearch_path%3D{schema}"
        try:
            if not exists:
                db.upgrade(base.replace(database_url=url))
                t0 = time.perf_counter()
                seg_bench.load_pg(seg_bench.PG_URL, schema, dataset())
                print(f"PostgreSQL loaded in {time.perf_counter() - t0:.1f} s", flush=True)
            else:
                db.upgrade(base.replace(database_url=url))
            measure(base.replace(database_url=url), "postgresql", args.customers, args.requests)
        finally:
            db.dispose_engines()
            if not args.keep:
                with admin.connect() as c:
                    c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
            admin.dispose()
    print(f"load average after: {loadavg()}", flush=True)


if __name__ == "__main__":
    main()
