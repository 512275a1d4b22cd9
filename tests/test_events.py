"""Shop events in: schemas refuse bad events by field, idempotency, atomic application, CLI and HTTP."""

from __future__ import annotations

import json
import shutil
from decimal import Decimal

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from mailer import db
from mailer.app import App
from mailer.automations.publish import publish
from mailer.cli import main
from mailer.errors import InvalidEvent, MissingField, ValidationError
from mailer.events.schemas import EVENT_TYPES, SCHEMAS, validate
from mailer.models import Customer, Delivery, DeliveryStatus, ShopEvent
from mailer.settings import PROJECT_ROOT
from mailer.transport import memory
from tests.conftest import app_with_worker, make_settings

DELAY = {"email": "alice@example.com", "order_number": "1001", "new_eta": "2026-12-01"}
CART = {"email": "a@example.com", "cart_id": "c1", "items": [{"name": "Hat", "price": 3}], "total": 3,
        "cart_url": "https://shop.example.com/cart/c1"}
PRODUCT = {"sku": "S1", "name": "Shoe", "price": 49.9, "url": "https://shop.example.com/p/s1"}


def rules_dir(tmp_path, *shipped: str, extra: dict[str, str] | None = None):
    """A rules folder with copies of some shipped automations plus extra files."""
    path = tmp_path / "automations"
    path.mkdir(exist_ok=True)
    for name in shipped:
        shutil.copy(PROJECT_ROOT / "automations" / f"{name}.toml", path / f"{name}.toml")
    for name, body in (extra or {}).items():
        (path / f"{name}.toml").write_text(body, encoding="utf-8")
    return path


@pytest.fixture
def events_app(db_url, tmp_path):
    """An App whose automations are only the shipped order_delayed rule, on a stub broker."""
    memory.clear()
    settings = make_settings(database_url=db_url, automations_dir=rules_dir(tmp_path, "order_delayed"),
                             quiet_hours="")
    yield from app_with_worker(settings, worker_threads=1, worker_timeout_ms=50)


def _counts(app) -> tuple[int, int, int]:
    with app.session() as s:
        return tuple(s.execute(select(func.count()).select_from(t)).scalar_one()
                     for t in (ShopEvent, Customer, Delivery))


@pytest.mark.parametrize("type_,data,field,words", [
    ("order_teleported", DELAY, "type", "unknown event type 'order_teleported'; known types: order_placed"),
    ("order_delayed", {k: v for k, v in DELAY.items() if k != "email"}, "data.email", "data.email is required"),
    ("order_delayed", {**DELAY, "email": "not-an-address"}, "data.email", "invalid e-mail address"),
    ("order_delayed", {**DELAY, "new_eta": "soon"}, "data.new_eta", "not an ISO 8601 date"),
    ("order_delayed", {**DELAY, "colour": "red"}, "data.colour", "data.colour is not a field of this object"),
    ("order_delayed", {**DELAY, "order_number": "10 01"}, "data.order_number", "must not contain spaces"),
    ("order_delayed", {**DELAY, "items": [{"name": "Shirt"}, {"name": "Hat", "quantity": 0}]},
     "data.items[1].quantity", "must be at least 1"),
    ("order_delayed", {**DELAY, "items": [{"name": "Shirt", "size": "M"}]}, "data.items[0].size", "not a field"),
    ("order_delayed", {**DELAY, "items": "Shirt"}, "data.items", "must be a list of items"),
    ("cart_updated", {"email": "a@example.com", "cart_id": "c1"}, "data.items", "data.items is required"),
    ("cart_updated", {**CART, "items": [{"name": "X", "price": "1.234"}]}, "data.items[0].price", "at most 2 decimals"),
    ("cart_updated", {**CART, "items": [{"name": "X"}]}, "data.items[0].price", "data.items[0].price is required"),
    ("cart_updated", {**CART, "items": [{"name": {"english": "X"}, "price": 1}]}, "data.items[0].name.english",
     "not a locale tag"),
    ("cart_updated", {k: v for k, v in CART.items() if k != "cart_url"}, "data.cart_url", "is required"),
    ("product_restocked", {"sku": "S1"}, "data.name", "data.name is required"),
    ("product_restocked", {**PRODUCT, "stock": 0}, "data.stock", "at least 1"),
    ("product_restocked", {k: v for k, v in PRODUCT.items() if k != "url"}, "data.url", "is required"),
    ("customer_updated", {"email": "a@example.com", "total_spent": "-5"}, "data.total_spent", "non-negative"),
    ("customer_updated", {"email": "a@example.com", "timezone": "Mars/Base"}, "data.timezone", "IANA time zone"),
    ("customer_updated", {"email": "a@example.com", "tags": ["A"], "add_tags": ["B"]}, "data.tags",
     "do not combine"),
    ("order_shipped", {**{k: DELAY[k] for k in ("email", "order_number")}, "carrier": "DHL",
                       "tracking_number": "JD0001", "tracking_url": "javascript:x"},
     "data.tracking_url", "http(s) URL"),
    ("order_shipped", {**{k: DELAY[k] for k in ("email", "order_number")}}, "data.carrier", "is required"),
])
def test_bad_event_is_refused_naming_the_field_and_nothing_is_stored(events_app, type_, data, field, words):
    # Given an empty database
    # When a bad event is published
    with pytest.raises(InvalidEvent) as info:
        publish(type_, data, app=events_app)
    # Then the error names the field and says what is wrong
    assert info.value.field == field
    assert words in str(info.value)
    # And nothing was stored: no event, no customer, no delivery
    assert _counts(events_app) == (0, 0, 0)


