"""End to end on real parts: Redis broker, a real Dramatiq worker, the database, a real SMTP server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from email import message_from_bytes, policy

import dramatiq
import pytest
from click.testing import CliRunner

from mailer import db
from mailer.app import App, set_app
from mailer.cli import main
from mailer.models import Delivery, DeliveryStatus
from mailer.notices.trigger import notify
from mailer.queue.broker import QUEUE_BULK, QUEUE_TRANSACTIONAL
from mailer.settings import PROJECT_ROOT
from mailer.worker.actors import setup
from tests.conftest import make_settings, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.smtp]

DATA = {"order_number": "1001", "new_eta": "2026-12-01"}


def test_notice_through_redis_worker_reaches_smtp_and_is_recorded_sent(db_url, redis_url, smtp_sink):
    # Given the Redis broker, a real Dramatiq worker, the database and a real SMTP server
    settings = make_settings(database_url=db_url, broker_url=redis_url, smtp_url=smtp_sink.url)
    app = App(settings)
    previous = set_app(app)
    broker = setup(settings)
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    try:
        # When a notice is triggered
        delivery_id = notify("order_delayed", to="carol@example.com", data=DATA, settings=settings)
        # Then it arrives with the right subject, both parts and its Message-ID
        assert wait_until(lambda: len(smtp_sink.received) == 1, 30)
        msg = message_from_bytes(smtp_sink.received[0].raw, policy=policy.strict)
        expected = app.renderer.render("order_delayed", "en", DATA, context={"first_name": ""}).subject
        assert msg["Subject"] == expected and "1001" in expected
        assert msg.get_body(("plain",)) is not None and msg.get_body(("html",)) is not None
        # And the delivery row says sent with that Message-ID
        def is_sent():
            with app.session() as s:
                return s.get(Delivery, delivery_id).status is DeliveryStatus.sent
        assert wait_until(is_sent, 30)
        with app.session() as s:
            d = s.get(Delivery, delivery_id)
            assert d.message_id == msg["Message-ID"] and d.queue == QUEUE_TRANSACTIONAL
    finally:
        worker.stop()
        broker.close()
        app.close()
        set_app(previous)


def test_notices_and_newsletters_use_separate_queues(db_url, redis_url):
    # Given the Redis broker
    settings = make_settings(database_url=db_url, broker_url=redis_url)
    broker = setup(settings)
    # Then both queues exist, so a notice never waits behind a newsletter batch
    assert {QUEUE_TRANSACTIONAL, QUEUE_BULK} <= broker.get_declared_queues()
    broker.close()


@pytest.mark.slow
def test_dramatiq_worker_command_and_mailer_notify_cli(tmp_path, redis_url, smtp_sink):
    # Given a SQLite database migrated by `mailer db upgrade`
    env = {**os.environ, "MAILER_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "MAILER_BROKER_URL": redis_url,
           "MAILER_SMTP_URL": smtp_sink.url, "MAILER_SECRET_KEY": "k", "PYTHONPATH": str(PROJECT_ROOT)}
    runner = CliRunner()
    res = runner.invoke(main, ["db", "upgrade"], env=env)
    assert res.exit_code == 0, res.output
    # And `dramatiq worker` (the top-level worker.py) running in its own process
    proc = subprocess.Popen([sys.executable, "-m", "dramatiq", "worker", "--processes", "1", "--threads", "2"],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # When `mailer notify` enqueues a notice in Polish, twice with the same key
        for _ in range(2):
            res = runner.invoke(main, ["notify", "order_delayed", "--to", "dora@example.com", "--data",
                                       '{"order_number": "1002", "new_eta": "2026-12-03"}', "--locale", "pl",
                                       "--idempotency-key", "K-1002"], env=env)
            assert res.exit_code == 0, res.output
        # Then exactly one mail arrives
        assert wait_until(lambda: len(smtp_sink.received) >= 1, 60)
        time.sleep(1.0)
        assert len(smtp_sink.received) == 1
        assert smtp_sink.received[0].rcpt_tos == ["dora@example.com"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        db.dispose_engines()


def test_cli_notify_rejects_bad_input_with_clear_errors(tmp_path):
    env = {"MAILER_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "MAILER_BROKER_URL": "stub://"}
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"], env=env).exit_code == 0
    res = runner.invoke(main, ["notify", "order_delayed", "--to", "x@example.com", "--data", "{bad json"], env=env)
    assert res.exit_code == 2 and "--data" in res.output and "not valid JSON" in res.output
    res = runner.invoke(main, ["notify", "nope", "--to", "x@example.com", "--data", "{}"], env=env)
    assert res.exit_code == 2 and "unknown notice kind 'nope'" in res.output
    res = runner.invoke(main, ["notify", "order_delayed", "--to", "x@example.com", "--data",
                               '{"order_number": "1"}'], env=env)
    assert res.exit_code == 2 and "new_eta" in res.output
