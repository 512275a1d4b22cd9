"""The embedded demo: SQLite, the in-process broker and worker, mail into an outbox folder.

Runs the production path end to end: migrations, the customer import, consent
records, ``notify()`` for notices (and campaigns once a segment and newsletter exist),
and the same Dramatiq actors drained by an in-process :class:`dramatiq.Worker`.

The mails use each kind's ``sample.json`` with its dates moved relative to the run
(:func:`sample_data`): a demo sent today advertises a sale that ends next week, not one
that ended months ago. Names and reasons in the samples are given per locale.

The demo is idempotent by **reuse**: its notices carry fixed idempotency keys and its
newsletter campaign a fixed name, so a second ``mailer demo`` in the same folder finds
what the first one stored and sends nothing again. :class:`DemoResult` counts this run
only: mails sent now, deliveries reused from an earlier run, and skipped deliveries
grouped by their stored reason (the consent gate at work).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dramatiq
from sqlalchemy import func, select

from mailer import clock, db
from mailer.app import App, set_app
from mailer.campaigns import fanout
from mailer.campaigns import service as campaigns
from mailer.consent import ledger as consent
from mailer.customers.records import by_email, import_file
from mailer.models import Campaign, Customer, Delivery, DeliveryStatus
from mailer.notices.trigger import notify
from mailer.queue.broker import QUEUES
from mailer.settings import Settings
from mailer.worker import actors

DEMO_CSV = Path(__file__).resolve().parent / "demo_data" / "customers.csv"
#: Customers who get a newsletter consent record in the demo.
CONSENTING = ("alice@example.com", "mei@example.com", "jiwoo@example.com", "layla@example.com",
              "lukasz@example.com")
#: Sample dates in the demo, in days from the moment it runs; date-times are whole hours (UTC).
DEMO_DAYS_FROM_NOW: dict[str, dict[str, int]] = {
    "order_delayed": {"previous_eta": -1, "new_eta": 4},
    "shipping_update": {"eta": 3},
    "reward_code": {"expires_at": 30},
    "newsletter/seasonal_sale": {"ends_at": 7},
    "newsletter/product_launch": {"launch_date": 0},
}


#: Name of the demo's newsletter campaign; a second run reuses the campaign of this name.
DEMO_CAMPAIGN_NAME = "Demo newsletter"


@dataclass
class DemoResult:
    """What this run did: counts cover the deliveries this run created, never an earlier run's."""

    outbox: Path
    sent: int
    other: dict[str, int]
    notes: list[str]
    #: Deliveries an earlier run already stored, found again by their keys and not resent.
    reused: int = 0
    #: Skipped (not sent) deliveries of this run, counted by their stored reason.
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    campaign_id: int | None = None


def demo_settings(base: Settings) -> Settings:
    """The embedded defaults: in-process broker; outbox transport unless SMTP is configured."""
    return base.replace(broker_url="stub://")


def sample_data(renderer, kind: str, now: datetime | None = None) -> dict[str, Any]:
    """``kind``'s sample data with the dates of :data:`DEMO_DAYS_FROM_NOW` counted from ``now``.

    ``now`` defaults to :func:`mailer.clock.utcnow`; a ``date`` field gets the date, a
    ``datetime`` field the whole hour, in ISO 8601 (UTC).
    """
    now = now or clock.utcnow()
    data = renderer.sample(kind)
    fields = renderer.spec(kind).fields
    for name, days in DEMO_DAYS_FROM_NOW.get(kind, {}).items():
        when = now + timedelta(days=days)
        if fields[name].type == "datetime":
            data[name] = when.replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            data[name] = when.date().isoformat()
    return data


