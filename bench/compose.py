"""Benchmark: CPU of composing one campaign mail (render, links and tokens, MIME, DKIM RSA-2048), alone.

Run: python bench/compose.py [--mails 600] [--rounds 3] [--profile [--sort cumulative]]

In this process, one thread, no database in the timed loop: a seasonal-sale campaign
(tracking on, 8 locales) is created on a temporary SQLite database with ``--mails``
recipients, their deliveries are read once into the plain values the send path hands
to :func:`mailer.delivery.compose.compose` (``MailContext``), and ``compose`` runs over
them ``--rounds`` times; the best round's CPU per mail is printed (``time.process_time``).

``--profile`` prints the cProfile of one extra round (top 25 by own time, or ``--sort``).
That the bytes stay valid is the tests' job (tests/test_dkim_signing.py verifies with
dkimpy, tests/test_tracking_tokens.py the token format).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa
from common import Database, bench_settings, create_campaign, dkim_keys, loadavg, populate, print_machine


def contexts(settings, n: int) -> tuple[object, list]:
    from mailer.app import App
    from mailer.campaigns import fanout
    from mailer.campaigns import service as campaigns
    from mailer.delivery.mail import CampaignOptions, MailContext, Recipient
    from mailer.models import Campaign, Customer, Delivery

    populate(settings, n)
    cid = create_campaign(settings, "compose bench")
    app = App(settings)
    with app.session() as s:
        campaigns.send(s, settings, cid)
    while fanout.fan_out_batch(app, cid):
        pass
    with app.session() as s:
        options = CampaignOptions.of(s.get(Campaign, cid))
        rows = s.execute(sa.select(Delivery, Customer).join(Customer, Customer.id == Delivery.customer_id)
                         .where(Delivery.campaign_id == cid).order_by(Delivery.id)).all()
        mails = [MailContext.of(d, Recipient.of(c), campaign=options, tracking_allowed=True) for d, c in rows]
    return app, mails


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mails", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--sort", default="tottime", help="cProfile sort key (tottime, cumulative)")
    args = ap.parse_args()
    print_machine(f"compose: CPU per campaign mail ({args.mails} mails, best of {args.rounds})")
    from mailer.delivery import compose as compose_mod

    with tempfile.TemporaryDirectory(prefix="bench-compose-") as tmp_s:
        tmp = Path(tmp_s)
        keys = dkim_keys(tmp)
        database = Database("sqlite", tmp / "db")
        try:
            settings = bench_settings(database.url, "memory://x", keys, broker_url="stub://")
            app, mails = contexts(settings, args.mails)

            def one_round() -> tuple[float, list[bytes]]:
                out = []
                c0 = time.process_time()
                for m in mails:
                    out.append(compose_mod.compose(settings, app.renderer, app.signer, m).message)
                return (time.process_time() - c0) / len(mails), out

            one_round()  # compile caches
            best = min(one_round()[0] for _ in range(args.rounds))
            size = sum(map(len, one_round()[1])) / len(mails)
            print(f"   compose: {best * 1000:.3f} ms CPU per mail (best of {args.rounds}), "
                  f"{size / 1000:.1f} KB per mail, load {loadavg()}")
            if args.profile:
                prof = cProfile.Profile()
                prof.enable()
                one_round()
                prof.disable()
                pstats.Stats(prof).sort_stats(args.sort).print_stats(25)
            app.close()
        finally:
            database.drop()


if __name__ == "__main__":
    main()
