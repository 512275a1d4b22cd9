"""The compliance export: a file that verifies on its own, and fails after any edit."""

from __future__ import annotations

import hashlib
import io
import json
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from mailer import csvsafe, db
from mailer.cli import main
from mailer.consent import export as consent_export
from mailer.consent import ledger as consent
from mailer.consent import verify as consent_verify
from mailer.customers.records import get_or_create
from tests.conftest import make_settings
from tests.consent_support import bulk_chain

MULTILINE = "Yes, send me the newsletter.\nI can unsubscribe at any time, \"really\"; 100% sure."


def _ledger(settings) -> None:
    """Eight events; one wording spans lines and has quotes (CSV quoting), one address is non-ASCII."""
    with db.session_scope(settings) as s:
        people = [get_or_create(s, settings, a) for a in ("ann@example.com", "łucja@example.pl", "kim@example.kr")]
        for i in range(8):
            consent.append(s, settings, customer=people[i % 3], purpose=("newsletter", "loyalty")[i % 2],
                           action=("granted", "withdrawn")[i % 4 == 3], source="signup_form",
                           proof=consent.Proof(ip=f"198.51.100.{i}", user_agent="UA, with comma",
                                               form_id=f"form-{i % 2}", wording=MULTILINE if i % 2 == 0 else None,
                                               wording_version="v2" if i % 2 == 0 else None))


def _export(settings, fmt: str, **filters) -> str:
    out = io.StringIO(newline="")
    with db.session_scope(settings) as s:
        consent_export.export(s, settings, out, fmt=fmt, **filters)
    return out.getvalue()


def _verify(text: str, fmt: str) -> consent_verify.Report:
    return consent_verify.verify_stream(io.BytesIO(text.encode("utf-8")), fmt)


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _record_line(lines: list[str], fmt: str, seq: int) -> int:
    """Index of the physical line that starts the event record with this seq."""
    for i, line in enumerate(lines):
        if fmt == "jsonl" and line.startswith('{"type":"event","seq":%d,' % seq):
            return i
        if fmt == "csv" and line.startswith("event,%d," % seq):
            return i
    raise AssertionError(f"no event line for seq {seq}")


FORMATS = pytest.mark.parametrize("fmt", ["jsonl", "csv"])


@FORMATS
def test_export_verifies_on_its_own_and_carries_every_hashed_field(settings, fmt):
    # Given a ledger
    _ledger(settings)
    # When it is exported
    text = _export(settings, fmt)
    # Then the file verifies with nothing but the file, to the database's head
    report = _verify(text, fmt)
    assert report.ok, report.problem
    assert (report.events, report.first_seq, report.last_seq) == (8, 1, 8)
    with db.session_scope(settings) as s:
        db_report = consent_verify.verify_db(s, settings)
    assert db_report.ok and report.head_hash == db_report.head_hash
    # And every hashed field is present, with the clear evidence next to it
    if fmt == "jsonl":
        events = [json.loads(line) for line in _lines(text) if '"type":"event"' in line]
        assert all(set(consent.HASHED_FIELDS) <= set(e) for e in events)
        assert events[1]["email"] == "łucja@example.pl" and events[0]["user_agent"] == "UA, with comma"
        wording = [json.loads(line) for line in _lines(text) if '"type":"wording"' in line]
        assert [w["wording"] for w in wording] == [MULTILINE]  # written once, not per event


def test_the_export_reads_back_as_csv_rows_with_the_multiline_wording(settings):
    import csv

    _ledger(settings)
    rows = list(csv.DictReader(io.StringIO(_export(settings, "csv"), newline="")))
    assert [r["type"] for r in rows][:2] == ["begin", "wording"] and rows[-1]["type"] == "end"
    assert rows[1]["wording"] == MULTILINE
    assert sum(r["type"] == "event" for r in rows) == 8


@FORMATS
def test_filtered_export_keeps_the_chain_checkable_with_link_records(settings, fmt):
    # Given a ledger
    _ledger(settings)
    # When only loyalty events about one address are exported
    text = _export(settings, fmt, purpose="loyalty", email="łucja@example.pl")
    report = _verify(text, fmt)
    # Then the file verifies; the left-out events are link records
    assert report.ok, report.problem
    assert report.events == 2  # łucja's events are seq 2, 5, 8; the loyalty ones are 2 and 8
    assert report.first_seq == 2 and report.last_seq == 8
    assert report.events + report.links == 7
    # And removing a link record breaks it
    lines = _lines(text)
    link = next(i for i, line in enumerate(lines) if line.startswith(('{"type":"link","seq":4,', "link,4,")))
    bad = _verify("".join(lines[:link] + lines[link + 1:]), fmt)
    assert bad.problem.kind == "removed" and bad.problem.seq == 5


def test_since_and_until_select_by_occurred_at(settings):
    _ledger(settings)
    with db.session_scope(settings) as s:
        from sqlalchemy import select

        from mailer.models import ConsentEvent

        times = list(s.execute(select(ConsentEvent.occurred_at).order_by(ConsentEvent.seq)).scalars())
    text = _export(settings, "jsonl", since=times[3], until=times[6])
    events = [json.loads(line)["seq"] for line in _lines(text) if '"type":"event"' in line]
    assert events == [4, 5, 6]
    assert _verify(text, "jsonl").ok


