"""Scheduled automation sends survive a worker being killed: nothing lost, nothing sent twice.

Real ``dramatiq mailer.worker.boot`` worker processes on Redis, the database and the SMTP sink.
The first worker is killed (SIGKILL, no clean shutdown) after the sends are scheduled
and while one of them sits in its memory as a delayed Dramatiq message; a notice is
published while no worker runs; then the schedules are made due (time travel in the
database) and a second worker starts.  Its sweeper must wake every due row and each
mail must arrive exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from mailer import db
from mailer.app import App, set_app
from mailer.automations.publish import publish
from mailer.clock import utcnow
from mailer.consent import ledger as consent
from mailer.customers.records import get_or_create
from mailer.models import Delivery, DeliveryStatus
from mailer.notices.trigger import purpose_for
from mailer.settings import PROJECT_ROOT
from mailer.worker.actors import setup
from tests.conftest import make_settings
from tests.conftest import wait_until

pytestmark = [pytest.mark.redis, pytest.mark.smtp, pytest.mark.slow]

SHIPPED = PROJECT_ROOT / "automations"


def start_worker(env: dict) -> subprocess.Popen:
    # Its own session, so the whole process group (main + worker processes) can be killed.
    return subprocess.Popen([sys.executable, "-m", "dramatiq", "mailer.worker.boot", "--processes", "1", "--threads", "2"],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def kill_hard(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill_hard(proc)


def test_worker_killed_between_scheduling_and_sending_loses_nothing_and_duplicates_nothing(
        db_url, redis_url, smtp_sink):
    env = {**os.environ, "MAILER_DATABASE_URL": db_url, "MAILER_BROKER_URL": redis_url,
           "MAILER_SMTP_URL": smtp_sink.url, "MAILER_SECRET_KEY": "test-secret",
           "MAILER_AUTOMATIONS_DIR": str(SHIPPED), "MAILER_QUIET_HOURS": "off", "MAILER_FREQUENCY_CAP": "0",
           "MAILER_SWEEP_INTERVAL_S": "1", "MAILER_PROMETHEUS": "0", "PYTHONPATH": str(PROJECT_ROOT)}
    settings = make_settings(database_url=db_url, broker_url=redis_url, smtp_url=smtp_sink.url,
                             automations_dir=SHIPPED, quiet_hours="off")
    app = App(settings)
    previous = set_app(app)
    broker = setup(settings)
    first = start_worker(env)
    second = None
    try:
        # Given a running worker (proved by one notice reaching the SMTP server)
        publish("order_delayed", {"email": "warm@example.com", "order_number": "W-1", "new_eta": "2026-12-01"},
                app=app)
        assert wait_until(lambda: len(smtp_sink.received) == 1, 60.0), "first worker did not start"
        # And scheduled sends: two cart reminders, a back-in-stock mail (15 min; also a delayed
        # Dramatiq message the worker holds) and a survey in three days
        with app.session() as s:
            ann = get_or_create(s, settings, "ann@example.com")
            consent.append(s, settings, customer=ann, action="granted", source="api",
                           purpose=purpose_for(app.renderer.spec("abandoned_cart").purpose, {}))
            bob = get_or_create(s, settings, "bob@example.com")
            consent.append(s, settings, customer=bob, purpose="restock:RED", action="granted", source="api")
        publish("cart_updated", {"email": "ann@example.com", "cart_id": "c1", "total": 59,
                                 "cart_url": "https://shop.example.com/cart/c1",
                                 "items": [{"name": "Linen shirt", "price": 59}]}, app=app)
        publish("product_restocked", {"sku": "RED", "name": "Red runner", "price": 89,
                                      "url": "https://shop.example.com/p/red"}, app=app)
        publish("order_delivered", {"email": "cy@example.com", "order_number": "C-1"}, app=app)
        time.sleep(1.5)  # let the worker fetch the delayed message into its memory
        # When the worker is killed without any chance to clean up
        kill_hard(first)
        # And a notice is published while no worker runs
        publish("order_delayed", {"email": "dan@example.com", "order_number": "D-1", "new_eta": "2026-12-02"},
                app=app)
        # And the schedules become due (time travel)
        with app.session() as s:
            scheduled = s.execute(select(Delivery.id).where(Delivery.status == DeliveryStatus.scheduled)
                                  ).scalars().all()
            s.execute(update(Delivery).where(Delivery.id.in_(scheduled))
                      .values(send_after=utcnow() - timedelta(seconds=1)))
        assert len(scheduled) == 4
        assert len(smtp_sink.received) == 1  # nothing else went out yet
        # And a new worker starts
        second = start_worker(env)
        # Then every due mail arrives: 2 reminders, the restock mail, the survey, the notice
        assert wait_until(lambda: len(smtp_sink.received) == 6, 60.0), f"got {len(smtp_sink.received)} of 6 mails"

        def all_sent() -> bool:
            with app.session() as s:
                return all(st is DeliveryStatus.sent for st in s.execute(select(Delivery.status)).scalars())

        assert wait_until(all_sent, 60.0)
        # And after several more sweeps, still exactly once each
        time.sleep(4)
        assert len(smtp_sink.received) == 6
        per_delivery = Counter(r.message["X-Mailer-Delivery"] for r in smtp_sink.received)
        assert len(per_delivery) == 6 and set(per_delivery.values()) == {1}
        per_address = Counter(r.rcpt_tos[0] for r in smtp_sink.received)
        assert per_address == {"warm@example.com": 1, "ann@example.com": 2, "bob@example.com": 1,
                               "cy@example.com": 1, "dan@example.com": 1}
    finally:
        stop(first)
        if second is not None:
            stop(second)
        broker.close()
        app.close()
        set_app(previous)
        db.dispose_engines()
