"""A/B tests: the reproducible split, the statistics, the variant grammar, validation, and
the whole life of a test in process (test share, wait, decision, the rest) on both databases."""

from __future__ import annotations

import json
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from scipy import stats as scipy_stats
from sqlalchemy import func, select, update

from mailer.app import App
from mailer.automations.publish import publish
from mailer.campaigns import abstats, abtest, reports
from mailer.campaigns import fanout as campaign_actors
from mailer.campaigns import service as campaigns
from mailer.cli import main
from mailer.clock import utcnow
from mailer.delivery.compose import personalized
from mailer.delivery.mail import CampaignOptions, MailContext, Recipient
from mailer.errors import ValidationError
from mailer.models import AbTest, Campaign, CampaignStatus, Customer, Delivery, DeliveryStatus
from mailer.tracking import service as tracking
from tests.campaign_support import NEWS_KIND, add_customer, newsletter_templates
from tests.conftest import make_settings

HUMAN_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.0"


# -- the split ---------------------------------------------------------------------------------
def test_the_split_is_the_same_every_time_and_differs_between_campaigns():
    # Given two computations of the split for the same campaign and customers
    first = [abtest.assign(7, c, 20, 2) for c in range(1, 2001)]
    again = [abtest.assign(7, c, 20, 2) for c in range(1, 2001)]
    other = [abtest.assign(8, c, 20, 2) for c in range(1, 2001)]
    # Then they agree exactly, and another campaign splits the same customers differently
    assert first == again
    assert first != other
    assert all(0 <= abtest.bucket(7, c) < 1 for c in range(1, 200))


def test_the_test_share_is_the_share_asked_for_split_evenly_across_the_variants():
    # Given 30,000 customers, a 20 % test share and three variants
    n, share = 30_000, 20
    picks = [abtest.assign(42, c, share, 3) for c in range(1, n + 1)]
    in_test = [p for p in picks if p is not None]
    # Then about 20 % are in the test (binomial: 6,000 expected, sd ~69; 6 sd allowed)
    assert abs(len(in_test) - n * share / 100) < 6 * (n * 0.2 * 0.8) ** 0.5
    # And each variant gets about a third of them (sd ~37 for 2,000)
    for v in range(3):
        assert abs(in_test.count(v) - len(in_test) / 3) < 6 * (len(in_test) * (1 / 3) * (2 / 3)) ** 0.5


# -- the statistics ----------------------------------------------------------------------------
def test_two_proportion_z_test_matches_the_textbook_figures():
    # Given 60 opens of 500 against 40 of 500
    c = abstats.two_proportions(60, 500, 40, 500, level=0.95)
    # Then z = 0.04 / sqrt(0.1 * 0.9 * 2/500) = 2.108, p = 0.0350 (two-sided)
    assert c.difference == pytest.approx(0.04)
    assert c.p_value == pytest.approx(2 * scipy_stats.norm.sf(0.04 / (0.1 * 0.9 * 2 / 500) ** 0.5), rel=1e-9)
    assert c.p_value == pytest.approx(0.0350, abs=5e-4)
    assert c.significant
    # And the Wald interval is 0.04 +- 1.96 * sqrt(.12*.88/500 + .08*.92/500)
    half = 1.959964 * (0.12 * 0.88 / 500 + 0.08 * 0.92 / 500) ** 0.5
    assert (c.low, c.high) == (pytest.approx(0.04 - half, abs=1e-6), pytest.approx(0.04 + half, abs=1e-6))
    # And the same rates on a tenth of the mails are not significant
    assert not abstats.two_proportions(6, 50, 4, 50, level=0.95).significant


def test_welch_from_sums_agrees_with_scipy_on_the_raw_revenue():
    # Given revenue per recipient for two variants (most bought nothing)
    a = [0.0] * 180 + [49.0, 120.5, 35.0, 80.0, 99.9] * 4
    b = [0.0] * 190 + [20.0, 35.0, 12.5, 60.0, 15.0] * 2
    arm_a = abstats.Arm("A", n=len(a), total=sum(a), total_sq=sum(x * x for x in a))
    arm_b = abstats.Arm("B", n=len(b), total=sum(b), total_sq=sum(x * x for x in b))
    # When Welch's test runs on counts and sums
    c = abstats.welch(arm_a, arm_b, level=0.95)
    # Then it gives scipy's answer on the raw values
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-6)
    assert c.difference == pytest.approx(sum(a) / len(a) - sum(b) / len(b))
    assert c.low < c.difference < c.high


