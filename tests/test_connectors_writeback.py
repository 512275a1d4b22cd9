"""Consent written back to the shop: a local HTTP server stands in for Shopify's Admin GraphQL
API and WooCommerce's REST API, checks each request's shape, fails first, then accepts."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select, update

from mailer.clock import utcnow
from mailer.connectors import writeback
from mailer.consent import ledger as consent
from mailer.gdpr import requests as gdpr
from mailer.models import ConnectorOutbox, ConsentEvent, Customer
from tests import connector_payloads as P
from tests.connector_support import shop_fixture  # noqa: F401 - the fixture

pytestmark = [pytest.mark.smtp]
TOKEN = "shpat_0123456789abcdef"  # a test token  # nosec B105


class FakeShop:
    """Answers 503 to the first ``fail_first`` requests, then 200; records every request it checked."""

    def __init__(self, fail_first: int = 1):
        self.fail_first = fail_first
        self.requests: list[dict] = []
        self.problems: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _take(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"null")
                outer.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                       "body": body})
                failing = len(outer.requests) <= outer.fail_first
                self.send_response(503 if failing else 200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                answer = {"errors": "try later"} if failing else outer.answer(body)
                self.wfile.write(json.dumps(answer).encode())

            do_POST = do_PUT = _take

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, body) -> dict:
        if isinstance(body, dict) and "query" in body:
            return {"data": {"customerEmailMarketingConsentUpdate": {
                "customer": {"id": body["variables"]["input"]["customerId"]}, "userErrors": []}}}
        return {"id": 25}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_shop():
    server = FakeShop()
    yield server
    server.close()


def _outbox(app) -> list[ConnectorOutbox]:
    with app.session() as s:
        rows = s.execute(select(ConnectorOutbox).order_by(ConnectorOutbox.id)).scalars().all()
        s.expunge_all()
        return rows


def _sweep(shop) -> None:
    writeback.sweep_hook(shop.app)
    shop.drain()


def _later(shop) -> None:
    """The backoff has passed."""
    with shop.app.session() as s:
        s.execute(update(ConnectorOutbox).values(next_attempt_at=utcnow()))


def test_an_unsubscribe_in_mailer_reaches_shopify_once_after_a_failure_and_is_not_undone(shop, fake_shop):
    # Given a Shopify customer who subscribed there, and the shop connected with an Admin API token
    shop.post("customers/create", P.customer("subscribed", "single_opt_in", "2026-11-30T15:00:00Z"))
    writeback.connect(shop.app, "shopify", P.SHOP, secret=None, api_url=f"{fake_shop.url}/admin/api/2025-01/graphql.json",
                      api_token=TOKEN)
    # The grant came from Shopify: nothing is echoed back
    _sweep(shop)
    assert _outbox(shop.app) == [] and fake_shop.requests == []
    # When the customer unsubscribes in mailer (the link in a newsletter)
    with shop.app.session() as s:
        ev = consent.withdraw(s, shop.app.settings, purpose="newsletter", email="alice@example.com",
                              source="unsubscribe_link")
        event_id = ev.id
    _sweep(shop)
    # Then the write-back was tried once, refused by the shop (503), and waits for its backoff
    [row] = _outbox(shop.app)
    assert (row.consent_event_id, row.status, row.attempts) == (event_id, "pending", 1)
    assert row.next_attempt_at > utcnow() and "503" in row.last_error
    # When the backoff has passed, it is sent and accepted
    _later(shop)
    _sweep(shop)
    [row] = _outbox(shop.app)
    assert (row.status, row.attempts) == ("sent", 2)
    # And each request was the documented mutation with the documented input
    assert len(fake_shop.requests) == 2
    for req in fake_shop.requests:
        assert (req["method"], req["path"]) == ("POST", "/admin/api/2025-01/graphql.json")
        assert req["headers"]["X-Shopify-Access-Token"] == TOKEN
        assert "customerEmailMarketingConsentUpdate(input: $input)" in req["body"]["query"]
        given = req["body"]["variables"]["input"]
        assert given["customerId"] == f"gid://shopify/Customer/{P.CUSTOMER['id']}"
        assert given["emailMarketingConsent"]["marketingState"] == "UNSUBSCRIBED"
        assert given["emailMarketingConsent"]["consentUpdatedAt"].endswith("Z")
    # When sweeps run again, nothing is sent twice
    _later(shop)
    _sweep(shop)
    _sweep(shop)
    assert len(fake_shop.requests) == 2
    # And Shopify's own echo (now unsubscribed) and a stale "subscribed" change nothing
    shop.post("customers/update", P.customer("unsubscribed", "single_opt_in", utcnow().isoformat()))
    shop.post("customers/update", P.customer("subscribed", "single_opt_in", "2026-11-30T15:30:00Z"))
    with shop.app.session() as s:
        actions = s.execute(select(ConsentEvent.action).order_by(ConsentEvent.seq)).scalars().all()
        cid = s.execute(select(Customer.id).where(Customer.email == "alice@example.com")).scalar_one()
        assert not consent.has_consent(s, shop.app.settings, cid, "newsletter")
    assert [a.value for a in actions] == ["granted", "withdrawn"]
    _sweep(shop)
    assert len(_outbox(shop.app)) == 1 and len(fake_shop.requests) == 2


def test_an_erasure_in_mailer_is_written_back_to_woocommerce_through_its_rest_api(shop, fake_shop):
    # Given a WooCommerce customer with newsletter consent given in mailer, the store connected
    shop.woo("customer.created", P.woo_customer())
    with shop.app.session() as s:
        consent.grant(s, shop.app.settings, purpose="newsletter", source="signup_form", email="bob@example.com")
    writeback.connect(shop.app, "woocommerce", P.STORE, secret=None, api_url=fake_shop.url, api_token="ck_1:cs_2")
    # When the customer is erased in mailer (mailer gdpr erase)
    with shop.app.session() as s:
        gdpr.erase(s, shop.app.settings, "bob@example.com")
    _sweep(shop)
    _later(shop)
    _sweep(shop)
    # Then the store's customer was updated once, after one refusal, with the documented request
    [row] = _outbox(shop.app)
    assert row.status == "sent"
    assert len(fake_shop.requests) == 2
    req = fake_shop.requests[-1]
    assert (req["method"], req["path"]) == ("PUT", "/wp-json/wc/v3/customers/25")
    assert req["headers"]["Authorization"] == "Basic " + base64.b64encode(b"ck_1:cs_2").decode()
    meta = {m["key"]: m["value"] for m in req["body"]["meta_data"]}
    assert meta["mailer_email_marketing"] == "unsubscribed" and "mailer_email_marketing_updated_at" in meta


def test_a_write_back_gives_up_after_its_attempts_and_says_why(shop, fake_shop):
    fake_shop.fail_first = 100
    shop.post("customers/create", P.customer("subscribed", "single_opt_in", "2026-11-30T15:00:00Z"))
    writeback.connect(shop.app, "shopify", P.SHOP, secret=None, api_url=fake_shop.url, api_token=TOKEN)
    with shop.app.session() as s:
        consent.withdraw(s, shop.app.settings, purpose="newsletter", email="alice@example.com", source="complaint")
    for _ in range(shop.app.settings.connector_writeback_max_attempts + 2):
        _sweep(shop)
        _later(shop)
    [row] = _outbox(shop.app)
    assert row.status == "failed" and row.attempts == shop.app.settings.connector_writeback_max_attempts
    assert "503" in row.last_error
    assert len(fake_shop.requests) == shop.app.settings.connector_writeback_max_attempts
