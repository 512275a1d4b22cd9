"""Shared fixtures: real SMTP (aiosmtpd), real Redis, SQLite and real PostgreSQL.

Service-backed fixtures skip only when the service truly cannot be reached, with a
reason starting "needs-service"; under ``MAILER_REQUIRE_SERVICES=1`` (set by .ci/run)
they fail instead, so CI never skips them silently.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from mailer import db
from mailer.app import App, set_app
from mailer.settings import PROJECT_ROOT, Settings
from tests.smtp_sink import SMTPSink

PG_URL = os.environ.get("MAILER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REQUIRE = os.environ.get("MAILER_REQUIRE_SERVICES") == "1"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def need_service(name: str, host: str, port: int) -> None:
    if not _reachable(host, port):
        msg = f"needs-service: {name} on {host}:{port} cannot be reached"
        if REQUIRE:
            pytest.fail(msg + " (MAILER_REQUIRE_SERVICES=1)")
        pytest.skip(msg)


# -- databases -----------------------------------------------------------------------------
def _pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


def _pg_schema():
    """Yield the URL of a fresh, migrated PostgreSQL schema; drop it afterwards."""
    need_service("PostgreSQL", "127.0.0.1", 5432)
    import sqlalchemy as sa

    schema = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = _pg_schema_url(schema)
    try:
        db.upgrade(url)
        yield url
    finally:
        db.dispose_engines()
        with admin.connect() as c:
            c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """A migrated, empty database: SQLite file, then a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'mailer.db'}"
        db.upgrade(url)
        yield url
        db.dispose_engines()
        return
    yield from _pg_schema()


@pytest.fixture
def pg_url():
    """A migrated, empty PostgreSQL schema (for tests of what only PostgreSQL does; mark them postgres)."""
    yield from _pg_schema()


@pytest.fixture
def sqlite_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'mailer.db'}"
    db.upgrade(url)
    yield url
    db.dispose_engines()


# -- SMTP ----------------------------------------------------------------------------------
@pytest.fixture
def smtp_sink():
    """A real aiosmtpd server on 127.0.0.1 (SMTPUTF8 on)."""
    sink = SMTPSink().start()
    yield sink
    sink.stop()


# -- Redis ---------------------------------------------------------------------------------
@pytest.fixture
def redis_url():
    """A Redis database number of our own, flushed before and after."""
    need_service("Redis", REDIS_HOST, REDIS_PORT)
    import redis

    number = int(os.environ.get("MAILER_TEST_REDIS_DB", "9"))
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{number}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


# -- settings and app ----------------------------------------------------------------------
def make_settings(**overrides) -> Settings:
    base = dict(database_url="sqlite:///:memory:", broker_url="stub://", smtp_url="memory://default",
                secret_key="test-secret", templates_dir=PROJECT_ROOT / "templates",
                segments_dir=PROJECT_ROOT / "segments", automations_dir=PROJECT_ROOT / "automations",
                retry_min_backoff_ms=10, retry_max_backoff_ms=100, sweep_interval_s=1, frequency_cap=0)
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
def settings(db_url):
    return make_settings(database_url=db_url)


@pytest.fixture
def app(settings):
    """An App on the test database with the in-memory transport, installed process-wide."""
    from mailer.transport import memory

    memory.clear()
    yield from installed_app(settings)


def installed_app(settings: Settings):
    """For a fixture: ``yield from`` an App on ``settings``, installed process-wide, then closed."""
    application = App(settings)
    previous = set_app(application)
    try:
        yield application
    finally:
        application.close()
        set_app(previous)


def wait_until(predicate, timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout_s`` seconds pass (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return False


def _run_stub_worker(application, *, worker_threads: int = 2, worker_timeout_ms: int = 50):
    """The in-process broker with a running worker; ``broker.drain()`` waits for all queues."""
    import dramatiq

    from mailer.queue.broker import QUEUES
    from mailer.worker.actors import setup

    broker = setup(application.settings)
    worker = dramatiq.Worker(broker, worker_timeout=worker_timeout_ms, worker_threads=worker_threads)
    worker.start()

    def drain(timeout_ms: int = 30_000) -> None:
        for _ in range(3):  # actors may enqueue further messages
            for q in QUEUES:
                broker.join(q, timeout=timeout_ms, fail_fast=True)
            worker.join()

    broker.drain = drain
    yield broker
    worker.stop()
    broker.close()


def app_with_worker(settings: Settings, *, worker_threads: int = 2, worker_timeout_ms: int = 50):
    """For a fixture: ``yield from`` an App on ``settings``, installed process-wide, with its
    broker (the one ``settings.broker_url`` names) and an in-process worker running."""
    for application in installed_app(settings):
        for _broker in _run_stub_worker(application, worker_threads=worker_threads,
                                        worker_timeout_ms=worker_timeout_ms):
            yield application


@pytest.fixture
def stub_broker(app):
    """The in-process broker and worker for ``app`` (in-memory transport)."""
    yield from _run_stub_worker(app)


@pytest.fixture
def smtp_app_settings() -> dict:
    """The settings of ``smtp_app`` besides its database and SMTP URL; a test module that
    needs others overrides this fixture (instead of writing its own ``smtp_app``)."""
    return {"base_url": "https://shop.example.com/m"}


@pytest.fixture
def smtp_app(db_url, smtp_sink, smtp_app_settings):
    """An App on the test database delivering to the real aiosmtpd sink, installed process-wide."""
    yield from installed_app(make_settings(database_url=db_url, smtp_url=smtp_sink.url, **smtp_app_settings))


@pytest.fixture
def smtp_worker(smtp_app):
    """The in-process broker and worker for ``smtp_app``."""
    yield from _run_stub_worker(smtp_app)


@pytest.fixture
def artifacts_dir() -> Path:
    path = PROJECT_ROOT / "artifacts"
    path.mkdir(exist_ok=True)
    return path


# -- browser -------------------------------------------------------------------------------
#: Debian's Chromium (apt-get install chromium); MAILER_TEST_CHROMIUM points elsewhere.
CHROMIUM = Path(os.environ.get("MAILER_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through Playwright (module-scoped: one launch per test module)."""
    if not CHROMIUM.exists():
        msg = (f"needs-service: chromium ({CHROMIUM} missing; apt-get install chromium chromium-driver "
               "fonts-noto-core fonts-noto-cjk fonts-dejavu-core)")
        if REQUIRE:
            pytest.fail(msg + " (MAILER_REQUIRE_SERVICES=1)")
        pytest.skip(msg)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


# -- console -------------------------------------------------------------------------------
@pytest.fixture
def console_as(app):
    """``console_as(role)``: a TestClient logged in to the console as a new user of ``role``
    (on the parametrized ``db_url``); the client carries ``csrf_token`` and ``email``."""
    from tests.console_support import console_client

    clients = []

    def make(role: str, **kwargs):
        client = console_client(app, role, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def live_console(tmp_path, redis_url, smtp_sink):
    """``mailer serve`` and a real worker (subprocesses) on Redis, aiosmtpd and a SQLite file."""
    from tests.console_support import LiveConsole

    live = LiveConsole(tmp_path, redis_url, smtp_sink)
    try:
        live.start()
        yield live
    finally:
        live.stop()
