"""Automation mail is attributed like campaign mail, on real parts (Redis broker, a Dramatiq worker,
aiosmtpd, SQLite and PostgreSQL): the abandoned-cart reminder carries tracked links (with the
rule's UTM parameters) and the open pixel; the customer clicks, then orders; the order is the
rule's, in ``automation_revenue`` and on the console's automations page."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from mailer.automations.publish import publish
from mailer.clock import utcnow
from mailer.customers import attribution
from mailer.models import Attribution, Delivery, DeliveryStatus
from mailer.notices.trigger import purpose_for
from mailer.settings import PROJECT_ROOT
from mailer.web.app import create_app
from tests.conftest import app_with_worker, make_settings
from tests.console_support import console_client
from tests.test_automations_e2e import cart, grant, mails_to, settle

pytestmark = [pytest.mark.redis, pytest.mark.smtp]

HUMAN_UA = "Mozilla/5.0 (Windows NT 10.0) Thunderbird/128.0"


@pytest.fixture
def live(db_url, redis_url, smtp_sink):
    """The shipped rules, links to shop.example.com tagged, a Redis broker with a worker, the SMTP sink."""
    settings = make_settings(database_url=db_url, broker_url=redis_url, smtp_url=smtp_sink.url,
                             automations_dir=PROJECT_ROOT / "automations", quiet_hours="",
                             shop_domains=("shop.example.com",), machine_open_window_s=0)
    yield from app_with_worker(settings, worker_threads=2, worker_timeout_ms=100)


def test_a_click_on_an_automation_mail_then_an_order_is_the_rules_revenue(live, smtp_sink):
    grant(live, "ben@example.com", purpose_for(live.renderer.spec("abandoned_cart").purpose, {}))
    # Given Ben left a cart two hours ago, and the worker sent the 1 h reminder
    publish("cart_updated", cart("ben@example.com"), app=live, now=utcnow() - timedelta(hours=2))
    settle(live)
    (reminder,) = mails_to(smtp_sink, "ben@example.com")
    html = reminder.get_body(("html",)).get_content()
    text = reminder.get_body(("plain",)).get_content()
    # Then the mail carries the open pixel and tracked links, in the HTML and the text part
    assert "/t/o/" in html
    links = [u.replace("&amp;", "&") for u in re.findall(r'href="([^"]+)"', html) if "/t/c/" in u]
    assert links and "/t/c/" in text and "https://shop.example.com/cart/restore" not in html
    with live.session() as s:
        sent = s.execute(select(Delivery).where(Delivery.to_address == "ben@example.com",
                                                Delivery.status == DeliveryStatus.sent)).scalar_one()
        rule = sent.automation
    assert rule == "abandoned_cart"
    # When Ben clicks the cart link (through the tracking redirect, as a person)
    with TestClient(create_app(app=live)) as http:
        targets = {}
        for link in links:
            r = http.get(urlsplit(link).path, headers={"User-Agent": HUMAN_UA}, follow_redirects=False)
            assert r.status_code == 302, r.text
            targets[r.headers["location"].split("?")[0]] = r.headers["location"]
    restore = targets["https://shop.example.com/cart/restore"]
    # Then the shop's own link got the rule's UTM parameters
    assert parse_qs(urlsplit(restore).query) == {"utm_source": [sent.purpose], "utm_medium": ["email"],
                                                 "utm_campaign": ["abandoned-cart"]}
    # When he orders an hour later
    publish("order_placed", {"email": "ben@example.com", "order_number": "B-7", "total": 59, "currency": "EUR"},
            app=live, now=utcnow())
    # Then the order is attributed to the reminder, by its click, and is the rule's revenue
    with live.session() as s:
        (a,) = s.execute(select(Attribution)).scalars().all()
        assert (a.delivery_id, a.automation, a.campaign_id, a.basis) == (sent.id, rule, None, "click")
        figures, recipients = attribution.automation_revenue(s, [rule])[rule]
    assert figures.orders == 1 and figures.revenue == {"EUR": Decimal("59.00")} and recipients == 1
    # And the console's automations page shows it on the rule
    client = console_client(live, "marketer")
    try:
        page = client.get("/console/automations").text
    finally:
        client.close()
    shown = re.search(rf'id="rule-{rule}-revenue">(.*?)</dl>', page, re.S).group(1)
    assert re.search(r'class="orders">1<', shown) and re.search(r'data-currency="EUR">59\.00<', shown)
