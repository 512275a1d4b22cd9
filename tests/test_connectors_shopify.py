"""Shopify webhooks in: signatures, once-only effect, each mapped topic through the real
automations to a real SMTP server, the privacy topics and unmapped topics."""

from __future__ import annotations

import json
import threading
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from mailer.consent import ledger as consent
from mailer.customers.records import get_or_create
from mailer.models import (
    AuditEntry,
    ConnectorWebhook,
    ConsentEvent,
    Customer,
    DeliveryStatus,
    Order,
    OrderStatus,
    ShopCustomer,
    ShopEvent,
)
from tests import connector_payloads as P
from tests.connector_support import SECRET, shop_fixture, text_of  # noqa: F401 - shop_fixture is the fixture

pytestmark = [pytest.mark.smtp]
ALICE = "alice@example.com"


def _count(app, model) -> int:
    with app.session() as s:
        return s.execute(select(func.count()).select_from(model)).scalar_one()


def _customer(app, email: str) -> Customer | None:
    with app.session() as s:
        c = s.execute(select(Customer).where(Customer.email == email)).scalar_one_or_none()
        if c is not None:
            s.expunge(c)
        return c


def _audit(app) -> list[tuple[str, str, str]]:
    with app.session() as s:
        return [tuple(r) for r in s.execute(select(AuditEntry.actor, AuditEntry.action, AuditEntry.target)
                                            .order_by(AuditEntry.seq)).all()]


def _consent(app, email: str) -> list[ConsentEvent]:
    with app.session() as s:
        rows = s.execute(select(ConsentEvent).join(Customer, Customer.id == ConsentEvent.customer_id)
                         .where(Customer.email == email).order_by(ConsentEvent.seq)).scalars().all()
        s.expunge_all()
        return rows


# -- signatures and once-only ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["wrong secret", "missing signature", "body altered", "unknown shop", "garbage"])
def test_a_delivery_not_signed_by_the_shop_is_401_and_nothing_is_stored(shop, case):
    # Given a signed orders/create delivery, spoiled in one way
    raw = json.dumps(P.order()).encode()
    kwargs: dict = {}
    if case == "wrong secret":
        kwargs = {"secret": "not-the-secret"}
    elif case == "missing signature":
        kwargs = {"drop": ("X-Shopify-Hmac-Sha256",)}
    elif case == "body altered":
        from mailer.connectors.signing import sign
        kwargs = {"raw": raw.replace(b"140.00", b"1.00"), "signature": sign(SECRET, raw)}
    elif case == "unknown shop":
        kwargs = {"shop": "someone-else.myshopify.com"}
    else:
        kwargs = {"signature": "bm90IGEgc2lnbmF0dXJl"}
    # When it is posted
    r = shop.post("orders/create", P.order(), **kwargs)
    # Then it is refused with a problem document, and nothing at all is stored
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert _count(shop.app, ConnectorWebhook) == 0 and _count(shop.app, ShopEvent) == 0
    assert _customer(shop.app, ALICE) is None


def test_the_same_webhook_id_twice_takes_effect_once(shop):
    # Given one orders/create delivered, then delivered again by Shopify's retry
    first = shop.post("orders/create", P.order(), webhook_id="b54557e4-1")
    again = shop.post("orders/create", P.order(), webhook_id="b54557e4-1")
    # Then both are acknowledged, one row holds it with the duplicate counted, one order exists
    assert (first.status_code, first.json()["outcome"]) == (200, "stored")
    assert (again.status_code, again.json()["outcome"]) == (200, "duplicate")
    [row] = shop.webhooks()
    assert row.status == "done" and row.duplicates == 1 and row.body is None
    assert _count(shop.app, Order) == 1
    assert _customer(shop.app, ALICE).orders_count == 1


def test_the_same_webhook_id_at_the_same_moment_takes_effect_once(shop):
    # Given two threads posting the same delivery at once
    barrier = threading.Barrier(2)
    answers: list = []

    def deliver():
        barrier.wait()
        answers.append(shop.post("orders/create", P.order(), webhook_id="same-moment"))

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shop.drain()
    # Then both got 200, exactly one was stored, and the order counts once
    assert sorted(a.json()["outcome"] for a in answers) == ["duplicate", "stored"]
    assert all(a.status_code == 200 for a in answers)
    assert _count(shop.app, ConnectorWebhook) == 1
    assert _count(shop.app, Order) == 1