def test_the_best_variant_wins_only_when_clearly_better():
    # Given B clearly ahead of A
    clear = abstats.decide([abstats.Arm("A", 1000, 100), abstats.Arm("B", 1000, 160)], "opens", confidence=0.95)
    assert clear.winner == "B" and clear.runner_up == "A" and clear.comparison.low > 0
    # Given a small difference
    close = abstats.decide([abstats.Arm("A", 1000, 100), abstats.Arm("B", 1000, 110)], "opens", confidence=0.95)
    assert close.winner is None and close.best == "B"
    assert close.comparison.low < 0 < close.comparison.high  # the interval straddles zero
    # Given a tie, the earlier (default) variant is the best one
    tie = abstats.decide([abstats.Arm("A", 100, 10), abstats.Arm("B", 100, 10)], "clicks", confidence=0.95)
    assert tie.best == "A" and tie.winner is None


def test_with_more_variants_the_bar_is_higher():
    # Given a difference significant at 95 % (p ~ 0.035) between two arms
    arms = [abstats.Arm("A", 500, 40), abstats.Arm("B", 500, 60)]
    assert abstats.decide(arms, "opens", confidence=0.95).winner == "B"
    # When a third, similar arm is in the test, Bonferroni asks p < 0.025 for each comparison
    three = [abstats.Arm("A", 500, 40), abstats.Arm("B", 500, 60), abstats.Arm("C", 500, 41)]
    d = abstats.decide(three, "opens", confidence=0.95)
    # Then there is no winner, at the corrected level
    assert d.winner is None and d.comparison.level == pytest.approx(0.975)


# -- the variant grammar -----------------------------------------------------------------------
def test_variants_parse_one_per_unprefixed_value_with_locale_values_added():
    got = abtest.parse_variants(["subject=Hello {{ first_name }}", "pl:subject=Cześć", "*:preheader=New in",
                                 "subject=Hi there", "*:template=newsletter/seasonal_sale"])
    assert got == [{"template": None, "subjects": {"*": "Hello {{ first_name }}", "pl": "Cześć"},
                    "preheaders": {"*": "New in"}},
                   {"template": "newsletter/seasonal_sale", "subjects": {"*": "Hi there"}, "preheaders": {}}]


@pytest.mark.parametrize("values, field", [
    (["subject=A"], "variant"),
    (["subject=A", "subject=B", "subject=C", "subject=D", "subject=E"], "variant"),
    (["en:subject=A", "subject=B"], "variant[1]"),
    (["subject=A", "subject="], "variant[2].subject[*]"),
    (["subject=A", "subject=B", "en:subject=x", "en:subject=y"], "variant[2].subject[en]"),
    (["subject=A", "colour=red"], "variant[2]"),
    (["subject=A", "subject=B\nBcc: x"], "variant[2].subject[*]"),
    (["subject=A", "en:template=newsletter/x"], "variant[1].template"),
])
def test_bad_variants_are_refused_naming_the_variant(values, field):
    with pytest.raises(ValidationError) as err:
        abtest.parse_variants(values)
    assert err.value.field == field


@pytest.mark.parametrize("wait, seconds", [("90m", 5400), ("4h", 14400), ("2d", 172800)])
def test_waits_parse(wait, seconds):
    assert abtest.parse_wait(wait) == seconds


@pytest.mark.parametrize("wait", ["", "4", "30s", "31d", "4 hours", "-1h"])
def test_bad_waits_are_refused(wait):
    with pytest.raises(ValidationError) as err:
        abtest.parse_wait(wait)
    assert err.value.field == "test_wait"


# -- creating a test (SQL: both databases) -----------------------------------------------------
@pytest.fixture
def app(db_url, tmp_path):
    settings = make_settings(database_url=db_url, templates_dir=newsletter_templates(tmp_path),
                             machine_open_window_s=0, frequency_cap=0)
    application = App(settings)
    yield application
    application.close()


AB = abtest.Settings(test_share_percent=50, winner_metric="opens", wait_s=4 * 3600, confidence=0.95)


def _create(app, variants, ab=AB, **kw) -> int:
    with app.session() as s:
        return campaigns.create(s, app.settings, app.renderer, name="Spring", template=NEWS_KIND,
                                segment="newsletter_all", data={"headline": "Spring sale"},
                                variants=abtest.parse_variants(variants), ab=ab, **kw).id