def test_every_event_type_has_a_declared_schema():
    assert set(EVENT_TYPES) == {"order_placed", "order_delayed", "order_shipped", "order_delivered",
                                "order_shipment_problem",
                                "order_cancelled", "order_refunded", "cart_updated", "cart_abandoned",
                                "product_restocked", "customer_updated",
                                # raised by mailer from the prediction scores, refused from shops
                                "churn_risk_became", "expected_order_due"}
    for type_, fields in SCHEMAS.items():
        assert any(f.required for f in fields.values()), type_


def test_validation_normalizes_amounts_addresses_and_items():
    data = validate("cart_updated", {"email": " Bob@Example.COM ", "cart_id": "c-9", "total": "12.50",
                                     "cart_url": "https://shop.example.com/c/9",
                                     "items": [{"name": {"en": "Hat", "pl": "Czapka"}, "price": "3"}]})
    assert data == {"email": "bob@example.com", "cart_id": "c-9", "total": 12.5,
                    "cart_url": "https://shop.example.com/c/9",
                    "items": [{"name": {"en": "Hat", "pl": "Czapka"}, "price": 3, "quantity": 1}]}


def test_event_is_stored_once_under_an_idempotency_key(events_app):
    # Given an order_delayed event published with a key
    first = publish("order_delayed", DELAY, idempotency_key="evt-1", app=events_app)
    # When the same event is published again under the same key
    second = publish("order_delayed", DELAY, idempotency_key="evt-1", app=events_app)
    # Then the second returns the first event, marked duplicate, and nothing is applied again
    assert first.event_id == second.event_id and not first.duplicate and second.duplicate
    assert [a.outcome for a in first.actions] == ["queued"] and second.actions == ()
    assert _counts(events_app) == (1, 1, 1)


def test_a_different_event_under_a_used_key_is_refused(events_app):
    publish("order_delayed", DELAY, idempotency_key="evt-2", app=events_app)
    with pytest.raises(ValidationError) as info:
        publish("order_delayed", {**DELAY, "new_eta": "2026-12-09"}, idempotency_key="evt-2", app=events_app)
    assert info.value.field == "idempotency_key" and "already used for a different event" in str(info.value)
    assert _counts(events_app) == (1, 1, 1)


def test_customer_updated_applies_totals_and_tags(events_app):
    # Given a customer with tags A and B
    publish("customer_updated", {"email": "c@example.com", "tags": ["A", "B"], "total_spent": "10"},
            app=events_app)
    # When totals change and a tag is added and one removed
    publish("customer_updated", {"email": "c@example.com", "total_spent": 250.5, "orders_count": 3,
                                 "add_tags": ["VIP"], "remove_tags": ["A"], "timezone": "Asia/Taipei",
                                 "locale": "zh_TW"}, app=events_app)
    # Then the record holds the new values
    with events_app.session() as s:
        c = s.execute(select(Customer).where(Customer.email == "c@example.com")).scalar_one()
        assert c.total_spent == Decimal("250.50") and c.orders_count == 3
        assert c.tag_names == ["B", "VIP"]
        assert (c.timezone, c.locale) == ("Asia/Taipei", "zh-TW")


def test_order_placed_sets_the_last_order_time(events_app):
    publish("order_placed", {"email": "d@example.com", "order_number": "7", "occurred_at": "2026-03-01T10:00:00Z"},
            app=events_app)
    with events_app.session() as s:
        c = s.execute(select(Customer).where(Customer.email == "d@example.com")).scalar_one()
        assert c.last_order_at.isoformat() == "2026-03-01T10:00:00+00:00"