def test_an_unmapped_topic_is_acknowledged_and_counted(shop):
    # When Shopify sends a topic mailer does not map
    r = shop.post("collections/update", {"id": 1, "title": "Summer"})
    # Then it is acknowledged, counted as ignored, and its body is not kept
    assert r.status_code == 200 and r.json()["outcome"] == "ignored"
    [row] = shop.webhooks()
    assert (row.topic, row.status, row.body) == ("collections/update", "ignored", None)


# -- orders and carts -----------------------------------------------------------------------------------
def test_a_multi_currency_order_is_placed_in_what_the_customer_paid_and_counts_towards_spend(shop):
    # Given a Polish customer paying in PLN at a shop keeping its books in USD,
    # with Shopify's lifetime figures on the order's customer
    o = P.order(multi_currency=True, customer_fields={"orders_count": 3, "total_spent": "812.40"})
    # When orders/create arrives
    assert shop.post("orders/create", o).status_code == 200
    # Then an order_placed event carries the items, the PLN total and the currency
    with shop.app.session() as s:
        ev = s.execute(select(ShopEvent).where(ShopEvent.type == "order_placed")).scalar_one()
        order = s.execute(select(Order)).scalar_one()
    assert ev.data["currency"] == "PLN" and ev.data["total"] == 569
    assert [i["sku"] for i in ev.data["items"]] == ["LIN-M", "SOCK-3"]
    assert ev.data["items"][1] == {"name": "Wool socks", "sku": "SOCK-3", "quantity": 2, "price": 119.5}
    assert (order.shop_order_id, order.currency, order.total) == ("1001", "PLN", Decimal("569.00"))
    # And the customer's spend and order count are Shopify's, and the customer is linked to the shop
    c = _customer(shop.app, ALICE)
    assert (c.orders_count, c.total_spent) == (3, Decimal("812.40"))
    with shop.app.session() as s:
        link = s.execute(select(ShopCustomer)).scalar_one()
    assert (link.shop, link.remote_id) == (P.SHOP, str(P.CUSTOMER["id"]))


def test_an_abandoned_checkout_reminds_with_its_recovery_link_and_an_order_cancels_the_rest(shop):
    # Given a customer who agreed to newsletters in Shopify (confirmed opt-in)
    shop.post("customers/create", P.customer("subscribed", "confirmed_opt_in"))
    # When a checkout is updated and left
    shop.post("checkouts/update", P.checkout())
    reminders = shop.deliveries("abandoned_cart")
    assert [d.status for d in reminders] == [DeliveryStatus.scheduled, DeliveryStatus.scheduled]
    # And the first reminder's time comes
    with shop.app.session() as s:
        from sqlalchemy import update

        from mailer.clock import utcnow
        from mailer.models import Delivery
        s.execute(update(Delivery).where(Delivery.id == reminders[0].id).values(send_after=utcnow()))
    shop.time_passes.__func__  # noqa: B018 - documents the helper used below for the rest
    from mailer.delivery import sweeper
    from mailer.worker.actors import SWEEP_HOOKS
    sweeper.sweep(shop.app, SWEEP_HOOKS)
    shop.drain()
    # Then one reminder mail reached the customer, with Shopify's recovery link
    [mail] = shop.mails_to(ALICE)
    # (automation mail is tracked: the recovery link leads through /t/c/ to Shopify's URL)
    import re
    from urllib.parse import urlsplit
    tracked = set(re.findall(r"https?://\S+?/t/c/[^\s)\]>\"]+", text_of(mail)))
    assert tracked
    targets = [shop.client.get("/t/c/" + urlsplit(u).path.split("/t/c/", 1)[1], headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"},
                               follow_redirects=False).headers.get("location", "") for u in tracked]
    assert any(f"{P.SHOP}/59710963/checkouts/cart-abc/recover" in t for t in targets), targets
    # When the order comes, the second reminder is cancelled
    shop.post("orders/create", P.order())
    statuses = [d.status for d in shop.deliveries("abandoned_cart")]
    assert statuses == [DeliveryStatus.sent, DeliveryStatus.cancelled]


