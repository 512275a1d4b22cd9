"""Events to mail on real parts: Redis broker, a Dramatiq worker, the database, a real SMTP server.

Time travel: events are published with ``now`` in the past, so their delayed sends are
already due; the sweeper (what every worker runs each MAILER_SWEEP_INTERVAL_S) then
wakes them.  Nothing here sleeps for hours or uses a timing threshold.
"""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from mailer.app import App
from mailer.automations.publish import publish
from mailer.clock import utcnow
from mailer.consent import ledger as consent
from mailer.customers.records import get_or_create
from mailer.delivery import sweeper
from mailer.models import Delivery, DeliveryStatus, RewardCode
from mailer.notices.trigger import purpose_for
from mailer.settings import PROJECT_ROOT
from mailer.worker.actors import SWEEP_HOOKS
from tests.conftest import app_with_worker, make_settings, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.smtp]

SHIPPED = PROJECT_ROOT / "automations"
ACTIVE = (DeliveryStatus.queued, DeliveryStatus.sending)


@pytest.fixture
def live(db_url, redis_url, smtp_sink):
    """The shipped rules, a Redis broker with an in-process worker, and the SMTP sink."""
    settings = make_settings(database_url=db_url, broker_url=redis_url, smtp_url=smtp_sink.url,
                             automations_dir=SHIPPED, quiet_hours="")
    yield from app_with_worker(settings, worker_threads=2, worker_timeout_ms=100)


def settle(app: App) -> None:
    """Wake due scheduled sends (as the worker's sweeper does) and wait until none is in flight."""
    def quiet() -> bool:
        with app.session() as s:
            now = utcnow()
            busy = s.execute(select(func.count()).select_from(Delivery).where(
                (Delivery.status.in_(ACTIVE))
                | ((Delivery.status == DeliveryStatus.scheduled) & (Delivery.send_after <= now)))).scalar_one()
        return busy == 0

    sweeper.sweep(app, SWEEP_HOOKS)
    assert wait_until(quiet, 60), "deliveries still in flight"


def grant(app: App, email: str, *purposes: str) -> int:
    with app.session() as s:
        c = get_or_create(s, app.settings, email)
        for p in purposes:
            consent.append(s, app.settings, customer=c, purpose=p, action="granted", source="api")
        return c.id


def mails_to(sink, address: str) -> list:
    return [r.message for r in sink.received if r.rcpt_tos == [address]]


def text_of(message) -> str:
    return message.get_body(("plain",)).get_content()


def cart(email: str) -> dict:
    return {"email": email, "cart_id": f"cart-{email}", "items": [{"name": "Linen shirt", "quantity": 1,
                                                                   "price": 59}],
            "total": 59, "cart_url": "https://shop.example.com/cart/restore"}


def test_cart_then_order_within_the_hour_sends_no_reminder(live, smtp_sink):
    newsletter = purpose_for(live.renderer.spec("abandoned_cart").purpose, {})
    grant(live, "ann@example.com", newsletter)
    grant(live, "ben@example.com", newsletter)
    two_hours_ago = utcnow() - timedelta(hours=2)
    # Given both put something in a cart two hours ago
    publish("cart_updated", cart("ann@example.com"), app=live, now=two_hours_ago)
    publish("cart_updated", cart("ben@example.com"), app=live, now=two_hours_ago)
    # And Ann ordered 30 minutes later (within the hour)
    publish("order_placed", {"email": "ann@example.com", "order_number": "A-1"}, app=live,
            now=two_hours_ago + timedelta(minutes=30))
    # When the worker wakes everything that is due (the 1 h reminders)
    settle(live)
    # Then Ben got his first reminder and Ann got nothing
    assert mails_to(smtp_sink, "ann@example.com") == []
    (reminder,) = mails_to(smtp_sink, "ben@example.com")
    # (the cart link is tracked since automation mail is attributed: it leads through /t/c/)
    assert "Linen shirt" in text_of(reminder) and "/t/c/" in text_of(reminder)
    assert reminder["List-Unsubscribe"]  # marketing mail
    with live.session() as s:
        statuses = dict(s.execute(select(Delivery.to_address, func.count()).where(
            Delivery.status == DeliveryStatus.cancelled).group_by(Delivery.to_address)).all())
    assert statuses == {"ann@example.com": 2}


def test_two_restocks_within_the_window_give_one_mail_with_both_products(live, smtp_sink):
    grant(live, "ann@example.com", "restock:RED", "restock:BLUE")
    start = utcnow() - timedelta(minutes=30)
    for minutes, sku, name in ((0, "RED", "Red runner"), (4, "BLUE", "Blue runner")):
        publish("product_restocked", {"sku": sku, "name": name, "price": 89, "url": f"https://shop.example.com/{sku}"},
                app=live, now=start + timedelta(minutes=minutes))
    settle(live)
    (mail,) = mails_to(smtp_sink, "ann@example.com")
    body = text_of(mail)
    assert "Red runner" in body and "Blue runner" in body
    assert len(smtp_sink.received) == 1


