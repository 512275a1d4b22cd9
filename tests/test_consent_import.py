"""``mailer consent import``: existing consents appended to the chain in batches, with proof and row errors."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from mailer import db
from mailer.addresses import email_hash
from mailer.cli import main
from mailer.consent import importer
from mailer.consent import ledger as consent
from mailer.consent import verify as consent_verify
from mailer.errors import ValidationError
from mailer.instance_secrets import address_hash_salt
from mailer.models import ConsentAction, ConsentEvent, ConsentEvidence, ConsentSource, Customer

HEADER = ("email,purpose,action,occurred_at,source,ip,user_agent,wording_id,wording_version,confirmed_at,"
          "external_id\n")


def write(tmp_path, body: str, name: str = "consents.csv", header: str = HEADER):
    path = tmp_path / name
    path.write_text(header + body, encoding="utf-8")
    return path


def _verified(settings) -> consent_verify.Report:
    with db.session_scope(settings) as s:
        return consent_verify.verify_db(s, settings)


def test_import_appends_chained_events_with_proof_and_verify_passes(settings, tmp_path):
    # Given a ledger that already has one event, and a file of grants and a withdrawal
    with db.session_scope(settings) as s:
        consent.grant(s, settings, email="zed@example.com", purpose="newsletter", source="admin")
    path = write(tmp_path,
                 "Ann@Example.COM,newsletter,granted,2024-01-02T10:00:00+01:00,signup_form,203.0.113.5,"
                 "Mozilla/5.0,footer-form,2024-01,2024-01-02T09:05:00Z,shop-42\n"
                 "bo@example.com,newsletter,granted,2024-01-03,,,,,,,\n"
                 "bo@example.com,newsletter,withdrawn,2024-03-04T00:00:00Z,unsubscribe_link,,,,,,\n"
                 "zed@example.com,product_updates,granted,2024-05-06T07:08:09.123456Z,,,,,,,\n")
    # When it is imported
    result = importer.import_file(settings, path)
    # Then four events follow the existing one, two customers are new, and the chain verifies
    assert (result.events, result.customers_created, result.errors) == (4, 2, [])
    assert (result.first_seq, result.last_seq) == (2, 5)
    report = _verified(settings)
    assert report.ok and report.events == 5, (report.problem, report.state_mismatches)
    salt = address_hash_salt(settings)
    with db.session_scope(settings) as s:
        ann = s.execute(select(Customer).where(Customer.email == "ann@example.com")).scalar_one()
        bo = s.execute(select(Customer).where(Customer.email == "bo@example.com")).scalar_one()
        zed = s.execute(select(Customer).where(Customer.email == "zed@example.com")).scalar_one()
        # ... the current state follows the latest event per customer and purpose
        assert consent.has_consent(s, settings, ann.id, "newsletter")
        assert not consent.has_consent(s, settings, bo.id, "newsletter")
        assert consent.has_consent(s, settings, zed.id, "product_updates")
        # ... and the proof is kept: digests in the chain, clear values in the evidence
        ev = s.execute(select(ConsentEvent).where(ConsentEvent.seq == 2)).scalar_one()
        assert ev.customer_id == ann.id and ev.action is ConsentAction.granted
        assert ev.source is ConsentSource.signup_form
        assert ev.occurred_at == datetime(2024, 1, 2, 9, 0, tzinfo=UTC)
        assert ev.confirmed_at == datetime(2024, 1, 2, 9, 5, tzinfo=UTC)
        assert (ev.form_id, ev.wording_version) == ("footer-form", "2024-01")
        assert ev.subject_hash == email_hash("ann@example.com", salt) == ann.email_hash
        assert ev.ip_digest == hashlib.sha256(salt + b"203.0.113.5").hexdigest()
        evidence = s.get(ConsentEvidence, ev.id)
        assert (evidence.email, evidence.ip, evidence.user_agent) == ("ann@example.com", "203.0.113.5", "Mozilla/5.0")
        default = s.execute(select(ConsentEvent).where(ConsentEvent.seq == 3)).scalar_one()
        assert default.source is ConsentSource.import_ and default.customer_id == bo.id
        # ... a customer the import created carries the external id; an existing one is untouched
        assert ann.attributes == {"external_id": "shop-42"} and zed.attributes == {}
    # And an ordinary append after the import extends the same chain
    with db.session_scope(settings) as s:
        assert consent.withdraw(s, settings, email="ann@example.com", purpose="newsletter").seq == 6
    assert _verified(settings).ok


def test_many_batches_chain_in_order(settings, tmp_path, monkeypatch):
    # Given batches of 7 rows and a file of 50 rows (one address repeated across batches)
    monkeypatch.setattr(importer, "BATCH_ROWS", 7)
    rows = "".join(f"p{i % 20}@example.com,newsletter,{'granted' if i % 3 else 'withdrawn'},"
                   f"2024-02-01T00:00:{i:02d}Z,,,,,,,\n" for i in range(50))
    progressed = []
    # When imported with a progress callback
    result = importer.import_file(settings, write(tmp_path, rows), progress=progressed.append)
    # Then every row is one event, seq 1..50, reported batch by batch, and the chain and state verify
    assert (result.events, result.customers_created, result.errors) == (50, 20, [])
    assert sum(progressed) == 50 and len(progressed) == 8
    report = _verified(settings)
    assert report.ok and (report.first_seq, report.last_seq) == (1, 50), report.state_mismatches
    with db.session_scope(settings) as s:
        assert s.execute(select(func.count()).select_from(ConsentEvidence)).scalar_one() == 50


def test_back_dated_import_does_not_override_a_later_withdrawal(settings, tmp_path):
    # Given a customer who withdrew in 2026
    with db.session_scope(settings) as s:
        consent.grant(s, settings, email="ann@example.com", purpose="newsletter", source="admin",
                      occurred_at=datetime(2025, 1, 1, tzinfo=UTC))
        consent.withdraw(s, settings, email="ann@example.com", purpose="newsletter",
                         occurred_at=datetime(2026, 1, 1, tzinfo=UTC))
    # When an old tool's 2024 grant is imported
    result = importer.import_file(settings, write(tmp_path, "ann@example.com,newsletter,granted,2024-06-01,,,,,,,\n"))
    # Then it is in the ledger as proof, but the withdrawal still decides
    assert result.events == 1
    with db.session_scope(settings) as s:
        ann = consent.customer_by_email(s, "ann@example.com")
        assert not consent.has_consent(s, settings, ann.id, "newsletter")
    assert _verified(settings).ok


BAD_ROWS = [
    ("nope,newsletter,granted,2024-01-01,,,,,,,", "email", "@-sign"),
    ("a@example.com,nosuch,granted,2024-01-01,,,,,,,", "purpose", "unknown consent purpose"),
    ("a@example.com,newsletter,maybe,2024-01-01,,,,,,,", "action", "granted or withdrawn"),
    ("a@example.com,newsletter,granted,,,,,,,,", "occurred_at", "is empty"),
    ("a@example.com,newsletter,granted,yesterday,,,,,,,", "occurred_at", "ISO 8601"),
    ("a@example.com,newsletter,granted,2999-01-01,,,,,,,", "occurred_at", "in the future"),
    ("a@example.com,newsletter,granted,0001-01-01,,,,,,,", "occurred_at", "before 1990"),
    ("a@example.com,newsletter,granted,2024-01-01,fax,,,,,,", "source", "is not one of"),
    ("a@example.com,newsletter,granted,2024-01-01,,999.1.1.1,,,,,", "ip", "IPv4 or IPv6"),
    ("a@example.com,newsletter,granted,2024-01-01,,,,," + "v" * 51 + ",,", "wording_version", "longer than 50"),
    ("a@example.com,newsletter,withdrawn,2024-01-01,,,,,,2024-01-01,", "confirmed_at", "only a grant"),
    ("a@example.com,newsletter,granted,2024-01-01,,,,,,,,extra", "-", "more than the header"),
]


@pytest.mark.parametrize("row,column,reason", BAD_ROWS, ids=[b[1] + ":" + b[2][:12] for b in BAD_ROWS])
def test_bad_row_is_named_and_good_rows_still_import(settings, tmp_path, row, column, reason):
    # Given one bad row between two good ones
    path = write(tmp_path, "g1@example.com,newsletter,granted,2024-01-01,,,,,,,\n" + row + "\n"
                           "g2@example.com,newsletter,granted,2024-01-01,,,,,,,\n")
    # When imported
    result = importer.import_file(settings, path)
    # Then the bad row is reported by line, column and reason, and the good rows are in a valid chain
    assert len(result.errors) == 1
    error = result.errors[0]
    assert (error.line, error.column) == (3, column) and reason in error.reason, str(error)
    assert result.events == 2 and _verified(settings).ok


def test_strict_imports_nothing_when_a_row_is_bad(settings, tmp_path, monkeypatch):
    # Given batches of 2 rows, so good batches come before the bad row
    monkeypatch.setattr(importer, "BATCH_ROWS", 2)
    body = "".join(f"g{i}@example.com,newsletter,granted,2024-01-01,,,,,,,\n" for i in range(5))
    path = write(tmp_path, body + "bad,newsletter,granted,2024-01-01,,,,,,,\n")
    # When imported with strict
    result = importer.import_file(settings, path, strict=True)
    # Then the bad row is reported and neither events nor customers were stored
    assert result.strict_aborted and [e.line for e in result.errors] == [7]
    assert (result.events, result.customers_created) == (0, 0)
    with db.session_scope(settings) as s:
        assert s.execute(select(func.count()).select_from(ConsentEvent)).scalar_one() == 0
        assert s.execute(select(func.count()).select_from(Customer)).scalar_one() == 0


def test_header_must_name_known_and_required_columns(settings, tmp_path):
    # Given a header with a misspelt column, and one without occurred_at
    misspelt = write(tmp_path, "a@example.com,newsletter,granted,2024-01-01,2024-01-01\n", "a.csv",
                     header="email,purpose,action,occurred_at,confirmd_at\n")
    missing = write(tmp_path, "a@example.com,newsletter,granted\n", "b.csv", header="email,purpose,action\n")
    # When imported, then each is refused at line 1, naming the column, and nothing is stored
    with pytest.raises(ValidationError, match=r"a\.csv: line 1: unknown column 'confirmd_at'"):
        importer.import_file(settings, misspelt)
    with pytest.raises(ValidationError, match=r"b\.csv: line 1: the header must have an 'occurred_at' column"):
        importer.import_file(settings, missing)
    with db.session_scope(settings) as s:
        assert s.execute(select(func.count()).select_from(ConsentEvent)).scalar_one() == 0


def test_cli_reports_rows_and_exit_code(settings, tmp_path):
    # Given a semicolon-separated cp1252 file with one good and one bad row
    path = tmp_path / "c.csv"
    path.write_bytes("email;purpose;action;occurred_at;user_agent\n"
                     "ann@example.com;newsletter;granted;2024-01-01;Caf\u00e9 browser\n"
                     "nope;newsletter;granted;2024-01-01;\n".encode("cp1252"))
    env = {"MAILER_DATABASE_URL": settings.database_url}
    # When imported from the command line
    res = CliRunner().invoke(main, ["consent", "import", str(path), "--delimiter", ";", "--encoding", "cp1252"],
                             env=env)
    # Then the good row is imported, the bad one named, and the exit code says rows were rejected
    assert res.exit_code == 1, res.output
    assert "imported 1 consent events" in res.output and "line 3, column email" in res.output
    verify = CliRunner().invoke(main, ["consent", "verify"], env=env)
    assert verify.exit_code == 0 and "OK" in verify.output
    with db.session_scope(settings) as s:
        assert s.execute(select(ConsentEvidence.user_agent)).scalar_one() == "Caf\u00e9 browser"


def test_free_text_values_hash_as_the_ledger_hashes_them(settings, tmp_path):
    # Given rows whose purpose, wording_id and wording_version need JSON escaping (quotes,
    # backslashes, non-ASCII), an IPv6 address in capitals and a dotted quad
    path = tmp_path / "odd.csv"
    path.write_text(HEADER + '"ann@example.com","restock:SKU-""ü""\\1",granted,2024-01-01,,2001:DB8::1,'
                             '"UA ""quoted""","form ""β"" \\ x","v☃",,\n'
                             'bo@example.com,newsletter,granted,2024-01-02,,192.0.2.7,,,,,\n', encoding="utf-8")
    # When they are imported
    result = importer.import_file(settings, path)
    # Then the chain verifies (verify recomputes every hash with mailer.consent.ledger's canonical form)
    assert result.events == 2 and not result.errors, result.errors
    report = _verified(settings)
    assert report.ok, (report.problem, report.state_mismatches)
    with db.session_scope(settings) as s:
        ev = s.execute(select(ConsentEvent).where(ConsentEvent.seq == 1)).scalar_one()
        assert (ev.purpose, ev.form_id, ev.wording_version) == ('restock:SKU-"ü"\\1', 'form "β" \\ x', "v☃")
        assert ev.hash == consent.chain_hash(ev.prev_hash, consent.event_fields(ev))
        ips = s.execute(select(ConsentEvidence.ip).order_by(ConsentEvidence.event_id)).scalars().all()
    assert ips == ["2001:db8::1", "192.0.2.7"]


