"""Property: any JSON a shop could sign never makes the webhook endpoints answer 5xx, and consent
changes only through the documented fields (``email_marketing_consent`` of a customer topic, or
the privacy topics' erasures)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from mailer.consent import ledger as consent
from mailer.customers.records import get_or_create
from mailer.models import ConnectorWebhook, ConsentEvent
from tests import connector_payloads as P
from tests.connector_support import shop_fixture  # noqa: F401 - the fixture

pytestmark = [pytest.mark.smtp]

SHOPIFY_TOPICS = ["orders/create", "orders/cancelled", "fulfillments/create", "fulfillments/update",
                  "checkouts/create", "checkouts/update", "customers/create", "customers/update",
                  "inventory_levels/update", "products/update", "customers/data_request", "customers/redact",
                  "shop/redact", "carts/update", "app/uninstalled"]
WOO_TOPICS = ["order.created", "order.updated", "customer.created", "customer.updated", "product.updated",
              "coupon.created"]
KEYS = ["id", "email", "contact_email", "name", "order_number", "order_id", "line_items", "customer", "status",
        "shipment_status", "estimated_delivery_at", "tracking_number", "tracking_company", "tracking_url",
        "abandoned_checkout_url", "token", "total_price", "currency", "variants", "inventory_item_id", "available",
        "title", "handle", "price", "sku", "quantity", "billing", "meta_data", "stock_status", "permalink",
        "email_marketing_consent", "state", "opt_in_level", "consent_updated_at", "updated_at", "completed_at"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**15, 10**15), st.floats(allow_nan=False),
                    st.text(max_size=30), st.sampled_from(["alice@example.com", "ALICE@example.com", "subscribed",
                                                           "unsubscribed", "pending", "confirmed_opt_in", "delivered",
                                                           "in_transit", "processing", "completed", "instock",
                                                           "outofstock", "2026-12-01T10:00:00Z", "0", "-5", "12.50",
                                                           "https://x.example/p", "not an email"]))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=6)), max_leaves=25)
BODIES = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), JSON, max_size=10)


def _consent_events(app) -> int:
    with app.session() as s:
        return s.execute(select(func.count()).select_from(ConsentEvent)).scalar_one()


def _documented(platform: str, topic: str, body) -> bool:
    """May this delivery change consent? Only the fields the docs name."""
    if platform != "shopify" or not isinstance(body, dict):
        return False
    if topic in ("customers/redact", "shop/redact"):
        return True
    field = body.get("email_marketing_consent")
    return topic in ("customers/create", "customers/update") and isinstance(field, dict) and \
        field.get("state") in ("subscribed", "unsubscribed", "redacted", "invalid")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(data=st.data())
def test_any_signed_json_is_never_a_5xx_and_changes_consent_only_through_the_documented_fields(shop, data):
    # Given a customer with current consent (so a withdrawal would be possible)
    with shop.app.session() as s:
        c = get_or_create(s, shop.app.settings, "alice@example.com")
        if not consent.has_consent(s, shop.app.settings, c.id, "newsletter"):
            consent.grant(s, shop.app.settings, purpose="newsletter", source="api", customer=c)
    platform = data.draw(st.sampled_from(["shopify", "woocommerce"]))
    topic = data.draw(st.sampled_from(SHOPIFY_TOPICS if platform == "shopify" else WOO_TOPICS))
    body = data.draw(st.one_of(BODIES, JSON))
    before = _consent_events(shop.app)
    # When it is delivered under a valid signature
    raw = json.dumps(body).encode()
    r = shop.post(topic, body, raw=raw) if platform == "shopify" else shop.woo(topic, body, raw=raw)
    # Then the answer is never a server error, and a non-object is refused without storing anything
    assert r.status_code < 500, r.text
    if not isinstance(body, dict):
        assert r.status_code == 400
    # And every stored delivery ended applied, failed with a reason, or ignored: none is left hanging
    with shop.app.session() as s:
        hanging = s.execute(select(func.count()).select_from(ConnectorWebhook)
                            .where(ConnectorWebhook.status.in_(("pending", "processing")))).scalar_one()
    assert hanging == 0
    # And consent changed only through the documented fields
    if _consent_events(shop.app) != before:
        assert _documented(platform, topic, body), (topic, body)


def test_the_documented_field_does_change_consent(shop):
    # The property's escape hatch is real: the documented field on its own withdraws.
    with shop.app.session() as s:
        consent.grant(s, shop.app.settings, purpose="newsletter", source="api", email="alice@example.com")
    before = _consent_events(shop.app)
    shop.post("customers/update", {"email": "alice@example.com", "id": 1,
                                   "email_marketing_consent": {"state": "unsubscribed",
                                                               "consent_updated_at": "2099-01-01T00:00:00Z"}})
    assert _consent_events(shop.app) == before + 1
    assert P.SHOP  # the shop the deliveries came from