def _forge(lines: list[str], fmt: str, seq: int) -> str:
    """A well-formed event for ``seq`` linked to seq-1 with a valid hash: a forgery."""
    prev = lines[_record_line(lines, fmt, seq - 1)]
    rec = _parse(prev, fmt)
    fields = dict(rec, seq=seq, subject_hash="e" * 64, purpose="newsletter", action="granted")
    fields["prev_hash"] = rec["hash"]
    fields["hash"] = consent.chain_hash(rec["hash"], fields)
    return consent_export._serialize(fields, fmt)


def _parse(line: str, fmt: str) -> dict:
    if fmt == "jsonl":
        return json.loads(line)
    import csv

    row = next(csv.reader([line]))
    rec = {k: (csvsafe.unescape(v) or None) for k, v in zip(consent_export.CSV_COLUMNS, row)}
    for k in ("seq", "chain_format", "customer_id", "event_id"):
        rec[k] = int(rec[k]) if rec[k] is not None else None
    return rec


def _edit(lines, fmt):
    i = _record_line(lines, fmt, 3)
    lines[i] = lines[i].replace("withdrawn", "granted") if "withdrawn" in lines[i] else \
        lines[i].replace("granted", "withdrawn")
    return lines


def _delete(lines, fmt):
    del lines[_record_line(lines, fmt, 3)]
    return lines


def _insert(lines, fmt):
    i = _record_line(lines, fmt, 3)
    lines.insert(i, _forge(lines, fmt, 3))
    return lines


def _reorder(lines, fmt):
    i, j = _record_line(lines, fmt, 3), _record_line(lines, fmt, 4)
    lines[i], lines[j] = lines[j], lines[i]
    return lines


def _truncate_tail(lines, fmt):
    return lines[:_record_line(lines, fmt, 7)]


def _truncate_keep_end(lines, fmt):
    del lines[_record_line(lines, fmt, 8)]
    return lines


def _edit_begin(lines, fmt):
    i = 1 if fmt == "csv" else 0
    lines[i] = lines[i].replace("exported_at", "exported_At")
    return lines


def _edit_end(lines, fmt):
    lines[-1] = lines[-1].replace('"events":8', '"events":9').replace('""events"":8', '""events"":9')
    return lines


def _append_after_end(lines, fmt):
    return lines + ["\n"]


@FORMATS
@pytest.mark.parametrize("tamper, kind, seq", [
    (_edit, "edited", 3), (_delete, "removed", 4), (_insert, "inserted", 3), (_reorder, "reordered", 4),
    (_truncate_tail, "truncated", None), (_truncate_keep_end, "truncated", None), (_edit_begin, None, None),
    (_edit_end, None, None), (_append_after_end, "inserted", None),
], ids=["edit", "delete", "insert", "reorder", "truncate", "truncate-keep-end", "edit-begin", "edit-end",
        "append-after-end"])
def test_a_tampered_file_fails_naming_what_and_where(settings, fmt, tamper, kind, seq):
    # Given an export that verifies
    _ledger(settings)
    text = _export(settings, fmt)
    assert _verify(text, fmt).ok
    # When the file is tampered with
    bad = "".join(tamper(_lines(text), fmt))
    assert bad != text
    report = _verify(bad, fmt)
    # Then it fails, saying how and where
    assert not report.ok
    if kind is not None:
        assert report.problem.kind == kind, report.problem
    if seq is not None:
        assert report.problem.seq == seq, report.problem
        assert report.problem.line is not None


@FORMATS
def test_an_edited_evidence_field_names_its_event_line_not_the_end(settings, fmt):
    # Given an export that verifies
    _ledger(settings)
    lines = _lines(_export(settings, fmt))
    # When the clear email of one event (evidence, outside the chain hash) is edited in place
    i = _record_line(lines, fmt, 2)
    assert "łucja@example.pl" in lines[i]
    lines[i] = lines[i].replace("łucja@example.pl", "lucja@example.pl")
    report = _verify("".join(lines), fmt)
    # Then verification names that event's line and seq, not the end record
    assert not report.ok
    assert report.problem.kind == "edited" and report.problem.seq == 2, report.problem
    assert report.problem.line == i + 1 != len(lines), report.problem
    assert "line_sha256" in report.problem.message and "begin, wording or link" not in report.problem.message