def test_merged_restock_mail_lists_only_products_whose_request_is_still_current(live, smtp_sink):
    # Given a merged back-in-stock mail for two products, scheduled but not yet sent
    grant(live, "bea@example.com", "restock:RED", "restock:BLUE")
    start = utcnow() - timedelta(minutes=30)
    for minutes, sku, name in ((0, "RED", "Red runner"), (4, "BLUE", "Blue runner")):
        publish("product_restocked", {"sku": sku, "name": name, "price": 89, "url": f"https://shop.example.com/{sku}"},
                app=live, now=start + timedelta(minutes=minutes))
    # When the customer withdraws the restock request for the first product before it goes
    with live.session() as s:
        customer = get_or_create(s, live.settings, "bea@example.com")
        consent.append(s, live.settings, customer=customer, purpose="restock:RED", action="withdrawn",
                       source="preference_centre")
    settle(live)
    # Then the mail still goes, listing only the product still asked for
    (mail,) = mails_to(smtp_sink, "bea@example.com")
    body = text_of(mail)
    assert "Blue runner" in body and "Red runner" not in body
    # And with both withdrawn nothing goes at all
    grant(live, "cal@example.com", "restock:RED", "restock:BLUE")
    for minutes, sku, name in ((0, "RED", "Red runner"), (4, "BLUE", "Blue runner")):
        publish("product_restocked", {"sku": sku, "name": name, "price": 89, "url": f"https://shop.example.com/{sku}"},
                app=live, now=start + timedelta(minutes=minutes + 10))
    with live.session() as s:
        customer = get_or_create(s, live.settings, "cal@example.com")
        for sku in ("RED", "BLUE"):
            consent.append(s, live.settings, customer=customer, purpose=f"restock:{sku}", action="withdrawn",
                           source="preference_centre")
    settle(live)
    assert mails_to(smtp_sink, "cal@example.com") == []


def test_two_delay_events_with_the_same_eta_give_one_mail(live, smtp_sink):
    event = {"email": "cy@example.com", "order_number": "1001", "new_eta": "2026-12-01"}
    first = publish("order_delayed", event, app=live)
    second = publish("order_delayed", event, app=live)
    settle(live)
    assert [a.outcome for a in first.actions + second.actions] == ["queued", "deduplicated"]
    (mail,) = mails_to(smtp_sink, "cy@example.com")
    assert "1001" in mail["Subject"]
    # A changed ETA is news: a second mail
    publish("order_delayed", {**event, "new_eta": "2026-12-04"}, app=live)
    settle(live)
    assert len(mails_to(smtp_sink, "cy@example.com")) == 2


def test_vip_crossing_gives_one_code(live, smtp_sink):
    with live.session() as s:
        s.add_all([RewardCode(pool="vip", code="VIP-AAA1"), RewardCode(pool="vip", code="VIP-BBB2")])
    grant(live, "dee@example.com", "loyalty")
    publish("customer_updated", {"email": "dee@example.com", "total_spent": 999}, app=live)
    publish("customer_updated", {"email": "dee@example.com", "total_spent": 1001}, app=live)
    publish("customer_updated", {"email": "dee@example.com", "add_tags": ["VIP"]}, app=live)
    settle(live)
    (mail,) = mails_to(smtp_sink, "dee@example.com")
    assert "VIP-AAA1" in text_of(mail)
    with live.session() as s:
        assert s.execute(select(func.count()).select_from(RewardCode)
                         .where(RewardCode.assigned_at.is_not(None))).scalar_one() == 1


def test_fifty_concurrent_crossings_against_forty_codes(live, smtp_sink, caplog):
    # Given 40 codes and 50 customers with loyalty consent
    with live.session() as s:
        s.add_all([RewardCode(pool="vip", code=f"VIP-{i:03d}") for i in range(40)])
    emails = [f"vip{i:02d}@example.com" for i in range(50)]
    for e in emails:
        grant(live, e, "loyalty")
    barrier = threading.Barrier(50)

    def cross(email: str):
        barrier.wait()
        return publish("customer_updated", {"email": email, "total_spent": 1500}, app=live)

    # When all 50 cross the threshold at the same moment
    with caplog.at_level("ERROR", logger="mailer.events"):
        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(cross, emails))
    settle(live)
    # Then 40 mails went out with 40 distinct codes, and 10 clear failures were reported and logged
    outcomes = [a.outcome for r in results for a in r.actions]
    assert outcomes.count("queued") == 40 and outcomes.count("failed") == 10
    failures = [a.detail for r in results for a in r.failures]
    assert all("reward-code pool 'vip' is exhausted" in f for f in failures)
    alerts = [r for r in caplog.records if r.levelname == "ERROR" and "ALERT" in r.getMessage()]
    assert len(alerts) == 10
    codes = [re.search(r"VIP-\d{3}", text_of(m.message)).group(0) for m in smtp_sink.received]
    assert len(codes) == 40 and len(set(codes)) == 40
    with live.session() as s:
        failed = s.execute(select(Delivery).where(Delivery.status == DeliveryStatus.failed)).scalars().all()
        assert len(failed) == 10 and all("code" not in d.data for d in failed)
        assert {d.to_address for d in failed}.isdisjoint(r.rcpt_tos[0] for r in smtp_sink.received)


def test_csat_survey_arrives_three_days_after_delivery_with_five_rating_links(live, smtp_sink):
    publish("order_delivered", {"email": "eve@example.com", "order_number": "5005"}, app=live,
            now=utcnow() - timedelta(days=3, minutes=1))
    publish("order_delivered", {"email": "eve@example.com", "order_number": "5005"}, app=live)
    settle(live)
    (mail,) = mails_to(smtp_sink, "eve@example.com")
    assert len(set(re.findall(r"/csat/[\w.\-]+", text_of(mail)))) >= 5
