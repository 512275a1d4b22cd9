"""The schema: Alembic migrations create exactly the tables the models describe, on
SQLite and PostgreSQL, and consent_events refuses UPDATE and DELETE."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from mailer import db
from mailer.models import Base

TABLES = {"customers", "customer_tags", "consent_events", "consent_evidence", "consent_state",
          "consent_requests", "campaigns", "deliveries", "suppressions", "bounces", "tracking_events",
          "api_keys", "shop_events", "reward_codes", "csat_ratings"}


def _diff(url: str) -> list:
    engine = db.get_engine(url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": False})
        return [d for d in compare_metadata(ctx, Base.metadata)
                if not (isinstance(d, tuple) and d[0] == "remove_table" and d[1].name == "alembic_version")]


def test_migrations_create_every_table_the_models_describe(db_url):
    # Given a database upgraded to head by Alembic (the db_url fixture)
    # When the live schema is compared with the models
    # Then there is no difference, and every table exists
    assert _diff(db_url) == []
    assert TABLES <= set(sa.inspect(db.get_engine(db_url)).get_table_names())
    assert db.current_revision(db_url) is not None


def test_downgrade_to_base_and_upgrade_again(db_url):
    db.downgrade(db_url, "base")
    assert not (TABLES & set(sa.inspect(db.get_engine(db_url)).get_table_names()))
    db.upgrade(db_url)
    assert TABLES <= set(sa.inspect(db.get_engine(db_url)).get_table_names())


def _insert_event(conn) -> None:
    conn.execute(sa.text("INSERT INTO customers (email, email_hash, total_spent, orders_count, attributes, "
                         "created_at, updated_at) VALUES ('a@example.com', 'h', 0, 0, '{}', "
                         "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    conn.execute(sa.text("INSERT INTO consent_events (seq, customer_id, subject_hash, purpose, action, basis, "
                         "source, occurred_at, recorded_at, prev_hash, hash) VALUES (1, 1, 'h', 'newsletter', "
                         "'granted', 'consent', 'api', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 'p', 'x')"))


@pytest.mark.parametrize("statement", ["UPDATE consent_events SET purpose = 'other'",
                                       "DELETE FROM consent_events"])
def test_consent_events_refuse_update_and_delete_at_database_level(db_url, statement):
    # Given one consent event
    engine = db.get_engine(db_url)
    with engine.begin() as conn:
        _insert_event(conn)
    # When anyone tries to change or remove it with plain SQL
    # Then the database itself refuses
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        with engine.begin() as conn:
            conn.execute(sa.text(statement))
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT purpose FROM consent_events")).scalar_one() == "newsletter"


def test_models_have_repr():
    for mapper in Base.registry.mappers:
        assert "__repr__" in mapper.class_.__dict__, mapper.class_.__name__
