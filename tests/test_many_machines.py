"""Many machines, one truth: no lock outlives its holder's reach, and hosts can be told apart.

A partitioned worker's PostgreSQL session is simulated by a session that takes the send
path's ``FOR SHARE`` read of a consent row and then goes silent inside its transaction.
What must hold (docs/delivery.md, "Running on many machines"):

* the server ends that idle session after ``MAILER_DB_IDLE_IN_TRANSACTION_S``, so a
  withdrawal waiting behind it commits (a liveness bound, asserted as a generous multiple
  of the configured timeouts, never a speed target);
* with no such timeout, the withdrawal gives up after ``MAILER_DB_LOCK_TIMEOUT_S`` with a
  clear, retryable ``Busy`` error (HTTP 503 with ``Retry-After``), having recorded nothing;
* every PostgreSQL connection has TCP keepalives; worker sessions have a statement_timeout;
* lease owners and JSON log lines carry ``MAILER_WORKER_NAME``.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time

import pytest
from sqlalchemy import func, select, text

from mailer import db, logs
from mailer.app import App
from mailer.consent import ledger
from mailer.delivery import process
from mailer.errors import Busy
from mailer.models import ConsentEvent, ConsentState
from tests.conftest import make_settings

#: Generous multiple of the configured timeouts a withdrawal must finish within (liveness, not speed).
LIVENESS_FACTOR = 10


def _granted(app: App, email: str) -> int:
    with app.session() as s:
        ev = ledger.grant(s, app.settings, purpose="newsletter", email=email, source="api")
        return ev.customer_id


class _SilentWorker:
    """Reads a consent row FOR SHARE, as the send path does before SMTP, then goes silent."""

    def __init__(self, app: App, customer_id: int):
        self.conn = db.get_engine(app.settings).connect()
        self.conn.execute(select(ConsentState.granted).where(ConsentState.customer_id == customer_id,
                                                             ConsentState.purpose == "newsletter")
                          .with_for_update(read=True)).all()

    def alive(self) -> bool:
        try:
            self.conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # the server ended it: that is the point
            pass


@pytest.mark.postgres
def test_a_withdrawal_behind_a_silent_worker_commits_once_the_server_ends_that_session(pg_url):
    # Given a worker session that read the customer's consent row FOR SHARE and went silent (a cut link)
    app = App(make_settings(database_url=pg_url, db_idle_in_transaction_s=2, db_lock_timeout_s=30))
    try:
        customer_id = _granted(app, "bo@example.com")
        worker = _SilentWorker(app, customer_id)
        done: dict = {}

        def withdraw():
            started = time.monotonic()
            with app.session() as s:
                ledger.withdraw(s, app.settings, purpose="newsletter", email="bo@example.com", source="api")
            done["after_s"] = time.monotonic() - started

        # When a withdrawal for that customer is recorded
        t = threading.Thread(target=withdraw)
        t.start()
        bound_s = LIVENESS_FACTOR * app.settings.db_idle_in_transaction_s
        t.join(bound_s)
        # Then it commits within a generous multiple of the idle-in-transaction timeout, not hours
        assert not t.is_alive(), f"the withdrawal was still waiting after {bound_s} s"
        assert "after_s" in done
        with app.session() as s:
            state = s.get(ConsentState, (customer_id, "newsletter"))
            assert state.granted is False
        # And the silent session was ended by the server (its transaction can no longer commit a send)
        assert not worker.alive()
        worker.close()
    finally:
        app.close()


@pytest.mark.postgres
def test_without_the_idle_timeout_the_withdrawal_fails_clearly_after_the_lock_timeout(pg_url):
    # Given a silent session holding the consent row, and no idle-in-transaction timeout
    app = App(make_settings(database_url=pg_url, db_idle_in_transaction_s=0, db_lock_timeout_s=1))
    try:
        customer_id = _granted(app, "cy@example.com")
        worker = _SilentWorker(app, customer_id)
        # When a withdrawal is attempted / Then it is refused as Busy (retryable), and nothing is recorded
        with pytest.raises(Busy, match="try again") as exc, app.session() as s:
            ledger.withdraw(s, app.settings, purpose="newsletter", email="cy@example.com", source="api")
        assert exc.value.retry_after_s > 0
        assert worker.alive()
        worker.close()
        with app.session() as s:
            assert s.execute(select(func.count()).select_from(ConsentEvent)).scalar_one() == 1
            assert s.get(ConsentState, (customer_id, "newsletter")).granted is True
    finally:
        app.close()


@pytest.mark.postgres
def test_a_busy_consent_write_over_http_is_503_with_retry_after(pg_url):
    from fastapi.testclient import TestClient

    from mailer.web import apikeys
    from mailer.web.app import create_app

    # Given a silent session holding a customer's consent row
    app = App(make_settings(database_url=pg_url, db_idle_in_transaction_s=0, db_lock_timeout_s=1))
    try:
        customer_id = _granted(app, "di@example.com")
        with app.session() as s:
            key = apikeys.create(s, "shop", "consents").key
        worker = _SilentWorker(app, customer_id)
        client = TestClient(create_app(app=app))
        # When the shop withdraws over HTTP
        r = client.post("/v1/consents", json={"email": "di@example.com", "purposes": ["newsletter"],
                                               "action": "withdraw"}, headers={"Authorization": f"Bearer {key}"})
        # Then the answer is 503 with Retry-After and a clear message, never a traceback
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
        assert "try again" in r.json()["detail"]
        worker.close()
    finally:
        app.close()


@pytest.mark.postgres
def test_every_connection_has_keepalives_and_worker_sessions_a_statement_timeout(pg_url, monkeypatch):
    # Given settings with a 20 s keepalive and a 45 s worker statement timeout
    settings = make_settings(database_url=pg_url, db_keepalive_s=20, db_worker_statement_timeout_s=45,
                             db_idle_in_transaction_s=90)
    # When a web/CLI process connects
    engine = db.make_engine(pg_url, settings)
    with engine.connect() as c:
        params = c.connection.dbapi_connection.info.get_parameters()
        # Then libpq keeps the TCP connection alive, and the idle-in-transaction bound is set
        assert params.get("keepalives") == "1" and params.get("keepalives_idle") == "20"
        assert c.execute(text("SHOW idle_in_transaction_session_timeout")).scalar_one() == "90s"
        assert c.execute(text("SHOW statement_timeout")).scalar_one() == "0"
    engine.dispose()
    # And a worker process's sessions get the statement timeout too
    monkeypatch.setattr(db, "_worker_sessions", [True])
    engine = db.make_engine(pg_url, settings)
    with engine.connect() as c:
        assert c.execute(text("SHOW statement_timeout")).scalar_one() == "45s"
    engine.dispose()


def test_on_sqlite_a_consent_write_behind_a_held_write_lock_fails_clearly_after_the_busy_timeout(tmp_path,
                                                                                                  monkeypatch):
    # Given a SQLite database whose write lock another session holds (BEGIN IMMEDIATE), and a
    # busy timeout of one second
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_S", 1)
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    db.upgrade(url)
    app = App(make_settings(database_url=url))
    try:
        _granted(app, "el@example.com")
        holder = db.make_engine(url).raw_connection()
        holder.execute("BEGIN IMMEDIATE")
        try:
            # When a withdrawal is attempted / Then it is refused as Busy (retryable, clear), not a
            # raw "database is locked" traceback
            with pytest.raises(Busy, match="try again"), app.session() as s:
                ledger.withdraw(s, app.settings, purpose="newsletter", email="el@example.com", source="api")
        finally:
            holder.rollback()
            holder.close()
        # And nothing was recorded
        with app.session() as s:
            assert s.execute(select(func.count()).select_from(ConsentEvent)).scalar_one() == 1
    finally:
        app.close()
        db.dispose_engines()


def test_lease_owners_and_log_lines_carry_the_worker_name():
    # Given MAILER_WORKER_NAME set for this process
    logs.set_worker_name("eu-west-b:worker-3")
    try:
        # When a lease owner is made and a line is logged
        owner = process.worker_id()
        stream = io.StringIO()
        handler = logs.make_handler(stream, fmt="json")
        record = logging.LogRecord("mailer.test", logging.INFO, __file__, 1, "hello", None, None)
        handler.handle(record)
        line = json.loads(stream.getvalue())
        # Then both name the worker (and the line keeps host and pid)
        assert owner.startswith("eu-west-b:worker-3:") and len(owner) <= 100
        assert line["worker"] == "eu-west-b:worker-3" and line["host"] and line["pid"]
    finally:
        logs.set_worker_name("")
    # And by default the name is hostname:pid
    assert logs.worker_name() == f"{logs.HOST}:{__import__('os').getpid()}"


def _consumer_record(msg: str, args=(), exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None and not args else None
    return logging.LogRecord("dramatiq.worker._ConsumerThread", logging.CRITICAL, __file__, 1, msg, args, exc_info)


def test_a_broker_outage_is_logged_once_without_a_traceback():
    import redis

    from mailer.queue.broker import OUTAGE_GAP_S, OutageLogFilter

    now = [0.0]
    f = OutageLogFilter(clock=lambda: now[0])
    # Given a Redis partition: every consumer thread fails every 3 s, with IndexError and connection errors
    passed = []
    for i in range(20):
        now[0] = i * 3.0
        for rec in (_consumer_record("Consumer encountered an unexpected error.", exc=IndexError("pop from empty list")),
                    _consumer_record("Consumer encountered a connection error: %s",
                                     (redis.ConnectionError("Connection refused"),)),
                    _consumer_record("Restarting consumer in %0.2f seconds.", (3.0,))):
            if f.filter(rec):
                passed.append(rec)
    # Then one line is logged for the whole outage, as an error without a traceback
    assert len(passed) == 1
    assert passed[0].levelname == "ERROR" and passed[0].exc_info is None
    assert "broker unreachable" in passed[0].getMessage() and "IndexError" in passed[0].getMessage()
    # And a new outage after a quiet gap is logged again, and other errors pass unchanged
    now[0] += OUTAGE_GAP_S + 1
    assert f.filter(_consumer_record("Consumer encountered a connection error: %s", (redis.TimeoutError("t"),)))
    other = _consumer_record("Consumer encountered an unexpected error.", exc=KeyError("bug"))
    assert f.filter(other) and other.levelno == logging.CRITICAL and other.exc_info is not None


def test_the_outage_filter_sits_on_the_loggers_dramatiq_s_consumer_threads_really_use(redis_url):
    import redis
    from dramatiq.logging import get_logger

    from mailer.queue import broker as broker_mod
    from mailer.queue.port import QUEUES

    # Given a Redis broker built as a worker builds it
    built = broker_mod.build_broker(make_settings(broker_url=redis_url))
    broker_mod._outage_filter._last_s = None
    caught: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record):
            caught.append(record)

    handler = Catch()
    # When every consumer thread (named as Dramatiq 2 names it, per queue and delay queue)
    # reports the partition's IndexError and connection errors, again and again
    loggers = [get_logger("dramatiq.worker", "ConsumerThread(%s)" % q) for q in QUEUES]
    loggers += [get_logger("dramatiq.worker", "ConsumerThread(%s)" % q) for q in built.get_declared_delay_queues()]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        for _ in range(3):
            for lg in loggers:
                try:
                    raise IndexError("pop from empty list")
                except IndexError:
                    lg.critical("Consumer encountered an unexpected error.", exc_info=True)
                lg.critical("Consumer encountered a connection error: %s", redis.ConnectionError("refused"))
                lg.info("Restarting consumer in %0.2f seconds.", 3.0)
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        broker_mod._outage_filter._last_s = None
    # Then one line is logged for the whole outage, without a traceback
    assert len(loggers) >= 2 * len(QUEUES)
    assert len(caught) == 1, [r.getMessage() for r in caught]
    assert caught[0].levelname == "ERROR" and caught[0].exc_info is None


def test_metrics_name_the_worker_and_count_reaped_workers():
    from mailer import metrics

    # Given a worker process named eu-west-b on host h1
    metrics.name_worker("eu-west-b", "h1")
    before = metrics.WORKERS_REAPED._value.get()
    # When a sweeper reaps a silent worker holding three messages
    metrics.count_reaped(3)
    body, _ = metrics.exposition()
    text_ = body.decode()
    # Then the exposition names this worker, and counts the reaped worker and its messages
    assert 'mailer_worker{host="h1",worker="eu-west-b"} 1.0' in text_
    assert metrics.WORKERS_REAPED._value.get() == before + 1
    assert "mailer_messages_requeued_total" in text_

