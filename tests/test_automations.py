"""Automation rules: loading and checking files, and what each shipped rule schedules, cancels,
merges and deduplicates (database level; the Redis/SMTP flows are in test_automations_e2e.py)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from mailer import automations
from mailer.app import App, set_app
from mailer.automations import Waves, out_of_quiet_hours, parse_rule, wave_plan
from mailer.automations.hooks import _last_release
from mailer.automations.publish import publish
from mailer.cli import main
from mailer.clock import utcnow
from mailer.consent import ledger as consent
from mailer.customers.records import get_or_create
from mailer.delivery import process as delivery
from mailer.errors import ConfigurationError
from mailer.models import Delivery, DeliveryStatus, RewardCode
from mailer.notices.trigger import purpose_for
from mailer.rendering import Renderer
from mailer.settings import PROJECT_ROOT
from tests.conftest import make_settings

UTC = timezone.utc
#: Noon in Warsaw (CEST): outside quiet hours.
NOON = datetime(2026, 6, 10, 10, 0, tzinfo=UTC)
SHIPPED = PROJECT_ROOT / "automations"


@pytest.fixture
def auto(db_url):
    """An App with the shipped rules on a stub broker (no worker: rows stay as the rules left them)."""
    from mailer.worker.actors import setup

    settings = make_settings(database_url=db_url, automations_dir=SHIPPED, quiet_hours="")
    app = App(settings)
    previous = set_app(app)
    broker = setup(settings)
    yield app
    broker.close()
    app.close()
    set_app(previous)


def with_settings(app: App, **changes) -> App:
    new = App(app.settings.replace(**changes))
    set_app(new)
    return new


def grant(app: App, email: str, *purposes: str, **customer_fields) -> int:
    with app.session() as s:
        c = get_or_create(s, app.settings, email)
        for k, v in customer_fields.items():
            setattr(c, k, v)
        for p in purposes:
            consent.append(s, app.settings, customer=c, purpose=p, action="granted", source="api")
        return c.id


def purpose(app: App, kind: str, **data) -> str:
    return purpose_for(app.renderer.spec(kind).purpose, data)


def deliveries(app: App, **where) -> list[Delivery]:
    with app.session() as s:
        q = select(Delivery).order_by(Delivery.id)
        for k, v in where.items():
            q = q.where(getattr(Delivery, k) == v)
        rows = list(s.execute(q).scalars())
        for r in rows:
            s.expunge(r)
        return rows


CART = {"email": "ann@example.com", "cart_id": "c1", "items": [{"name": "Linen shirt", "quantity": 1, "price": 59}],
        "total": 59, "cart_url": "https://shop.example.com/cart/c1"}


# -- rule files ----------------------------------------------------------------------------------
def test_shipped_rules_load_and_say_what_they_do():
    settings = make_settings(automations_dir=SHIPPED)
    rules = {r.name: r for r in automations.load(settings)}
    assert {"order_delayed", "shipping_update", "abandoned_cart", "back_in_stock", "csat_survey",
            "reward_code"} <= set(rules)
    assert rules["abandoned_cart"].delays == (timedelta(hours=1), timedelta(hours=24))
    assert set(rules["abandoned_cart"].cancelled_by) >= {"order_placed", "cart_updated"}
    assert not rules["abandoned_cart"].transactional
    assert rules["order_delayed"].repeat.window == timedelta(hours=12)
    assert rules["csat_survey"].delays == (timedelta(days=3),) and rules["csat_survey"].once
    assert rules["reward_code"].reward.pool == "vip" and rules["reward_code"].became is not None
    assert rules["back_in_stock"].merge.into == "products" and rules["back_in_stock"].waves is not None


def test_cli_lists_rules(tmp_path):
    env = {"MAILER_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "MAILER_AUTOMATIONS_DIR": str(SHIPPED)}
    res = CliRunner().invoke(main, ["automations", "list"], env=env)
    assert res.exit_code == 0, res.output
    for name in ("order_delayed", "abandoned_cart", "back_in_stock", "csat_survey", "reward_code"):
        assert name in res.output
    assert "1h, 24h" in res.output and "order_placed" in res.output


@pytest.mark.parametrize("body,words", [
    ('event = "order_delayed"\nkind = "order_delayed"\ndelay = "soon"\n',
     'delay: \'soon\' is not a duration such as "90s", "15m", "1h" or "3d"'),
    ('event = "order_delayed"\nkind = "order_delayed"\ncolour = "red"\n', "unknown key 'colour'; allowed: description"),
    ('event = "order_teleported"\nkind = "order_delayed"\n', "event 'order_teleported' is not an event type"),
    ('event = "order_delayed"\nkind = "no_such_kind"\n', "kind 'no_such_kind'"),
    ('event = "order_delayed"\nkind = "order_delayed"\ngroup = "x:{cart_id}"\n',
     "group uses {cart_id}, which a order_delayed event does not always have"),
    ('event = "cart_updated"\nkind = "order_delayed"\ngroup = "cart:{cart_id}"\ncancelled_by = ["order_placed"]\n',
     "cancelled_by[0] 'order_placed': its events have no {cart_id}"),
    ('event = "order_delayed"\nkind = "order_delayed"\nquiet_hours = true\n',
     "order_delayed is transactional and transactional mail is never deferred"),
    ('event = "customer_updated"\nkind = "order_delayed"\ncustomer_if = { spend = { gt = 1 } }\n',
     "unknown field 'spend'"),
    ('event = "order_delayed"\nkind = "order_delayed"\n[event_if]\nnew_eta = { after = 1 }\n',
     "event_if.new_eta: unknown key 'after'; allowed: eq, ne"),
    ('event = "order_delayed"\nkind = "order_delayed"\nevent = "x"\n', "line 3"),
])
def test_bad_rule_file_gets_an_error_naming_file_and_key(tmp_path, body, words):
    path = tmp_path / "bad_rule.toml"
    path.write_text(body, encoding="utf-8")
    settings = make_settings()
    with pytest.raises(ConfigurationError) as info:
        parse_rule(path, settings, Renderer(settings))
    assert str(path) in str(info.value)
    assert words in str(info.value)


def test_a_bad_rule_file_stops_publishing_with_a_clear_error(db_url, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "broken.toml").write_text('event = "order_delayed"\nkind = "order_delayed"\ndelay = "1 week"\n')
    app = App(make_settings(database_url=db_url, automations_dir=rules))
    with pytest.raises(ConfigurationError, match="broken.toml: delay"):
        publish("order_delayed", {"email": "a@example.com", "order_number": "1", "new_eta": "2026-12-01"}, app=app)
    app.close()


# -- quiet hours and waves -----------------------------------------------------------------------
@pytest.mark.parametrize("utc_time,zone,expected_utc", [
    ("2026-06-10T10:00", None, "2026-06-10T10:00"),        # 12:00 Warsaw: not quiet
    ("2026-06-10T20:30", None, "2026-06-11T06:00"),        # 22:30 Warsaw -> 08:00 next day
    ("2026-06-10T04:00", None, "2026-06-10T06:00"),        # 06:00 Warsaw -> 08:00 same day
    ("2026-06-10T18:59", None, "2026-06-10T18:59"),        # 20:59 Warsaw: still fine
    ("2026-06-10T14:00", "Asia/Taipei", "2026-06-11T00:00"),  # 22:00 Taipei -> 08:00 Taipei
    ("2026-01-10T21:00", None, "2026-01-11T07:00"),        # winter: 22:00 CET -> 08:00 CET
])
def test_quiet_hours_defer_to_the_next_local_morning(utc_time, zone, expected_utc):
    settings = make_settings(quiet_hours="21:00-08:00", default_timezone="Europe/Warsaw")
    when = datetime.fromisoformat(utc_time).replace(tzinfo=UTC)
    assert out_of_quiet_hours(when, zone, settings) == datetime.fromisoformat(expected_utc).replace(tzinfo=UTC)


def test_a_customer_may_have_own_quiet_hours():
    settings = make_settings(quiet_hours="21:00-08:00", default_timezone="Europe/Warsaw")
    late = datetime(2026, 6, 10, 20, 30, tzinfo=UTC)  # 22:30 Warsaw
    assert out_of_quiet_hours(late, None, settings, "23:00-07:00") == late
    assert out_of_quiet_hours(late, None, settings, "off") == late
    assert out_of_quiet_hours(late, None, settings, "22:00-06:30") == datetime(2026, 6, 11, 4, 30, tzinfo=UTC)
    # Unreadable: the deployment's quiet hours apply
    assert out_of_quiet_hours(late, None, settings, "late") == datetime(2026, 6, 11, 6, 0, tzinfo=UTC)


def test_quiet_hours_setting_is_checked():
    with pytest.raises(ConfigurationError, match="MAILER_QUIET_HOURS '9pm' must look like 21:00-08:00"):
        out_of_quiet_hours(NOON, None, make_settings(quiet_hours="9pm"))
    assert out_of_quiet_hours(NOON, None, make_settings(quiet_hours="off")) == NOON


@pytest.mark.parametrize("n,stock,expected", [
    (10, None, [10]), (10, 20, [10]), (10, 3, [3, 3, 3, 1]), (0, 3, []),
])
def test_wave_plan(n, stock, expected):
    assert wave_plan(n, stock, Waves(interval=timedelta(hours=1))) == expected


def test_wave_plan_respects_per_unit_and_minimum():
    waves = Waves(interval=timedelta(hours=1), per_unit=2, min_size=25)
    assert wave_plan(60, 10, waves) == [25, 25, 10]
    assert wave_plan(60, 40, waves) == [60]


# -- order_delayed and shipping ------------------------------------------------------------------
DELAY = {"email": "ann@example.com", "order_number": "1001", "new_eta": "2026-12-01"}


def test_second_delay_with_same_eta_within_12h_sends_nothing_but_a_new_eta_does(auto):
    # Given a first delay notice at noon
    steps = [(0, DELAY["new_eta"]),   # sent
             (2, DELAY["new_eta"]),   # same ETA 2 h later: nothing
             (3, "2026-12-05"),       # ETA changed: sent
             (4, DELAY["new_eta"]),   # changed again (back to 12-01) against the latest notice: sent
             (5, DELAY["new_eta"]),   # same as the latest, 1 h later: nothing
             (17, DELAY["new_eta"])]  # same, but 13 h after the latest notice: sent again
    outcomes = []
    for hours, eta in steps:
        res = publish("order_delayed", {**DELAY, "new_eta": eta}, app=auto, now=NOON + timedelta(hours=hours))
        outcomes += [a.outcome for a in res.actions]
    assert outcomes == ["queued", "deduplicated", "queued", "queued", "deduplicated", "queued"]
    assert [d.data["new_eta"] for d in deliveries(auto)] == ["2026-12-01", "2026-12-05", "2026-12-01", "2026-12-01"]
    assert all(d.queue == "transactional" and d.cancel_group == "order:1001" for d in deliveries(auto))


def test_shipping_update_sends_tracking_at_once(auto):
    res = publish("order_shipped", {"email": "ann@example.com", "order_number": "1001", "carrier": "DHL",
                                    "tracking_number": "JD0001", "tracking_url": "https://dhl.example/JD0001"},
                  app=auto, now=NOON)
    (action,) = res.actions
    assert action.outcome == "queued" and action.kind == "shipping_update"
    (d,) = deliveries(auto)
    assert d.data["tracking_number"] == "JD0001" and d.data["status"] == "in_transit"
    assert d.queue == "transactional"


# -- abandoned cart ------------------------------------------------------------------------------
def test_cart_schedules_two_reminders_and_an_order_cancels_them(auto):
    # Given a customer with marketing consent for the reminder's purpose
    grant(auto, CART["email"], purpose(auto, "abandoned_cart"))
    # When a cart event arrives at noon
    res = publish("cart_updated", CART, app=auto, now=NOON)
    # Then two reminders are scheduled, 1 h and 24 h later
    assert [(a.outcome, a.send_after) for a in res.actions] == [
        ("scheduled", NOON + timedelta(hours=1)), ("scheduled", NOON + timedelta(hours=24))]
    (first, second) = deliveries(auto)
    assert first.data["resume_url"] == CART["cart_url"] and first.data["items"][0]["name"] == "Linen shirt"
    assert first.cancel_group == second.cancel_group and first.automation == "abandoned_cart"
    # When an order is placed 20 minutes later
    res = publish("order_placed", {"email": CART["email"], "order_number": "2001"}, app=auto,
                  now=NOON + timedelta(minutes=20))
    # Then both pending reminders are cancelled
    assert [a.outcome for a in res.actions] == ["cancelled"]
    assert [d.status for d in deliveries(auto)] == [DeliveryStatus.cancelled] * 2
    assert "cancelled by order_placed" in deliveries(auto)[0].reason


def test_a_newer_cart_event_replaces_pending_reminders_and_an_empty_cart_schedules_none(auto):
    grant(auto, CART["email"], purpose(auto, "abandoned_cart"))
    publish("cart_updated", CART, app=auto, now=NOON)
    newer = {**CART, "items": CART["items"] + [{"name": "Hat", "price": 19, "quantity": 2}], "total": 97}
    res = publish("cart_updated", newer, app=auto, now=NOON + timedelta(minutes=30))
    assert [a.outcome for a in res.actions] == ["cancelled", "scheduled", "scheduled"]
    live = deliveries(auto, status=DeliveryStatus.scheduled)
    assert len(live) == 2 and all(len(d.data["items"]) == 2 for d in live)
    assert live[0].send_after == NOON + timedelta(minutes=90)
    res = publish("cart_updated", {**CART, "items": [], "total": 0}, app=auto, now=NOON + timedelta(minutes=40))
    assert [a.outcome for a in res.actions] == ["cancelled"]
    assert deliveries(auto, status=DeliveryStatus.scheduled) == []


def test_no_marketing_consent_means_no_reminder_but_transactional_mail_still_goes(auto):
    # Given a customer without any consent
    res = publish("cart_updated", CART, app=auto, now=NOON)
    # Then nothing is scheduled, and the reason says why
    assert [a.outcome for a in res.actions] == ["skipped", "skipped"]
    assert "no current consent" in res.actions[0].detail
    assert deliveries(auto) == []
    # But a transactional notice to the same customer is queued
    res = publish("order_delayed", {**DELAY, "email": CART["email"]}, app=auto, now=NOON)
    assert [a.outcome for a in res.actions] == ["queued"]


def test_quiet_hours_defer_marketing_but_never_transactional(auto):
    app = with_settings(auto, quiet_hours="21:00-08:00", default_timezone="Europe/Warsaw")
    grant(app, CART["email"], purpose(app, "abandoned_cart"))
    # 21:30 in Warsaw (CEST)
    evening = datetime(2026, 6, 10, 19, 30, tzinfo=UTC)
    res = publish("cart_updated", CART, app=app, now=evening)
    # The 1 h reminder (22:30 local) waits until 08:00; the 24 h one (21:30 next day) until 08:00 after that
    assert [a.send_after for a in res.actions] == [datetime(2026, 6, 11, 6, 0, tzinfo=UTC),
                                                   datetime(2026, 6, 12, 6, 0, tzinfo=UTC)]
    res = publish("order_delayed", {**DELAY, "email": CART["email"]}, app=app, now=evening)
    assert [(a.outcome, a.send_after) for a in res.actions] == [("queued", None)]
    # A customer in Taipei: 03:30 local -> 08:00 local (00:00 UTC)
    grant(app, "tw@example.com", purpose(app, "abandoned_cart"), timezone="Asia/Taipei")
    res = publish("cart_updated", {**CART, "email": "tw@example.com"}, app=app, now=evening - timedelta(hours=1))
    assert res.actions[0].send_after == datetime(2026, 6, 11, 0, 0, tzinfo=UTC)
    # A customer whose own quiet hours are off is not deferred
    grant(app, "owl@example.com", purpose(app, "abandoned_cart"), attributes={"quiet_hours": "off"})
    res = publish("cart_updated", {**CART, "email": "owl@example.com"}, app=app, now=evening)
    assert res.actions[0].send_after == evening + timedelta(hours=1)
    app.close()


def test_frequency_cap_is_checked_when_a_reminder_is_sent(auto):
    # Given a cap of 1 marketing mail a week, and a customer who got one an hour ago
    app = with_settings(auto, frequency_cap=1)
    cid = grant(app, CART["email"], purpose(app, "abandoned_cart"))
    with app.session() as s:
        s.add(Delivery(idempotency_key="earlier", kind="abandoned_cart", customer_id=cid, to_address=CART["email"],
                       to_hash="x", locale="en", purpose="newsletter", status=DeliveryStatus.sent,
                       sent_at=utcnow() - timedelta(hours=1)))
    publish("cart_updated", CART, app=app, now=utcnow() - timedelta(hours=2))
    # When the (now due) first reminder is processed by the send path
    due = [d for d in deliveries(app, automation="abandoned_cart") if d.send_after <= utcnow()]
    outcome = delivery.process(app, due[0].id)
    # Then it is skipped for the cap, not sent
    assert outcome.status == "skipped" and "frequency cap" in outcome.detail
    app.close()


def test_pending_lists_what_is_scheduled(auto, tmp_path):
    grant(auto, CART["email"], purpose(auto, "abandoned_cart"))
    publish("cart_updated", CART, app=auto, now=NOON)
    publish("order_delivered", {"email": "other@example.com", "order_number": "77"}, app=auto, now=NOON)
    with auto.session() as s:
        everyone = automations.pending(s)
        ann = automations.pending(s, email="ANN@example.com")
    assert [p.automation for p in everyone] == ["abandoned_cart", "abandoned_cart", "csat_survey"]
    assert [p.send_after for p in ann] == [NOON + timedelta(hours=1), NOON + timedelta(hours=24)]
    env = {"MAILER_DATABASE_URL": auto.settings.database_url, "COLUMNS": "200"}
    res = CliRunner().invoke(main, ["automations", "pending", "--customer", "ann@example.com"], env=env)
    assert res.exit_code == 0, res.output
    assert "abandoned_cart" in res.output and "csat_survey" not in res.output
    assert "2 scheduled" in res.output and "Linen shirt" in res.output


# -- csat ------------------------------------------------------------------------------------------
def test_csat_survey_three_days_after_delivery_once_per_order(auto):
    first = publish("order_delivered", {"email": "ann@example.com", "order_number": "1001"}, app=auto, now=NOON)
    again = publish("order_delivered", {"email": "ann@example.com", "order_number": "1001"}, app=auto,
                    now=NOON + timedelta(days=5))
    assert [(a.outcome, a.send_after) for a in first.actions] == [("scheduled", NOON + timedelta(days=3))]
    assert [a.outcome for a in again.actions] == ["deduplicated"]
    (d,) = deliveries(auto)
    assert len(d.data["rating_urls"]) == 5 and d.data["comment_url"].startswith(auto.settings.base_url)
    assert d.data["order_number"] == "1001"


# -- back in stock ---------------------------------------------------------------------------------
def product(sku: str, name: str, **extra) -> dict:
    return {"sku": sku, "name": name, "price": 59.9, "url": f"https://shop.example.com/p/{sku}", **extra}


def test_restock_goes_to_those_who_asked_and_merges_a_second_product(auto):
    # Given Ann asked for both shoes, Ben for the red one only, Cy for nothing
    grant(auto, "ann@example.com", "restock:RED", "restock:BLUE")
    grant(auto, "ben@example.com", "restock:RED")
    grant(auto, "cy@example.com")
    # When the red shoe and 5 minutes later the blue shoe are restocked
    red = publish("product_restocked", product("RED", "Red shoe"), app=auto, now=NOON)
    blue = publish("product_restocked", product("BLUE", "Blue shoe"), app=auto, now=NOON + timedelta(minutes=5))
    # Then Ann and Ben each have one pending mail; Ann's lists both products
    assert sorted(a.outcome for a in red.actions) == ["scheduled", "scheduled"]
    assert [a.outcome for a in blue.actions] == ["merged"]
    rows = {d.to_address: d for d in deliveries(auto)}
    assert set(rows) == {"ann@example.com", "ben@example.com"}
    assert [p["sku"] for p in rows["ann@example.com"].data["products"]] == ["RED", "BLUE"]
    assert [p["sku"] for p in rows["ben@example.com"].data["products"]] == ["RED"]
    assert rows["ann@example.com"].send_after == NOON + timedelta(minutes=15)
    assert rows["ann@example.com"].purpose == "restock:RED"
    # And the same product again adds nothing
    again = publish("product_restocked", product("BLUE", "Blue shoe"), app=auto, now=NOON + timedelta(minutes=6))
    assert [a.outcome for a in again.actions] == ["deduplicated"]


def test_restock_after_the_window_gets_its_own_mail(auto):
    grant(auto, "ann@example.com", "restock:RED", "restock:BLUE")
    publish("product_restocked", product("RED", "Red shoe"), app=auto, now=NOON)
    # The first mail left (a worker claimed and sent it)
    with auto.session() as s:
        s.execute(update(Delivery).values(status=DeliveryStatus.sent, sent_at=utcnow()))
    res = publish("product_restocked", product("BLUE", "Blue shoe"), app=auto, now=NOON + timedelta(minutes=20))
    assert [a.outcome for a in res.actions] == ["scheduled"]
    assert [len(d.data["products"]) for d in deliveries(auto)] == [1, 1]


def test_low_stock_sends_in_waves_earliest_request_first(auto, tmp_path):
    # Given a rule with waves of max(stock x 1, 2) every hour, and 7 customers who asked in order
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "back_in_stock.toml").write_text(
        (SHIPPED / "back_in_stock.toml").read_text().replace("per_unit = 2", "per_unit = 1")
        .replace("min_size = 25", "min_size = 2"))
    app = with_settings(auto, automations_dir=rules)
    for i in range(7):
        grant(app, f"c{i}@example.com", "restock:RED")
    # When the product comes back with 3 units
    publish("product_restocked", product("RED", "Red shoe", stock=3), app=app, now=NOON)
    # Then 3 customers get it after the merge window, 3 an hour later, the last one 2 hours later
    rows = deliveries(app)
    by_time = {}
    for d in rows:
        by_time.setdefault(d.send_after, []).append(d.to_address)
    base = NOON + timedelta(minutes=15)
    assert by_time == {base: ["c0@example.com", "c1@example.com", "c2@example.com"],
                       base + timedelta(hours=1): ["c3@example.com", "c4@example.com", "c5@example.com"],
                       base + timedelta(hours=2): ["c6@example.com"]}
    app.close()


def test_restock_nobody_asked_for_is_reported(auto):
    res = publish("product_restocked", product("GREEN", "Green shoe"), app=auto, now=NOON)
    assert [(a.outcome, a.detail) for a in res.actions] == [("skipped", "nobody asked for restock:GREEN")]


# -- rewards ---------------------------------------------------------------------------------------
def load_codes(app: App, n: int, pool: str = "vip") -> None:
    with app.session() as s:
        s.add_all([RewardCode(pool=pool, code=f"VIP-{i:03d}", value="20" if i == 0 else None) for i in range(n)])


def test_vip_crossing_gives_one_code_once(auto):
    load_codes(auto, 3)
    grant(auto, "ann@example.com", "loyalty")
    # Below the threshold: nothing
    res = publish("customer_updated", {"email": "ann@example.com", "total_spent": 400}, app=auto, now=NOON)
    assert res.actions == ()
    # Crossing 1000: one code
    res = publish("customer_updated", {"email": "ann@example.com", "total_spent": 1200}, app=auto, now=NOON)
    assert [a.outcome for a in res.actions] == ["queued"]
    (d,) = deliveries(auto)
    assert d.data["code"] == "VIP-000" and d.data["value"] == 20 and d.data["value_type"] == "percent"
    assert d.data["reason"] == "vip"
    # Gaining the VIP tag afterwards, or crossing again after a dip: no second code
    publish("customer_updated", {"email": "ann@example.com", "add_tags": ["VIP"]}, app=auto, now=NOON)
    publish("customer_updated", {"email": "ann@example.com", "total_spent": 10, "remove_tags": ["VIP"]}, app=auto)
    res = publish("customer_updated", {"email": "ann@example.com", "total_spent": 5000}, app=auto)
    assert [a.outcome for a in res.actions] == ["deduplicated"]
    with auto.session() as s:
        assert codes_left(s) == 2
        code = s.execute(select(RewardCode).where(RewardCode.code == "VIP-000")).scalar_one()
        assert code.delivery_id == d.id and code.customer_id == d.customer_id


def codes_left(s) -> int:
    from mailer.automations import codes

    return codes.status(s, "vip").free


def test_gaining_the_vip_tag_also_counts_and_pool_default_value_is_used(auto):
    load_codes(auto, 2)
    grant(auto, "ann@example.com", "loyalty")
    grant(auto, "ben@example.com", "loyalty")
    publish("customer_updated", {"email": "ann@example.com", "total_spent": 1500}, app=auto)
    res = publish("customer_updated", {"email": "ben@example.com", "add_tags": ["VIP"]}, app=auto)
    assert [a.outcome for a in res.actions] == ["queued"]
    ben = deliveries(auto, to_address="ben@example.com")[0]
    assert ben.data["code"] == "VIP-001" and ben.data["value"] == 15  # the rule's default


def test_exhausted_pool_sends_nothing_and_alerts(auto, caplog):
    load_codes(auto, 1)
    grant(auto, "ann@example.com", "loyalty")
    grant(auto, "ben@example.com", "loyalty")
    publish("customer_updated", {"email": "ann@example.com", "add_tags": ["VIP"]}, app=auto)
    with caplog.at_level(logging.ERROR, logger="mailer.events"):
        res = publish("customer_updated", {"email": "ben@example.com", "add_tags": ["VIP"]}, app=auto)
    # Then the automation reports a clear failure, an ERROR alert is logged, nothing is queued
    (failure,) = res.failures
    assert "pool 'vip' is exhausted" in failure.detail
    assert any(r.levelno == logging.ERROR and "ALERT" in r.getMessage() and "exhausted" in r.getMessage()
               for r in caplog.records)
    ben = deliveries(auto, to_address="ben@example.com")
    assert [(d.status, "code" in d.data) for d in ben] == [(DeliveryStatus.failed, False)]
    # And the customer update itself was applied
    with auto.session() as s:
        from mailer.customers.records import by_email

        assert by_email(s, "ben@example.com").tag_names == ["VIP"]


def test_no_code_is_taken_for_a_customer_without_consent(auto):
    load_codes(auto, 1)
    res = publish("customer_updated", {"email": "ann@example.com", "total_spent": 2000}, app=auto)
    assert [a.outcome for a in res.actions] == ["skipped"]
    with auto.session() as s:
        assert codes_left(s) == 1


def test_code_of_a_reward_mail_skipped_at_send_time_goes_back_to_the_pool(auto):
    from mailer.delivery import sweeper
    from mailer.worker import actors

    assert automations.release_codes_hook in actors.SWEEP_HOOKS
    # Given a reward mail queued with the pool's only code
    load_codes(auto, 1)
    cid = grant(auto, "ann@example.com", "loyalty")
    (action,) = publish("customer_updated", {"email": "ann@example.com", "total_spent": 1500}, app=auto).actions
    # When the customer withdraws consent before it is sent, the send path skips it
    with auto.session() as s:
        from mailer.models import Customer

        consent.append(s, auto.settings, customer=s.get(Customer, cid), purpose="loyalty", action="withdrawn",
                       source="api")
    assert delivery.process(auto, action.delivery_id).status == "skipped"
    # Then the next sweep returns the code to the pool
    _last_release["at"] = 0.0
    sweeper.sweep(auto, actors.SWEEP_HOOKS)
    with auto.session() as s:
        assert codes_left(s) == 1
        assert s.execute(select(RewardCode.customer_id)).scalar_one() is None


def test_docs_name_every_event_field_and_rule_key():
    from mailer.events.schemas import ITEM_FIELDS, SCHEMAS

    doc = (PROJECT_ROOT / "docs" / "automations.md").read_text(encoding="utf-8")
    for type_, fields in SCHEMAS.items():
        row = next(line for line in doc.splitlines() if line.startswith(f"| `{type_}` |"))
        for name in fields:
            if name != "occurred_at" and not (type_ == "cart_abandoned"):
                assert f"`{name}`" in row, (type_, name)
    for name in ITEM_FIELDS:
        assert f"`{name}`" in doc
    for key in automations.RULE_KEYS:
        assert f"`{key}`" in doc or f"`[{key}]`" in doc, key
    for path in SHIPPED.glob("*.toml"):
        assert f"`{path.name}`" in doc, path.name
