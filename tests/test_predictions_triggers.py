"""Prediction triggers: ``churn_risk_became`` and ``expected_order_due`` from the scored figures.

The figures are written as `mailer predict score` writes them (the customers' columns);
:func:`mailer.automations.predicted.raise_prediction_events` compares them with what the
triggers last saw. The CDNOW test runs the whole product path (import, two scores).
"""

from __future__ import annotations

import datetime as dt
import shutil

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from mailer.automations import predicted
from mailer.automations.predicted import raise_prediction_events
from mailer.automations.publish import publish
from mailer.automations.rules import parse_rule
from mailer.cli import main
from mailer.consent import ledger as consent
from mailer.customers.records import get_or_create
from mailer.errors import ConfigurationError, InvalidEvent
from mailer.models import Customer, Delivery, DeliveryStatus, PredictionTrigger, RewardCode, ShopEvent
from mailer.settings import PROJECT_ROOT
from tests.conftest import installed_app, make_settings
from tests.test_predictions_product import _cdnow_csv, _env

WINBACK = PROJECT_ROOT / "automations" / "winback.toml"
AS_OF = dt.date(2026, 6, 1)

REPLENISH = """
description = "test: a reminder 7 days before the expected next order"
event = "expected_order_due"
kind = "reward_code"
before = "7d"
group = "replenish:{customer_id}"
cancelled_by = ["order_placed"]

[reward]
pool = "replenish"
value = 5
value_type = "percent"

[data]
reason = "vip"
"""


@pytest.fixture
def rules_app(db_url, tmp_path):
    """An App whose automations are the shipped winback rule and a 7-day replenishment rule."""
    rules = tmp_path / "automations"
    rules.mkdir()
    shutil.copy(WINBACK, rules / "winback.toml")
    (rules / "replenish.toml").write_text(REPLENISH)
    settings = make_settings(database_url=db_url, automations_dir=rules, quiet_hours="")
    yield from installed_app(settings)


def customer(app, email: str, *, consent_to: str | None = "loyalty") -> int:
    with app.session() as s:
        c = get_or_create(s, app.settings, email)
        if consent_to:
            consent.append(s, app.settings, customer=c, purpose=consent_to, action="granted", source="api")
        return c.id


def set_figures(app, cid: int, **figures) -> None:
    with app.session() as s:
        s.execute(sa.update(Customer).where(Customer.id == cid).values(**figures))


def codes(app, pool: str, n: int) -> None:
    with app.session() as s:
        s.add_all([RewardCode(pool=pool, code=f"{pool.upper()}-{i}") for i in range(n)])


def deliveries(app, automation: str) -> list[tuple[str, str]]:
    with app.session() as s:
        return [(r.to_address, r.status.value) for r in s.execute(
            sa.select(Delivery).where(Delivery.automation == automation).order_by(Delivery.id)).scalars()]


