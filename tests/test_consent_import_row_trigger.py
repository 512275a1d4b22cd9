"""SQLite's bulk consent import drops the row derivation trigger while a batch is open.

``mailer.consent.importer._Writer._sqlite_batch`` drops ``consent_events_derive_state``
for the INSERTs of an open derive batch and recreates it from its own text in
``sqlite_master`` before the batch closes.  These tests hold it to its promise: the
trigger is back, byte for byte, after a good import, a ``--strict`` rejection and a
failure in the middle of a batch, and a withdrawal from another connection during an
import waits for it and is derived by the trigger as usual.
"""

from __future__ import annotations

import sqlite3
import threading

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select

from mailer import db
from mailer.consent import importer
from mailer.consent import ledger as consent
from mailer.consent import verify as consent_verify
from mailer.models import ConsentEvent, ConsentState, Customer
from tests.conftest import make_settings

HEADER = "email,purpose,action,occurred_at,source\n"
TRIGGER = "consent_events_derive_state"


def _trigger_sql(url: str) -> str | None:
    with db.get_engine(url).connect() as conn:
        return conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = :n"),
                            {"n": TRIGGER}).scalar()


def _file(tmp_path, rows: int, *, bad_at: int | None = None):
    lines = [f"{'bad' if i == bad_at else f'p{i % 9}@example.com'},newsletter,"
             f"{'withdrawn' if i % 4 == 0 else 'granted'},2024-02-01T00:00:{i % 60:02d}Z,\n" for i in range(rows)]
    path = tmp_path / "consents.csv"
    path.write_text(HEADER + "".join(lines), encoding="utf-8")
    return path


def _verified(settings) -> consent_verify.Report:
    with db.session_scope(settings) as s:
        return consent_verify.verify_db(s, settings)


@pytest.fixture
def sqlite_settings(sqlite_url):
    return make_settings(database_url=sqlite_url)


def test_the_trigger_is_back_byte_for_byte_after_a_good_import(sqlite_settings, tmp_path, monkeypatch):
    # Given the migrated trigger's text, and batches of 4 rows
    url = sqlite_settings.database_url
    before = _trigger_sql(url)
    assert before and "NOT EXISTS" in before
    monkeypatch.setattr(importer, "BATCH_ROWS", 4)
    # When 30 rows are imported (8 batches, the trigger dropped and recreated in each)
    result = importer.import_file(sqlite_settings, _file(tmp_path, 30))
    # Then the trigger is there with exactly its old text, and the chain and state verify
    assert result.events == 30 and not result.errors
    assert _trigger_sql(url) == before
    report = _verified(sqlite_settings)
    assert report.ok and not report.state_mismatches
    # And an ordinary append afterwards is derived row by row by that trigger
    with db.session_scope(sqlite_settings) as s:
        event = consent.withdraw(s, sqlite_settings, email="p1@example.com", purpose="newsletter")
    with db.session_scope(sqlite_settings) as s:
        state = s.get(ConsentState, (event.customer_id, "newsletter"))
        assert (state.event_id, state.granted) == (event.id, False)


def test_the_trigger_is_back_after_a_strict_rejection(sqlite_settings, tmp_path, monkeypatch):
    # Given batches of 3 rows and a bad row after several good batches
    url = sqlite_settings.database_url
    before = _trigger_sql(url)
    monkeypatch.setattr(importer, "BATCH_ROWS", 3)
    # When imported with --strict
    result = importer.import_file(sqlite_settings, _file(tmp_path, 20, bad_at=13), strict=True)
    # Then nothing is stored and the trigger is there, unchanged
    assert result.strict_aborted
    assert _trigger_sql(url) == before
    with db.session_scope(sqlite_settings) as s:
        assert s.execute(select(func.count()).select_from(ConsentEvent)).scalar_one() == 0


@pytest.fixture
def evidence_fails_for_p5(sqlite_settings):
    """A fault: the evidence INSERT of the batch holding p5 fails (after the events are in)."""
    with db.get_engine(sqlite_settings.database_url).begin() as conn:
        conn.exec_driver_sql("CREATE TRIGGER test_fault BEFORE INSERT ON consent_evidence "
                             "WHEN NEW.email = 'p5@example.com' BEGIN SELECT RAISE(ABORT, 'injected fault'); END")
    return sqlite_settings