def test_a_version_2_csv_export_still_verifies(settings):
    """Given a CSV written by export version 2 (no line_sha256 column), when it is verified,
    then it passes; an evidence edit there is still caught (by file_sha256, at the end)."""
    import csv

    _ledger(settings)
    rows = list(csv.reader(io.StringIO(_export(settings, "csv"), newline="")))
    out = io.StringIO(newline="")
    w = csvsafe.writer(out, lineterminator="\n")
    digest = hashlib.sha256()
    for row in rows:
        row = row[:-1]
        if row[0] == "begin":
            info = json.loads(csvsafe.unescape(row[consent_export.CSV_COLUMNS.index("info")]))
            info["version"] = 2
            row[consent_export.CSV_COLUMNS.index("info")] = json.dumps(info, ensure_ascii=False,
                                                                       separators=(",", ":"))
        if row[0] == "end":
            info = json.loads(csvsafe.unescape(row[consent_export.CSV_COLUMNS.index("info")]))
            info["file_sha256"] = digest.hexdigest()
            row[consent_export.CSV_COLUMNS.index("info")] = json.dumps(info, ensure_ascii=False,
                                                                       separators=(",", ":"))
        w.writerow([csvsafe.unescape(c) for c in row])
        digest = hashlib.sha256(out.getvalue().encode("utf-8"))
    report = _verify(out.getvalue(), "csv")
    assert report.ok, report.problem


@pytest.fixture(scope="module")
def small_export(tmp_path_factory) -> dict[str, str]:
    """One small export per format, shared by the any-edit property test."""
    path = tmp_path_factory.mktemp("export") / "m.db"
    url = f"sqlite:///{path}"
    db.upgrade(url)
    settings = make_settings(database_url=url)
    _ledger(settings)
    files = {fmt: _export(settings, fmt) for fmt in ("jsonl", "csv")}
    db.dispose_engines()
    return files


@given(data=st.data())
@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_single_edit_anywhere_in_the_file_fails(small_export, data):
    # Given a verified export
    fmt = data.draw(st.sampled_from(["jsonl", "csv"]))
    raw = small_export[fmt].encode("utf-8")
    # When one byte anywhere is changed, removed or added
    pos = data.draw(st.integers(0, len(raw) - 1))
    how = data.draw(st.sampled_from(["replace", "delete", "insert"]))
    byte = data.draw(st.integers(0x20, 0x7E).map(lambda b: bytes([b])))
    if how == "replace":
        if raw[pos:pos + 1] == byte:
            byte = b"#" if byte != b"#" else b"%"
        bad = raw[:pos] + byte + raw[pos + 1:]
    elif how == "delete":
        bad = raw[:pos] + raw[pos + 1:]
    else:
        bad = raw[:pos] + byte + raw[pos:]
    # Then verification fails (never passes, never crashes)
    report = consent_verify.verify_stream(io.BytesIO(bad), fmt)
    assert not report.ok


def test_cli_export_then_verify_file(settings, tmp_path: Path):
    _ledger(settings)
    env = {"MAILER_DATABASE_URL": settings.database_url, "MAILER_SECRET_KEY": settings.secret_key}
    runner = CliRunner()
    out = tmp_path / "log.csv"
    res = runner.invoke(main, ["consent", "export", "--format", "csv", "-o", str(out)], env=env)
    assert res.exit_code == 0, res.output
    assert "exported 8 events" in res.output and out.exists()
    assert not (tmp_path / "log.csv.partial").exists()
    ok = runner.invoke(main, ["consent", "verify", "--file", str(out)], env={})
    assert ok.exit_code == 0 and "OK" in ok.output
    out.write_text(out.read_text(encoding="utf-8").replace("granted", "withdrawn", 1), encoding="utf-8")
    bad = runner.invoke(main, ["consent", "verify", "--file", str(out)], env={})
    assert bad.exit_code == 1 and "BROKEN" in bad.output
    res = runner.invoke(main, ["consent", "export", "--format", "jsonl", "-o", str(tmp_path / "x.jsonl"),
                               "--since", "yesterday"], env=env)
    assert res.exit_code == 2 and "--since" in res.output


def test_export_memory_stays_flat_as_the_log_grows(tmp_path):
    # Given two ledgers larger than one fetch batch, one four times the size of the other
    peaks = []
    for n in (4_000, 16_000):
        url = f"sqlite:///{tmp_path / f'm{n}.db'}"
        db.upgrade(url)
        settings = make_settings(database_url=url)
        bulk_chain(settings, n)

        class Sink(io.TextIOBase):
            def write(self, s):
                return len(s)

        # When each is exported (to a sink) under tracemalloc
        tracemalloc.start()
        with db.session_scope(settings) as s:
            summary = consent_export.export(s, settings, Sink(), fmt="jsonl")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert summary.events == n
        db.dispose_engines()
    # Then the peak memory does not grow with the number of events (streamed, not collected)
    assert peaks[1] < peaks[0] * 1.5, peaks


field_values = st.one_of(st.none(), st.text(max_size=20), st.integers(-10, 10**12))


@given(fields=st.fixed_dictionaries({k: field_values for k in consent.HASHED_FIELDS}))
@hsettings(max_examples=300, deadline=None)
def test_fast_canonical_is_byte_for_byte_the_reference(fields):
    # The verifier's fast encoder must hash exactly what the ledger hashed
    assert consent_verify.fast_canonical(fields) == consent.canonical(fields)
    assert consent_verify.fast_chain_hash("a" * 64, fields) == consent.chain_hash("a" * 64, fields)