@pytest.mark.parametrize("variants, field", [
    (["subject=Hi", "subject={{ cycler.__init__.__globals__ }}"], "variant[2].subject[*]"),
    (["subject=Hi", "subject=Hi", "pl:subject={% for x in y %}{% endfor %}"], "variant[2].subject[pl]"),
    (["subject=Hi", "*:preheader={{ nope }}", "subject=Ho"], "variant[1].preheader[*]"),
    (["subject=Hi", "subject=Hi"], "variant[2]"),
    (["subject=Hi", "template=newsletter/no_such_kind"], "variant[2].template"),
    (["subject=Hi", "template=order_delayed"], "variant[2].template"),
])
def test_variant_subjects_go_through_the_sandbox_and_nothing_is_stored(app, variants, field):
    with app.session() as s:
        add_customer(s, app.settings, "ann@example.com")
    with pytest.raises(ValidationError) as err:
        _create(app, variants)
    assert err.value.field == field
    with app.session() as s:
        assert s.execute(select(func.count()).select_from(Campaign)).scalar_one() == 0
        assert s.execute(select(func.count()).select_from(AbTest)).scalar_one() == 0


def test_a_test_needs_tracking_and_sane_settings(app):
    with pytest.raises(ValidationError) as err:
        _create(app, ["subject=A", "subject=B"], tracking=False)
    assert err.value.field == "winner_metric"
    with pytest.raises(ValidationError) as err:
        _create(app, ["subject=A", "subject=B"], ab=abtest.Settings(80, "opens", 3600))
    assert err.value.field == "test_share"
    with pytest.raises(ValidationError) as err:
        _create(app, ["subject=A", "subject=B"], ab=abtest.Settings(20, "likes", 3600))
    assert err.value.field == "winner_metric"


def test_each_variant_renders_its_own_subject_and_preheader(app):
    with app.session() as s:
        add_customer(s, app.settings, "ann@example.com", first_name="Ann")
    cid = _create(app, ["subject=Spring for {{ first_name }}", "*:preheader=Fresh stock",
                        "subject=Sale starts now", "pl:subject=Wyprzedaż"])
    with app.session() as s:
        options = CampaignOptions.of(s.get(Campaign, cid))
        probe = Delivery(id=5, kind=NEWS_KIND, campaign_id=cid, customer_id=None, to_address="x@example.com",
                         to_hash="h", locale="en", data={}, purpose="newsletter", created_at=utcnow())
        ann = Recipient(id=None, first_name="Ann")
        for label, locale, subject in (("A", "en", "Spring for Ann"), ("B", "en", "Sale starts now"),
                                       ("B", "pl", "Wyprzedaż")):
            probe.variant, probe.locale = label, locale
            rendered, _ = personalized(app.settings, app.renderer, MailContext.of(probe, ann, campaign=options))
            assert rendered.subject == subject
        probe.variant, probe.locale = "A", "en"
        rendered, _ = personalized(app.settings, app.renderer, MailContext.of(probe, ann, campaign=options))
        assert rendered.preheader == "Fresh stock"


# -- the life of a test in process -------------------------------------------------------------
def _fan_out(app) -> None:
    cid = _cid(app)
    while campaign_actors.fan_out_batch(app, cid, batch_size=37):
        pass


def _cid(app) -> int:
    with app.session() as s:
        return s.execute(select(Campaign.id)).scalar_one()


def _mark_sent(app, cid, when) -> None:
    with app.session() as s:
        s.execute(update(Delivery).where(Delivery.campaign_id == cid, Delivery.status == DeliveryStatus.queued)
                  .values(status=DeliveryStatus.sent, sent_at=when))