def test_the_trigger_is_back_after_a_failure_mid_batch(evidence_fails_for_p5, tmp_path, monkeypatch):
    # Given an injected failure in the second batch, between the dropping and the recreating
    settings = evidence_fails_for_p5
    url = settings.database_url
    before = _trigger_sql(url)
    monkeypatch.setattr(importer, "BATCH_ROWS", 5)
    # When the import fails there
    with pytest.raises(sqlite3.IntegrityError, match="injected fault"):  # the driver's own (writes bypass Core)
        importer.import_file(settings, _file(tmp_path, 12))
    # Then it is rolled back whole and the trigger is there, unchanged
    assert _trigger_sql(url) == before
    with db.session_scope(settings) as s:
        assert s.execute(select(func.count()).select_from(ConsentEvent)).scalar_one() == 0
        assert s.execute(select(func.count()).select_from(Customer)).scalar_one() == 0


def test_a_caller_that_goes_on_after_a_failed_batch_finds_the_trigger(evidence_fails_for_p5, tmp_path,
                                                                       monkeypatch):
    # Given an import inside the caller's own transaction that fails in the second batch
    settings = evidence_fails_for_p5
    monkeypatch.setattr(importer, "BATCH_ROWS", 5)
    session = db.session_factory(settings)()
    try:
        with pytest.raises(sqlite3.IntegrityError, match="injected fault"):  # the driver's own (writes bypass Core)
            importer.import_csv(session, settings, _file(tmp_path, 12))
        # When the caller looks at the schema in that same transaction
        inside = session.execute(sa.text("SELECT sql FROM sqlite_master WHERE name = :n"), {"n": TRIGGER}).scalar()
        # Then the trigger is already back (and the failed batch is still open, so this
        # transaction cannot commit)
        assert inside is not None
        with pytest.raises(sa.exc.IntegrityError, match="FOREIGN KEY"):
            session.commit()
    finally:
        session.rollback()
        session.close()
    assert _trigger_sql(settings.database_url) is not None


def test_a_withdrawal_during_an_import_waits_and_is_derived(sqlite_settings, tmp_path, monkeypatch):
    # Given a customer with a grant, and an import of many batches that grants her again
    settings = sqlite_settings
    with db.session_scope(settings) as s:
        consent.grant(s, settings, email="p1@example.com", purpose="newsletter", source="admin")
    monkeypatch.setattr(importer, "BATCH_ROWS", 4)
    started, withdrawn = threading.Event(), threading.Event()
    outcome: dict = {}

    def withdraw() -> None:
        try:
            with db.session_scope(settings) as s:
                outcome["event"] = consent.withdraw(s, settings, email="p1@example.com", purpose="newsletter")
                outcome["seq"] = outcome["event"].seq
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc
        withdrawn.set()

    seen_while_importing: list[bool] = []

    def progress(_rows: int) -> None:
        # After the first batch (the import holds the write lock): another connection withdraws
        if not started.is_set():
            started.set()
            threading.Thread(target=withdraw, daemon=True).start()
        seen_while_importing.append(withdrawn.is_set())

    # When the withdrawal is made from another connection in the middle of the import
    result = importer.import_file(settings, _file(tmp_path, 40), progress=progress)
    withdrawn.wait()
    # Then it waited for the import (it never finished while the import ran) ...
    assert "error" not in outcome, outcome.get("error")
    assert result.events == 40 and not any(seen_while_importing)
    # ... was appended after every imported event, and decides: the trigger derived it
    assert outcome["seq"] == result.last_seq + 1
    with db.session_scope(settings) as s:
        cid = s.execute(select(Customer.id).where(Customer.email == "p1@example.com")).scalar_one()
        assert not consent.has_consent(s, settings, cid, "newsletter")
    report = _verified(settings)
    assert report.ok and not report.state_mismatches
