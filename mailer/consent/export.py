"""The compliance export: streaming the consent ledger to CSV or JSONL with its chain hashes.

Also owns the file format and reading the chain out of the database in ``seq`` order
(shared with verification in :mod:`mailer.consent_verify`).

Export files (``jsonl`` or ``csv``) hold every hashed field of every event plus its
``prev_hash`` and ``hash``, so ``mailer consent verify --file`` needs nothing but the
file.  Layout, one record per line/row:

* ``begin``: format version, filters, the first ``seq``, the anchor (its ``prev_hash``),
  the hashed fields of each chain format and, in CSV, the cell ``escaping``;
* ``wording``: the exact wording text the first time each ``wording_sha256`` occurs;
* ``event``: a full event (hashed fields, ``prev_hash``, ``hash``, evidence columns);
* ``link``: ``seq``/``prev_hash``/``hash`` only, for events a filter left out, so the
  chain stays checkable across them;
* ``end``: counts, last ``seq`` and the head hash.

Each event record carries its ``chain_format`` (1 or 2; see :mod:`mailer.consent`);
files written before format 2 have no such field and verify as format 1.

CSV cells are spreadsheet-safe (:mod:`mailer.csvsafe`): a cell starting with ``=``, ``+``,
``-``, ``@``, a tab, a CR or a quote is written with a leading ``'``; the begin record
names the escaping (``"escaping": "owasp-leading-quote"``) and the verifier strips it
before hashing.  CSV files of export version 1 had no escaping and verify as written.

A filtered export proves that every included event is unaltered and sits where it
says in the chain; only an unfiltered export proves that nothing was left out.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO

from sqlalchemy import String, and_, func, literal_column, select, type_coerce
from sqlalchemy.orm import Session

from mailer import csvsafe
from mailer.addresses import email_hash, normalize
from mailer.clock import utcnow
from mailer.consent import ledger as consent
from mailer.errors import ValidationError
from mailer.instance_secrets import address_hash_salt
from mailer.models import ConsentEvent, ConsentEvidence
from mailer.settings import Settings

#: Export file format version (the ``begin`` record's ``version``): 2 adds chain_format
#: per event and spreadsheet-safe CSV cells; 3 adds ``line_sha256`` to the begin, wording
#: and event records, so an edit outside the chain's hashed fields names its line.
FORMAT_VERSION = 3
#: The first export version whose begin, wording and event records carry ``line_sha256``.
LINE_HASH_VERSION = 3
#: Record types that carry ``line_sha256`` (link and end records are fully covered by the chain
#: and by the end record's own re-check).
LINE_HASHED_TYPES = ("begin", "wording", "event")
FORMAT_NAME = "mailer-consent-log"
#: Rows fetched per round trip while streaming the chain.
STREAM_ROWS = 2000
#: Columns of a CSV export, in order.
CSV_COLUMNS = (("type",) + consent.HASHED_FIELDS
               + ("prev_hash", "hash", "event_id", "customer_id", "email", "ip", "user_agent", "wording", "info",
                  "chain_format", "line_sha256"))
#: Columns of a version-2 CSV export (before line hashes), still accepted by the verifier.
CSV_COLUMNS_V2 = CSV_COLUMNS[:-1]
#: Columns of a version-1 CSV export (before chain format 2), still accepted by the verifier.
CSV_COLUMNS_V1 = CSV_COLUMNS_V2[:-1]


def line_digest(rec: dict) -> str:
    """``line_sha256`` of a record: SHA-256 of the canonical JSON of its non-empty values
    (``line_sha256`` itself left out), the same for a JSONL line and a CSV row."""
    fields = {k: v for k, v in rec.items() if k not in ("line_sha256", "line") and v not in (None, "")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
                          .encode("utf-8")).hexdigest()


# -- reading the chain from the database ------------------------------------------------------
def _iso_fast(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value[10] == "T":  # PostgreSQL, already formatted by to_char
            return value
        # SQLite raw storage "YYYY-MM-DD HH:MM:SS.ffffff" (UTC)
        if len(value) == 19:
            value += ".000000"
        return value.replace(" ", "T", 1) + "+00:00"
    return value.astimezone(UTC).isoformat(timespec="microseconds")


#: PostgreSQL formats a timestamptz exactly as consent._iso does (UTC, microseconds, +00:00).
_PG_ISO = 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'


def _raw_ts(col, dialect: str):
    """Timestamps as text in the chain's ISO form, without per-value work in Python.

    SQLite stores UTC text already (``_iso_fast`` only adds the T and offset); PostgreSQL
    formats it with to_char.  Parsing three datetimes per row in Python cost a quarter
    of the export's time.
    """
    if dialect == "sqlite":
        return type_coerce(col, String()).label(col.key)
    if dialect == "postgresql":
        utc = literal_column(f"({col.table.name}.{col.name} AT TIME ZONE 'UTC')")
        return type_coerce(func.to_char(utc, _PG_ISO), String()).label(col.key)
    return col


def _event_columns(dialect: str, *, evidence: bool):
    t = ConsentEvent.__table__.c

    cols = [t.id.label("event_id"), t.seq, t.customer_id, t.subject_hash, t.purpose,
            type_coerce(t.action, String()).label("action"), type_coerce(t.basis, String()).label("basis"),
            type_coerce(t.source, String()).label("source"),
            _raw_ts(t.occurred_at, dialect), _raw_ts(t.recorded_at, dialect), t.form_id, t.wording_sha256,
            t.wording_version, _raw_ts(t.confirmed_at, dialect), t.ip_digest, t.user_agent_digest, t.prev_hash,
            t.hash, t.wording, t.chain_format]
    if evidence:
        e = ConsentEvidence.__table__.c
        cols += [e.email, e.ip, e.user_agent]
    return cols


def _stream(session: Session, stmt) -> Iterator:
    # A server-side cursor on PostgreSQL (stream_results) and fetchmany batches everywhere:
    # the chain is never held in memory.
    result = session.execute(stmt.execution_options(stream_results=True, yield_per=STREAM_ROWS))
    for part in result.partitions(STREAM_ROWS):
        yield from part


def _record(row, *, evidence: bool) -> dict:
    # Positional unpacking in _event_columns order: attribute access on a Row costs about
    # a microsecond per field, which was 40% of the export's time.
    (event_id, seq, customer_id, subject_hash, purpose, action, basis, source, occurred_at, recorded_at, form_id,
     wording_sha256, wording_version, confirmed_at, ip_digest, user_agent_digest, prev_hash, hash_, _wording,
     chain_format, *clear) = row
    rec = {"type": "event", "seq": seq, "subject_hash": subject_hash, "purpose": purpose, "action": action,
           "basis": basis, "source": source, "occurred_at": _iso_fast(occurred_at),
           "recorded_at": _iso_fast(recorded_at), "form_id": form_id, "wording_sha256": wording_sha256,
           "wording_version": wording_version, "confirmed_at": _iso_fast(confirmed_at), "ip_digest": ip_digest,
           "user_agent_digest": user_agent_digest, "prev_hash": prev_hash, "hash": hash_, "event_id": event_id,
           "customer_id": customer_id, "chain_format": chain_format}
    if evidence:
        rec["email"], rec["ip"], rec["user_agent"] = clear
    return rec


# -- export -------------------------------------------------------------------------------------
@dataclass
class ExportSummary:
    events: int = 0
    links: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head_hash: str | None = None


class _Writer:
    """Writes records as JSON lines or CSV rows, hashing every byte for the end record's file_sha256."""

    def __init__(self, out: IO[str], fmt: str):
        self.out = out
        self.fmt = fmt
        self.digest = hashlib.sha256()
        if fmt == "csv":
            self.csv = csvsafe.writer(self, lineterminator="\n")
            self.csv.writerow(CSV_COLUMNS)
        elif fmt != "jsonl":
            raise ValidationError(f"unknown export format {fmt!r}; use csv or jsonl", field="--format")

    def write(self, text_: str) -> None:  # the file-like side used by csv.writer
        self.digest.update(text_.encode("utf-8"))
        self.out.write(text_)

    def record(self, rec: dict) -> None:
        if rec["type"] in LINE_HASHED_TYPES:
            rec["line_sha256"] = line_digest(rec)
        if self.fmt == "csv":
            self.csv.writerow(_csv_row(rec))
        else:
            self.write(_JSON.encode(rec) + "\n")