def test_an_automation_failing_mid_event_rolls_everything_back(db_url, tmp_path, stub_broker):
    # Given a (broken) rule that sends order_delayed, which needs fields customer_updated lacks
    broken = 'event = "customer_updated"\nkind = "order_delayed"\nbecame = { total_spent = { gte = 500 } }\n'
    settings = make_settings(database_url=db_url, automations_dir=rules_dir(tmp_path, extra={"broken": broken}))
    app = App(settings)
    publish("customer_updated", {"email": "e@example.com", "total_spent": "5"}, app=app)  # customer exists
    with app.session() as s:
        events_before = s.execute(select(func.count()).select_from(ShopEvent)).scalar_one()
    # When an event updates the customer and then the rule fails
    with pytest.raises(MissingField) as info:
        publish("customer_updated", {"email": "e@example.com", "total_spent": "900"}, app=app)
    assert info.value.field == "data.order_number"
    # Then the customer update and the event row were rolled back with it
    with app.session() as s:
        c = s.execute(select(Customer).where(Customer.email == "e@example.com")).scalar_one()
        assert c.total_spent == Decimal("5.00")
        assert s.execute(select(func.count()).select_from(ShopEvent)).scalar_one() == events_before
        assert s.execute(select(func.count()).select_from(Delivery)).scalar_one() == 0
    app.close()


def test_cli_publish_shows_what_happened_and_refuses_bad_events(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    env = {"MAILER_DATABASE_URL": url, "MAILER_BROKER_URL": "stub://", "MAILER_SMTP_URL": "memory://",
           "MAILER_AUTOMATIONS_DIR": str(rules_dir(tmp_path, "order_delayed"))}
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"], env=env).exit_code == 0
    # When an event is published from the command line
    res = runner.invoke(main, ["events", "publish", "order_delayed", "--data", json.dumps(DELAY)], env=env)
    # Then it reports the automation's outcome
    assert res.exit_code == 0, res.output
    assert "order_delayed" in res.output and "queued" in res.output
    res = runner.invoke(main, ["events", "publish", "order_delayed", "--data", json.dumps(DELAY), "--json"], env=env)
    assert res.exit_code == 0
    assert json.loads(res.output)["actions"][0]["outcome"] == "deduplicated"
    # And a bad event is refused with the field named, exit code 2
    res = runner.invoke(main, ["events", "publish", "order_delayed", "--data", '{"email": "x@example.com"}'],
                        env=env)
    assert res.exit_code == 2 and "data.order_number is required" in res.output
    res = runner.invoke(main, ["events", "publish", "order_delayed", "--data", "{nope"], env=env)
    assert res.exit_code == 2 and "not valid JSON" in res.output
    db.dispose_engines()


def test_http_post_events_with_api_key_and_idempotency(events_app):
    from fastapi.testclient import TestClient

    from mailer.web import apikeys
    from mailer.web.app import create_app

    with events_app.session() as s:
        key = apikeys.create(s, "shop").key
    client = TestClient(create_app(app=events_app))
    auth = {"Authorization": f"Bearer {key}"}
    # Without a key: 401
    assert client.post("/v1/events", json={"type": "order_delayed", "data": DELAY}).status_code == 401
    # With a key: 202 and what the automations did
    res = client.post("/v1/events", json={"type": "order_delayed", "data": DELAY},
                      headers={**auth, "Idempotency-Key": "shop-evt-1"})
    assert res.status_code == 202, res.text
    body = res.json()
    assert body["type"] == "order_delayed" and body["actions"][0]["outcome"] == "queued"
    # The same key again replays the same answer and applies nothing
    again = client.post("/v1/events", json={"type": "order_delayed", "data": DELAY},
                        headers={**auth, "Idempotency-Key": "shop-evt-1"})
    assert again.status_code == 202 and again.json() == body
    assert _counts(events_app) == (1, 1, 1)
    # A bad event: 422 naming the field, nothing stored
    bad = client.post("/v1/events", json={"type": "order_delayed", "data": {**DELAY, "new_eta": "soon"}},
                      headers=auth)
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["field"] == "data.new_eta"
    assert _counts(events_app) == (1, 1, 1)
    with events_app.session() as s:
        assert s.execute(select(Delivery.status)).scalar_one() in (DeliveryStatus.queued, DeliveryStatus.sent)


def test_concurrent_events_about_one_new_customer_all_succeed(events_app):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    # Given 12 delay events for different orders of a customer mailer has never seen
    barrier = threading.Barrier(12)

    def send(i: int):
        barrier.wait()
        return publish("order_delayed", {**DELAY, "email": "new@example.com", "order_number": f"N-{i}"},
                       app=events_app)

    # When they arrive at the same moment
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(send, range(12)))
    # Then each is applied, all to one customer record
    assert len({r.customer_id for r in results}) == 1
    assert [a.outcome for r in results for a in r.actions] == ["queued"] * 12
    assert _counts(events_app) == (12, 1, 12)