def run(settings: Settings, *, wait_s: float = 60.0) -> DemoResult:
    settings = demo_settings(settings)
    db.upgrade(settings)
    app = App(settings)
    set_app(app)
    broker = actors.setup(settings)
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=4)
    worker.start()
    notes: list[str] = []
    with app.session() as s:
        before_id = s.execute(select(func.max(Delivery.id))).scalar_one() or 0
    campaign_id = None
    try:
        imported = import_file(settings, DEMO_CSV)
        notes.append(f"customers: {imported.created} new, {imported.updated} updated")
        with app.session() as s:
            for email in CONSENTING:
                customer = by_email(s, email)
                if not consent.has_consent(s, settings, customer.id, "newsletter"):
                    consent.append(s, settings, customer=customer, purpose="newsletter", action="granted",
                                   source="signup_form", proof=consent.Proof(
                                       form_id="footer-signup", wording_version="2026-01",
                                       wording="Yes, send me the Northwind newsletter. I can unsubscribe at any time.",
                                       ip="192.0.2.10", user_agent="demo"))
        renderer = app.renderer
        with app.session() as s:
            people = [(c, loc) for c, loc in s.execute(select(Customer.email, Customer.locale))]
        ids = []
        for email, _locale in people:
            ids.append(notify("order_delayed", to=email, data=sample_data(renderer, "order_delayed"),
                              idempotency_key=f"demo-order_delayed-{email}", settings=settings))
        for kind in renderer.kinds():
            if kind == "order_delayed" or "/" in kind:
                continue
            ids.append(notify(kind, to="alice@example.com", data=sample_data(renderer, kind),
                              idempotency_key=f"demo-{kind}-alice@example.com", settings=settings))
        campaign_id, note = demo_campaign(app)
        notes.append(note)
        deadline = time.monotonic() + wait_s
        for queue in QUEUES:
            broker.join(queue, timeout=int(max(1, deadline - time.monotonic()) * 1000), fail_fast=True)
        worker.join()
        with app.session() as s:
            # What the sweeper does in a long-running worker: the sent-out campaign becomes completed,
            # so the console and `mailer campaign status` do not show it as still running.
            campaigns.finish_completed(s)
    finally:
        worker.stop()
        app.close()
    with app.session() as s:
        mine = Delivery.id > before_id
        counts = dict(s.execute(select(Delivery.status, func.count()).where(mine)
                                .group_by(Delivery.status)).all())
        reasons = dict(s.execute(select(Delivery.reason, func.count())
                                 .where(mine, Delivery.status == DeliveryStatus.skipped)
                                 .group_by(Delivery.reason).order_by(Delivery.reason)).all())
        reused = sum(1 for i in ids if i <= before_id)
        if campaign_id is not None:
            reused += s.execute(select(func.count()).where(Delivery.campaign_id == campaign_id,
                                                           Delivery.id <= before_id)).scalar_one()
    sent = counts.pop(DeliveryStatus.sent, 0)
    outbox = Path(settings.smtp_url.split("://", 1)[1]).resolve() if settings.smtp_url.startswith("outbox") \
        else Path(settings.smtp_url)
    return DemoResult(outbox=outbox, sent=sent, other={k.value: v for k, v in counts.items()}, notes=notes,
                      reused=reused, skipped_reasons={r or "no reason stored": n for r, n in reasons.items()},
                      campaign_id=campaign_id)


@contextmanager
def serving(settings: Settings) -> Iterator[App]:
    """The demo's app for ``mailer demo --serve``: the in-process broker with a worker behind it,
    so what the links enqueue (a confirmation mail, a tracking update) is handled while serving."""
    settings = demo_settings(settings)
    app = App(settings)
    set_app(app)
    broker = actors.setup(settings)
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    try:
        yield app
    finally:
        worker.stop()
        app.close()


# -- the embedded demo ----------------------------------------------------------------------------
#: The newsletter and segment ``mailer demo`` sends.
DEMO_TEMPLATE, DEMO_SEGMENT = "newsletter/seasonal_sale", "newsletter_all"


def demo_campaign(app) -> tuple[int, str]:
    """A step of ``mailer demo``: send the seasonal-sale newsletter to every subscriber, once.

    A campaign named :data:`DEMO_CAMPAIGN_NAME` from an earlier run is reused, not sent again.
    """
    renderer = app.renderer
    with app.session() as s:
        found = s.execute(select(Campaign.id).where(Campaign.name == DEMO_CAMPAIGN_NAME)
                          .order_by(Campaign.id).limit(1)).scalar_one_or_none()
        if found is not None:
            return found, (f"campaign {found}: reused from an earlier run, not sent again "
                           f"(see it with: mailer campaign status {found})")
        c = campaigns.create(s, app.settings, renderer, name=DEMO_CAMPAIGN_NAME, template=DEMO_TEMPLATE,
                             segment=DEMO_SEGMENT, data=sample_data(renderer, DEMO_TEMPLATE))
        campaigns.send(s, app.settings, c.id)
        cid = c.id
    fanout.start(app, cid)
    return cid, (f"campaign {cid}: {DEMO_TEMPLATE} to segment {DEMO_SEGMENT} "
                 f"(see it with: mailer campaign status {cid})")
