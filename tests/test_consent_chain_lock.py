"""The chain locks (consent ledger, audit log) on PostgreSQL are per schema: one schema serializes, two don't wait."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from mailer import audit, db
from mailer.consent import ledger as consent
from mailer.customers.records import get_or_create
from mailer.errors import Busy
from tests.conftest import _pg_schema, make_settings

pytestmark = pytest.mark.postgres

#: How long a consent write waits for the chain lock here, seconds: long enough for an
#: uncontended lock, short enough that a lock held elsewhere ends the test as Busy.
LOCK_WAIT_S = 2


@pytest.fixture
def other_pg_url():
    """A second migrated schema in the same database."""
    yield from _pg_schema()


def _grant(settings, email: str) -> None:
    with db.session_scope(settings) as s:
        customer = get_or_create(s, settings, email)
        consent.append(s, settings, customer=customer, purpose="newsletter", action="granted",
                       source="signup_form")


def test_two_schemas_do_not_wait_for_each_others_chain_lock(pg_url, other_pg_url):
    # Given two schemas of one database, and a session of the first holding its chain lock
    first = make_settings(database_url=pg_url, db_lock_timeout_s=LOCK_WAIT_S)
    second = make_settings(database_url=other_pg_url, db_lock_timeout_s=LOCK_WAIT_S)
    with db.session_scope(first) as holder:
        consent.lock_chain(holder, first)
        # When the second schema appends a consent event and an audit entry
        _grant(second, "bob@example.com")
        with db.session_scope(second) as s:
            s.execute(sa.text(f"SET LOCAL lock_timeout = {LOCK_WAIT_S * 1000}"))
            audit.record(s, actor="test", action="consent.export", target="bob@example.com")
        # Then both commit while the first schema's lock is still held
        with db.session_scope(second) as s:
            assert s.execute(sa.text("SELECT count(*) FROM consent_events")).scalar_one() == 1
            assert s.execute(sa.text("SELECT count(*) FROM audit_log")).scalar_one() == 1


def test_one_schema_still_serializes_its_chain(pg_url):
    # Given a session holding the chain lock of a schema
    settings = make_settings(database_url=pg_url, db_lock_timeout_s=LOCK_WAIT_S)
    with db.session_scope(settings) as holder:
        consent.lock_chain(holder, settings)
        # When another session of the same schema appends
        # Then it waits for the lock and gives up as Busy, having recorded nothing
        with pytest.raises(Busy):
            _grant(settings, "alice@example.com")
    # And once the holder has committed, the same append goes through
    _grant(settings, "alice@example.com")
    with db.session_scope(settings) as s:
        assert s.execute(sa.text("SELECT count(*) FROM consent_events")).scalar_one() == 1


def test_one_schema_serializes_its_audit_chain(pg_url):
    # Given a session holding the audit chain's lock of a schema
    settings = make_settings(database_url=pg_url)
    with db.session_scope(settings) as holder:
        holder.execute(sa.text(audit.CHAIN_LOCK_SQL), {"c": audit.CHAIN_LOCK_CLASS})
        # When another session of the same schema records an entry (waiting at most LOCK_WAIT_S)
        # Then it cannot take the lock
        with pytest.raises(sa.exc.OperationalError, match="lock timeout"), db.session_scope(settings) as s:
            s.execute(sa.text(f"SET LOCAL lock_timeout = {LOCK_WAIT_S * 1000}"))
            audit.record(s, actor="test", action="consent.export", target="alice@example.com")
