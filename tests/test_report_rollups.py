"""The campaign report's rollups (migration 0021) agree with counting the events at read time.

Events arrive through the real write paths (the tracking service's opens, clicks and
unsubscribes, an ESP-reported click, a bounce) and through raw inserts (one multi-row
statement with duplicates, events without a delivery, a URL or a campaign); some are
updated (erasure clears IP and user agent; one is moved by hand) and some purged.  After
every step ``figures``, ``timeline`` and ``top_links`` equal the old count-at-read queries
(tests/report_oracle.py), on SQLite and PostgreSQL, at every chart bucket size.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import select

from mailer import db
from mailer.app import App, set_app
from mailer.campaigns import reports
from mailer.clock import utcnow
from mailer.delivery import bounces
from mailer.gdpr import requests as gdpr
from mailer.models import (
    CampaignLinkCount,
    CampaignTrackingBucket,
    CampaignTrackingTotal,
    Delivery,
    TrackingEvent,
    TrackingKind,
)
from mailer.tracking import service as tracking
from mailer.transport import memory
from mailer.worker.actors import setup
from tests import report_oracle
from tests.campaign_support import campaign_marked_sent, newsletter_templates
from tests.conftest import make_settings

HUMAN_UA = "Mozilla/5.0 (Windows NT 10.0) Thunderbird/128.0"
PROXY_UA = "Mozilla/5.0 (via ggpht.com GoogleImageProxy)"
#: How long ago the campaign was sent: the purge step removes its first days.
SENT_DAYS_AGO = 20


@pytest.fixture
def campaign(db_url, tmp_path):
    """A campaign to 10 customers, marked sent SENT_DAYS_AGO days ago."""
    memory.clear()
    settings = make_settings(database_url=db_url, templates_dir=newsletter_templates(tmp_path))
    app = App(settings)
    previous = set_app(app)
    setup(settings)
    app.sent_at = utcnow() - timedelta(days=SENT_DAYS_AGO)
    app.cid, app.ids = campaign_marked_sent(app, name="Rollups", sent_at=app.sent_at)
    yield app
    app.close()
    set_app(previous)


def _assert_rollups_equal_count_at_read(app, expected_bucket: str | None = None) -> None:
    with app.session() as s:
        f = reports.figures(s, app.cid)
        assert {k: getattr(f, k) for k in ("unique_opens", "machine_opens", "unique_clicks", "unsubscribes")} \
            == report_oracle.figures(s, app.cid)
        chart = reports.timeline(s, app.cid)
        assert chart == report_oracle.timeline(s, app.cid)
        assert reports.top_links(s, app.cid) == report_oracle.top_links(s, app.cid)
    if expected_bucket:
        assert chart.bucket == expected_bucket


def _raw_events(app, rows: list[dict]) -> None:
    """One multi-row INSERT statement (not the ORM, not the tracking service)."""
    base = {"delivery_id": None, "campaign_id": app.cid, "customer_id": None, "url": None}
    with app.session() as s:
        s.execute(sa.insert(TrackingEvent.__table__).values([base | r for r in rows]))


def _delivery(s, app, i: int) -> Delivery:
    return s.get(Delivery, app.ids[i])


def test_rollups_equal_count_at_read_through_every_write_path_and_bucket_size(campaign):
    app = campaign
    t0 = app.sent_at + timedelta(minutes=30)
    # Given opens (one person twice), proxy fetches, clicks on two links and an unsubscribe
    # through the tracking service, within an hour of each other
    with app.session() as s:
        for i in (0, 1, 2, 0):
            tracking.record_open(s, app.settings, tracking.Link(app.ids[i]), ip="198.51.100.7",
                                 user_agent=HUMAN_UA, now=t0)
        for i in (3, 4):
            tracking.record_open(s, app.settings, tracking.Link(app.ids[i]), ip="203.0.113.9",
                                 user_agent=PROXY_UA, now=t0 + timedelta(minutes=7))
        for i, url in ((0, "https://shop.example.com/a"), (0, "https://shop.example.com/a"),
                       (0, "https://shop.example.com/b"), (1, "https://shop.example.com/b")):
            tracking.record_click(s, app.settings, tracking.Link(app.ids[i], url=url), ip=None,
                                  user_agent=HUMAN_UA, now=t0 + timedelta(minutes=40))
        tracking.unsubscribe(s, app.settings, tracking.Link(app.ids[2], purpose="newsletter"), ip=None,
                             user_agent=HUMAN_UA)
    # The unsubscribe happened now (the service's clock): move it into the first hour by hand,
    # which is an UPDATE of a counted column the triggers must follow
    with app.session() as s:
        s.execute(sa.update(TrackingEvent).where(TrackingEvent.kind == TrackingKind.unsubscribe)
                  .values(occurred_at=t0 + timedelta(minutes=50)))
    # Then, drawn per minute, the rollups say what counting the events says
    _assert_rollups_equal_count_at_read(app, "minute")

    # Given an ESP-reported click, a bounce, and raw rows in one statement: a duplicate open of
    # one delivery (twice in the statement), a click without a delivery, a click without a URL,
    # an unsubscribe by a customer who already unsubscribed, and an event of no campaign
    with app.session() as s:
        tracking.record_reported(s, app.settings, _delivery(s, app, 5), "click", url="https://shop.example.com/c",
                                 ip=None, user_agent=HUMAN_UA, when=t0 + timedelta(hours=5))
        d6 = _delivery(s, app, 6)
        bounces.record_bounce(app.settings, s, d6, kind="soft", status_code="4.2.2", reason="mailbox full",
                              raw=None)
    d7 = app.ids[7]
    with app.session() as s:
        c7 = _delivery(s, app, 7).customer_id
        c2 = _delivery(s, app, 2).customer_id
    late = t0 + timedelta(hours=6)
    _raw_events(app, [
        {"delivery_id": d7, "customer_id": c7, "kind": TrackingKind.open, "occurred_at": late},
        {"delivery_id": d7, "customer_id": c7, "kind": TrackingKind.open, "occurred_at": late},
        {"delivery_id": app.ids[0], "kind": TrackingKind.open, "occurred_at": late},
        {"kind": TrackingKind.click, "url": "https://shop.example.com/a", "occurred_at": late},
        {"delivery_id": d7, "kind": TrackingKind.click, "url": None, "occurred_at": late},
        {"delivery_id": app.ids[2], "customer_id": c2, "kind": TrackingKind.unsubscribe, "occurred_at": late},
        {"campaign_id": None, "kind": TrackingKind.open, "occurred_at": late},
    ])
    # Then, over six hours (5-minute buckets), they still agree
    _assert_rollups_equal_count_at_read(app, "5 minutes")

    # Given clicks three days later (hour buckets), then opens ten days later (day buckets)
    with app.session() as s:
        tracking.record_click(s, app.settings, tracking.Link(app.ids[8], url="https://shop.example.com/b"), ip=None,
                              user_agent=HUMAN_UA, now=t0 + timedelta(days=3))
    _assert_rollups_equal_count_at_read(app, "hour")
    with app.session() as s:
        for i in (8, 9, 9):
            tracking.record_open(s, app.settings, tracking.Link(app.ids[i]), ip="198.51.100.7",
                                 user_agent=HUMAN_UA, now=t0 + timedelta(days=10))
    _assert_rollups_equal_count_at_read(app, "day")

    # When erasure clears IP and user agent (an UPDATE that changes no counted column)
    with app.session() as s:
        gdpr.erase(s, app.settings, "r0@example.com")
    _assert_rollups_equal_count_at_read(app, "day")

    # When one of delivery 0's three opens is deleted (it keeps two)
    with app.session() as s:
        first = s.execute(select(sa.func.min(TrackingEvent.id)).where(TrackingEvent.delivery_id == app.ids[0],
                                                                      TrackingEvent.kind == TrackingKind.open)
                          ).scalar_one()
        s.execute(sa.delete(TrackingEvent.__table__).where(TrackingEvent.id == first))
    # Then it is still a unique open
    _assert_rollups_equal_count_at_read(app, "day")

    # When retention purges the first days (every event of the first six hours)
    with app.session() as s:
        purged = gdpr.purge_tracking(s, app.settings, older_than_days=SENT_DAYS_AGO - 2)
    assert purged > 0
    # Then what is left is what the rollups count
    _assert_rollups_equal_count_at_read(app)
    with app.session() as s:
        assert reports.figures(s, app.cid).unique_opens == report_oracle.figures(s, app.cid)["unique_opens"] == 2

    # When every event is deleted, the report is empty again
    with app.session() as s:
        s.execute(sa.delete(TrackingEvent.__table__))
    _assert_rollups_equal_count_at_read(app)
    with app.session() as s:
        assert reports.timeline(s, app.cid).points == [] and reports.top_links(s, app.cid) == []
        f = reports.figures(s, app.cid)
        assert (f.unique_opens, f.machine_opens, f.unique_clicks, f.unsubscribes) == (0, 0, 0, 0)


def test_a_duplicate_open_for_the_same_delivery_does_not_raise_uniques(campaign):
    app = campaign
    t = app.sent_at + timedelta(hours=1)
    # Given one human open of delivery 0
    with app.session() as s:
        tracking.record_open(s, app.settings, tracking.Link(app.ids[0]), ip=None, user_agent=HUMAN_UA, now=t)
    # When it is opened again in another transaction, and twice more in one statement
    with app.session() as s:
        tracking.record_open(s, app.settings, tracking.Link(app.ids[0]), ip=None, user_agent=HUMAN_UA,
                             now=t + timedelta(minutes=1))
    _raw_events(app, [{"delivery_id": app.ids[0], "kind": TrackingKind.open, "occurred_at": t}] * 2)
    # Then the campaign has four open events and one unique open
    with app.session() as s:
        row = s.get(CampaignTrackingTotal, (app.cid, TrackingKind.open))
        assert (row.events, row.uniques) == (4, 1)
        assert reports.figures(s, app.cid).unique_opens == 1


def _rollup_rows(url: str) -> dict:
    with db.session_factory(url)() as s:
        return {
            "totals": sorted(s.execute(select(CampaignTrackingTotal.campaign_id, CampaignTrackingTotal.kind,
                                              CampaignTrackingTotal.events, CampaignTrackingTotal.uniques)).all()),
            "buckets": sorted(s.execute(select(CampaignTrackingBucket.campaign_id, CampaignTrackingBucket.kind,
                                               CampaignTrackingBucket.unit, CampaignTrackingBucket.bucket_start,
                                               CampaignTrackingBucket.events)
                                        .where(CampaignTrackingBucket.events != 0)).all()),
            "links": sorted(s.execute(select(CampaignLinkCount.campaign_id, CampaignLinkCount.url_key,
                                             CampaignLinkCount.url, CampaignLinkCount.clicks,
                                             CampaignLinkCount.unique_clicks)).all()),
        }


def test_the_migrations_backfill_gives_the_numbers_the_triggers_gave(campaign):
    app = campaign
    t = app.sent_at + timedelta(hours=1)
    # Given events counted by the triggers as they arrived
    with app.session() as s:
        for i, minutes in ((0, 0), (0, 3), (1, 61), (2, 125)):
            tracking.record_open(s, app.settings, tracking.Link(app.ids[i]), ip=None, user_agent=HUMAN_UA,
                                 now=t + timedelta(minutes=minutes))
        tracking.record_open(s, app.settings, tracking.Link(app.ids[3]), ip=None, user_agent=PROXY_UA, now=t)
        for i, url in ((0, "https://shop.example.com/a"), (0, "https://shop.example.com/a"),
                       (4, "https://shop.example.com/b")):
            tracking.record_click(s, app.settings, tracking.Link(app.ids[i], url=url), ip=None,
                                  user_agent=HUMAN_UA, now=t + timedelta(minutes=90))
        tracking.unsubscribe(s, app.settings, tracking.Link(app.ids[5], purpose="newsletter"), ip=None,
                             user_agent=HUMAN_UA)
    _raw_events(app, [{"delivery_id": app.ids[6], "kind": TrackingKind.click, "url": None, "occurred_at": t}])
    url = app.settings.database_url
    by_triggers = _rollup_rows(url)
    assert by_triggers["totals"] and by_triggers["buckets"] and by_triggers["links"]
    # When the rollups are dropped and migration 0021 runs again over the same events
    app.close()
    db.downgrade(url, "0019")
    db.upgrade(url)
    # Then its set-based backfill gives exactly the same rows
    assert _rollup_rows(url) == by_triggers


@pytest.mark.postgres
def test_two_first_clicks_committed_at_once_count_one_unique_on_postgresql(pg_url):
    # Given a campaign with one delivery (raw rows), on PostgreSQL
    engine = db.get_engine(pg_url)
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO campaigns (id, name, template, segment, purpose, subjects, data, status, "
                          "tracking, cursor, fanout_done, created_at) VALUES (1, 'c', 't', 's', 'newsletter', '{}', '{}', "
                          "'completed', true, 0, true, now())"))
        c.execute(sa.text("INSERT INTO deliveries (id, idempotency_key, kind, campaign_id, to_hash, locale, data, purpose, "
                          "queue, status, attempts, created_at) VALUES (1, 'k', 't', 1, 'h', 'en', '{}', 'newsletter', "
                          "'bulk', 'sent', 1, now())"))
    click = sa.text("INSERT INTO tracking_events (delivery_id, campaign_id, kind, url, occurred_at) "
                    "VALUES (1, 1, 'click', 'https://shop.example.com/a', now())")
    # When one transaction records the delivery's first click and, before it commits, a
    # second transaction records another (a double click)
    first = engine.connect()
    first.begin()
    first.execute(click)
    second_pid = []

    def second() -> None:
        with engine.begin() as c:
            second_pid.append(c.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
            c.execute(click)

    worker = threading.Thread(target=second)
    worker.start()
    # (the second waits on the first's lock of the campaign's click counts: seen in pg_locks)
    with engine.connect() as watch:
        while True:
            waiting = second_pid and watch.execute(
                sa.text("SELECT count(*) FROM pg_locks WHERE pid = :p AND NOT granted"), {"p": second_pid[0]}
            ).scalar_one()
            if waiting or not worker.is_alive():
                break
            time.sleep(0.01)  # poll interval, not a threshold
    assert waiting, "the second click must queue behind the first's uncommitted one"
    first.commit()
    first.close()
    worker.join()
    # Then the campaign has two clicks and one unique click, overall and on the link
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT events, uniques FROM campaign_tracking_totals WHERE kind = 'click'")
                         ).one() == (2, 1)
        assert c.execute(sa.text("SELECT clicks, unique_clicks FROM campaign_link_counts")).one() == (2, 1)