def test_winback_fires_once_when_risk_becomes_high_and_not_again(rules_app, monkeypatch):
    app = rules_app
    monkeypatch.setattr(predicted, "CHUNK_IDS", 2)  # the pass walks the customers in id ranges of 2
    codes(app, "winback", 5)
    ann, ben, cat = (customer(app, "ann@example.com"), customer(app, "ben@example.com", consent_to=None),
                     customer(app, "cat@example.com"))
    # Given three customers first scored at low risk (their starting point, not a crossing)
    for cid in (ann, ben, cat):
        set_figures(app, cid, churn_risk="low", p_alive=0.9)
    first = raise_prediction_events(app, as_of=AS_OF)
    assert (first.churn_crossings, first.churn_started) == (0, 3)
    assert deliveries(app, "winback") == []
    # When a later score puts Ann and Ben at high risk and Cat at medium
    set_figures(app, ann, churn_risk="high", p_alive=0.2)
    set_figures(app, ben, churn_risk="high", p_alive=0.2)
    set_figures(app, cat, churn_risk="medium", p_alive=0.5)
    second = raise_prediction_events(app, as_of=AS_OF + dt.timedelta(days=1))
    # Then Ann (with consent) gets one win-back mail with a code; Ben (no consent) nothing; Cat is not high
    assert second.churn_crossings == 3
    assert deliveries(app, "winback") == [("ann@example.com", "queued")]
    assert {a.outcome for a in second.actions if a.customer_id == ben} == {"skipped"}
    with app.session() as s:
        (mail,) = s.execute(sa.select(Delivery).where(Delivery.automation == "winback")).scalars()
        assert mail.data["code"] == "WINBACK-0" and mail.data["reason"] == "winback"
        events = s.execute(sa.select(ShopEvent.type, ShopEvent.data).where(ShopEvent.type == "churn_risk_became")
                           .order_by(ShopEvent.id)).all()
    assert [(e.data["previous_churn_risk"], e.data["churn_risk"]) for e in events] == [
        ("low", "high"), ("low", "high"), ("low", "medium")]
    # When the same score is processed again, and a day later with Ann still high
    again = raise_prediction_events(app, as_of=AS_OF + dt.timedelta(days=1))
    later = raise_prediction_events(app, as_of=AS_OF + dt.timedelta(days=2))
    # Then nothing more is raised or sent
    assert again.churn_crossings == later.churn_crossings == 0
    assert deliveries(app, "winback") == [("ann@example.com", "queued")]
    # When Ann recovers to medium and then becomes high again: a new crossing, a second mail
    set_figures(app, ann, churn_risk="medium")
    raise_prediction_events(app, as_of=AS_OF + dt.timedelta(days=3))
    set_figures(app, ann, churn_risk="high")
    raise_prediction_events(app, as_of=AS_OF + dt.timedelta(days=4))
    raise_prediction_events(app, as_of=AS_OF + dt.timedelta(days=4))
    assert deliveries(app, "winback") == [("ann@example.com", "queued"), ("ann@example.com", "queued")]


def test_a_run_that_died_before_recording_the_crossing_sends_nothing_twice(rules_app):
    app = rules_app
    codes(app, "winback", 5)
    ann = customer(app, "ann@example.com")
    set_figures(app, ann, churn_risk="medium")
    raise_prediction_events(app, as_of=AS_OF)
    set_figures(app, ann, churn_risk="high")
    raise_prediction_events(app, as_of=AS_OF)
    assert len(deliveries(app, "winback")) == 1
    # Given a pass that published the crossing but died before recording it (the state rolled back)
    with app.session() as s:
        s.execute(sa.update(PredictionTrigger).where(PredictionTrigger.customer_id == ann)
                  .values(value="medium", changes=0))
    # When the pass runs again, even on another day
    rerun = raise_prediction_events(app, as_of=AS_OF + dt.timedelta(days=1))
    # Then the crossing is recorded, and the event's Idempotency-Key keeps the mail single
    assert rerun.churn_crossings == 1
    assert len(deliveries(app, "winback")) == 1
    with app.session() as s:
        state = s.get(PredictionTrigger, (ann, "churn_risk_became"))
        assert (state.value, state.changes) == ("high", 1)


def test_without_a_listening_rule_crossings_are_tracked_but_not_raised(db_url, tmp_path):
    empty = tmp_path / "none"
    empty.mkdir()
    for app in installed_app(make_settings(database_url=db_url, automations_dir=empty)):
        ann = customer(app, "ann@example.com")
        set_figures(app, ann, churn_risk="low")
        raise_prediction_events(app, as_of=AS_OF)
        set_figures(app, ann, churn_risk="high")
        run = raise_prediction_events(app, as_of=AS_OF)
        assert run.churn_crossings == 1
        with app.session() as s:
            assert s.execute(sa.select(sa.func.count()).select_from(ShopEvent)).scalar_one() == 0
            assert s.get(PredictionTrigger, (ann, "churn_risk_became")).value == "high"


def _order(app, email: str, number: str, day: dt.date) -> None:
    publish("order_placed", {"email": email, "order_number": number, "total": 40,
                             "occurred_at": f"{day.isoformat()}T10:00:00Z"}, app=app)


