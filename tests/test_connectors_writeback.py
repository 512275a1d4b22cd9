"""Consent written back to the shop: a local HTTP server stands in for Shopify's Admin GraphQL
API and WooCommerce's REST API, checks each request's shape, fails first, then accepts."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

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

    def __init__(self, fail_first: int = 1, customers: dict[str, int] | None = None):
        self.fail_first = fail_first
        #: The shop's customers by e-mail, for the lookups (address -> the shop's id).
        self.customers = customers or {}
        self.requests: list[dict] = []
        self.problems: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _take(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                outer.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                       "body": body})
                failing = len(outer.requests) <= outer.fail_first
                self.send_response(503 if failing else 200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                answer = {"errors": "try later"} if failing else outer.answer(body, self.path)
                self.wfile.write(json.dumps(answer).encode())

            do_POST = do_PUT = do_GET = _take

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, body, path: str = ""):
        if isinstance(body, dict) and "customers(first:" in body.get("query", ""):
            # Shopify's customer search; "email:<address>" in its syntax
            address = body["variables"]["query"].removeprefix("email:").strip('"')
            return {"data": {"customers": {"edges": [
                {"node": {"id": f"gid://shopify/Customer/{cid}", "email": email}}
                for email, cid in self.customers.items() if email == address]}}}
        if path.startswith("/wp-json/wc/v3/customers?"):
            address = parse_qs(urlsplit(path).query)["email"][0]
            return [{"id": cid, "email": email} for email, cid in self.customers.items() if email == address]
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


# -- customers mailer knows only by address: looked up by e-mail --------------------------------------
def _withdraw(shop, email: str, source: str) -> None:
    with shop.app.session() as s:
        consent.withdraw(s, shop.app.settings, purpose="newsletter", email=email, source=source)


def _grant(shop, email: str) -> None:
    with shop.app.session() as s:
        consent.grant(s, shop.app.settings, purpose="newsletter", source="signup_form", email=email)


def test_a_guest_who_unsubscribes_in_the_preference_centre_is_looked_up_by_email_then_written_back(shop, fake_shop):
    # Given a guest checkout (no Shopify customer id) by an address that signed up in mailer,
    # and the shop, which knows that address as customer 7001, connected
    fake_shop.customers = {"carol@example.com": 7001}
    shop.post("checkouts/update", P.checkout("cart-carol", email="carol@example.com", guest=True))
    _grant(shop, "carol@example.com")
    writeback.connect(shop.app, "shopify", P.SHOP, secret=None, api_url=f"{fake_shop.url}/admin/api/2025-01/graphql.json",
                      api_token=TOKEN)
    # When the customer withdraws in the preference centre, and the write-back runs (the shop fails once)
    _withdraw(shop, "carol@example.com", "preference_centre")
    _sweep(shop)
    _later(shop)
    _sweep(shop)
    # Then the customer was looked up by e-mail with the documented query, and unsubscribed once by that id
    [row] = _outbox(shop.app)
    assert (row.status, row.remote_id) == ("sent", "7001")
    lookups = [r for r in fake_shop.requests if "customers(first:" in r["body"]["query"]]
    updates = [r for r in fake_shop.requests if "customerEmailMarketingConsentUpdate(input:" in r["body"]["query"]]
    assert len(lookups) == 2 and len(updates) == 1  # the first lookup was refused (503), then retried
    assert lookups[-1]["body"]["variables"] == {"query": 'email:"carol@example.com"'}
    assert lookups[-1]["headers"]["X-Shopify-Access-Token"] == TOKEN
    assert updates[0]["body"]["variables"]["input"]["customerId"] == "gid://shopify/Customer/7001"
    # When later sweeps run, nothing is sent twice; and a second withdrawal needs no lookup (the id is kept)
    _later(shop)
    _sweep(shop)
    assert len(fake_shop.requests) == 3
    _grant(shop, "carol@example.com")
    _withdraw(shop, "carol@example.com", "unsubscribe_link")
    _sweep(shop)
    assert [r.status for r in _outbox(shop.app)] == ["sent", "sent"]
    assert len(fake_shop.requests) == 4 and "customerEmailMarketingConsentUpdate(input:" in \
        fake_shop.requests[-1]["body"]["query"]


def test_a_complaint_by_a_customer_imported_into_mailer_reaches_woocommerce_by_email(shop, fake_shop):
    # Given a customer mailer never saw in a webhook, known to the store as customer 31
    fake_shop.customers = {"dana@example.com": 31}
    fake_shop.fail_first = 0
    _grant(shop, "dana@example.com")
    writeback.connect(shop.app, "woocommerce", P.STORE, secret=None, api_url=fake_shop.url, api_token="ck_1:cs_2")
    # When a complaint withdraws the consent
    _withdraw(shop, "dana@example.com", "complaint")
    _sweep(shop)
    # Then the store was searched by e-mail, then that customer updated, each with the REST key
    [lookup, put] = fake_shop.requests
    assert lookup["method"] == "GET" and urlsplit(lookup["path"]).path == "/wp-json/wc/v3/customers"
    assert parse_qs(urlsplit(lookup["path"]).query)["email"] == ["dana@example.com"]
    assert (put["method"], put["path"]) == ("PUT", "/wp-json/wc/v3/customers/31")
    for req in (lookup, put):
        assert req["headers"]["Authorization"] == "Basic " + base64.b64encode(b"ck_1:cs_2").decode()
    assert [r.status for r in _outbox(shop.app)] == ["sent"]


def test_an_address_the_shop_does_not_know_ends_as_unknown_after_one_lookup(shop, fake_shop):
    fake_shop.fail_first = 0
    _grant(shop, "erin@example.com")
    writeback.connect(shop.app, "shopify", P.SHOP, secret=None, api_url=fake_shop.url, api_token=TOKEN)
    _withdraw(shop, "erin@example.com", "unsubscribe_link")
    _sweep(shop)
    _later(shop)
    _sweep(shop)
    [row] = _outbox(shop.app)
    assert row.status == "unknown" and "no customer with this address" in row.last_error
    assert len(fake_shop.requests) == 1 and "customers(first:" in fake_shop.requests[0]["body"]["query"]


def test_an_erasure_of_a_customer_without_a_shop_id_is_recorded_as_not_sendable_and_nothing_is_asked(shop, fake_shop):
    # Given a customer mailer knows only by address, erased before any write-back ran
    fake_shop.customers = {"finn@example.com": 9}
    _grant(shop, "finn@example.com")
    writeback.connect(shop.app, "shopify", P.SHOP, secret=None, api_url=fake_shop.url, api_token=TOKEN)
    with shop.app.session() as s:
        gdpr.erase(s, shop.app.settings, "finn@example.com")
    _sweep(shop)
    # Then the row says why it cannot be sent, and the shop was not asked (the address is gone)
    [row] = _outbox(shop.app)
    assert row.status == "failed" and "erased" in row.last_error
    assert fake_shop.requests == []
