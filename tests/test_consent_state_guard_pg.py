"""Migration 0025: consent_state's guard on PostgreSQL checks each statement's rows set-based and refuses the whole statement."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from mailer import db
from mailer.consent import ledger as consent
from mailer.consent import verify as consent_verify
from mailer.customers.records import get_or_create
from tests.conftest import make_settings

pytestmark = pytest.mark.postgres


@pytest.fixture
def people(pg_url):
    """Three customers: A and B granted the newsletter, C withdrew it."""
    settings = make_settings(database_url=pg_url)
    ids = {}
    with db.session_scope(settings) as s:
        for name in "ABC":
            customer = get_or_create(s, settings, f"{name.lower()}@example.com")
            consent.append(s, settings, customer=customer, purpose="newsletter", action="granted",
                           source="signup_form")
            ids[name] = customer.id
        consent.withdraw(s, settings, email="c@example.com", purpose="newsletter")
    return settings, ids


def _state(settings) -> list[tuple]:
    with db.get_engine(settings.database_url).connect() as conn:
        return conn.execute(sa.text("SELECT customer_id, purpose, granted, event_id FROM consent_state "
                                    "ORDER BY customer_id")).all()


def _refused(settings, sql: str, match: str) -> None:
    with pytest.raises(sa.exc.DatabaseError, match=match), db.get_engine(settings.database_url).begin() as conn:
        conn.exec_driver_sql(sql)


def test_one_bad_row_refuses_the_whole_statement(people):
    # Given derived state for A, B (granted) and C (withdrawn)
    settings, ids = people
    before = _state(settings)
    # When one UPDATE touches all three rows and only C's row departs from the ledger
    # Then the statement is refused, naming the row, and no row changed
    _refused(settings, f"UPDATE consent_state SET granted = (customer_id = {ids['C']}) OR granted",
             rf"UPDATE of \(customer {ids['C']}, newsletter\) refused, it does not match the ledger")
    assert _state(settings) == before


def test_a_key_change_is_refused_even_when_the_row_would_match(people):
    # Given derived state for A and B
    settings, ids = people
    before = _state(settings)
    # When B's row is moved to another purpose key
    # Then the guard refuses the change of key
    _refused(settings, f"UPDATE consent_state SET purpose = 'loyalty' WHERE customer_id = {ids['B']}",
             "UPDATE of its key refused")
    assert _state(settings) == before


def test_an_upsert_that_does_not_match_is_refused(people):
    # Given derived state for C (withdrawn)
    settings, ids = people
    before = _state(settings)
    # When an INSERT ... ON CONFLICT DO UPDATE turns C's row into a grant
    # Then the guard refuses it, and the ledger's own writes still pass and verify
    _refused(settings, "INSERT INTO consent_state (customer_id, purpose, granted, basis, event_id, updated_at) "
                       f"SELECT customer_id, purpose, true, basis, event_id, updated_at FROM consent_state "
                       f"WHERE customer_id = {ids['C']} "
                       "ON CONFLICT (customer_id, purpose) DO UPDATE SET granted = EXCLUDED.granted",
             "does not match the ledger")
    assert _state(settings) == before
    with db.session_scope(settings) as s:
        consent.grant(s, settings, email="c@example.com", purpose="newsletter", source="admin")
    with db.session_scope(settings) as s:
        assert consent.has_consent(s, settings, ids["C"], "newsletter")
        assert consent_verify.verify_db(s, settings).ok