def test_progress_counts_bad_rows_too(settings, tmp_path, monkeypatch):
    # Given batches of 2 rows and a file of 5 rows, 2 of them bad
    monkeypatch.setattr(importer, "BATCH_ROWS", 2)
    body = ("a@example.com,newsletter,granted,2024-01-01,,,,,,,\nnope,newsletter,granted,2024-01-01,,,,,,,\n"
            "b@example.com,newsletter,granted,2024-01-01,,,,,,,\nc@example.com,newsletter,maybe,2024-01-01,,,,,,,\n"
            "d@example.com,newsletter,granted,2024-01-01,,,,,,,\n")
    progressed = []
    # When imported with a progress callback (the CLI's bar counts the file's rows)
    result = importer.import_file(settings, write(tmp_path, body), progress=progressed.append)
    # Then the progress covers every row read, good or bad, so the bar reaches its end
    assert (result.events, len(result.errors)) == (3, 2)
    assert sum(progressed) == 5


def test_a_failed_write_stops_the_reader_and_stores_nothing(settings, tmp_path, monkeypatch):
    # Given batches of 3 rows (read ahead by a thread on PostgreSQL) and a writer that fails on the second batch
    import threading

    monkeypatch.setattr(importer, "BATCH_ROWS", 3)
    body = "".join(f"f{i}@example.com,newsletter,granted,2024-01-01,,,,,,,\n" for i in range(20))
    calls = []
    real_write = importer._Writer.write

    def failing_write(self, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise RuntimeError("the database went away")
        real_write(self, rows)

    monkeypatch.setattr(importer._Writer, "write", failing_write)
    # When imported
    with pytest.raises(RuntimeError, match="went away"):
        importer.import_file(settings, write(tmp_path, body))
    # Then the error reaches the caller, no reader thread is left running, and nothing was stored
    assert not [t for t in threading.enumerate() if t.name == "consent-import-reader"]
    with db.session_scope(settings) as s:
        assert s.execute(select(func.count()).select_from(ConsentEvent)).scalar_one() == 0
        assert s.execute(select(func.count()).select_from(Customer)).scalar_one() == 0


def test_a_reader_error_reaches_the_caller(settings, tmp_path, monkeypatch):
    # Given a file whose reading fails after the first batch (a disk error, say)
    monkeypatch.setattr(importer, "BATCH_ROWS", 2)
    body = "".join(f"r{i}@example.com,newsletter,granted,2024-01-01,,,,,,,\n" for i in range(6))
    real_parse = importer.parse_row
    seen = []

    def failing_parse(settings, row, latest):
        seen.append(row)
        if len(seen) == 4:
            raise OSError("read error")
        return real_parse(settings, row, latest)

    monkeypatch.setattr(importer, "parse_row", failing_parse)
    # When imported
    # Then the reader's error is raised to the caller and nothing was stored
    with pytest.raises(OSError, match="read error"):
        importer.import_file(settings, write(tmp_path, body))
    with db.session_scope(settings) as s:
        assert s.execute(select(func.count()).select_from(ConsentEvent)).scalar_one() == 0