def test_expected_order_due_fires_once_per_purchase_cycle(rules_app):
    app = rules_app
    codes(app, "replenish", 5)
    dee = customer(app, "dee@example.com")
    last = dt.date(2026, 5, 1)
    _order(app, "dee@example.com", "D-1", last)
    # Given a score right after the order expecting the next one 30 days later
    due = dt.datetime(2026, 5, 31, tzinfo=dt.UTC)
    set_figures(app, dee, expected_next_order_at=due)
    early = raise_prediction_events(app, as_of=dt.date(2026, 5, 5))
    # Then the cycle starts and nothing is raised yet (due minus 7 days is still ahead)
    assert (early.cycles_started, early.due_raised) == (1, 0)
    # When later scores push the date out (the customer stays quiet), and one reaches 7 days before the
    # cycle's frozen date
    set_figures(app, dee, expected_next_order_at=due + dt.timedelta(days=20))
    assert raise_prediction_events(app, as_of=dt.date(2026, 5, 20)).due_raised == 0
    on_time = raise_prediction_events(app, as_of=dt.date(2026, 5, 24))
    # Then the event is raised once, with the cycle's date, and the reminder goes (its date is past)
    assert on_time.due_raised == 1
    assert deliveries(app, "replenish") == [("dee@example.com", "queued")]
    with app.session() as s:
        (event,) = s.execute(sa.select(ShopEvent).where(ShopEvent.type == "expected_order_due")).scalars()
    assert event.data["expected_next_order_at"] == "2026-05-31" and event.data["last_order_at"] == "2026-05-01"
    assert raise_prediction_events(app, as_of=dt.date(2026, 5, 25)).due_raised == 0
    # When she orders again, the next score starts a new cycle with its own date
    _order(app, "dee@example.com", "D-2", dt.date(2026, 6, 2))
    set_figures(app, dee, expected_next_order_at=dt.datetime(2026, 6, 5, tzinfo=dt.UTC))
    fresh = raise_prediction_events(app, as_of=dt.date(2026, 6, 3))
    assert (fresh.cycles_started, fresh.due_raised) == (1, 1)
    assert len(deliveries(app, "replenish")) == 2


def test_a_future_reminder_is_scheduled_before_the_date_and_an_order_cancels_it(rules_app):
    app = rules_app
    codes(app, "replenish", 5)
    eve = customer(app, "eve@example.com")
    today = dt.datetime.now(dt.UTC).date()
    _order(app, "eve@example.com", "E-1", today - dt.timedelta(days=20))
    due = dt.datetime.combine(today + dt.timedelta(days=5), dt.time(), tzinfo=dt.UTC)
    set_figures(app, eve, expected_next_order_at=due)
    # When the score of today raises the event (5 days ahead is within the 7-day lead)
    run = raise_prediction_events(app, as_of=today)
    # Then the mail waits until 7 days before the date... which is past: it goes at once
    assert run.due_raised == 1 and deliveries(app, "replenish") == [("eve@example.com", "queued")]
    # And for a customer whose date is 9 days ahead the reminder is scheduled 2 days from now
    fay = customer(app, "fay@example.com")
    _order(app, "fay@example.com", "F-1", today - dt.timedelta(days=1))
    set_figures(app, fay, expected_next_order_at=due + dt.timedelta(days=4))
    # (the rule with the longest lead decides when the event is raised; a 9-day-ahead date is not yet due)
    assert raise_prediction_events(app, as_of=today).due_raised == 0
    assert raise_prediction_events(app, as_of=today + dt.timedelta(days=2)).due_raised == 1
    with app.session() as s:
        row = s.execute(sa.select(Delivery).where(Delivery.to_address == "fay@example.com")).scalar_one()
        assert row.status == DeliveryStatus.scheduled and row.send_after.date() == today + dt.timedelta(days=2)
    # And an order before it goes cancels a pending one
    gus = customer(app, "gus@example.com")
    _order(app, "gus@example.com", "G-1", today - dt.timedelta(days=1))
    set_figures(app, gus, expected_next_order_at=dt.datetime.combine(today + dt.timedelta(days=12), dt.time(),
                                                                     tzinfo=dt.UTC))
    # The event is raised on a score 6 days ahead of today's date (as-of in the future is allowed)
    raise_prediction_events(app, as_of=today + dt.timedelta(days=6))
    with app.session() as s:
        pending = s.execute(sa.select(Delivery).where(Delivery.to_address == "gus@example.com")).scalar_one()
        assert pending.status == DeliveryStatus.scheduled
        assert pending.send_after.date() == today + dt.timedelta(days=5)
    _order(app, "gus@example.com", "G-2", today)
    assert deliveries(app, "replenish")[-1] == ("gus@example.com", "cancelled")


