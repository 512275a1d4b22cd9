"""The services behind the console's campaign pages: preheaders, the locale plan, test sends,
the list with progress, live progress, the report's tables, segment locales and the SVG charts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from mailer import segments
from mailer.addresses import email_hash
from mailer.campaigns import progress, reports
from mailer.campaigns import service as campaigns
from mailer.clock import utcnow
from mailer.consent import suppressions
from mailer.errors import InvalidState, ValidationError
from mailer.instance_secrets import address_hash_salt
from mailer.models import Bounce, Delivery, DeliveryStatus, SuppressionReason
from mailer.tracking import service as tracking
from mailer.transport import memory
from mailer.web.console import charts
from tests.campaign_support import NEWS_KIND, add_customer
from tests.test_campaign_send import _create, _send, env

__all__ = ["env"]


def _suppress(s, settings, address: str) -> None:
    salt = address_hash_salt(settings)
    suppressions.suppress(s, address_hash=email_hash(address, salt), email=address, reason=SuppressionReason.manual,
                          scope="all")


def _people(env, spec: dict[str, int]) -> None:
    with env.app.session() as s:
        i = 0
        for locale, n in spec.items():
            for _ in range(n):
                add_customer(s, env.settings, f"p{i}@example.com", locale=locale)
                i += 1


def test_segment_locales_count_members_per_locale_with_the_default_for_none(env):
    # Given customers in en, pl, ko and one without a locale, and one suppressed pl customer
    _people(env, {"en": 2, "pl": 3, "ko": 1})
    with env.app.session() as s:
        add_customer(s, env.settings, "nolocale@example.com", locale=None)
        _suppress(s, env.settings, "p2@example.com")
    # When the console asks which locales the segment has
    with env.app.session() as s:
        seg = segments.load(env.settings, "newsletter_all")
        found = segments.locales(s, env.settings, seg)
        total = segments.count(s, env.settings, seg)
    # Then the counts agree with the segment's count and the suppressed one is left out
    assert found == {"en": 3, "ko": 1, "pl": 2}
    assert sum(found.values()) == total


def test_locale_plan_flags_locales_that_fall_back_to_another_subject(env):
    # Given subjects typed for en and pl
    subjects = {"en": "Spring sale", "pl": "Wyprzedaż"}
    # When the plan is made for customers in en, pl, ko and zh-HK
    plan = {p.locale: p for p in campaigns.locale_plan(env.app.renderer, NEWS_KIND, subjects,
                                                       {"en": 5, "pl": 2, "ko": 1, "zh-HK": 1})}
    # Then en and pl get their own subject, ko and zh-HK fall back (to English)
    assert (plan["en"].fallback, plan["pl"].fallback) == (False, False)
    assert plan["ko"].fallback and plan["ko"].subject_from == "en" and plan["ko"].template_locale == "en"
    assert plan["zh-HK"].fallback
    # And with no subject at all, a locale the template has is not a fallback
    none = {p.locale: p for p in campaigns.locale_plan(env.app.renderer, NEWS_KIND, {}, {"pl": 1, "ko": 1})}
    assert not none["pl"].fallback and none["ko"].fallback


def test_preheaders_are_checked_stored_and_rendered_per_locale(env):
    _people(env, {"en": 1, "pl": 1})
    # Given a preheader with a broken expression, creation is refused naming the field
    with pytest.raises(ValidationError) as bad:
        _create(env, preheaders={"pl": "{{ import os }}"})
    assert "preheader" in (bad.value.field or "")
    # When a campaign has preheaders for en and pl
    cid = _create(env, preheaders={"en": "Only this week", "pl": "Tylko w tym tygodniu"})
    with env.app.session() as s:
        p_pl = campaigns.preview(s, env.settings, env.app.renderer, cid, "p1@example.com")
        p_en = campaigns.preview(s, env.settings, env.app.renderer, cid, "p1@example.com", locale="en")
    # Then the preview of each locale carries its own preheader
    assert (p_pl.locale, p_pl.preheader) == ("pl", "Tylko w tym tygodniu")
    assert (p_en.locale, p_en.preheader) == ("en", "Only this week")


def test_parse_seeds_splits_normalizes_and_refuses_bad_addresses_by_field():
    assert campaigns.parse_seeds("A@Example.com, b@example.com\nb@example.com;c@example.com") == [
        "a@example.com", "b@example.com", "c@example.com"]
    for bad in ("", "not-an-address", " ".join(f"s{i}@example.com" for i in range(campaigns.MAX_TEST_SEEDS + 1))):
        with pytest.raises(ValidationError) as exc:
            campaigns.parse_seeds(bad)
        assert exc.value.field == "seeds"


def test_test_send_goes_through_the_send_path_and_is_not_counted(env):
    # Given a draft campaign with a Polish subject
    _people(env, {"en": 1})
    cid = _create(env, subjects={"pl": "Wyprzedaż {{ headline }}"})
    # When it is test-sent to two seed addresses in pl, one of them suppressed
    with env.app.session() as s:
        _suppress(s, env.settings, "blocked@example.com")
        ids = campaigns.test_send(s, env.settings, env.app.renderer, cid,
                                  ["seed@example.com", "blocked@example.com"], locale="pl")
    from mailer.queue import port
    for i in ids:
        port.enqueue_delivery(i, port.QUEUE_TRANSACTIONAL)
    env.drain()
    # Then the seed got the campaign's Polish mail, the suppressed seed got nothing
    got = memory.outbox()
    assert [m.recipient for m in got] == ["seed@example.com"]
    assert got[0].message["Subject"] == "Wyprzedaż Spring sale"
    # And the campaign's figures still count nothing (it is a draft)
    with env.app.session() as s:
        f = reports.figures(s, cid)
        assert (f.total, f.sent, f.suppressed) == (0, 0, 0)
        statuses = sorted(d.status.value for d in s.execute(select(Delivery).where(Delivery.id.in_(ids))).scalars())
    assert statuses == ["sent", "suppressed"]


def test_test_send_of_a_cancelled_campaign_is_refused(env):
    _people(env, {"en": 1})
    cid = _create(env)
    with env.app.session() as s:
        campaigns.cancel(s, cid)
    with env.app.session() as s, pytest.raises(InvalidState):
        campaigns.test_send(s, env.settings, env.app.renderer, cid, ["seed@example.com"])


def test_overview_and_progress_count_sent_skipped_by_reason_and_rate(env):
    # Given five customers, one of whom withdraws before the send
    _people(env, {"en": 3, "pl": 2})
    cid = _create(env)
    other = _create(env, name="Draft")
    with env.app.session() as s:
        rows = {r.campaign.id: r for r in progress.overview(s)}
        p0 = progress.progress(s, env.settings, cid)
    assert (rows[cid].total, rows[other].total) == (0, 0)
    assert p0.expected == 5 and p0.percent == 0 and not p0.finished
    with env.app.session() as s:
        from mailer.consent import ledger
        from mailer.models import Customer
        c = s.execute(select(Customer).where(Customer.email == "p4@example.com")).scalar_one()
        _send(env, cid)
    env.drain()
    with env.app.session() as s:
        ledger.append(s, env.settings, customer=s.get(Customer, c.id), purpose="newsletter", action="withdrawn",
                      source="admin")
    # When the console reads the progress after the send
    with env.app.session() as s:
        p = progress.progress(s, env.settings, cid)
        rows = {r.campaign.id: r for r in progress.overview(s)}
    # Then it is completed with five sent, 100 %, and a send rate above zero
    assert p.finished and p.figures.sent == 5 and p.percent == 100
    assert p.rate_per_minute > 0
    assert (rows[cid].total, rows[cid].done, rows[cid].sent) == (5, 5, 5)


def test_progress_groups_not_sent_deliveries_by_reason(env):
    # Given a sent campaign to four customers, where the send path skipped two for lack of
    # consent and suppressed one (set on the rows as the gate writes them)
    _people(env, {"en": 4})
    cid = _create(env)
    _send(env, cid)
    env.drain()
    with env.app.session() as s:
        ds = list(s.execute(select(Delivery).where(Delivery.campaign_id == cid).order_by(Delivery.id)).scalars())
        for d in ds[:2]:
            d.status, d.reason = DeliveryStatus.skipped, "no current consent for newsletter"
        ds[2].status, ds[2].reason = DeliveryStatus.suppressed, "suppressed: manual (all)"
    # When the console reads the progress
    with env.app.session() as s:
        p = progress.progress(s, env.settings, cid)
    # Then the not-sent rows are grouped by status and reason, most frequent first
    assert p.not_sent == [("skipped", "no current consent for newsletter", 2),
                          ("suppressed", "suppressed: manual (all)", 1)]
    assert (p.figures.sent, p.figures.skipped, p.figures.suppressed) == (1, 2, 1)


def test_report_tables_by_locale_unsubscribes_and_complaints(env):
    _people(env, {"en": 2, "pl": 2})
    cid = _create(env)
    _send(env, cid)
    env.drain()
    with env.app.session() as s:
        ds = list(s.execute(select(Delivery).where(Delivery.campaign_id == cid).order_by(Delivery.id)).scalars())
        ua = "Mozilla/5.0 Thunderbird/128.0"
        now = utcnow() + timedelta(hours=1)  # an open seconds after the send reads as a machine open
        for d in ds[:3]:
            tracking.record_open(s, env.settings, tracking.Link(d.id), ip="198.51.100.7", user_agent=ua, now=now)
        tracking.record_click(s, env.settings, tracking.Link(ds[3].id, url="https://shop.example.com/x"), ip=None,
                              user_agent=ua, now=now + timedelta(minutes=2))
        tracking.unsubscribe(s, env.settings, tracking.Link(ds[0].id, purpose="newsletter"), ip=None, user_agent=ua)
        s.add(Bounce(delivery_id=ds[1].id, email_hash=ds[1].to_hash, kind="complaint", reason="abuse", raw="ARF"))
    with env.app.session() as s:
        loc = {r.locale: r for r in progress.by_locale(s, cid)}
        unsubs = progress.unsubscribes(s, cid)
        comps = progress.complaints(s, cid)
        tl = reports.timeline(s, cid)
    assert (loc["en"].sent, loc["pl"].sent) == (2, 2)
    assert loc["en"].opened + loc["pl"].opened == 3 and loc["en"].clicked + loc["pl"].clicked == 1
    assert [u.email for u in unsubs] == [ds[0].to_address]
    assert [(c.email, c.detail) for c in comps] == [(ds[1].to_address, "abuse")]
    svg = str(charts.timeline_chart(tl))
    assert svg.startswith("<svg") and svg.count('class="series"') == 2  # opens and clicks, no machine opens


def test_charts_escape_labels_and_scale_bars_to_the_largest():
    svg = str(charts.bar_chart([("<script>alert(1)</script>", 4, "4"), ("pl", 2, "2")], label="Opens <by> locale"))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    widths = [float(w) for w in __import__("re").findall(r'class="bar" x="\d+" y="\d+" width="([\d.]+)"', svg)]
    assert widths[0] == pytest.approx(2 * widths[1])
    assert str(charts.bar_chart([], label="x")) == ""


def test_cli_create_takes_preheaders_per_locale(env):
    from click.testing import CliRunner

    from mailer.cli import main
    from mailer.models import Campaign

    _people(env, {"en": 1, "pl": 1})
    s = env.settings
    cli_env = {"MAILER_DATABASE_URL": s.database_url, "MAILER_BROKER_URL": "stub://", "MAILER_SMTP_URL": "memory://cli",
               "MAILER_SECRET_KEY": s.secret_key, "MAILER_TEMPLATES_DIR": str(s.templates_dir),
               "MAILER_SEGMENTS_DIR": str(s.segments_dir), "COLUMNS": "200"}
    args = ["campaign", "create", "--name", "Pre", "--template", NEWS_KIND, "--segment", "newsletter_all",
            "--data", '{"headline": "Hi"}']
    # When the CLI is given a preheader for pl
    out = CliRunner().invoke(main, [*args, "--preheader", "pl=Tylko dziś"], env=cli_env)
    assert out.exit_code == 0, out.output
    with env.app.session() as session:
        c = session.get(Campaign, int(out.stdout.strip().splitlines()[-1]))
        # Then it is stored for pl only
        assert c.preheaders == {"pl": "Tylko dziś"}
    # And a broken preheader is refused naming the option
    bad = CliRunner().invoke(main, [*args, "--preheader", "pl={{ nope("], env=cli_env)
    assert bad.exit_code != 0 and "preheader" in bad.output
