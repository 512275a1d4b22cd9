"""A connected shop for tests: the web app, an in-process worker, real SMTP, signed posts."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from dramatiq.common import join_queue
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from mailer.clock import utcnow
from mailer.connectors.signing import sign
from mailer.delivery import sweeper
from mailer.models import ConnectorWebhook, Delivery, DeliveryStatus
from mailer.queue.broker import QUEUES
from mailer.settings import PROJECT_ROOT
from mailer.web.app import create_app
from mailer.worker.actors import SWEEP_HOOKS
from tests import connector_payloads as P
from tests.conftest import _run_stub_worker, installed_app, make_settings
from tests.connector_payloads import SHOP, STORE

SECRET = "shpss_5e1f0a7b9c"  # a test secret, not a real one  # nosec B105
WOO_SECRET = "wc_secret_8d3e"  # nosec B105


@dataclass
class Shop:
    app: object
    broker: object
    client: TestClient
    sink: object
    counter: int = 0

    def post(self, topic: str, body, *, webhook_id: str | None = None, secret: str = SECRET, shop: str = SHOP,
             raw: bytes | None = None, signature: str | None = None, drop: tuple[str, ...] = ()):
        """POST a Shopify delivery signed like Shopify signs it, then let the worker apply it."""
        self.counter += 1
        raw = raw if raw is not None else json.dumps(body).encode()
        headers = {"X-Shopify-Topic": topic, "X-Shopify-Shop-Domain": shop,
                   "X-Shopify-Webhook-Id": webhook_id or f"wh-{self.counter}-{topic}",
                   "X-Shopify-Hmac-Sha256": signature if signature is not None else sign(secret, raw),
                   "X-Shopify-API-Version": "2025-01", "Content-Type": "application/json"}
        for name in drop:
            headers.pop(name, None)
        response = self.client.post("/webhooks/shopify", content=raw, headers=headers)
        self.drain()
        return response

    def woo(self, topic: str, body, *, delivery_id: str | None = None, secret: str = WOO_SECRET,
            raw: bytes | None = None):
        self.counter += 1
        raw = raw if raw is not None else json.dumps(body).encode()
        resource, _, event = topic.partition(".")
        headers = {"X-WC-Webhook-Topic": topic, "X-WC-Webhook-Resource": resource, "X-WC-Webhook-Event": event,
                   "X-WC-Webhook-Source": STORE + "/", "X-WC-Webhook-ID": "12",
                   "X-WC-Webhook-Delivery-ID": delivery_id or f"d{self.counter}",
                   "X-WC-Webhook-Signature": sign(secret, raw), "Content-Type": "application/json"}
        response = self.client.post("/webhooks/woocommerce", content=raw, headers=headers)
        self.drain()
        return response

    def drain(self) -> None:
        """Wait until the worker has taken every message that is due now (delayed ones stay:
        the stub broker's own drain would wait out a 15-minute merge window)."""
        for _ in range(3):  # actors may enqueue further messages
            for q in QUEUES:
                join_queue(self.broker.queues[q], timeout=30)

    def webhooks(self) -> list[ConnectorWebhook]:
        with self.app.session() as s:
            rows = s.execute(select(ConnectorWebhook).order_by(ConnectorWebhook.id)).scalars().all()
            s.expunge_all()
            return rows

    def deliveries(self, kind: str | None = None) -> list[Delivery]:
        with self.app.session() as s:
            q = select(Delivery).order_by(Delivery.id)
            if kind:
                q = q.where(Delivery.kind == kind)
            rows = s.execute(q).scalars().all()
            s.expunge_all()
            return rows

    def time_passes(self) -> None:
        """Every scheduled send is due now; the sweeper wakes them and the worker sends them."""
        with self.app.session() as s:
            s.execute(update(Delivery).where(Delivery.status == DeliveryStatus.scheduled)
                      .values(send_after=utcnow()))
        sweeper.sweep(self.app, SWEEP_HOOKS)
        self.drain()

    def mails_to(self, address: str) -> list:
        return [r.message for r in self.sink.received if r.rcpt_tos == [address]]


def text_of(message) -> str:
    return message.get_body(("plain",)).get_content()


@pytest.fixture(name="shop")
def shop_fixture(db_url, smtp_sink, tmp_path):
    """A connected Shopify shop and WooCommerce store (secrets from the environment), real SMTP."""
    settings = make_settings(database_url=db_url, smtp_url=smtp_sink.url, automations_dir=PROJECT_ROOT / "automations",
                             quiet_hours="", base_url="https://shop.example.com/m",
                             shopify_secrets=f"{P.SHOP}={SECRET}", woocommerce_secrets=f"{P.STORE}={WOO_SECRET}",
                             connector_export_dir=str(tmp_path / "exports"))
    for app in installed_app(settings):
        for broker in _run_stub_worker(app):
            yield Shop(app, broker, TestClient(create_app(app=app)), smtp_sink)
