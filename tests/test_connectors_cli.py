"""``mailer connect shopify|woocommerce|status``: the secret recorded, the webhooks to create printed,
and per shop the last delivery per topic, failures and the dedupe count."""

from __future__ import annotations

import json

from click.testing import CliRunner
from fastapi.testclient import TestClient

from mailer import db
from mailer.app import App
from mailer.cli import main
from mailer.connectors.signing import secret_for, sign
from mailer.settings import Settings
from mailer.web.app import create_app
from tests import connector_payloads as P


def _env(db_url: str) -> dict:
    return {"MAILER_DATABASE_URL": db_url, "MAILER_BASE_URL": "https://mail.northwind.example",
            "MAILER_BROKER_URL": "stub://", "MAILER_SHOPIFY_SECRETS": "", "COLUMNS": "200"}


def test_connect_shopify_records_the_secret_and_prints_every_topic_with_the_url(db_url):
    # When the shop is connected with its app's secret
    res = CliRunner().invoke(main, ["connect", "shopify", "--shop", "Northwind-Demo.myshopify.com",
                                    "--secret", "s3cret", "--api-token", "shpat_x"], env=_env(db_url))
    # Then every mapped topic and the privacy topics are printed with the webhook URL
    assert res.exit_code == 0, res.output
    for topic in ("orders/create", "orders/cancelled", "fulfillments/create", "fulfillments/update",
                  "checkouts/create", "checkouts/update", "customers/create", "customers/update",
                  "inventory_levels/update", "products/update", "customers/data_request", "customers/redact",
                  "shop/redact"):
        assert topic in res.output
    assert "https://mail.northwind.example/webhooks/shopify" in res.output
    # And a delivery signed with that secret is now accepted, one with another refused
    app = App(Settings(database_url=db_url, broker_url="stub://"))
    client = TestClient(create_app(app=app))
    raw = json.dumps({"id": 1}).encode()
    headers = {"X-Shopify-Topic": "collections/create", "X-Shopify-Shop-Domain": P.SHOP,
               "X-Shopify-Webhook-Id": "w1"}
    assert client.post("/webhooks/shopify", content=raw,
                       headers={**headers, "X-Shopify-Hmac-Sha256": sign("s3cret", raw)}).status_code == 200
    assert client.post("/webhooks/shopify", content=raw,
                       headers={**headers, "X-Shopify-Hmac-Sha256": sign("other", raw)}).status_code == 401
    # And mailer connect status shows the topic, its delivery and the duplicate when it comes again
    client.post("/webhooks/shopify", content=raw, headers={**headers, "X-Shopify-Hmac-Sha256": sign("s3cret", raw)})
    app.close()
    status = CliRunner().invoke(main, ["connect", "status"], env=_env(db_url))
    assert status.exit_code == 0, status.output
    line = next(row for row in status.output.splitlines() if "collections/create" in row)
    cells = [c.strip() for c in line.strip("│ ").split("│")]
    assert cells[1] == P.SHOP and cells[-5:] == ["1", "0", "0", "1", "1"]


def test_connect_woocommerce_generates_a_secret_when_none_is_given(db_url):
    res = CliRunner().invoke(main, ["connect", "woocommerce", "--url", "https://Shop.Northwind.example/"],
                             env=_env(db_url))
    assert res.exit_code == 0, res.output
    for topic in ("order.created", "order.updated", "customer.created", "customer.updated", "product.updated"):
        assert topic in res.output
    assert "https://mail.northwind.example/webhooks/woocommerce" in res.output
    secret = next(row for row in res.output.splitlines() if row.startswith("Secret for")).split(": ", 1)[1].strip()
    with db.session_scope(Settings(database_url=db_url)) as s:
        assert secret_for(s, Settings(database_url=db_url), "woocommerce", "https://shop.northwind.example") == secret


def test_connect_refuses_a_shop_that_is_not_a_myshopify_domain(db_url):
    res = CliRunner().invoke(main, ["connect", "shopify", "--shop", "evil.example.com"], env=_env(db_url))
    assert res.exit_code == 2 and "myshopify.com" in res.output