def test_shops_cannot_send_prediction_events(app):
    with pytest.raises(InvalidEvent, match="raised by mailer's predictions"):
        publish("churn_risk_became", {"email": "a@example.com", "churn_risk": "high",
                                      "previous_churn_risk": "low", "as_of": "2026-01-01"}, app=app)


def test_before_is_only_for_expected_order_due(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('event = "churn_risk_became"\nkind = "reward_code"\nbefore = "7d"\n')
    with pytest.raises(ConfigurationError, match="before .* needs event = \"expected_order_due\""):
        parse_rule(bad, make_settings())


def test_cdnow_scored_twice_wins_back_the_customer_whose_risk_became_high(db_url, tmp_path):
    """The product path: orders imported, `mailer predict score` twice, the shipped winback rule."""
    rules = tmp_path / "automations"
    rules.mkdir()
    shutil.copy(WINBACK, rules / "winback.toml")
    settings = make_settings(database_url=db_url, automations_dir=rules, quiet_hours="")
    # Given the CDNOW sample plus a customer who bought every two weeks until September 1997
    csv = _cdnow_csv(tmp_path)
    lines = [f"win@example.com,W-{i},{(dt.date(1997, 1, 7) + dt.timedelta(days=14 * i)).isoformat()},30.00,USD"
             for i in range(19)]
    csv.write_text(csv.read_text() + "\n".join(lines) + "\n")
    env = _env(settings, MAILER_AUTOMATIONS_DIR=str(rules), MAILER_QUIET_HOURS="", MAILER_BROKER_URL="stub://",
               MAILER_SMTP_URL="memory://default", MAILER_FREQUENCY_CAP="0")
    runner = CliRunner()
    assert runner.invoke(main, ["orders", "import", str(csv)], env=env).exit_code == 0
    for app in installed_app(settings):
        customer(app, "win@example.com")
        codes(app, "winback", 3)
    # When the shop is scored at the end of the calibration period (win is a fresh, frequent buyer)
    first = runner.invoke(main, ["predict", "score", "--as-of", "1997-09-30"], env=env)
    assert first.exit_code == 0, first.output
    assert "0 crossing(s)" in first.output
    # And again nine months later, with no order from win since September
    second = runner.invoke(main, ["predict", "score", "--as-of", "1998-06-30"], env=env)
    assert second.exit_code == 0, second.output
    for app in installed_app(settings):
        with app.session() as s:
            win = s.execute(sa.select(Customer).where(Customer.email == "win@example.com")).scalar_one()
            assert win.churn_risk.value == "high"
        # Then win (with consent) got one win-back mail with a code; the CDNOW customers (no consent) none
        assert deliveries(app, "winback") == [("win@example.com", "queued")]
    # When the same score runs again
    third = runner.invoke(main, ["predict", "score", "--as-of", "1998-06-30"], env=env)
    assert third.exit_code == 0, third.output
    assert "churn_risk_became: 0 crossing(s)" in third.output
    for app in installed_app(settings):
        # Then nothing more is sent
        assert deliveries(app, "winback") == [("win@example.com", "queued")]
        with app.session() as s:
            assert s.execute(sa.select(sa.func.count()).select_from(RewardCode)
                             .where(RewardCode.assigned_at.is_not(None))).scalar_one() == 1


def test_the_shipped_replenishment_rule_switched_on_sends_its_reminder(db_url, tmp_path):
    rules = tmp_path / "automations"
    rules.mkdir()
    shipped = (PROJECT_ROOT / "automations" / "replenishment.toml").read_text()
    assert "enabled = false" in shipped  # off by default
    (rules / "replenishment.toml").write_text(shipped.replace("enabled = false", "enabled = true"))
    for app in installed_app(make_settings(database_url=db_url, automations_dir=rules, quiet_hours="")):
        # Given a customer with newsletter consent, her last order, and a due date within 7 days
        hal = customer(app, "hal@example.com", consent_to="newsletter")
        _order(app, "hal@example.com", "H-1", dt.date(2026, 4, 1))
        set_figures(app, hal, expected_next_order_at=dt.datetime(2026, 4, 30, tzinfo=dt.UTC))
        # When the score of 2026-04-25 is processed
        run = raise_prediction_events(app, as_of=dt.date(2026, 4, 25))
        # Then one replenishment reminder is queued with the cycle's dates, rendered from the shipped kind
        assert run.due_raised == 1
        with app.session() as s:
            mail = s.execute(sa.select(Delivery).where(Delivery.automation == "replenishment")).scalar_one()
        assert (mail.kind, mail.status, mail.purpose) == ("replenishment", DeliveryStatus.queued, "newsletter")
        assert mail.data["last_order_at"] == "2026-04-01" and mail.data["expected_next_order_at"] == "2026-04-30"
        rendered = app.renderer.render("replenishment", "en", mail.data, context={"first_name": "Hal"})
        assert "April 1, 2026" in rendered.text and "Hi Hal" in rendered.text


def test_a_winback_that_would_land_in_quiet_hours_waits_for_the_morning(db_url, tmp_path):
    rules = tmp_path / "automations"
    rules.mkdir()
    shutil.copy(WINBACK, rules / "winback.toml")
    settings = make_settings(database_url=db_url, automations_dir=rules, quiet_hours="21:00-08:00")
    for app in installed_app(settings):
        codes(app, "winback", 2)
        ivy = customer(app, "ivy@example.com")
        with app.session() as s:
            s.execute(sa.update(Customer).where(Customer.id == ivy).values(timezone="UTC", churn_risk="low"))
        raise_prediction_events(app, as_of=AS_OF)
        set_figures(app, ivy, churn_risk="high")
        # When the crossing is raised at 23:00 in her time zone
        late = dt.datetime(2026, 6, 2, 23, 0, tzinfo=dt.UTC)
        raise_prediction_events(app, as_of=AS_OF, now=late)
        # Then the win-back mail is scheduled for the end of her quiet hours, not sent at night
        with app.session() as s:
            mail = s.execute(sa.select(Delivery).where(Delivery.automation == "winback")).scalar_one()
        assert mail.status == DeliveryStatus.scheduled
        assert mail.send_after == dt.datetime(2026, 6, 3, 8, 0, tzinfo=dt.UTC)


def test_a_winback_is_held_to_the_frequency_cap_like_every_marketing_mail(db_url, tmp_path):
    from mailer.delivery import process as delivery
    from mailer.clock import utcnow

    # Given a cap of 1 marketing mail a week, and Ann (consenting) who got a newsletter an hour ago
    rules = tmp_path / "automations"
    rules.mkdir()
    shutil.copy(WINBACK, rules / "winback.toml")
    for app in installed_app(make_settings(database_url=db_url, automations_dir=rules, quiet_hours="",
                                           frequency_cap=1)):
        codes(app, "winback", 2)
        ann = customer(app, "ann@example.com")
        with app.session() as s:
            s.add(Delivery(idempotency_key="earlier", kind="newsletter", customer_id=ann, to_address="ann@example.com",
                           to_hash="x", locale="en", purpose="newsletter", status=DeliveryStatus.sent,
                           sent_at=utcnow() - dt.timedelta(hours=1)))
        set_figures(app, ann, churn_risk="low", p_alive=0.9)
        raise_prediction_events(app, as_of=AS_OF)
        # When her risk becomes high and the win-back mail reaches the send path
        set_figures(app, ann, churn_risk="high", p_alive=0.2)
        run = raise_prediction_events(app, as_of=AS_OF + dt.timedelta(days=1))
        assert run.churn_crossings == 1
        with app.session() as s:
            (mail_id,) = s.execute(sa.select(Delivery.id).where(Delivery.automation == "winback")).scalars()
        outcome = delivery.process(app, mail_id)
        # Then it is skipped for the cap, not sent
        assert outcome.status == "skipped" and "frequency cap" in outcome.detail
