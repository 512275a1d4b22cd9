"""Revenue attribution with a fixed clock, on SQLite and PostgreSQL: last click within the window,
else last human open, machine opens never, one order one send, reversal, currencies apart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from mailer.app import App
from mailer.automations.publish import publish
from mailer.customers import attribution
from mailer.customers.orders import import_orders_file
from mailer.models import (
    Attribution,
    Campaign,
    CampaignStatus,
    Customer,
    Delivery,
    DeliveryStatus,
    Order,
    TrackingEvent,
    TrackingKind,
)
from tests.conftest import make_settings

#: The fixed clock: every order in these tests is placed at this instant.
T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
EMAIL = "ann@example.com"


@pytest.fixture
def attr_app(db_url, tmp_path):
    rules = tmp_path / "automations"
    rules.mkdir()
    application = App(make_settings(database_url=db_url, automations_dir=rules, quiet_hours=""))
    yield application
    application.close()


def _customer(s, email: str = EMAIL) -> Customer:
    c = Customer(email=email, email_hash=email, total_spent=Decimal("0"), orders_count=0, attributes={})
    s.add(c)
    s.flush()
    return c


def _campaign(s, name: str) -> Campaign:
    c = Campaign(name=name, template="newsletter/test", segment="all", purpose="newsletter", subjects={}, data={},
                 status=CampaignStatus.completed, tracking=True, cursor=0, fanout_done=True)
    s.add(c)
    s.flush()
    return c


def _send(s, customer: Customer, *, campaign: Campaign | None = None, automation: str | None = None,
          sent_at: datetime = T0 - timedelta(days=10)) -> Delivery:
    key = f"campaign:{campaign.id}:{customer.id}" if campaign else f"auto:{automation}:{customer.id}"
    d = Delivery(idempotency_key=key, kind="newsletter/test", campaign_id=campaign.id if campaign else None,
                 automation=automation, customer_id=customer.id, to_address=customer.email, to_hash="h",
                 locale="en", data={}, purpose="newsletter", queue="bulk", status=DeliveryStatus.sent,
                 sent_at=sent_at)
    s.add(d)
    s.flush()
    return d


def _touch(s, delivery: Delivery, kind: TrackingKind, at: datetime) -> None:
    s.add(TrackingEvent(delivery_id=delivery.id, campaign_id=delivery.campaign_id, customer_id=delivery.customer_id,
                        kind=kind, url="https://shop.example.com/x" if kind is TrackingKind.click else None,
                        occurred_at=at))
    s.flush()


def _order(app, number: str = "1001", *, total=120, currency="EUR", at: datetime = T0, email: str = EMAIL):
    publish("order_placed", {"email": email, "order_number": number, "total": total, "currency": currency,
                             "occurred_at": at.isoformat()}, app=app, now=at)
    with app.session() as s:
        order = s.execute(select(Order).where(Order.shop_order_id == number)).scalar_one()
        return s.execute(select(Attribution).where(Attribution.order_id == order.id)).scalar_one_or_none()


@pytest.mark.parametrize(("clicked_before", "attributed"), [
    (timedelta(days=4, hours=23), True),   # inside MAILER_ATTRIBUTION_CLICK_DAYS (5)
    (timedelta(days=5, minutes=1), False),  # just outside it
])
def test_a_click_then_an_order_inside_the_window_attributes_and_outside_does_not(attr_app, clicked_before,
                                                                                  attributed):
    # Given a campaign mail whose link the customer clicked some time before the order
    with attr_app.session() as s:
        ann = _customer(s)
        spring = _campaign(s, "Spring")
        _touch(s, _send(s, ann, campaign=spring), TrackingKind.click, T0 - clicked_before)
        campaign_id = spring.id
    # When the order is placed
    row = _order(attr_app)
    # Then it goes to that campaign (by the click) only when the click was inside the window
    if attributed:
        assert row is not None and row.campaign_id == campaign_id and row.basis == "click"
        assert row.amount == Decimal("120.00") and row.currency == "EUR"
    else:
        assert row is None
    with attr_app.session() as s:
        figures = attribution.campaign_revenue(s, campaign_id)
    assert figures.orders == (1 if attributed else 0)


def test_two_campaigns_clicked_the_last_click_wins_and_one_order_goes_to_one_send(attr_app):
    # Given clicks on two campaigns, the later one on "Autumn"
    with attr_app.session() as s:
        ann = _customer(s)
        spring, autumn = _campaign(s, "Spring"), _campaign(s, "Autumn")
        _touch(s, _send(s, ann, campaign=spring), TrackingKind.click, T0 - timedelta(days=2))
        _touch(s, _send(s, ann, campaign=autumn), TrackingKind.click, T0 - timedelta(hours=3))
        ids = spring.id, autumn.id
    # When the order is placed, and the same order_placed arrives again
    row = _order(attr_app)
    again = _order(attr_app)
    # Then the later click's campaign has it, once; the other has nothing
    assert row.campaign_id == ids[1] and again.id == row.id
    with attr_app.session() as s:
        assert attribution.campaign_revenue(s, ids[0]).orders == 0
        assert attribution.campaign_revenue(s, ids[1]).orders == 1
        assert len(s.execute(select(Attribution)).scalars().all()) == 1


def test_an_open_only_order_goes_to_the_last_human_open_within_the_open_window(attr_app):
    # Given no click, a human open 20 hours before the order, and an older one (30 h) on another campaign
    with attr_app.session() as s:
        ann = _customer(s)
        old, recent = _campaign(s, "Old"), _campaign(s, "Recent")
        _touch(s, _send(s, ann, campaign=old), TrackingKind.open, T0 - timedelta(hours=30))
        _touch(s, _send(s, ann, campaign=recent), TrackingKind.open, T0 - timedelta(hours=20))
        recent_id = recent.id
    # When the order is placed
    row = _order(attr_app)
    # Then the recent open (inside MAILER_ATTRIBUTION_OPEN_HOURS = 24) has it, by open
    assert row.campaign_id == recent_id and row.basis == "open"


def test_a_click_wins_over_a_later_open(attr_app):
    # Given a click 3 days before and a human open of another campaign 1 hour before the order
    with attr_app.session() as s:
        ann = _customer(s)
        clicked, opened = _campaign(s, "Clicked"), _campaign(s, "Opened")
        _touch(s, _send(s, ann, campaign=clicked), TrackingKind.click, T0 - timedelta(days=3))
        _touch(s, _send(s, ann, campaign=opened), TrackingKind.open, T0 - timedelta(hours=1))
        clicked_id = clicked.id
    # When the order is placed, then the click decides
    row = _order(attr_app)
    assert row.campaign_id == clicked_id and row.basis == "click"


def test_a_machine_open_never_attributes(attr_app):
    # Given only a machine open (a privacy proxy) one hour before the order
    with attr_app.session() as s:
        ann = _customer(s)
        spring = _campaign(s, "Spring")
        _touch(s, _send(s, ann, campaign=spring), TrackingKind.machine_open, T0 - timedelta(hours=1))
    # When the order is placed, then nothing is attributed
    assert _order(attr_app) is None


def test_an_automation_send_gets_the_order_per_rule(attr_app):
    # Given a click on an abandoned-cart automation mail
    with attr_app.session() as s:
        ann = _customer(s)
        _touch(s, _send(s, ann, automation="cart_abandoned"), TrackingKind.click, T0 - timedelta(hours=2))
    # When the order is placed
    row = _order(attr_app, total=40)
    # Then the rule has it, with its one recipient converted
    assert row.automation == "cart_abandoned" and row.campaign_id is None
    with attr_app.session() as s:
        figures, recipients = attribution.automation_revenue(s)["cart_abandoned"]
    assert (figures.orders, figures.revenue, recipients) == (1, {"EUR": Decimal("40.00")}, 1)
    assert figures.conversion_rate(recipients) == 1.0


@pytest.mark.parametrize("event", ["order_cancelled", "order_refunded"])
def test_a_cancellation_or_refund_reverses_the_attribution(attr_app, event):
    # Given an attributed order
    with attr_app.session() as s:
        ann = _customer(s)
        spring = _campaign(s, "Spring")
        _touch(s, _send(s, ann, campaign=spring), TrackingKind.click, T0 - timedelta(hours=5))
        campaign_id = spring.id
    assert _order(attr_app) is not None
    # When the shop reports it cancelled (or refunded) a day later
    publish(event, {"email": EMAIL, "order_number": "1001"}, app=attr_app, now=T0 + timedelta(days=1))
    # Then the campaign's figures leave it out, and the attribution says why
    with attr_app.session() as s:
        row = s.execute(select(Attribution)).scalar_one()
        figures = attribution.campaign_revenue(s, campaign_id)
    assert row.reversed_at == T0 + timedelta(days=1)
    assert row.reversal == ("cancelled" if event == "order_cancelled" else "refunded")
    assert (figures.orders, figures.revenue) == (0, {})
    # And a replayed order_placed does not bring it back
    _order(attr_app)
    with attr_app.session() as s:
        assert attribution.campaign_revenue(s, campaign_id).orders == 0


def test_orders_in_two_currencies_are_summed_per_currency(attr_app):
    # Given two customers who clicked the same campaign
    with attr_app.session() as s:
        spring = _campaign(s, "Spring")
        for email in (EMAIL, "bob@example.com"):
            c = _customer(s, email)
            _touch(s, _send(s, c, campaign=spring), TrackingKind.click, T0 - timedelta(hours=1))
        campaign_id = spring.id
    # When each places orders, in EUR and in PLN
    _order(attr_app, "1", total=100, currency="EUR")
    _order(attr_app, "2", total="19.99", currency="EUR")
    _order(attr_app, "3", total=250, currency="PLN", email="bob@example.com")
    # Then revenue is kept per currency, never added across them
    with attr_app.session() as s:
        figures = attribution.campaign_revenue(s, campaign_id)
    assert figures.orders == 3 and figures.customers == 2
    assert figures.revenue == {"EUR": Decimal("119.99"), "PLN": Decimal("250.00")}
    assert figures.per_recipient(2) == {"EUR": Decimal("60.00"), "PLN": Decimal("125.00")}
    assert figures.conversion_rate(2) == 1.0


def test_an_orders_import_attributes_like_the_events_and_reverses_cancelled_rows(attr_app, tmp_path):
    # Given a click on a campaign, then an import of two orders (one cancelled) after it
    with attr_app.session() as s:
        ann = _customer(s)
        spring = _campaign(s, "Spring")
        _touch(s, _send(s, ann, campaign=spring), TrackingKind.click, T0 - timedelta(hours=5))
        campaign_id = spring.id
    csv = tmp_path / "orders.csv"
    csv.write_text("email,order_id,placed_at,total,currency,status\n"
                   f"{EMAIL},A1,{T0.isoformat()},50.00,EUR,placed\n"
                   f"{EMAIL},A2,{(T0 + timedelta(hours=1)).isoformat()},70.00,EUR,placed\n", encoding="utf-8")
    result = import_orders_file(attr_app.settings, csv)
    assert result.attributed == 2
    # When a second import says A2 was cancelled
    csv.write_text(f"email,order_id,placed_at,total,currency,status\n{EMAIL},A2,{T0.isoformat()},70.00,EUR,"
                   "cancelled\n", encoding="utf-8")
    import_orders_file(attr_app.settings, csv)
    # Then only A1 counts
    with attr_app.session() as s:
        figures = attribution.campaign_revenue(s, campaign_id)
    assert (figures.orders, figures.revenue) == (1, {"EUR": Decimal("50.00")})
