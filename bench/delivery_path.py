"""Benchmark: where one campaign mail's worker CPU goes, step by step, and what the database part could cost.

Run: python bench/delivery_path.py [--quick] [--mails 1500] [--db both|sqlite|postgresql]

In this process, one thread, no broker in the way (``stub://``), DKIM RSA-2048, the lean
sink on the other CPU: a seasonal-sale campaign is fanned out with the product's
``fan_out_batch`` and its deliveries are sent the way ``send_batch`` sends them
(``delivery.send_slices``: slices claimed in one statement, gated together, each
result recorded after its own reply; ``MAILER_SMTP_CONNECTIONS`` 0, so on this thread).
Each step is wrapped to add up its CPU time (``time.process_time``), so the table says
how many milliseconds of CPU per mail go to:

* ``fan-out``   segment page + multi-row INSERT of deliveries (per recipient);
* ``claim``     the slice's lease UPDATE ... RETURNING;
* ``gate``      the slice's campaign status, suppressions, customers, consent (one query each);
* ``compose``   render (Jinja), headers and tokens, MIME, DKIM;
* ``send``      smtplib to the sink;
* ``record``    the lease-guarded UPDATE to ``sent``.

It also counts the SQL statements per mail of the send path (a ``before_cursor_execute``
listener on the engine, by first keyword, and commits), to show what runs per mail and
what per slice.

The database share (claim + gate + record) of the worker's CPU per mail is printed
against its target (<= 25 %).  ``--core-floor`` also runs the one-by-one path's per-mail
SQL through Core (the projection of the earlier report).
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402
from common import (  # noqa: E402
    Database,
    bench_settings,
    create_campaign,
    databases,
    dkim_keys,
    populate,
    print_machine,
)
from sink import SinkProcess  # noqa: E402


def _wrap(acc: collections.Counter, obj, name: str, label: str) -> None:
    original = getattr(obj, name)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        c0 = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            acc[label] += time.process_time() - c0

    setattr(obj, name, timed)


def product_path(kind: str, n: int, tmp: Path, keys, sink: SinkProcess) -> dict:
    from mailer.app import App, set_app
    from mailer.campaigns import fanout as campaign_actors
    from mailer.campaigns import service as campaigns
    from mailer.delivery import process as delivery
    from mailer.models import Delivery
    from mailer.worker.actors import setup

    database = Database(kind, tmp / f"product-{kind}")
    try:
        settings = bench_settings(database.url, sink.url, keys, broker_url="stub://")
        populate(settings, n)
        cid = create_campaign(settings, "delivery path")
        app = App(settings)
        previous = set_app(app)
        setup(settings)
        with app.session() as s:
            campaigns.send(s, settings, cid)
        c0 = time.process_time()
        while campaign_actors.fan_out_batch(app, cid):
            pass
        fan_out = (time.process_time() - c0) / n
        with app.session() as s:
            ids = list(s.execute(sa.select(Delivery.id).where(Delivery.campaign_id == cid)
                                 .order_by(Delivery.id)).scalars())
        warm = ids[:50]
        owner = delivery.worker_id()

        def send_all(batch: list[int]) -> None:
            # What send_batch messages do (batch_size ids each, slices handed on at once).
            for start in range(0, len(batch), settings.batch_size):
                rest = batch[start:start + settings.batch_size]
                while rest:
                    rest, _ = delivery.send_slices(app, rest, owner=owner, slice_s=0.05)

        send_all(warm)  # compile caches, connections
        ids = ids[50:]
        acc: collections.Counter = collections.Counter()
        steps = (("claim_many", "claim"), ("gate_slice", "gate"), ("compose", "compose"), ("_finish", "record"))
        saved = {name: getattr(delivery, name) for name, _ in steps}
        transport_send = app.transport.send
        statements: collections.Counter = collections.Counter()

        def count(conn, cursor, statement, parameters, context, executemany):
            statements[statement.split(None, 1)[0].upper()] += 1

        def count_commit(conn):
            statements["COMMIT"] += 1

        engine = delivery._engine(app)
        sa.event.listen(engine, "before_cursor_execute", count)
        sa.event.listen(engine, "commit", count_commit)
        try:
            for name, label in steps:
                _wrap(acc, delivery, name, label)
            _wrap(acc, app.transport, "send", "send")
            c0 = time.process_time()
            send_all(ids)
            total = (time.process_time() - c0) / len(ids)
        finally:
            sa.event.remove(engine, "before_cursor_execute", count)
            sa.event.remove(engine, "commit", count_commit)
            for name, fn in saved.items():
                setattr(delivery, name, fn)
            app.transport.send = transport_send
        per = {k: v / len(ids) for k, v in acc.items()}
        per["other (slices, session, logging, metrics)"] = total - sum(per.values())
        per["fan-out"] = fan_out
        app.close()
        set_app(previous)
        return {"total": total + fan_out, "steps": per, "mails": len(ids),
                "statements": {k: v / len(ids) for k, v in statements.items()}}
    finally:
        database.drop()


def core_floor(kind: str, tmp: Path, rounds: int) -> float:
    """The send path's per-mail SQL through Core with prebuilt statements; CPU ms per mail."""
    from mailer import db
    from mailer.clock import utcnow
    from mailer.models import Campaign, ConsentState, Customer, Delivery, Suppression

    database = Database(kind, tmp / f"core-{kind}")
    try:
        settings = bench_settings(database.url, "memory://x", None, broker_url="stub://")
        populate(settings, rounds)
        cid = create_campaign(settings, "core floor")
        engine = db.get_engine(settings)
        d = Delivery.__table__
        now = utcnow()
        with engine.begin() as conn:
            customers = conn.execute(sa.select(Customer.id, Customer.email, Customer.email_hash)).all()
            conn.execute(sa.insert(d), [dict(idempotency_key=f"c:{cid}:{c.id}", kind="newsletter/seasonal_sale",
                                             campaign_id=cid, customer_id=c.id, to_address=c.email, to_hash=c.email_hash,
                                             locale="en", data={}, purpose="newsletter", queue="bulk", status="queued",
                                             attempts=0, created_at=now, updated_at=now) for c in customers])
            ids = list(conn.execute(sa.select(d.c.id, d.c.customer_id, d.c.to_hash)).all())
        bp = sa.bindparam
        claim = (d.update().where(d.c.id == bp("i"), d.c.status == "queued")
                 .values(status="sending", lease_owner=bp("o"), lease_until=bp("u"), attempts=d.c.attempts + 1,
                         updated_at=bp("n")))
        read_delivery = sa.select(d).where(d.c.id == bp("i"))
        customer = sa.select(Customer.__table__.c.id, Customer.__table__.c.email, Customer.__table__.c.first_name,
                             Customer.__table__.c.last_name, Customer.__table__.c.currency).where(
            Customer.__table__.c.id == bp("c"))
        campaign = sa.select(Campaign.__table__.c.status).where(Campaign.__table__.c.id == bp("k"))
        sup = Suppression.__table__
        suppression = sa.select(sup.c.id).where(sup.c.email_hash == bp("h"),
                                                sup.c.scope.in_(["all", "marketing", "newsletter"])).limit(1)
        cs = ConsentState.__table__
        consent = sa.select(cs.c.granted, cs.c.basis).where(cs.c.customer_id == bp("c"), cs.c.purpose == "newsletter")
        if engine.dialect.name == "postgresql":
            consent = consent.with_for_update(read=True)
        record = (d.update().where(d.c.id == bp("i"), d.c.lease_owner == bp("o"))
                  .values(status="sent", lease_owner=None, lease_until=None, sent_at=bp("n"), updated_at=bp("n"),
                          message_id=bp("m"), smtp_code=250, smtp_reply="250 ok", relay="smtp://sink"))
        c0 = time.process_time()
        for i, cust, h in ids:
            t = utcnow()
            with engine.begin() as conn:
                conn.execute(claim, {"i": i, "o": "w", "u": t, "n": t})
                conn.execute(read_delivery, {"i": i}).one()
            with engine.connect() as conn:
                conn.execute(customer, {"c": cust}).one()
                conn.execute(campaign, {"k": cid}).one()
                conn.execute(suppression, {"h": h}).first()
                conn.execute(consent, {"c": cust}).one()
                conn.rollback()
            with engine.begin() as conn:
                conn.execute(record, {"i": i, "o": "w", "n": t, "m": f"<{i}@x>"})
        return (time.process_time() - c0) / len(ids)
    finally:
        database.drop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="500 mails")
    ap.add_argument("--mails", type=int, default=None)
    ap.add_argument("--db", default="both", choices=["both", "sqlite", "postgresql"])
    ap.add_argument("--core-floor", action="store_true",
                    help="also time the one-by-one path's per-mail SQL through Core (the earlier projection)")
    args = ap.parse_args()
    n = args.mails or (500 if args.quick else 1500)
    print_machine(f"delivery path: CPU per campaign mail, step by step ({n} mails, one thread, in-process)")
    with tempfile.TemporaryDirectory(prefix="bench-path-") as tmp_s:
        tmp = Path(tmp_s)
        keys = dkim_keys(tmp)
        with SinkProcess(cpu=(1 if (sys.platform.startswith("linux")) else None)) as sink:
            for kind in databases(args.db):
                r = product_path(kind, n, tmp, keys, sink)
                db_part = sum(r["steps"][k] for k in ("claim", "gate", "record"))
                print(f"   {kind}: {r['total'] * 1000:.2f} ms CPU per mail = {1 / r['total']:.0f} mails per CPU-second")
                for step, v in sorted(r["steps"].items(), key=lambda kv: -kv[1]):
                    print(f"     {step:36s} {v * 1000:6.3f} ms  {v / r['total'] * 100:5.1f}%")
                sql = r["statements"]
                print(f"     SQL per mail (before_cursor_execute, send path only): {sum(v for k, v in sql.items() if k != 'COMMIT'):.2f} "
                      f"statements ({', '.join(f'{k} {v:.2f}' for k, v in sorted(sql.items()))})")
                share = db_part / r["total"]
                print(f"     database steps together (claim, gate, record): {db_part * 1000:.2f} ms = {share:.0%} of "
                      f"the worker's CPU per mail ({'met' if share <= 0.25 else 'NOT met'}: <= 25%)")
                if args.core_floor:
                    floor = core_floor(kind, tmp, n)
                    print(f"     the per-mail SQL of the one-by-one path via Core with prebuilt statements: "
                          f"{floor * 1000:.2f} ms")


if __name__ == "__main__":
    main()
