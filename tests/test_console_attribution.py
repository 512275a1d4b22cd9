"""The console shows what campaigns and automations sold, the A/B test and the brakes (issue 20),
on SQLite and PostgreSQL: the report's attributed orders, revenue per currency, conversion rate
and revenue per recipient, per variant too; the A/B state, figures, decision and interval; the
A/B set-up on the creation form; a braked campaign's page and its explicit, audited resume; an
automation rule's revenue and holdout incremental revenue; the dashboard's per-domain complaint
rate and unsubscribe latency; and ``ab_test`` in ``GET /v1/campaigns/{id}/stats``."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from mailer import audit
from mailer.automations.publish import publish
from mailer.campaigns import abtest
from mailer.campaigns import fanout as campaign_actors
from mailer.campaigns import service as campaigns
from mailer.clock import utcnow
from mailer.delivery import brakes
from mailer.models import (
    AbTest,
    Bounce,
    Campaign,
    CampaignAction,
    CampaignStatus,
    Delivery,
    DeliveryStatus,
    TrackingEvent,
    TrackingKind,
)
from mailer.tracking import service as tracking
from mailer.web.apikeys import create as create_key
from mailer.web.app import create_app
from mailer.worker.actors import setup
from tests.campaign_support import NEWS_KIND, add_customer, newsletter_templates
from tests.conftest import installed_app, make_settings

HUMAN_UA = "Mozilla/5.0 (Windows NT 10.0) Thunderbird/128.0"


@pytest.fixture
def app(db_url, tmp_path):
    """An App with the test newsletter templates and no automation rules (orders only attribute)."""
    rules = tmp_path / "automations"
    rules.mkdir()
    settings = make_settings(database_url=db_url, templates_dir=newsletter_templates(tmp_path),
                             automations_dir=rules, machine_open_window_s=0, quiet_hours="",
                             brake_min_sent=1, from_address="news@mail.shop.example.com")
    yield from installed_app(settings)


def _form(client, **fields) -> dict:
    return {"csrf_token": client.csrf_token, **fields}


def _fan_out(app, cid: int) -> None:
    while campaign_actors.fan_out_batch(app, cid, batch_size=50):
        pass


def _order(app, email: str, number: str, total, currency: str, at) -> None:
    publish("order_placed", {"email": email, "order_number": number, "total": total, "currency": currency,
                             "occurred_at": at.isoformat()}, app=app, now=at)


def ab_campaign_decided(app) -> int:
    """An A/B test (subjects, opens deciding) on 60 customers, sent, one open per variant (no
    winner), a click then an order on each variant (EUR on B, PLN on A); decided."""
    setup(app.settings)
    with app.session() as s:
        for i in range(60):
            add_customer(s, app.settings, f"r{i}@example.com")
        cid = campaigns.create(s, app.settings, app.renderer, name="Spring test", template=NEWS_KIND,
                               segment="newsletter_all", data={"headline": "Spring"},
                               variants=abtest.parse_variants(["subject=Plain", "subject=Bold"]),
                               ab=abtest.Settings(50, "opens", 4 * 3600, 0.95)).id
        campaigns.send(s, app.settings, cid)
    _fan_out(app, cid)
    sent_at = utcnow() - timedelta(days=1)
    with app.session() as s:
        s.execute(update(Delivery).where(Delivery.campaign_id == cid, Delivery.status == DeliveryStatus.queued)
                  .values(status=DeliveryStatus.sent, sent_at=sent_at))
        rows = s.execute(select(Delivery.id, Delivery.variant, Delivery.to_address)
                         .where(Delivery.campaign_id == cid).order_by(Delivery.id)).all()
        first = {label: next(r for r in rows if r.variant == label) for label in ("A", "B")}
        for r in first.values():
            link = tracking.Link(r.id)
            tracking.record_open(s, app.settings, link, ip="198.51.100.7", user_agent=HUMAN_UA,
                                 now=sent_at + timedelta(hours=1))
            tracking.record_click(s, app.settings, tracking.Link(r.id, url="https://shop.example.com/p"),
                                  ip="198.51.100.7", user_agent=HUMAN_UA, now=sent_at + timedelta(hours=1))
        ends = s.get(AbTest, cid).test_ends_at
    _order(app, first["B"].to_address, "B-1", 120, "EUR", sent_at + timedelta(hours=2))
    _order(app, first["A"].to_address, "A-1", 80, "PLN", sent_at + timedelta(hours=3))
    assert abtest.decide(app, cid, now=ends) == "A"
    return cid


def test_the_report_shows_revenue_per_currency_and_the_ab_decision_per_variant(app, console_as):
    # Given a decided A/B test with an attributed order on each variant, in two currencies
    cid = ab_campaign_decided(app)
    client = console_as("marketer")
    # When the marketer opens the report
    page = client.get(f"/console/campaigns/{cid}/report")
    assert page.status_code == 200
    html = page.text
    # Then the campaign's attributed orders, revenue per currency (never added up) and conversion show
    assert re.search(r'id="report-orders">2<', html)
    assert re.search(r'data-currency="EUR">120\.00<', html) and re.search(r'data-currency="PLN">80\.00<', html)
    assert re.search(r'id="report-conversion">[0-9.]+%<', html)
    # And the test's decision says "no winner" plainly, with the interval
    assert 'id="ab-no-winner"' in html and "No winner" in html and "default variant A" in html
    assert re.search(r'id="ab-interval">[^<]*interval [^<]* to ', html)
    # And each variant's row has its own revenue: B the EUR order, A the PLN one
    row_a = re.search(r'id="ab-variant-A">(.*?)</tr>', html, re.S).group(1)
    row_b = re.search(r'id="ab-variant-B">(.*?)</tr>', html, re.S).group(1)
    assert "80.00 PLN" in row_a and "EUR" not in row_a
    assert "120.00 EUR" in row_b and "PLN" not in row_b
    # And the campaign page shows the test's state and figures too
    show = client.get(f"/console/campaigns/{cid}").text
    assert 'id="ab-test"' in show and 'id="ab-no-winner"' in show


def test_the_stats_endpoint_includes_the_ab_test(app):
    cid = ab_campaign_decided(app)
    with app.session() as s:
        key = create_key(s, "analyst", ["reports"]).key
    with TestClient(create_app(app=app)) as http:
        r = http.get(f"/v1/campaigns/{cid}/stats", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["attributed_orders"] == 2 and body["attributed_revenue"] == {"EUR": "120.00", "PLN": "80.00"}
    ab = body["ab_test"]
    assert ab["state"] == "decided" and ab["no_winner"] is True and ab["winner"] == "A"
    low, high = ab["interval"]
    assert low < 0 < high
    by_label = {v["label"]: v for v in ab["variants"]}
    assert by_label["B"]["attributed_revenue"] == {"EUR": "120.00"} and by_label["B"]["attributed_orders"] == 1
    assert by_label["A"]["attributed_revenue"] == {"PLN": "80.00"} and by_label["A"]["sent"] > 0


def test_the_creation_form_sets_up_an_ab_test_and_refuses_bad_settings_naming_the_field(app, console_as):
    with app.session() as s:
        add_customer(s, app.settings, "ann@example.com")
    client = console_as("marketer")
    base = {"name": "Spring", "template": NEWS_KIND, "segment": "newsletter_all", "when": "now", "tracking": "on",
            "ab": "on", "test_share": "20", "winner_metric": "clicks", "test_wait": "4h", "confidence": "0.9"}
    # The form offers the A/B fields
    assert 'id="f-variant_D_subject"' in client.get("/console/campaigns/new").text
    # Given only one variant filled in: refused, naming the variants, nothing stored
    r = client.post("/console/campaigns", data=_form(client, **base, variant_A_subject="Only one"))
    assert r.status_code == 422 and 'id="err-variant"' in r.text
    # A bad wait and a bad test share name their fields
    r = client.post("/console/campaigns", data=_form(client, **{**base, "test_wait": "soon"},
                                                     variant_A_subject="One", variant_B_subject="Two"))
    assert r.status_code == 422 and 'id="err-test_wait"' in r.text
    r = client.post("/console/campaigns", data=_form(client, **{**base, "test_share": "80"},
                                                     variant_A_subject="One", variant_B_subject="Two"))
    assert r.status_code == 422 and 'id="err-test_share"' in r.text
    # A variant subject that is code is refused naming that variant's field
    r = client.post("/console/campaigns", data=_form(client, **base, variant_A_subject="One",
                                                     variant_B_subject="{{ cycler.__init__.__globals__ }}"))
    assert r.status_code == 422 and 'id="err-variant_B_subject"' in r.text
    with app.session() as s:
        assert s.execute(select(func.count()).select_from(Campaign)).scalar_one() == 0
    # When three variants are filled in (one with a preheader)
    r = client.post("/console/campaigns", data=_form(client, **base, variant_A_subject="One",
                                                     variant_B_subject="Two", variant_B_preheader="Fresh",
                                                     variant_C_subject="Three"), follow_redirects=False)
    assert r.status_code == 303, r.text
    cid = int(r.headers["location"].split("/")[3].split("?")[0])
    # Then the campaign has the test as asked, and the audit log says so
    with app.session() as s:
        c = s.get(Campaign, cid)
        assert [v["label"] for v in c.variants] == ["A", "B", "C"]
        assert c.variants[1]["subjects"]["en"] == "Two" and c.variants[1]["preheaders"]["en"] == "Fresh"
        assert "Fresh" not in str(c.variants[0]) + str(c.variants[2])
        test = s.get(AbTest, cid)
        assert (test.test_share_percent, test.winner_metric, test.wait_s, test.confidence) == (20, "clicks", 14400,
                                                                                               0.9)
        created = next(e for e in audit.entries(s) if e.action == "campaign.create")
        assert created.detail["ab_test"]["variants"] == 3
    # And its page shows the test as testing
    assert 'id="ab-state"' in client.get(f"/console/campaigns/{cid}").text


def braked_campaign(app) -> int:
    """A running campaign to 4 customers, 2 sent, a complaint: the complaint brake pauses it."""
    setup(app.settings)
    with app.session() as s:
        for i in range(4):
            add_customer(s, app.settings, f"b{i}@example.com")
        cid = campaigns.create(s, app.settings, app.renderer, name="Braked", template=NEWS_KIND,
                               segment="newsletter_all", data={"headline": "Hi"}).id
        campaigns.send(s, app.settings, cid)
    _fan_out(app, cid)
    with app.session() as s:
        ids = list(s.execute(select(Delivery.id).where(Delivery.campaign_id == cid).order_by(Delivery.id)).scalars())
        s.execute(update(Delivery).where(Delivery.id.in_(ids[:2])).values(status=DeliveryStatus.sent,
                                                                            sent_at=utcnow()))
        s.add(Bounce(delivery_id=ids[0], email_hash="h", kind="complaint", reason="abuse"))
        assert brakes.check(s, app.settings, cid) == brakes.COMPLAINT_BRAKE
    return cid


def test_a_braked_campaign_says_which_brake_and_resuming_is_explicit_and_audited(app, console_as):
    # Given a campaign the complaint brake paused
    cid = braked_campaign(app)
    client = console_as("marketer")
    # Its page names the brake and the figures
    show = client.get(f"/console/campaigns/{cid}").text
    brake = re.search(r'id="brake">(.*?)</div>', show, re.S).group(1)
    assert "complaint brake" in brake and "1 complaints" in brake and "2 mails sent" in brake
    assert "50.000%" in brake  # 1 complaint in 2 sent
    # The confirmation shows it too, with the acknowledgement to tick
    conf = client.get(f"/console/campaigns/{cid}/confirm/resume").text
    assert 'id="brake"' in conf and 'name="acknowledge_brake"' in conf
    # When the marketer resumes without ticking it: refused, still paused, nothing recorded
    r = client.post(f"/console/campaigns/{cid}/resume", data=_form(client), follow_redirects=False)
    assert r.status_code == 422 and "acknowledge" not in r.headers.get("location", "")
    assert "tick that you have read why" in r.text
    with app.session() as s:
        assert s.get(Campaign, cid).status is CampaignStatus.paused
    # When she ticks it
    r = client.post(f"/console/campaigns/{cid}/resume", data=_form(client, acknowledge_brake="on"),
                    follow_redirects=False)
    assert r.status_code == 303
    # Then it runs again, the brake is cleared, and both logs say who resumed it and from which brake
    with app.session() as s:
        c = s.get(Campaign, cid)
        assert c.status is CampaignStatus.running and c.brake is None
        resumed = s.execute(select(CampaignAction).where(CampaignAction.campaign_id == cid,
                                                         CampaignAction.action == "resumed")).scalar_one()
        assert resumed.actor == f"console:{client.email}"
        assert resumed.detail["brake"] == "complaint_rate" and resumed.detail["brake_detail"]["complaints"] == 1
        entry = next(e for e in audit.entries(s) if e.action == "campaign.resume")
        assert entry.actor == client.email and entry.detail["brake"]["name"] == "complaint_rate"
        assert entry.detail["brake"]["sent"] == 2
    # And the report lists the pause by the brake and the resume
    actions = re.search(r'id="report-actions">(.*?)</ul>', client.get(f"/console/campaigns/{cid}/report").text,
                        re.S).group(1)
    assert "brake:complaint_rate" in actions and f"console:{client.email}" in actions


def test_the_automations_page_shows_each_rules_revenue_and_holdout_incremental_revenue(app, console_as, tmp_path):
    # Given a rule with a holdout: one mailed send followed by a click and an order, one held-out send
    (app.settings.automations_dir / "winback.toml").write_text(
        f'event = "churn_risk_became"\nkind = "{NEWS_KIND}"\ndelay = "0s"\nholdout_percent = 10\n',
        encoding="utf-8")
    sent_at = utcnow() - timedelta(days=1)
    with app.session() as s:
        ann = add_customer(s, app.settings, "ann@example.com")
        ben = add_customer(s, app.settings, "ben@example.com")
        mailed = Delivery(idempotency_key="auto:winback:1", kind=NEWS_KIND, automation="winback", customer_id=ann.id,
                          to_address=ann.email, to_hash="h1", locale="en", data={}, purpose="newsletter",
                          queue="bulk", status=DeliveryStatus.sent, sent_at=sent_at)
        held = Delivery(idempotency_key="auto:winback:2", kind=NEWS_KIND, automation="winback", customer_id=ben.id,
                        to_address=ben.email, to_hash="h2", locale="en", data={}, purpose="newsletter",
                        queue="bulk", status=DeliveryStatus.skipped, variant="holdout", send_after=sent_at,
                        reason="holdout")
        s.add_all([mailed, held])
        s.flush()
        s.add(TrackingEvent(delivery_id=mailed.id, customer_id=ann.id, kind=TrackingKind.click,
                            url="https://shop.example.com/p", occurred_at=sent_at + timedelta(hours=1)))
    _order(app, "ann@example.com", "W-1", 64.5, "EUR", sent_at + timedelta(hours=2))
    client = console_as("marketer")
    # When the marketer opens the automations page
    page = client.get("/console/automations")
    assert page.status_code == 200
    # Then the rule shows its attributed order and revenue, and the holdout's incremental revenue
    figures = re.search(r'id="rule-winback-revenue">(.*?)</dl>', page.text, re.S).group(1)
    assert re.search(r'class="orders">1<', figures) and re.search(r'data-currency="EUR">64\.50<', figures)
    holdout = re.search(r'id="rule-winback-holdout">(.*?)</p>', page.text, re.S).group(1)
    assert "1 mailed sends" in holdout and "1 held out" in holdout
    assert re.search(r'class="incremental">[^<]*64\.50', holdout)


def test_the_dashboard_shows_the_domain_complaint_rate_rising_and_the_unsubscribe_latency(app, console_as):
    # Given 200 marketing mails sent today with 1 complaint (0.5%), and 200 yesterday with none
    now = utcnow()
    with app.session() as s:
        ann = add_customer(s, app.settings, "ann@example.com")
        ids = []
        for i in range(400):
            when = now - timedelta(hours=2) if i < 200 else now - timedelta(hours=30)
            d = Delivery(idempotency_key=f"k{i}", kind=NEWS_KIND, customer_id=ann.id, to_address=ann.email,
                         to_hash="h", locale="en", data={}, purpose="newsletter", queue="bulk",
                         status=DeliveryStatus.sent, sent_at=when)
            s.add(d)
            s.flush()
            ids.append(d.id)
        s.add(Bounce(delivery_id=ids[0], email_hash="h", kind="complaint", occurred_at=now - timedelta(hours=1)))
        # And an unsubscribe three days ago still followed by a marketing mail (over the 2-day limit)
        s.add(TrackingEvent(delivery_id=ids[0], customer_id=ann.id, kind=TrackingKind.unsubscribe,
                            occurred_at=now - timedelta(days=3)))
    client = console_as("marketer")
    page = client.get("/console/").text
    # Then the sending domain's row shows 0.500% (critical), rising from 0.000%
    row = re.search(r'data-domain="mail\.shop\.example\.com">(.*?)</tr>', page, re.S).group(1)
    assert "0.500%" in row and "rising" in row
    alert = re.search(r'id="domain-alert-1">(.*?)</p>', page, re.S).group(1)
    assert "mail.shop.example.com" in alert and "0.3%" in alert and "rising" in alert
    # And the unsubscribe latency is reported against the 2-day limit
    latency = re.search(r'id="unsubscribe-latency">(.*?)</p>', page, re.S).group(1)
    assert "1 unsubscribes" in latency and "over the 2-day limit" in latency
