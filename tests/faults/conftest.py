"""Fixtures of the fault tests: ``fault`` builds each test's :class:`FaultRun` (a PostgreSQL
schema, a private Redis, the SMTP sink, a draft campaign and its workers) and tears it all
down afterwards, whatever the test did."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import REQUIRE, need_service
from tests.faults.harness import PgSchema, RedisServer, fault_run


@pytest.fixture
def pg_schema():
    """A migrated PostgreSQL schema (the multi-worker database), dropped afterwards."""
    need_service("PostgreSQL", "127.0.0.1", 5432)
    schema = PgSchema()
    yield schema
    schema.drop()


@pytest.fixture
def fault_dir(tmp_path):
    (tmp_path / "logs").mkdir()
    return tmp_path


@pytest.fixture
def private_redis(fault_dir):
    """A ``redis-server`` of the test's own on a free port, empty, killed afterwards: the
    workers' broker, so no fault test shares (or flushes) anyone else's Redis."""
    if shutil.which("redis-server") is None:
        msg = "needs-service: the redis-server program is not installed"
        if REQUIRE:
            pytest.fail(msg + " (MAILER_REQUIRE_SERVICES=1)")
        pytest.skip(msg)
    server = RedisServer(fault_dir / "logs")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def fault(pg_schema, private_redis, fault_dir):
    """``fault(consenting=N, ...)`` -> a :class:`FaultRun` (see ``harness.fault_run`` for the
    options); its workers, sink and proxy are stopped at the end even if the test was not."""
    runs = []

    def make(**options):
        run = fault_run(fault_dir, pg_schema, private_redis, **options)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.stop()
