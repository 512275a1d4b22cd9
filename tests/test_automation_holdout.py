"""Automation holdouts: ``holdout_percent`` keeps a reproducible share of a rule's customers
back (recorded, never mailed), and the rule's incremental revenue is measured against them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import dramatiq
import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from mailer.app import App, set_app
from mailer.automations import parse_rule
from mailer.automations.publish import publish
from mailer.automations.sends import HOLDOUT, held_out
from mailer.automations.views import holdout_figures
from mailer.cli import main
from mailer.consent import ledger as consent
from mailer.customers.records import get_or_create
from mailer.errors import ConfigurationError
from mailer.models import Delivery, DeliveryStatus
from mailer.queue.port import QUEUE_BULK
from mailer.rendering import Renderer
from tests.conftest import make_settings

NOON = datetime(2026, 6, 10, 10, 0, tzinfo=UTC)
RULE = """description = "Abandoned cart with a holdout"
event = "cart_abandoned"
kind = "abandoned_cart"
delay = "0s"
group = "cart:{customer_id}"
holdout_percent = 30

[data]
resume_url = "{cart_url}"
"""
CUSTOMERS = 80


@pytest.fixture
def auto(db_url, tmp_path):
    from mailer.worker.actors import setup

    rules = tmp_path / "automations"
    rules.mkdir()
    (rules / "cart_holdout.toml").write_text(RULE, encoding="utf-8")
    settings = make_settings(database_url=db_url, automations_dir=rules, quiet_hours="", frequency_cap=0)
    app = App(settings)
    previous = set_app(app)
    broker = setup(settings)
    app.broker = broker
    yield app
    broker.close()
    app.close()
    set_app(previous)


def _cart(i: int) -> dict:
    return {"email": f"c{i}@example.com", "cart_id": f"k{i}", "items": [{"name": "Linen shirt", "quantity": 1,
                                                                          "price": 59}],
            "total": 59, "cart_url": f"https://shop.example.com/cart/k{i}"}


@pytest.mark.parametrize("value", ["80", "-1", "true", '"10"'])
def test_a_bad_holdout_percent_is_refused_naming_the_key(tmp_path, value):
    path = tmp_path / "r.toml"
    path.write_text(RULE.replace("holdout_percent = 30", f"holdout_percent = {value}"), encoding="utf-8")
    with pytest.raises(ConfigurationError, match="holdout_percent"):
        parse_rule(path, make_settings(), Renderer(make_settings()))


def test_a_transactional_rule_never_holds_anyone_back(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('event = "order_delayed"\nkind = "order_delayed"\nholdout_percent = 10\n', encoding="utf-8")
    with pytest.raises(ConfigurationError, match="transactional"):
        parse_rule(path, make_settings(), Renderer(make_settings()))


def test_the_holdout_is_recorded_not_mailed_and_gives_incremental_revenue(auto):
    app = auto
    # Given 80 customers with marketing consent for the reminder
    purpose = app.renderer.spec("abandoned_cart").purpose
    ids = {}
    with app.session() as s:
        for i in range(CUSTOMERS):
            c = get_or_create(s, app.settings, f"c{i}@example.com")
            consent.append(s, app.settings, customer=c, purpose=purpose, action="granted", source="api")
            ids[i] = c.id
    # When each abandons a cart
    outcomes = {i: publish("cart_abandoned", _cart(i), app=app, now=NOON).actions[0].outcome for i in range(CUSTOMERS)}
    # Then exactly the customers the seeded hash picks are held out, and the others are queued
    expected = {i for i in range(CUSTOMERS) if held_out("cart_holdout", ids[i], 30)}
    assert {i for i, o in outcomes.items() if o == "holdout"} == expected
    assert 0 < len(expected) < CUSTOMERS
    assert {o for i, o in outcomes.items() if i not in expected} == {"queued"}
    with app.session() as s:
        rows = s.execute(select(Delivery.customer_id, Delivery.status, Delivery.variant)
                         .where(Delivery.automation == "cart_holdout")).all()
    held = [r for r in rows if r.variant == HOLDOUT]
    assert len(held) == len(expected) and {r.status for r in held} == {DeliveryStatus.skipped}
    # And no message was enqueued for a held-out send
    queued_ids = [m.args[0] for m in _messages(app)]
    with app.session() as s:
        held_ids = set(s.execute(select(Delivery.id).where(Delivery.variant == HOLDOUT)).scalars())
    assert held_ids and not held_ids & set(queued_ids)
    # And the same customer's next cart is held out again
    again = publish("cart_abandoned", {**_cart(min(expected)), "cart_id": "again"}, app=app,
                    now=NOON + timedelta(days=30))
    assert again.actions[0].outcome == "holdout"

    # Given the mailed reminders were sent; half the mailed customers and a quarter of the held-out ones order 100
    with app.session() as s:
        s.execute(update(Delivery).where(Delivery.automation == "cart_holdout",
                                         Delivery.status == DeliveryStatus.queued)
                  .values(status=DeliveryStatus.sent, sent_at=NOON))
    mailed = sorted(i for i in range(CUSTOMERS) if i not in expected)
    buyers = mailed[::2] + sorted(expected)[::4]
    for n, i in enumerate(buyers):
        publish("order_placed", {"email": f"c{i}@example.com", "order_number": f"o{n}", "total": 100,
                                 "currency": app.settings.default_currency,
                                 "occurred_at": (NOON + timedelta(days=1)).isoformat()},
                app=app, now=NOON + timedelta(days=1))
    # An order long after the window does not count
    publish("order_placed", {"email": f"c{mailed[1]}@example.com", "order_number": "late", "total": 999,
                             "currency": app.settings.default_currency,
                             "occurred_at": (NOON + timedelta(days=20)).isoformat()},
            app=app, now=NOON + timedelta(days=20))
    # When the holdout figures are read with a 5-day window
    with app.session() as s:
        (f,) = holdout_figures(s, window_days=5)
    # Then they compare mailed and held-out sends, and the mails' incremental revenue follows
    # (the held-out customer's second cart is a held-out send of its own, with no order after it)
    assert (f.mailed.sends, f.holdout.sends) == (len(mailed), len(expected) + 1)
    assert f.mailed.converted == len(mailed[::2]) and f.holdout.converted == len(sorted(expected)[::4])
    assert f.mailed.revenue == Decimal(100 * len(mailed[::2]))
    per_mailed = (Decimal(100 * len(mailed[::2])) / len(mailed)).quantize(Decimal("0.01"))
    per_held = (Decimal(100 * len(sorted(expected)[::4])) / (len(expected) + 1)).quantize(Decimal("0.01"))
    assert f.incremental_revenue == ((per_mailed - per_held) * len(mailed)).quantize(Decimal("0.01"))
    # And the command line says so
    env = {"MAILER_DATABASE_URL": app.settings.database_url, "MAILER_BROKER_URL": "stub://",
           "MAILER_SECRET_KEY": app.settings.secret_key, "MAILER_AUTOMATIONS_DIR": str(app.settings.automations_dir)}
    out = CliRunner().invoke(main, ["automations", "holdout", "--json"], env=env)
    assert out.exit_code == 0, out.output
    data = json.loads(out.output[out.output.index("["):])
    assert data[0]["rule"] == "cart_holdout" and data[0]["incremental_revenue"] == str(f.incremental_revenue)
    listing = CliRunner().invoke(main, ["automations", "list"], env=env)
    assert "holdout 30 %" in listing.output


def _messages(app) -> list[dramatiq.Message]:
    """The messages waiting on the stub broker's bulk queue (nothing consumes them here)."""
    queue = app.broker.queues.get(QUEUE_BULK)
    return [] if queue is None else [dramatiq.Message.decode(raw) for raw in list(queue.queue)]