#: One encoder object for every JSON line (no per-call setup); same output as json.dumps.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _csv_row(rec: dict, columns: tuple[str, ...] = CSV_COLUMNS) -> list:
    row = []
    for col in columns:
        v = rec.get(col)
        if col == "info" and v is not None:
            v = _JSON.encode(v)
        row.append("" if v is None else v)
    return row


def _serialize(rec: dict, fmt: str, columns: tuple[str, ...] = CSV_COLUMNS) -> str:
    """One record exactly as the export writes it (used to re-check the end record);
    ``columns``: the CSV header of the file being checked (older versions have fewer)."""
    if fmt == "jsonl":
        return _JSON.encode(rec) + "\n"
    buf = io.StringIO()
    csvsafe.writer(buf, lineterminator="\n").writerow(_csv_row(rec, columns))
    return buf.getvalue()


def _parse_when(value: datetime | str | None, name: str) -> datetime | None:
    if value is None or isinstance(value, datetime):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"{name}: {value!r} is not an ISO 8601 date or date-time (e.g. 2026-01-31)",
                              field=name) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def export(session: Session, settings: Settings, out: IO[str], *, fmt: str = "jsonl",
           since: datetime | str | None = None, until: datetime | str | None = None, purpose: str | None = None,
           email: str | None = None, evidence: bool = True,
           progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None
           ) -> ExportSummary:
    """Stream the ledger to ``out`` with its chain hashes (constant memory).

    ``since``/``until`` filter on ``occurred_at`` (since inclusive, until exclusive);
    ``purpose`` and ``email`` narrow further.  Events left out by a filter are written
    as ``link`` records so the file still verifies on its own.
    """
    since, until = _parse_when(since, "--since"), _parse_when(until, "--until")
    subject = email_hash(normalize(email), address_hash_salt(settings)) if email else None
    t = ConsentEvent.__table__.c
    conds = []
    if since is not None:
        conds.append(t.occurred_at >= since)
    if until is not None:
        conds.append(t.occurred_at < until)
    if purpose:
        conds.append(t.purpose == purpose)
    if subject:
        conds.append(t.subject_hash == subject)
    head = session.execute(select(t.seq, t.hash).order_by(t.seq.desc()).limit(1)).first()
    head_seq = head.seq if head else 0
    # Where the file starts: seq 1 without filters, else the first matching event (one
    # aggregate over the matching rows; ix_consent_events_occurred_at serves --since).
    first = 1 if not conds else session.execute(select(func.min(t.seq)).where(and_(*conds))).scalar()
    dialect = session.get_bind().dialect.name
    w = _Writer(out, fmt)
    summary = ExportSummary()
    filters = {"since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
               "purpose": purpose, "email_hash": subject}
    if first is None or head_seq == 0:
        anchor = None
        first_seq = None
    else:
        anchor = session.execute(select(t.prev_hash).where(t.seq == first)).scalar()
        first_seq = first
    w.record({"type": "begin", "seq": first_seq, "prev_hash": anchor, "info": {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "exported_at": consent._iso(utcnow()),
        "hashed_fields": list(consent.HASHED_FIELDS), "hash": "sha256(prev_hash || canonical_json(hashed fields))",
        "chain_formats": {str(k): list(v) for k, v in consent.CHAIN_FORMATS.items()},
        **({"escaping": csvsafe.ESCAPING} if fmt == "csv" else {}),
        "filters": filters, "head_seq": head_seq}})
    if first_seq is not None:
        if on_total:
            on_total(head_seq - first_seq + 1)
        cols = _event_columns(dialect, evidence=evidence)
        base = ConsentEvent.__table__
        if evidence:
            base = base.outerjoin(ConsentEvidence.__table__, ConsentEvidence.__table__.c.event_id == t.id)
        # One pass in seq order over [first, head] (the unique seq index); events appended
        # meanwhile are outside the range, so the file ends at the head it announced.
        stmt = select(*cols).select_from(base).where(t.seq >= first_seq, t.seq <= head_seq).order_by(t.seq)
        since_s, until_s = (_iso_fast(since) if since else None), (_iso_fast(until) if until else None)
        seen_wordings: set[str] = set()
        last = None
        n = 0
        for row in _stream(session, stmt):
            rec = _record(row, evidence=evidence)
            occurred = rec["occurred_at"]
            match = ((purpose is None or rec["purpose"] == purpose) and (subject is None or rec["subject_hash"] == subject)
                     # ISO UTC strings in one fixed layout compare like the instants they name.
                     and (since_s is None or occurred >= since_s) and (until_s is None or occurred < until_s))
            if match:
                sha = rec["wording_sha256"]
                if sha is not None and sha not in seen_wordings and row[18] is not None:
                    seen_wordings.add(sha)
                    w.record({"type": "wording", "wording_sha256": sha, "wording_version": rec["wording_version"],
                              "wording": row[18]})
                w.record(rec)
                summary.events += 1
            else:
                w.record({"type": "link", "seq": rec["seq"], "prev_hash": rec["prev_hash"], "hash": rec["hash"]})
                summary.links += 1
            last = rec
            n += 1
            if progress and n % STREAM_ROWS == 0:
                progress(STREAM_ROWS)
        if progress:
            progress(n % STREAM_ROWS)
        if last is not None:
            summary.first_seq, summary.last_seq, summary.head_hash = first_seq, last["seq"], last["hash"]
    # The end record seals the file: counts, head, and a SHA-256 of every byte before it,
    # so an edit anywhere (begin, wording or link records, formatting) is noticed too.
    w.record({"type": "end", "seq": summary.last_seq, "hash": summary.head_hash, "info": {
        "events": summary.events, "links": summary.links, "first_seq": summary.first_seq,
        "last_seq": summary.last_seq, "head_hash": summary.head_hash, "file_sha256": w.digest.hexdigest()}})
    return summary