def test_a_guest_checkout_without_a_customer_reminds_by_its_email_when_consent_allows(shop):
    # Given a guest (no Shopify customer) who typed an address at checkout, without newsletter consent
    shop.post("checkouts/create", P.checkout("guest-1", email="guest@example.com", guest=True))
    # Then the cart_updated event reached the automations, which skipped the marketing reminder
    [row] = shop.webhooks()
    assert "cart_updated: abandoned_cart=skipped" in row.detail
    assert shop.deliveries("abandoned_cart") == [] and shop.mails_to("guest@example.com") == []
    with shop.app.session() as s:
        assert s.execute(select(ShopCustomer.remote_id)).scalars().all() == [None]
    # When the guest had agreed at the shop's sign-up form, a later checkout schedules the reminders
    with shop.app.session() as s:
        consent.grant(s, shop.app.settings, purpose="newsletter", source="signup_form", email="guest@example.com")
    shop.post("checkouts/update", P.checkout("guest-1", email="guest@example.com", guest=True,
                                             updated_at="2026-12-01T09:30:00-05:00"))
    assert len(shop.deliveries("abandoned_cart")) == 2
    shop.time_passes()
    assert len(shop.mails_to("guest@example.com")) == 2


def test_a_checkout_without_any_email_is_acknowledged_and_does_nothing(shop):
    r = shop.post("checkouts/create", P.checkout("anon", email=None, guest=True))
    assert r.status_code == 200
    [row] = shop.webhooks()
    assert row.status == "done" and "nothing to do" in row.detail
    assert shop.deliveries() == []


# -- consent from Shopify -----------------------------------------------------------------------------------
def test_not_subscribed_records_no_consent_and_confirmed_opt_in_grants_with_its_level_as_proof(shop):
    # Given a customer Shopify says is not subscribed
    shop.post("customers/create", P.customer("not_subscribed", updated_at=None))
    assert _consent(shop.app, ALICE) == []
    # When they subscribe with a confirmed opt-in
    shop.post("customers/update", P.customer("subscribed", "confirmed_opt_in", "2026-11-30T15:00:00Z"))
    # Then one grant with source shopify, the opt-in level as the proof, the shop as the form
    [ev] = _consent(shop.app, ALICE)
    assert (ev.action.value, ev.source.value, ev.purpose) == ("granted", "shopify", "newsletter")
    assert "opt_in_level=confirmed_opt_in" in ev.wording and ev.form_id == f"shopify:{P.SHOP}"
    assert ev.confirmed_at is not None
    # And the same state again changes nothing
    shop.post("customers/update", P.customer("subscribed", "confirmed_opt_in", "2026-11-30T15:00:00Z"))
    assert len(_consent(shop.app, ALICE)) == 1


def test_pending_never_grants(shop):
    shop.post("customers/create", P.customer("pending", "confirmed_opt_in"))
    assert _consent(shop.app, ALICE) == []


def test_unsubscribed_in_shopify_withdraws_and_a_stale_subscribed_does_not_regrant(shop):
    # Given a subscribed customer who then unsubscribes in Shopify
    shop.post("customers/create", P.customer("subscribed", "single_opt_in", "2026-11-30T15:00:00Z"))
    shop.post("customers/update", P.customer("unsubscribed", "single_opt_in", "2026-11-30T16:00:00Z"))
    events = _consent(shop.app, ALICE)
    assert [e.action.value for e in events] == ["granted", "withdrawn"]
    # When an older "subscribed" arrives late
    shop.post("customers/update", P.customer("subscribed", "single_opt_in", "2026-11-30T15:30:00Z"))
    # Then nothing is re-granted
    assert [e.action.value for e in _consent(shop.app, ALICE)] == ["granted", "withdrawn"]
    with shop.app.session() as s:
        c = s.execute(select(Customer).where(Customer.email == ALICE)).scalar_one()
        assert not consent.has_consent(s, shop.app.settings, c.id, "newsletter")


