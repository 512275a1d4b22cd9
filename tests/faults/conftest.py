"""Fixtures of the fault tests: a PostgreSQL schema of their own and a private log folder."""

from __future__ import annotations

import pytest

from tests.conftest import need_service
from tests.faults.harness import PgSchema


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
