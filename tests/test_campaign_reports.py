"""Campaign figures and rates, the self-contained HTML report, CSAT, and their CLI commands."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from mailer.app import App, set_app
from mailer.campaigns import reports
from mailer.campaigns import service as campaigns
from mailer.cli import main
from mailer.clock import utcnow
from mailer.models import Bounce, CsatRating, Delivery, DeliveryStatus
from mailer.tracking import service as tracking
from mailer.transport import memory
from mailer.web import apikeys
from mailer.worker.actors import setup
from tests.campaign_support import NEWS_KIND, campaign_marked_sent, newsletter_templates
from tests.conftest import make_settings


@pytest.fixture
def sent_campaign(db_url, tmp_path):
    """A campaign to 10 customers, fanned out and marked sent (no SMTP needed for figures)."""
    memory.clear()
    settings = make_settings(database_url=db_url, templates_dir=newsletter_templates(tmp_path))
    app = App(settings)
    previous = set_app(app)
    setup(settings)
    sent_at = utcnow() - timedelta(hours=3)
    cid, ids = campaign_marked_sent(app, name="Figures", sent_at=sent_at)
    app.cid, app.ids, app.sent_at = cid, ids, sent_at
    yield app
    app.close()
    set_app(previous)


def _link(app, i: int) -> tracking.Link:
    return tracking.Link(app.ids[i])


def test_figures_count_human_opens_machine_opens_clicks_unsubscribes_bounces_and_complaints(sent_campaign):
    app = sent_campaign
    human_ua = "Mozilla/5.0 (Windows NT 10.0) Thunderbird/128.0"
    t = app.sent_at + timedelta(hours=1)
    with app.session() as s:
        # 4 people open (one of them twice), 3 proxy fetches, 2 click (one twice, two links)
        for i in (0, 1, 2, 3, 0):
            tracking.record_open(s, app.settings, _link(app, i), ip="198.51.100.7", user_agent=human_ua, now=t)
        for i in (4, 5):
            tracking.record_open(s, app.settings, _link(app, i), ip="203.0.113.9",
                                 user_agent="Mozilla/5.0 (via ggpht.com GoogleImageProxy)", now=t)
        tracking.record_open(s, app.settings, _link(app, 6), ip="17.58.1.2", user_agent="Mozilla/5.0", now=t)
        for i, url in ((0, "https://shop.example.com/a"), (0, "https://shop.example.com/b"),
                       (1, "https://shop.example.com/a")):
            tracking.record_click(s, app.settings, tracking.Link(app.ids[i], url=url), ip=None, user_agent=human_ua,
                                  now=t + timedelta(hours=1))
        # one unsubscribes through the link, one complains, one hard-bounces after delivery
        tracking.unsubscribe(s, app.settings, tracking.Link(app.ids[2], purpose="newsletter"), ip=None,
                             user_agent=human_ua)
        d7, d8 = s.get(Delivery, app.ids[7]), s.get(Delivery, app.ids[8])
        s.add(Bounce(delivery_id=d7.id, email_hash=d7.to_hash, kind="complaint", raw="ARF"))
        s.add(Bounce(delivery_id=d8.id, email_hash=d8.to_hash, kind="hard", status_code="5.1.1", raw="DSN"))
        d8.status = DeliveryStatus.bounced
    with app.session() as s:
        f = reports.figures(s, app.cid)
    assert (f.total, f.sent, f.bounced, f.failed, f.pending) == (10, 9, 1, 0, 0)
    assert (f.unique_opens, f.machine_opens, f.unique_clicks, f.unsubscribes, f.complaints) == (4, 3, 2, 1, 1)
    assert f.rates["open_rate"] == round(4 / 9, 4)
    assert f.rates["click_to_open"] == 0.5
    assert f.rates["bounce_rate"] == 0.1
    # And the report shows the chart and the most clicked link first
    with app.session() as s:
        assert reports.top_links(s, app.cid)[0] == ("https://shop.example.com/a", 2, 2)
        points = reports.timeline(s, app.cid)
        page = reports.html_report(s, app.cid)
    # Then an hour of data is drawn per minute, human and machine opens apart
    assert points.bucket == "minute" and len(points.points) == 61
    assert points.points[0][1:] == (5, 3, 0) and points.points[-1][1:] == (0, 0, 3)
    assert sum(p[1] + p[2] + p[3] for p in points.points[1:-1]) == 0
    assert page.count("<polyline") == 3 and "https://shop.example.com/a" in page
    assert not re.search(r'<(script|link|img)\b|src="http', page), "the report must be self-contained"


def test_csat_score(sent_campaign):
    app = sent_campaign
    with app.session() as s:
        for order, rating in (("1", 5), ("2", 4), ("3", 2), ("4", 5)):
            tracking.record_rating(s, tracking.Link(None, order_number=order, rating=rating))
        tracking.record_rating(s, tracking.Link(None, order_number="3", rating=3))  # last click wins
        r = reports.csat(s)
        assert s.execute(select(CsatRating.rating).where(CsatRating.order_number == "3")).scalar_one() == 3
    assert (r.count, r.average, r.score) == (4, 4.25, 0.75)
    assert r.distribution == {1: 0, 2: 0, 3: 1, 4: 1, 5: 2}


# -- CLI --------------------------------------------------------------------------------------------
def _env(app) -> dict:
    s = app.settings
    return {"MAILER_DATABASE_URL": s.database_url, "MAILER_BROKER_URL": "stub://",
            "MAILER_SMTP_URL": "memory://cli", "MAILER_SECRET_KEY": s.secret_key,
            "MAILER_TEMPLATES_DIR": str(s.templates_dir), "MAILER_SEGMENTS_DIR": str(s.segments_dir),
            "COLUMNS": "200"}


def test_cli_status_report_and_list(sent_campaign, tmp_path):
    app = sent_campaign
    runner = CliRunner()
    env = _env(app)
    status = runner.invoke(main, ["campaign", "status", str(app.cid), "--json"], env=env)
    assert status.exit_code == 0, status.output
    figures = json.loads(status.output[status.output.index("{"):])
    assert figures["sent"] == 10 and figures["status"] == "completed"  # fan-out done, nothing pending
    table = runner.invoke(main, ["campaign", "status", str(app.cid)], env=env)
    assert "unique human opens" in table.output and "complaints" in table.output
    out = tmp_path / "report.html"
    rep = runner.invoke(main, ["campaign", "report", str(app.cid), "-o", str(out)], env=env)
    assert rep.exit_code == 0 and out.read_text(encoding="utf-8").startswith("<!doctype html>")
    missing = runner.invoke(main, ["campaign", "status", "999"], env=env)
    assert missing.exit_code == 2 and "no campaign with id 999" in missing.output


def test_cli_pause_resume_cancel_states(sent_campaign):
    app = sent_campaign
    runner = CliRunner()
    env = _env(app)
    assert runner.invoke(main, ["campaign", "pause", str(app.cid)], env=env).exit_code == 0
    again = runner.invoke(main, ["campaign", "pause", str(app.cid)], env=env)
    assert again.exit_code == 2 and "paused" in again.output
    assert runner.invoke(main, ["campaign", "resume", str(app.cid)], env=env).exit_code == 0
    assert runner.invoke(main, ["campaign", "cancel", str(app.cid)], env=env).exit_code == 0
    assert runner.invoke(main, ["campaign", "send", str(app.cid)], env=env).exit_code == 2


def test_cli_create_refuses_bad_input_with_a_clear_error(sent_campaign):
    env = _env(sent_campaign)
    runner = CliRunner()
    r = runner.invoke(main, ["campaign", "create", "--name", "X", "--template", NEWS_KIND, "--segment",
                             "newsletter_all", "--local-time", "7pm"], env=env)
    assert r.exit_code == 2 and "--local-time" in r.output
    r = runner.invoke(main, ["campaign", "create", "--name", "X", "--template", NEWS_KIND, "--segment",
                             "newsletter_all", "--data", "{not json"], env=env)
    assert r.exit_code == 2 and "--data" in r.output
    ok = runner.invoke(main, ["campaign", "create", "--name", "X", "--template", NEWS_KIND, "--segment",
                              "newsletter_all", "--data", '{"headline": "Hello"}', "--no-tracking"], env=env)
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.strip().splitlines()[-1].isdigit()


def test_one_subject_for_every_locale_warns_naming_the_other_languages(sent_campaign):
    """Given a newsletter with en and pl bodies, when a campaign is created with one --subject
    without a locale, then stderr warns that pl gets it; --subject-all-locales or a pl subject
    of its own silences the warning; the service returns the same list."""
    env = _env(sent_campaign)
    runner = CliRunner()
    base = ["campaign", "create", "--name", "X", "--template", NEWS_KIND, "--segment", "newsletter_all"]
    shared = runner.invoke(main, [*base, "--subject", "Big news"], env=env)
    assert shared.exit_code == 0, shared.output
    assert "warning:" in shared.stderr and "replaces the template's subject in pl:" in shared.stderr
    deliberate = runner.invoke(main, [*base, "--subject", "Big news", "--subject-all-locales"], env=env)
    assert deliberate.exit_code == 0 and "warning" not in deliberate.stderr
    own = runner.invoke(main, [*base, "--subject", "Big news", "--subject", "pl=Wielkie wieści"], env=env)
    assert own.exit_code == 0 and "warning" not in own.stderr
    alone = runner.invoke(main, [*base, "--subject-all-locales"], env=env)
    assert alone.exit_code == 2 and "--subject-all-locales" in alone.output
    app = sent_campaign
    renderer = app.renderer
    assert campaigns.foreign_subject_locales(renderer, app.settings, NEWS_KIND, {"*": "Big news"}) == ["pl"]
    assert campaigns.foreign_subject_locales(renderer, app.settings, NEWS_KIND, {"pl": "Nowości"}) == []


def test_cli_apikey_create_prints_the_key_once_and_stores_its_hash(sent_campaign):
    app = sent_campaign
    runner = CliRunner()
    r = runner.invoke(main, ["apikey", "create", "billing"], env=_env(app))
    assert r.exit_code == 0, r.output
    key = r.stdout.strip().splitlines()[0]
    with app.session() as s:
        assert apikeys.verify(s, key).name == "billing"
    listing = runner.invoke(main, ["apikey", "list"], env=_env(app))
    assert "billing" in listing.output and key not in listing.output
    dup = runner.invoke(main, ["apikey", "create", "billing"], env=_env(app))
    assert dup.exit_code == 2
    assert runner.invoke(main, ["apikey", "revoke", "billing"], env=_env(app)).exit_code == 0
    with app.session() as s:
        assert apikeys.verify(s, key) is None


def test_cli_report_csat(sent_campaign):
    app = sent_campaign
    with app.session() as s:
        tracking.record_rating(s, tracking.Link(None, order_number="9", rating=4))
    r = CliRunner().invoke(main, ["report", "csat", "--since", "30d"], env=_env(app))
    assert r.exit_code == 0 and "CSAT 100.0 %" in r.output and "from 1 ratings" in r.output
    bad = CliRunner().invoke(main, ["report", "csat", "--since", "last tuesday"], env=_env(app))
    assert bad.exit_code == 2 and "--since" in bad.output


@pytest.mark.parametrize(("span", "bucket"), [(timedelta(minutes=50), "minute"), (timedelta(hours=3), "minute"),
                                              (timedelta(hours=10), "5 minutes"), (timedelta(days=3), "hour"),
                                              (timedelta(days=20), "day")])
def test_chart_bucket_follows_the_span_of_the_data(span, bucket):
    # Given data spanning `span`, When the chart picks its bucket, Then it is the expected one
    assert reports.bucket_for_span(span) == bucket


def test_y_ticks_are_whole_numbers_and_every_integer_when_the_peak_is_small():
    # Given small and large peaks, When the y ticks are chosen, Then they are integers from 0 covering the peak
    assert reports.y_ticks(0) == [0, 1]
    assert reports.y_ticks(3) == [0, 1, 2, 3]
    assert reports.y_ticks(5) == [0, 1, 2, 3, 4, 5]
    assert reports.y_ticks(7) == [0, 2, 4, 6, 8]
    assert reports.y_ticks(180) == [0, 50, 100, 150, 200]


def test_timeline_folds_minutes_into_five_minute_buckets_over_ten_hours(sent_campaign):
    # Given clicks at 09:01, 09:04 and 09:07 and one ten hours later
    app = sent_campaign
    t0 = app.sent_at.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    with app.session() as s:
        for i, minutes in enumerate((1, 4, 7, 600)):
            tracking.record_click(s, app.settings, tracking.Link(app.ids[i], url="https://shop.example.com/a"),
                                  ip=None, user_agent="Mozilla/5.0 Thunderbird/128.0",
                                  now=t0 + timedelta(minutes=minutes))
        tl = reports.timeline(s, app.cid)
    # When the timeline is built, Then it is per 5 minutes, 09:00 holding two clicks and 09:05 one
    assert tl.bucket == "5 minutes"
    assert tl.points[0] == (t0, 0, 0, 2) and tl.points[1] == (t0 + timedelta(minutes=5), 0, 0, 1)
    assert tl.points[-1] == (t0 + timedelta(minutes=600), 0, 0, 1) and len(tl.points) == 121