# -- fulfillments -----------------------------------------------------------------------------------------
def test_a_partial_fulfillment_ships_its_items_then_a_later_eta_is_one_delay_notice_and_delivered_starts_csat(shop):
    # Given an order
    shop.post("orders/create", P.order())
    # When a partial fulfillment is created in transit with an ETA
    shop.post("fulfillments/create", P.fulfillment(partial=True, eta="2026-12-05T12:00:00Z"))
    # Then a shipping update went out with the carrier and tracking number, listing the shipped item
    [shipped] = shop.mails_to(ALICE)
    body = text_of(shipped)
    assert "1Z2345" in body and "UPS" in body
    with shop.app.session() as s:
        ev = s.execute(select(ShopEvent).where(ShopEvent.type == "order_shipped")).scalar_one()
    assert [i["sku"] for i in ev.data["items"]] == ["LIN-M"] and ev.data["eta"] == "2026-12-05T12:00:00Z"
    # When the estimated delivery moves later, twice with the same new date
    shop.post("fulfillments/update", P.fulfillment(partial=True, eta="2026-12-08T12:00:00Z"))
    shop.post("fulfillments/update", P.fulfillment(partial=True, eta="2026-12-08T12:00:00Z"))
    # Then one order_delayed notice with the new ETA
    delays = shop.deliveries("order_delayed")
    assert len(delays) == 1 and delays[0].data["new_eta"] == "2026-12-08T12:00:00Z"
    assert len(shop.mails_to(ALICE)) == 2
    # When it is delivered, the CSAT survey is scheduled (3 days later) and goes when due
    shop.post("fulfillments/update", P.fulfillment(partial=True, status="delivered", eta="2026-12-08T12:00:00Z"))
    [csat] = shop.deliveries("csat_survey")
    assert csat.status == DeliveryStatus.scheduled
    shop.time_passes()
    assert len(shop.mails_to(ALICE)) == 3


@pytest.mark.parametrize("problem", ["failure", "attempted_delivery"])
def test_a_failed_or_attempted_delivery_mails_a_shipping_update_about_the_problem(shop, problem):
    # Given an order whose parcel is on its way (one shipping update sent)
    shop.post("orders/create", P.order())
    shop.post("fulfillments/create", P.fulfillment())
    assert len(shop.mails_to(ALICE)) == 1
    # When the carrier reports the problem, twice (Shopify repeats fulfillment updates)
    shop.post("fulfillments/update", P.fulfillment(status=problem))
    shop.post("fulfillments/update", P.fulfillment(status=problem))
    # Then one more shipping update reached the customer, saying there is a problem, with the tracking link
    mails = shop.mails_to(ALICE)
    assert len(mails) == 2
    assert "problem with your delivery" in mails[1]["Subject"]
    body = text_of(mails[1])
    assert "1Z2345" in body and "UPS" in body
    [problem_mail] = [d for d in shop.deliveries("shipping_update") if d.automation == "shipping_problem"]
    assert problem_mail.data["status"] == "exception"
    with shop.app.session() as s:
        ev = s.execute(select(ShopEvent).where(ShopEvent.type == "order_shipment_problem")).scalar_one()
    assert ev.data["shipment_status"] == problem


def test_a_delivery_problem_without_tracking_is_acknowledged_and_sends_nothing(shop):
    shop.post("orders/create", P.order())
    fulfillment = {**P.fulfillment(status="failure"), "tracking_number": None, "tracking_numbers": [],
                   "tracking_url": None, "tracking_urls": []}
    assert shop.post("fulfillments/update", fulfillment).status_code == 200
    assert shop.mails_to(ALICE) == []
    assert "without a tracking number" in shop.webhooks()[-1].detail


def test_a_cancelled_order_cancels_its_pending_survey(shop):
    shop.post("orders/create", P.order())
    shop.post("fulfillments/update", P.fulfillment(status="delivered"))
    assert [d.status for d in shop.deliveries("csat_survey")] == [DeliveryStatus.scheduled]
    shop.post("orders/cancelled", {**P.order(), "cancelled_at": "2026-12-04T10:00:00Z", "financial_status": "refunded"})
    assert [d.status for d in shop.deliveries("csat_survey")] == [DeliveryStatus.cancelled]
    with shop.app.session() as s:
        assert s.execute(select(Order.status)).scalar_one() == OrderStatus.refunded


