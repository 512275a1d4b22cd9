"""Predictions on the database: 1,000,000 customers and ~5,000,000 orders in SQLite / PostgreSQL.

Usage: ``python bench/predict_db.py [--customers N] [--db both|sqlite|postgresql] [--seed S] [--quick]``.

The orders come from the known BG/NBD + Gamma-Gamma process of ``bench/predict.py``
(:func:`predict.simulate`), bulk loaded into a migrated database of the benchmark's own
(executemany on SQLite, COPY on PostgreSQL; not timed). Then, in a fresh child process
(so its peak memory is the product's alone, not the generator's), the product's path:

* ``order_arrays``: the orders table read into numpy (timed alone as well; a raw cursor on
  SQLite, binary COPY on PostgreSQL);
* ``predictions.run(score=True)``: what ``mailer predict score`` and the daily refit run:
  read, fit both models, write every customer's figures (a temporary table and one
  ``UPDATE ... FROM``), record the fit;
* ``raise_prediction_events`` twice: the first pass records every customer's starting
  point (1,000,000 ``prediction_triggers`` rows per trigger, by ``INSERT ... SELECT``), the
  second is a rerun that finds nothing to raise (what a daily pass costs when little changed).

Prints the machine, each step's wall and process CPU time (the PostgreSQL server's own CPU
is not in the process's), the child's peak RSS (``VmHWM``: ``ru_maxrss`` would include the
parent's peak, which Linux carries over exec) and the recovered parameters next to the true
ones.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import Database, databases, print_machine  # noqa: E402
from predict import AS_OF, TRUE_BGNBD, TRUE_GAMMA_GAMMA, simulate  # noqa: E402

#: Rows per executemany / COPY chunk while loading.
LOAD_CHUNK = 50_000


def _sqlite_ts(seconds: np.ndarray) -> list[str]:
    return np.datetime_as_string(seconds.astype("datetime64[us]"), unit="us").tolist()


def load(db: Database, n: int, seed: int) -> int:
    """Customers c{i}@bench.example and their simulated orders, in bulk; returns the orders written."""
    (ids, at, amounts), _ = simulate(n, seed)
    order = np.lexsort((at, ids))
    ids, at, amounts = ids[order], at[order], amounts[order]
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    placed = [s.replace("T", " ") for s in _sqlite_ts(at)]
    customers = ((i + 1, f"c{i}@bench.example", f"{i:064x}", "0", 0, "{}", now, now) for i in range(n))
    orders = ((k + 1, int(ids[k]) + 1, f"o{k}", placed[k], f"{amounts[k]:.2f}", "EUR", f"{amounts[k]:.2f}",
               "placed", now, now) for k in range(len(ids)))
    ccols = "id, email, email_hash, total_spent, orders_count, attributes, created_at, updated_at"
    ocols = "id, customer_id, shop_order_id, placed_at, total, currency, total_shop, status, created_at, updated_at"
    if db.kind == "sqlite":
        import sqlite3

        conn = sqlite3.connect(db.url.removeprefix("sqlite:///"))
        conn.execute("PRAGMA synchronous=OFF")
        conn.executemany(f"INSERT INTO customers ({ccols}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", customers)
        conn.executemany(f"INSERT INTO orders ({ocols}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", orders)
        conn.commit()
        conn.execute("ANALYZE")
        conn.close()
    else:
        import psycopg

        raw = db.url.split("?")[0].replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(raw, options=f"-csearch_path={db.schema}") as conn:
            with conn.cursor() as cur:
                cur.execute("SET session_replication_role = replica")  # bulk load: skip FK triggers
                for table, cols, rows in (("customers", ccols, customers), ("orders", ocols, orders)):
                    with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                cur.execute("SET session_replication_role = origin")
            conn.commit()
            conn.autocommit = True
            conn.execute("VACUUM ANALYZE")
    return len(ids)


def _vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(url: str, automations: str) -> dict:
    """In the child: the product's path on the loaded database (see the module docstring)."""
    from mailer.app import App
    from mailer.automations.predicted import raise_prediction_events
    from mailer.customers import orders as orders_service
    from mailer.customers import predictions
    from mailer.db import session_scope
    from mailer.settings import Settings

    settings = Settings(database_url=url, broker_url="stub://", smtp_url="memory://default",
                        automations_dir=automations, predictions_daily_refit=False)
    out = {}
    t0, c0 = time.perf_counter(), time.process_time()
    with session_scope(settings) as s:
        arrays = orders_service.order_arrays(s, AS_OF)
    out["read_s"] = time.perf_counter() - t0
    out["read_cpu_s"] = time.process_time() - c0
    out["orders_read"] = int(arrays.customer_ids.size)
    del arrays
    t0, c0 = time.perf_counter(), time.process_time()
    outcome = predictions.run(settings, as_of=AS_OF, trigger="cli", score=True)
    out["score_s"] = time.perf_counter() - t0
    out["score_cpu_s"] = time.process_time() - c0
    out["load_after_score"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    out["scored"] = outcome.scored
    out["params"] = outcome.fit.models.to_dict()
    app = App(settings)
    for name in ("triggers_first_s", "triggers_rerun_s"):
        t0, c0 = time.perf_counter(), time.process_time()
        run = raise_prediction_events(app, as_of=AS_OF)
        out[name] = time.perf_counter() - t0
        out[name.replace("_s", "_cpu_s")] = time.process_time() - c0
        out[name.replace("_s", "")] = run.summary()
    # VmHWM: the peak RSS of this process's own memory. ru_maxrss is not: Linux carries it
    # over exec from the forked parent, which held the generated orders.
    out["peak_rss_mb"] = _vm_hwm_kb() / 1024
    out["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=20261201)
    ap.add_argument("--db", default="both", choices=["both", "sqlite", "postgresql"])
    ap.add_argument("--quick", action="store_true", help="100,000 customers")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # child: URL to measure
    ap.add_argument("--automations", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.automations)))
        return
    n = 100_000 if args.quick else args.customers
    print_machine(f"predictions on the database: {n:,} customers")
    for kind in databases(args.db):
        with tempfile.TemporaryDirectory() as tmp:
            db = Database(kind, Path(tmp) / "db")
            try:
                t0 = time.perf_counter()
                written = load(db, n, args.seed)
                print(f"-- {kind}: loaded {n:,} customers and {written:,} orders in {time.perf_counter() - t0:.1f} s "
                      "(not timed below)")
                rules = Path(tmp) / "automations"
                rules.mkdir()
                child = subprocess.run([sys.executable, __file__, "--measure", db.url, "--automations", str(rules)],
                                       capture_output=True, text=True, check=False)
                if child.returncode != 0:
                    print(child.stderr[-3000:])
                    raise SystemExit(f"{kind}: the measuring process failed")
                r = json.loads(child.stdout.strip().splitlines()[-1])
            finally:
                db.drop()
        b, g = r["params"]["bgnbd"], r["params"]["gamma_gamma"]
        print("   step                                          wall s   process CPU s")
        print(f"   read orders (order_arrays)                     {r['read_s']:7.1f}  {r['read_cpu_s']:7.1f}"
              f"  ({r['orders_read']:,} orders)")
        print(f"   predict score: read + fit + write figures      {r['score_s']:7.1f}  {r['score_cpu_s']:7.1f}"
              f"  ({r['scored']:,} scored)  [target 60 s wall]; load after it {r['load_after_score']}")
        print(f"   prediction triggers, first pass                {r['triggers_first_s']:7.1f}  "
              f"{r['triggers_first_cpu_s']:7.1f}  ({r['triggers_first']})")
        print(f"   prediction triggers, rerun                     {r['triggers_rerun_s']:7.1f}  "
              f"{r['triggers_rerun_cpu_s']:7.1f}")
        print(f"   peak RSS of the measuring process (VmHWM)      {r['peak_rss_mb']:7.0f} MB  [target 1024 MB]"
              f"  (ru_maxrss, with the parent's: {r.get('ru_maxrss_mb', 0):.0f} MB)")
        print("   parameter   true     recovered")
        for name, true in (*TRUE_BGNBD.items(), *TRUE_GAMMA_GAMMA.items()):
            got = b.get(name, g.get(name))
            print(f"   {name:9s} {true:7.3f}  {got:9.3f}")


if __name__ == "__main__":
    main()