def test_test_share_wait_decision_and_the_rest_each_recipient_once(app):
    # Given 200 consenting customers and an A/B test on half of them, opens deciding
    with app.session() as s:
        ids = [add_customer(s, app.settings, f"r{i}@example.com").id for i in range(200)]
    cid = _create(app, ["subject=Plain", "subject=Urgent: sale ends"])
    with app.session() as s:
        campaigns.send(s, app.settings, cid)
    # When the fan-out runs (in batches of 37)
    _fan_out(app)
    with app.session() as s:
        rows = s.execute(select(Delivery.customer_id, Delivery.variant).where(Delivery.campaign_id == cid)).all()
        test = s.get(AbTest, cid)
        expected = {c: "AB"[abtest.assign(cid, c, 50, 2)] for c in ids if abtest.assign(cid, c, 50, 2) is not None}
        # Then exactly the test share got deliveries, each with the variant of the split
        assert dict(rows) == expected
        assert {"A", "B"} == set(expected.values())
        assert test.state == abtest.WAITING
        ends = test.test_ends_at
    sent_at = utcnow()
    _mark_sent(app, cid, sent_at)
    # And the campaign is not complete while the test waits
    with app.session() as s:
        campaigns.finish_completed(s)
        assert s.get(Campaign, cid).status is CampaignStatus.running
    # Given B's recipients open far more often (humans, an hour after delivery)
    with app.session() as s:
        for d_id, variant in s.execute(select(Delivery.id, Delivery.variant).where(Delivery.campaign_id == cid)
                                       .order_by(Delivery.id)).all():
            if variant == "B" or d_id % 10 == 0:
                tracking.record_open(s, app.settings, tracking.Link(d_id), ip="198.51.100.7", user_agent=HUMAN_UA,
                                     now=sent_at + timedelta(hours=1))
    # When the decision runs before the wait is over, nothing happens
    assert abtest.decide(app, cid, now=ends - timedelta(minutes=1)) is None
    # When it runs at the end of the wait, B wins; a second run changes nothing
    assert abtest.decide(app, cid, now=ends) == "B"
    assert abtest.decide(app, cid, now=ends) is None
    with app.session() as s:
        test = s.get(AbTest, cid)
        assert test.state == abtest.DECIDED and test.winner == "B" and test.decision["no_winner"] is False
        assert test.decision["interval"][0] > 0
    # And the rest of the segment gets B only, and every customer has exactly one delivery
    _fan_out(app)
    with app.session() as s:
        rows = s.execute(select(Delivery.customer_id, Delivery.variant).where(Delivery.campaign_id == cid)).all()
        assert sorted(c for c, _ in rows) == sorted(ids)
        rest = [v for c, v in rows if c not in expected]
        assert rest and set(rest) == {"B"}
        summary = reports.ab_summary(s, cid)
    assert summary["state"] == "decided" and summary["winner"] == "B"
    assert [v["label"] for v in summary["variants"]] == ["A", "B"]


def test_no_significant_difference_sends_the_default_and_says_so(app):
    with app.session() as s:
        ids = [add_customer(s, app.settings, f"r{i}@example.com").id for i in range(60)]
    cid = _create(app, ["subject=Plain", "subject=Other"])
    with app.session() as s:
        campaigns.send(s, app.settings, cid)
    _fan_out(app)
    sent_at = utcnow()
    _mark_sent(app, cid, sent_at)
    with app.session() as s:
        test_ids = dict(s.execute(select(Delivery.id, Delivery.variant).where(Delivery.campaign_id == cid)).all())
        # One open for each variant: no evidence either way
        for label in ("A", "B"):
            d_id = next(d for d, v in test_ids.items() if v == label)
            tracking.record_open(s, app.settings, tracking.Link(d_id), ip="198.51.100.7", user_agent=HUMAN_UA,
                                 now=sent_at + timedelta(hours=1))
        ends = s.get(AbTest, cid).test_ends_at
    assert abtest.decide(app, cid, now=ends) == "A"
    _fan_out(app)
    with app.session() as s:
        test = s.get(AbTest, cid)
        assert test.decision["no_winner"] is True and test.winner == "A"
        low, high = test.decision["interval"]
        assert low < 0 < high
        rows = s.execute(select(Delivery.customer_id, Delivery.variant).where(Delivery.campaign_id == cid)).all()
        assert sorted(c for c, _ in rows) == sorted(ids)
        assert {v for d, v in s.execute(select(Delivery.id, Delivery.variant)
                                        .where(Delivery.campaign_id == cid)).all() if d not in test_ids} == {"A"}


def test_a_crash_after_the_decision_is_resumed_by_the_sweeper(app):
    # Given a test decided, whose fan-out message was lost (no broker in this process)
    with app.session() as s:
        for i in range(30):
            add_customer(s, app.settings, f"r{i}@example.com")
    cid = _create(app, ["subject=Plain", "subject=Other"])
    with app.session() as s:
        campaigns.send(s, app.settings, cid)
    _fan_out(app)
    with app.session() as s:
        ends = s.get(AbTest, cid).test_ends_at
        s.execute(update(AbTest).values(test_ends_at=utcnow() - timedelta(seconds=1)))
    assert ends is not None
    # When the sweeper hook runs, it decides the due test
    with app.session() as s:
        assert abtest.due(s) == [cid]
    abtest.sweep_hook(app)
    with app.session() as s:
        assert s.get(AbTest, cid).state == abtest.DECIDED
        c = s.get(Campaign, cid)
        # Then the campaign's fan-out is rewound and open, so the stalled-fan-out check restarts it
        assert c.cursor == 0 and c.fanout_done is False
        assert abtest.due(s) == []


