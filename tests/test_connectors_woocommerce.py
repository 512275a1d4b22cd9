"""WooCommerce webhooks in: signatures, the ping, order statuses, Shipment Tracking,
customers and restocks, through the real automations to a real SMTP server."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from mailer.consent import ledger as consent
from mailer.customers.records import get_or_create
from mailer.models import ConnectorWebhook, Customer, DeliveryStatus, Order, OrderStatus, ShopCustomer, ShopEvent
from tests import connector_payloads as P
from tests.connector_support import shop_fixture, text_of  # noqa: F401 - shop_fixture is the fixture

pytestmark = [pytest.mark.smtp]
BOB = "bob@example.com"


def _events(app, type_: str) -> list[ShopEvent]:
    with app.session() as s:
        rows = s.execute(select(ShopEvent).where(ShopEvent.type == type_).order_by(ShopEvent.id)).scalars().all()
        s.expunge_all()
        return rows


def test_a_wrong_signature_is_401_and_nothing_is_stored(shop):
    r = shop.woo("order.created", P.woo_order(), secret="wrong")
    assert r.status_code == 401
    with shop.app.session() as s:
        assert s.execute(select(func.count()).select_from(ConnectorWebhook)).scalar_one() == 0


def test_the_ping_when_a_webhook_is_saved_is_answered_and_stores_nothing(shop):
    r = shop.client.post("/webhooks/woocommerce", content=b"webhook_id=12",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (r.status_code, r.json()) == (200, {"outcome": "ping"})
    assert shop.webhooks() == []


def test_processing_places_the_order_once_across_created_and_updated(shop):
    # Given order.created and then order.updated, both still "processing"
    shop.woo("order.created", P.woo_order("processing"))
    shop.woo("order.updated", P.woo_order("processing"))
    # Then one order_placed, the order kept in EUR, the customer linked with their store id and counted
    [ev] = _events(shop.app, "order_placed")
    assert (ev.data["order_number"], ev.data["currency"], ev.data["total"]) == ("727", "EUR", 49.9)
    assert ev.data["items"] == [{"name": "Woo Single #1", "sku": "WOO-1", "quantity": 2, "price": 24.95}]
    with shop.app.session() as s:
        link = s.execute(select(ShopCustomer)).scalar_one()
        c = s.execute(select(Customer).where(Customer.email == BOB)).scalar_one()
    assert (link.platform, link.shop, link.remote_id) == ("woocommerce", P.STORE, "25")
    assert c.orders_count == 1


def test_shipment_tracking_items_ship_with_carrier_and_number_and_completed_means_delivered(shop):
    # Given a processing order, then the Shipment Tracking extension adds a DHL number
    shop.woo("order.created", P.woo_order("processing"))
    shop.woo("order.updated", P.woo_order("processing", tracking=[P.woo_tracking()]))
    # Then a shipping update mail with the carrier and the tracking number went out
    [ev] = _events(shop.app, "order_shipped")
    assert (ev.data["carrier"], ev.data["tracking_number"]) == ("dhl", "00340434161094042557")
    assert ev.data["tracking_url"].startswith("https://www.dhl.com/")
    [mail] = shop.mails_to(BOB)
    assert "00340434161094042557" in text_of(mail)
    # When the order is completed (the same tracking again), it is delivered: the CSAT survey is scheduled
    shop.woo("order.updated", P.woo_order("completed", tracking=[P.woo_tracking()]))
    assert len(_events(shop.app, "order_shipped")) == 1
    assert len(_events(shop.app, "order_delivered")) == 1
    assert [d.status for d in shop.deliveries("csat_survey")] == [DeliveryStatus.scheduled]
    shop.time_passes()
    assert len(shop.mails_to(BOB)) == 2


@pytest.mark.parametrize("status,expected", [("cancelled", OrderStatus.cancelled), ("refunded", OrderStatus.refunded)])
def test_cancelled_and_refunded_cancel_pending_sends(shop, status, expected):
    shop.woo("order.created", P.woo_order("processing"))
    shop.woo("order.updated", P.woo_order("completed"))
    assert [d.status for d in shop.deliveries("csat_survey")] == [DeliveryStatus.scheduled]
    shop.woo("order.updated", P.woo_order(status))
    assert [d.status for d in shop.deliveries("csat_survey")] == [DeliveryStatus.cancelled]
    with shop.app.session() as s:
        assert s.execute(select(Order.status)).scalar_one() == expected


def test_a_customer_becomes_a_record_linked_to_the_store(shop):
    shop.woo("customer.created", P.woo_customer())
    with shop.app.session() as s:
        c = s.execute(select(Customer).where(Customer.email == BOB)).scalar_one()
        assert (c.first_name, c.country) == ("Bob", "DE")
        assert s.execute(select(ShopCustomer.remote_id)).scalar_one() == "25"


def test_out_of_stock_to_in_stock_mails_everyone_who_asked(shop):
    with shop.app.session() as s:
        c = get_or_create(s, shop.app.settings, "carol@example.com")
        consent.append(s, shop.app.settings, customer=c, purpose="restock:WOO-1", action="granted", source="api")
    shop.woo("product.updated", P.woo_product("outofstock", 0))
    shop.woo("product.updated", P.woo_product("instock", 3))
    [ev] = _events(shop.app, "product_restocked")
    assert (ev.data["sku"], ev.data["stock"], ev.data["url"]) == ("WOO-1", 3, f"{P.STORE}/product/woo-single-1/")
    shop.time_passes()
    [mail] = shop.mails_to("carol@example.com")
    assert "Woo Single #1" in text_of(mail)
    # An in-stock product updated again is no new restock
    shop.woo("product.updated", P.woo_product("instock", 2))
    assert len(_events(shop.app, "product_restocked")) == 1
