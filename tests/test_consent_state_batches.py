"""Migration 0019: consent_state derived once per statement (PostgreSQL) or per import batch
(SQLite), and still only ever the ledger's derivation.

SQLite's open batch (``consent_derive_batches``) defers the row trigger for a seq range;
these tests show it can defer nothing past its transaction, cannot be bent, and that the
set-based derivation equals the row-by-row one (``consent verify`` replays the ledger and
compares every state row)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from mailer import db
from mailer.consent import importer
from mailer.consent import ledger as consent
from mailer.consent import verify as consent_verify
from mailer.models import ConsentEvent, ConsentState, Customer

HEADER = "email,purpose,action,occurred_at,source\n"


def _verified(settings) -> consent_verify.Report:
    with db.session_scope(settings) as s:
        return consent_verify.verify_db(s, settings)


def _count(url: str, table) -> int:
    with db.get_engine(url).connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def _raw_event_sql(url: str, seq: int, customer_id: int, action: str) -> str:
    # A well-formed event written with plain SQL (its hash is not the chain's; these tests
    # are about consent_state, which the trigger derives from any inserted event).
    when = "'2026-02-01 00:00:00.000000'" if url.startswith("sqlite") else "'2026-02-01T00:00:00Z'"
    return ("INSERT INTO consent_events (seq, customer_id, subject_hash, purpose, action, basis, source, "
            f"occurred_at, recorded_at, prev_hash, hash, chain_format) VALUES ({seq}, {customer_id}, 'h', "
            f"'newsletter', '{action}', 'consent', 'api', {when}, {when}, 'p{seq}', 'x{seq}', 2)")


@pytest.fixture
def granted(settings):
    """One customer with a current grant (seq 1); returns the customer id."""
    with db.session_scope(settings) as s:
        ev = consent.grant(s, settings, email="ann@example.com", purpose="newsletter", source="admin",
                           occurred_at=datetime(2026, 1, 1, tzinfo=UTC))
        return ev.customer_id


def test_an_open_batch_cannot_be_committed_so_no_event_escapes_derivation(settings, granted):
    # Given a transaction that opens a batch over the next seq and appends a withdrawal in it
    url = settings.database_url
    if not url.startswith("sqlite"):
        # (PostgreSQL derives per statement and refuses batch rows outright)
        with pytest.raises(sa.exc.DatabaseError, match="consent_derive_batches is for SQLite"), \
                db.get_engine(url).begin() as conn:
            conn.exec_driver_sql("INSERT INTO consent_derive_batches (first_seq, last_seq) VALUES (2, 2)")
        assert _count(url, ConsentEvent) == 1
        return
    # When it tries to commit without closing the batch
    # Then the commit fails (the deferred foreign key), and neither the batch nor the event is stored
    with pytest.raises(sa.exc.IntegrityError, match="FOREIGN KEY"), db.get_engine(url).begin() as conn:
        conn.exec_driver_sql("INSERT INTO consent_derive_batches (first_seq, last_seq) VALUES (2, 2)")
        conn.exec_driver_sql(_raw_event_sql(url, 2, granted, "withdrawn"))
    assert _count(url, ConsentEvent) == 1
    assert _count(url, sa.table("consent_derive_batches")) == 0
    # And the grant is still what the state says, matching the ledger
    with db.session_scope(settings) as s:
        assert consent.has_consent(s, settings, granted, "newsletter")
    assert _verified(settings).ok


@pytest.mark.parametrize("statement, refusal", [
    ("UPDATE consent_derive_batches SET last_seq = 2", "cannot be changed"),
    ("INSERT INTO consent_derive_batches (first_seq, last_seq) VALUES (1, 5)", "after the chain head"),
    ("INSERT INTO consent_derive_batches (first_seq, last_seq, pending) VALUES (2, 5, 2)", "CHECK"),
    ("INSERT INTO consent_derive_batches (first_seq, last_seq) VALUES (5, 2)", "CHECK"),
], ids=["update", "covers-the-past", "pending-not-zero", "empty-range"])
def test_a_batch_cannot_be_bent(sqlite_url, statement, refusal):
    # Given a ledger with one event and (for the UPDATE) an open batch over seq 2..3
    from tests.conftest import make_settings

    settings = make_settings(database_url=sqlite_url)
    with db.session_scope(settings) as s:
        consent.grant(s, settings, email="ann@example.com", purpose="newsletter", source="admin")
    # When the batch is changed, opened over events already appended, or made committable
    # Then SQLite refuses it
    with pytest.raises(sa.exc.DatabaseError, match=refusal), db.get_engine(sqlite_url).begin() as conn:
        conn.exec_driver_sql("INSERT INTO consent_derive_batches (first_seq, last_seq) VALUES (2, 3)")
        conn.exec_driver_sql(statement)
        conn.exec_driver_sql("DELETE FROM consent_derive_batches")
    assert _count(sqlite_url, sa.table("consent_derive_batches")) == 0


def test_closing_a_batch_derives_what_the_row_trigger_would(sqlite_url):
    # Given a customer with a grant, and a batch over seq 2..3 holding a withdrawal then a re-grant
    from tests.conftest import make_settings

    settings = make_settings(database_url=sqlite_url)
    with db.session_scope(settings) as s:
        cid = consent.grant(s, settings, email="ann@example.com", purpose="newsletter", source="admin",
                            occurred_at=datetime(2026, 1, 1, tzinfo=UTC)).customer_id
    engine = db.get_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO consent_derive_batches (first_seq, last_seq) VALUES (2, 3)")
        conn.exec_driver_sql(_raw_event_sql(sqlite_url, 2, cid, "withdrawn"))
        # When the events are in, the state is not yet derived (the row trigger skipped them) ...
        assert conn.execute(sa.select(ConsentState.event_id)).scalar_one() == 1
        conn.exec_driver_sql(_raw_event_sql(sqlite_url, 3, cid, "granted"))
        # ... and closing the batch derives it: the later event of the tie on occurred_at decides
        conn.exec_driver_sql("DELETE FROM consent_derive_batches")
        state = conn.execute(sa.select(ConsentState.granted, ConsentState.event_id)).one()
        third = conn.execute(sa.select(ConsentEvent.id).where(ConsentEvent.seq == 3)).scalar_one()
    # Then the state names the latest event, as the row-by-row derivation would have
    assert tuple(state) == (True, third)


def test_an_event_after_the_batch_is_derived_row_by_row_again(sqlite_url):
    # Given a batch opened and closed over seq 2..2
    from tests.conftest import make_settings

    settings = make_settings(database_url=sqlite_url)
    with db.session_scope(settings) as s:
        cid = consent.grant(s, settings, email="ann@example.com", purpose="newsletter", source="admin",
                            occurred_at=datetime(2026, 1, 1, tzinfo=UTC)).customer_id
    with db.get_engine(sqlite_url).begin() as conn:
        conn.exec_driver_sql("INSERT INTO consent_derive_batches (first_seq, last_seq) VALUES (2, 2)")
        conn.exec_driver_sql("DELETE FROM consent_derive_batches")
        # When an event outside any open batch is appended (seq 3)
        conn.exec_driver_sql(_raw_event_sql(sqlite_url, 3, cid, "withdrawn"))
        # Then the row trigger derived it at once
        assert conn.execute(sa.select(ConsentState.granted)).scalar_one() is False


def _tricky_file(tmp_path, n_people: int = 12, n_rows: int = 120):
    """Many events per (customer, purpose): ties on occurred_at, back-dated rows, both purposes."""
    lines = []
    for i in range(n_rows):
        person = i % n_people
        second = (i * 7) % 5  # repeats: ties on occurred_at within and across batches
        day = 1 + (i * 13) % 3  # not in file order: later rows are often older
        action = "withdrawn" if (i * 11) % 4 == 0 else "granted"
        purpose = "newsletter" if i % 5 else "product_updates"
        lines.append(f"p{person}@example.com,{purpose},{action},2024-03-0{day}T00:00:0{second}Z,\n")
    path = tmp_path / "tricky.csv"
    path.write_text(HEADER + "".join(lines), encoding="utf-8")
    return path


def test_set_based_derivation_equals_the_ledger_replay(settings, tmp_path, monkeypatch):
    # Given a ledger with existing decisions (one later than everything in the file) and a
    # file with many events per pair, ties and back-dated rows, spread over batches of 17
    with db.session_scope(settings) as s:
        consent.grant(s, settings, email="p0@example.com", purpose="newsletter", source="admin",
                      occurred_at=datetime(2024, 3, 2, tzinfo=UTC))
        consent.withdraw(s, settings, email="p0@example.com", purpose="newsletter",
                         occurred_at=datetime(2025, 1, 1, tzinfo=UTC))
        consent.grant(s, settings, email="p1@example.com", purpose="newsletter", source="admin",
                      occurred_at=datetime(2024, 3, 2, tzinfo=UTC))
    monkeypatch.setattr(importer, "BATCH_ROWS", 17)
    # When it is imported
    result = importer.import_file(settings, _tricky_file(tmp_path))
    assert result.events == 120 and not result.errors
    # Then every state row is the latest event of its pair (verify replays the whole ledger)
    report = _verified(settings)
    assert report.ok, (report.problem, report.state_mismatches[:3])
    # And the later withdrawal of p0 still decides over every imported grant
    with db.session_scope(settings) as s:
        p0 = s.execute(sa.select(Customer.id).where(Customer.email == "p0@example.com")).scalar_one()
        assert not consent.has_consent(s, settings, p0, "newsletter")
        # And one state row per pair, none left for a pair without events
        pairs = s.execute(sa.select(sa.func.count()).select_from(
            sa.select(ConsentEvent.customer_id, ConsentEvent.purpose).distinct().subquery())).scalar_one()
        assert s.execute(sa.select(sa.func.count()).select_from(ConsentState)).scalar_one() == pairs
    assert _count(settings.database_url, sa.table("consent_derive_batches")) == 0


@pytest.mark.postgres
def test_one_multi_row_statement_derives_the_latest_per_pair(pg_url):
    # Given a PostgreSQL ledger with a customer's grant
    from tests.conftest import make_settings

    settings = make_settings(database_url=pg_url)
    with db.session_scope(settings) as s:
        cid = consent.grant(s, settings, email="ann@example.com", purpose="newsletter", source="admin",
                            occurred_at=datetime(2026, 1, 1, tzinfo=UTC)).customer_id
    # When one INSERT statement appends a withdrawal and, at the same instant, a later-id grant
    # and an older (back-dated) withdrawal
    values = []
    for seq, action, when in ((2, "withdrawn", "2026-02-01"), (3, "granted", "2026-02-01"),
                              (4, "withdrawn", "2025-06-01")):
        values.append(f"({seq}, {cid}, 'h', 'newsletter', '{action}', 'consent', 'api', '{when}T00:00:00Z', "
                      f"'{when}T00:00:00Z', 'p{seq}', 'x{seq}', 2)")
    with db.get_engine(pg_url).begin() as conn:
        conn.exec_driver_sql("INSERT INTO consent_events (seq, customer_id, subject_hash, purpose, action, basis, "
                             "source, occurred_at, recorded_at, prev_hash, hash, chain_format) VALUES "
                             + ", ".join(values))
    # Then the state is the statement's latest event of the ledger: the grant of seq 3
    with db.get_engine(pg_url).connect() as conn:
        state = conn.execute(sa.select(ConsentState.granted, ConsentEvent.seq)
                             .join(ConsentEvent, ConsentEvent.id == ConsentState.event_id)).one()
    assert tuple(state) == (True, 3)