# -- the command line --------------------------------------------------------------------------
def _env(app) -> dict:
    s = app.settings
    return {"MAILER_DATABASE_URL": s.database_url, "MAILER_BROKER_URL": "stub://",
            "MAILER_SMTP_URL": "memory://cli", "MAILER_SECRET_KEY": s.secret_key,
            "MAILER_TEMPLATES_DIR": str(s.templates_dir), "MAILER_SEGMENTS_DIR": str(s.segments_dir),
            "COLUMNS": "200"}


def test_cli_creates_a_test_shows_its_state_and_reports_the_decision(app, tmp_path):
    runner = CliRunner()
    env = _env(app)
    with app.session() as s:
        for i in range(40):
            add_customer(s, app.settings, f"r{i}@example.com", locale=("en", "pl")[i % 2])
    base = ["campaign", "create", "--name", "Spring AB", "--template", NEWS_KIND, "--segment", "newsletter_all",
            "--data", '{"headline": "Spring"}']
    # A variant subject that is code is refused, naming the variant, its field and locale
    bad = runner.invoke(main, [*base, "--variant", "subject=Hello", "--variant", "subject=Hi",
                               "--variant", "en:subject={{ ''.__class__ }}", "--test-share", "20",
                               "--winner-metric", "opens", "--test-wait", "4h"], env=env)
    assert bad.exit_code == 2 and "variant[2].subject[en]" in bad.output, bad.output
    # Test options without variants are a usage error
    lone = runner.invoke(main, [*base, "--test-share", "20"], env=env)
    assert lone.exit_code == 2 and "--variant" in lone.output
    with app.session() as s:
        assert s.execute(select(func.count()).select_from(Campaign)).scalar_one() == 0
    # When the marketer creates a test of two subjects on 50 %, by clicks, 4 hours, 90 %
    made = runner.invoke(main, [*base, "--variant", "subject=Hello {{ first_name }}", "--variant", "pl:subject=Cześć",
                                "--variant", "subject=Last days of spring", "--test-share", "50",
                                "--winner-metric", "clicks", "--test-wait", "4h", "--confidence", "0.9"], env=env)
    assert made.exit_code == 0, made.output
    cid = int(made.stdout.strip().splitlines()[-1])
    with app.session() as s:
        test = s.get(AbTest, cid)
        assert (test.test_share_percent, test.winner_metric, test.wait_s, test.confidence) == (50, "clicks", 14400, 0.9)
        assert [v["label"] for v in s.get(Campaign, cid).variants] == ["A", "B"]
        campaigns.send(s, app.settings, cid)
    _fan_out(app)
    # Then status says it is testing until the end of the wait
    status = runner.invoke(main, ["campaign", "status", str(cid)], env=env)
    assert status.exit_code == 0 and "testing until" in status.output, status.output
    preview = runner.invoke(main, ["campaign", "preview", str(cid), "--email", "r1@example.com", "--variant", "B",
                                   "-o", str(tmp_path / "b.html")], env=env)
    assert preview.exit_code == 0 and "Last days of spring" in preview.output, preview.output
    # Given B's mails are clicked and the wait is over
    sent_at = utcnow()
    _mark_sent(app, cid, sent_at)
    with app.session() as s:
        for d_id, variant in s.execute(select(Delivery.id, Delivery.variant).where(Delivery.campaign_id == cid)).all():
            if variant == "B":
                tracking.record_click(s, app.settings, tracking.Link(d_id, url="https://shop.example.com/"),
                                      ip="198.51.100.7", user_agent=HUMAN_UA, now=sent_at + timedelta(hours=1))
        ends = s.get(AbTest, cid).test_ends_at
    assert abtest.decide(app, cid, now=ends) == "B"
    # Then status and the report say B won, with the interval, and show each variant's figures
    status = runner.invoke(main, ["campaign", "status", str(cid), "--json"], env=env)
    data = json.loads(status.output[status.output.index("{"):])
    assert data["ab_test"]["state"] == "decided" and data["ab_test"]["winner"] == "B"
    assert data["ab_test"]["variants"][1]["unique_clicks"] > 0 == data["ab_test"]["variants"][0]["unique_clicks"]
    table = runner.invoke(main, ["campaign", "status", str(cid)], env=env)
    assert "decided: B won" in table.output and "interval" in table.output, table.output
    out = tmp_path / "report.html"
    assert runner.invoke(main, ["campaign", "report", str(cid), "-o", str(out)], env=env).exit_code == 0
    page = out.read_text(encoding="utf-8")
    assert "A/B test" in page and "decided: B won" in page and "Last days of spring" in page