# -- stock ------------------------------------------------------------------------------------------------
def test_stock_back_from_zero_mails_everyone_who_asked(shop):
    # Given a customer who asked to be told when LIN-M is back, and the product out of stock
    with shop.app.session() as s:
        c = get_or_create(s, shop.app.settings, "carol@example.com")
        consent.append(s, shop.app.settings, customer=c, purpose="restock:LIN-M", action="granted", source="api")
    shop.post("products/update", P.product(0))
    # When one location gets 5 units
    shop.post("inventory_levels/update", P.inventory_level(5))
    # Then a product_restocked event with the stock count, and the back-in-stock mail when its merge window ends
    with shop.app.session() as s:
        ev = s.execute(select(ShopEvent).where(ShopEvent.type == "product_restocked")).scalar_one()
    assert (ev.data["sku"], ev.data["stock"]) == ("LIN-M", 5)
    assert ev.data["url"] == f"https://{P.SHOP}/products/linen-shirt?variant=39072856"
    shop.time_passes()
    [mail] = shop.mails_to("carol@example.com")
    assert "Linen shirt" in text_of(mail)
    # And more stock arriving is not a second restock
    shop.post("inventory_levels/update", P.inventory_level(9))
    with shop.app.session() as s:
        assert s.execute(select(func.count()).select_from(ShopEvent)
                         .where(ShopEvent.type == "product_restocked")).scalar_one() == 1


# -- privacy topics ---------------------------------------------------------------------------------------
def test_data_request_writes_the_access_export_for_the_shop(shop, tmp_path):
    shop.post("customers/create", P.customer("subscribed", "single_opt_in"))
    assert shop.post("customers/data_request", P.data_request()).status_code == 200
    path = tmp_path / "exports" / P.SHOP / "data_request-9999.json"
    doc = json.loads(path.read_text())
    assert doc["shop"] == P.SHOP and doc["orders_requested"] == [299938, 280263]
    assert ALICE in json.dumps(doc["mailer_export"])
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert _audit(shop.app) == [(f"shopify:{P.SHOP}", "gdpr.export", f"customer:{P.CUSTOMER['id']}")]


def test_customers_redact_erases_the_customer(shop):
    shop.post("customers/create", P.customer("subscribed", "single_opt_in"))
    shop.post("orders/create", P.order())
    shop.post("customers/redact", P.customer_redact())
    assert _customer(shop.app, ALICE) is None
    with shop.app.session() as s:
        assert s.execute(select(func.count()).select_from(ShopCustomer)).scalar_one() == 0
        erased = s.execute(select(Customer).where(Customer.erased_at.is_not(None))).scalars().all()
    assert len(erased) == 1
    assert all(ALICE not in (w.body or "") for w in shop.webhooks())
    assert _audit(shop.app) == [(f"shopify:{P.SHOP}", "gdpr.erase", f"customer:{P.CUSTOMER['id']}")]


def test_shop_redact_erases_what_came_only_from_that_shop(shop):
    # Given a customer from this shop, and one also known from a WooCommerce store
    shop.post("customers/create", P.customer("subscribed", "single_opt_in"))
    shop.post("customers/create", P.customer(email="bob@example.com", id=42))
    shop.woo("customer.created", P.woo_customer())
    # When Shopify asks to redact the shop
    shop.post("shop/redact", P.shop_redact())
    # Then the customer known only from it is erased, the other stays, and the shop's rows are gone
    assert _customer(shop.app, ALICE) is None
    assert _customer(shop.app, "bob@example.com") is not None
    with shop.app.session() as s:
        assert s.execute(select(ShopCustomer.platform)).scalars().all() == ["woocommerce"]
    assert [w.topic for w in shop.webhooks() if w.platform == "shopify"] == ["shop/redact"]
    assert _audit(shop.app) == [(f"shopify:{P.SHOP}", "shop.redact", f"shop:{P.SHOP}")]