def test_revenue_decides_on_attributed_revenue_per_recipient_in_the_shop_currency(app):
    # Given an A/B test decided by revenue, its test share sent
    with app.session() as s:
        for i in range(160):
            add_customer(s, app.settings, f"r{i}@example.com")
    cid = _create(app, ["subject=Plain", "subject=Free shipping"],
                  ab=abtest.Settings(test_share_percent=50, winner_metric="revenue", wait_s=3600))
    with app.session() as s:
        campaigns.send(s, app.settings, cid)
    _fan_out(app)
    sent_at = utcnow() - timedelta(hours=3)
    _mark_sent(app, cid, sent_at)
    with app.session() as s:
        sends = s.execute(select(Delivery.id, Delivery.variant, Delivery.to_address)
                          .where(Delivery.campaign_id == cid).order_by(Delivery.id)).all()
        # B's recipients click and most of them then order; one of A's does, once
        buyers = [(d, to) for d, v, to in sends if v == "B"][: max(1, sum(v == "B" for _, v, _ in sends) * 3 // 4)]
        buyers.append(next((d, to) for d, v, to in sends if v == "A"))
        for d_id, _ in buyers:
            tracking.record_click(s, app.settings, tracking.Link(d_id, url="https://shop.example.com/"),
                                  ip="198.51.100.7", user_agent=HUMAN_UA, now=sent_at + timedelta(hours=1))
    for n, (_, to) in enumerate(buyers):
        publish("order_placed", {"email": to, "order_number": f"o{n}", "total": 40 + n % 7,
                                 "currency": app.settings.default_currency,
                                 "occurred_at": (sent_at + timedelta(hours=2)).isoformat()},
                app=app, now=sent_at + timedelta(hours=2))
    # When the wait is over
    with app.session() as s:
        ends = s.get(AbTest, cid).test_ends_at
        assert len(abtest.revenue_by_variant(s, cid)) == 2
    # Then B wins on revenue per recipient, by Welch's test, and the report shows each variant's revenue
    assert abtest.decide(app, cid, now=ends) == "B"
    with app.session() as s:
        test = s.get(AbTest, cid)
        assert test.decision["metric"] == "revenue" and test.decision["interval"][0] > 0
        summary = reports.ab_summary(s, cid)
    revenue = {v["label"]: v["revenue"] for v in summary["variants"]}
    assert revenue["B"] > revenue["A"] > 0


def test_a_local_time_test_waits_for_the_last_local_time_and_sends_the_rest_at_the_same_local_time(app):
    # Given a local-time (10:00) A/B test to customers in two zones
    zones = ("Europe/Warsaw", "America/New_York")
    with app.session() as s:
        for i in range(40):
            add_customer(s, app.settings, f"r{i}@example.com", timezone=zones[i % 2])
    cid = _create(app, ["subject=Plain", "subject=Other"], local_time="10:00")
    with app.session() as s:
        campaigns.send(s, app.settings, cid)
    _fan_out(app)
    with app.session() as s:
        test = s.get(AbTest, cid)
        due = [d for d in s.execute(select(Delivery.send_after).where(Delivery.campaign_id == cid)).scalars()]
        # Then the test ends the wait after the last test mail's local time
        assert test.test_ends_at == max(due) + timedelta(seconds=AB.wait_s)
        test_ids = set(s.execute(select(Delivery.id).where(Delivery.campaign_id == cid)).scalars())
    # When it is decided, the rest are scheduled for the next 10:00 local time after the decision
    decided_at = test.test_ends_at + timedelta(hours=1)
    assert abtest.decide(app, cid, now=decided_at) == "A"
    _fan_out(app)
    with app.session() as s:
        rest = s.execute(select(Delivery.id, Delivery.send_after, Customer.timezone)
                         .join(Customer, Customer.id == Delivery.customer_id)
                         .where(Delivery.campaign_id == cid, Delivery.id.not_in(test_ids))).all()
        assert rest
        for _, send_after, zone in rest:
            local = send_after.astimezone(ZoneInfo(zone))
            assert (local.hour, local.minute) == (10, 0)
            assert decided_at <= send_after < decided_at + timedelta(days=1)
