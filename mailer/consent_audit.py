"""Proving the consent ledger: chain verification (database or file) and the compliance export.

Verification walks the chain in ``seq`` order with a window of four records (the two
before, the one being checked and the one after), so it runs in constant memory and
can name *what* happened at the first break:

* **edited**: an event's content no longer matches its hash, or its hash was rewritten
  and the next event still links to the original;
* **removed**: a gap in ``seq`` or a link that skips events;
* **inserted**: an event the next one does not link to (the next links past it);
* **reordered**: an event appears before the event it links to;
* **truncated**: the file ends early (no end record, or fewer events than it says), or
  the database's current state points at events that are gone.

Export files (``jsonl`` or ``csv``) hold every hashed field of every event plus its
``prev_hash`` and ``hash``, so ``mailer consent verify --file`` needs nothing but the
file.  Layout, one record per line/row:

* ``begin``: format version, filters, the first ``seq`` and the anchor (its ``prev_hash``);
* ``wording``: the exact wording text the first time each ``wording_sha256`` occurs;
* ``event``: a full event (hashed fields, ``prev_hash``, ``hash``, evidence columns);
* ``link``: ``seq``/``prev_hash``/``hash`` only, for events a filter left out, so the
  chain stays checkable across them;
* ``end``: counts, last ``seq`` and the head hash.

A filtered export proves that every included event is unaltered and sits where it
says in the chain; only an unfiltered export proves that nothing was left out.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Callable, Iterator

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from mailer import consent
from mailer.addresses import email_hash, normalize
from mailer.clock import utcnow
from mailer.errors import ChainBroken, ValidationError
from mailer.models import ConsentEvent, ConsentEvidence, ConsentRequest, ConsentState
from mailer.settings import Settings

#: Export file format version (the ``begin`` record's ``version``).
FORMAT_VERSION = 1
FORMAT_NAME = "mailer-consent-log"
#: Rows fetched per round trip while streaming the chain.
STREAM_ROWS = 2000
#: Columns of a CSV export, in order.
CSV_COLUMNS = (("type",) + consent.HASHED_FIELDS
               + ("prev_hash", "hash", "event_id", "customer_id", "email", "ip", "user_agent", "wording", "info"))
_INT_FIELDS = ("seq", "event_id", "customer_id")

#: Kinds of break, in the words the report uses.
EDITED, REMOVED, INSERTED, REORDERED, TRUNCATED, MALFORMED = (
    "edited", "removed", "inserted", "reordered", "truncated", "malformed")


@dataclass(frozen=True)
class Problem:
    """The first break found in a chain."""

    kind: str
    seq: int | None
    message: str
    event_id: int | None = None
    line: int | None = None

    def where(self) -> str:
        parts = [f"seq {self.seq}" if self.seq is not None else None,
                 f"event id {self.event_id}" if self.event_id is not None else None,
                 f"line {self.line}" if self.line is not None else None]
        return ", ".join(p for p in parts if p)


@dataclass
class Report:
    """What a verification found."""

    events: int = 0
    links: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    anchor: str | None = None
    head_hash: str | None = None
    problem: Problem | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def raise_for_problem(self) -> None:
        if self.problem is not None:
            p = self.problem
            raise ChainBroken(f"{p.kind}: {p.message} ({p.where()})", event_id=p.event_id, position=p.seq)


# -- hashing, fast ------------------------------------------------------------------------------
_encode_str = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) uses for str
_SORTED_PREFIXES = tuple((k, ('{"' if i == 0 else ',"') + k + '":')
                         for i, k in enumerate(sorted(consent.HASHED_FIELDS)))


def _json_value(v) -> str:
    if v is None:
        return "null"
    if type(v) is str:
        return _encode_str(v)
    if type(v) is int:
        return str(v)
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


def fast_canonical(fields: dict) -> bytes:
    """Byte-for-byte :func:`mailer.consent.canonical`, without building and sorting a dict.

    Verification recomputes a million of these; a property test holds the two equal.
    """
    return ("".join([p + _json_value(fields.get(k)) for k, p in _SORTED_PREFIXES]) + "}").encode("utf-8")


def fast_chain_hash(prev_hash: str, fields: dict) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + fast_canonical(fields)).hexdigest()


# -- the streaming verifier -----------------------------------------------------------------
class Verifier:
    """Feed records in file/seq order; stops at the first break.

    A record is a dict with the hashed fields, ``prev_hash``, ``hash`` and ``type``
    (``event`` or ``link``), optionally ``event_id``, ``line`` and ``wording``.
    """

    def __init__(self, *, first_seq: int | None = 1, anchor: str | None = consent.GENESIS):
        self.expect_first_seq = first_seq
        self.anchor = anchor
        self.report = Report(anchor=anchor)
        self._pp: dict | None = None
        self._p: dict | None = None
        self._c: dict | None = None
        self.wordings: dict[str, str] = {}

    @property
    def failed(self) -> bool:
        return self.report.problem is not None

    def feed(self, rec: dict) -> bool:
        """Add the next record; False once a break was found."""
        if self.failed:
            return False
        if self._c is not None:
            self._check(self._c, nxt=rec)
            if self.failed:
                return False
        self._pp, self._p, self._c = (self._p, self._c, rec) if self._c is not None else (self._pp, self._p, rec)
        return True

    def finish(self) -> Report:
        if self._c is not None and not self.failed:
            self._check(self._c, nxt=None)
        if not self.failed and self._c is not None:
            self._advance_to(self._c)
        return self.report

    def _advance_to(self, rec: dict) -> None:
        self.report.last_seq = rec["seq"]
        self.report.head_hash = rec["hash"]

    def _fail(self, kind: str, rec: dict, message: str) -> None:
        self.report.problem = Problem(kind, rec.get("seq"), message, event_id=rec.get("event_id"),
                                      line=rec.get("line"))

    def _self_ok(self, rec: dict, seq: int | None = None) -> bool:
        if rec.get("type", "event") == "link":
            return True
        fields = rec if seq is None else dict(rec, seq=seq)
        try:
            return fast_chain_hash(rec["prev_hash"], fields) == rec["hash"]
        except (AttributeError, TypeError, UnicodeEncodeError):
            return False

    def _check(self, c: dict, *, nxt: dict | None) -> None:
        p, pp = self._p, self._pp
        if not isinstance(c.get("seq"), int) or not c.get("hash") or not c.get("prev_hash"):
            self._fail(MALFORMED, c, "record without seq, prev_hash or hash")
            return
        self_ok = self._self_ok(c)
        if p is None:
            expect_prev = self.anchor if self.anchor is not None else c["prev_hash"]
            link_ok = c["prev_hash"] == expect_prev
            seq_ok = self.expect_first_seq is None or c["seq"] == self.expect_first_seq
        else:
            link_ok = c["prev_hash"] == p["hash"]
            seq_ok = c["seq"] == p["seq"] + 1
        if self_ok and link_ok and seq_ok:
            self._accept(c)
            return
        # -- diagnosis: name the first event that was changed, and how --------------------
        if nxt is not None and c["prev_hash"] == nxt.get("hash"):
            self._fail(REORDERED, c, f"seq {c['seq']} comes before seq {nxt.get('seq')}, the event it follows")
            return
        if p is not None and c["prev_hash"] == (pp["hash"] if pp is not None else self.anchor):
            self._fail(INSERTED, p, f"seq {p['seq']} is not part of the chain: seq {c['seq']} links past it "
                                    f"to {'seq ' + str(pp['seq']) if pp else 'the start'}")
            return
        if p is not None and c["seq"] <= p["seq"] and self_ok:
            self._fail(REORDERED, c, f"seq {c['seq']} appears after seq {p['seq']}")
            return
        if not self_ok:
            if p is not None and not link_ok and self._self_ok(c, seq=p["seq"] + 2) or \
                    (p is None and self.expect_first_seq is not None and c["seq"] == self.expect_first_seq
                     and not link_ok and self._self_ok(c, seq=c["seq"] + 1)):
                self._fail(REMOVED, c, f"an event before seq {c['seq']} was removed and the later ones renumbered")
            elif p is not None and link_ok is False and self._self_ok(c, seq=c["seq"] - 1):
                self._fail(INSERTED, c, f"an event was inserted before seq {c['seq']} and the later ones "
                                        "renumbered")
            else:
                self._fail(EDITED, c, f"seq {c['seq']}: the content no longer matches its hash")
            return
        if p is None:
            if not seq_ok and c["seq"] > (self.expect_first_seq or 0):
                self._fail(REMOVED, c, f"the chain starts at seq {c['seq']}, seq {self.expect_first_seq}.."
                                       f"{c['seq'] - 1} are missing")
            else:
                self._fail(EDITED, c, f"seq {c['seq']} does not link to the start of the chain")
            return
        if c["seq"] > p["seq"] + 1:
            gap = (f"seq {p['seq'] + 1}" if c["seq"] == p["seq"] + 2 else f"seq {p['seq'] + 1}..{c['seq'] - 1}")
            self._fail(REMOVED, c, f"{gap} missing before seq {c['seq']}")
            return
        if not link_ok:
            self._fail(EDITED, p, f"seq {p['seq']} was changed and its hash rewritten: seq {c['seq']} still "
                                  "links to the original")
            return
        self._fail(REORDERED, c, f"seq {c['seq']} follows seq {p['seq']}")

    def _accept(self, c: dict) -> None:
        r = self.report
        if r.first_seq is None:
            r.first_seq = c["seq"]
        if c.get("type", "event") == "link":
            r.links += 1
            return
        r.events += 1
        sha = c.get("wording_sha256")
        text_ = c.get("wording")
        if text_ is None and sha is not None:
            text_ = self.wordings.get(sha)
        if text_ is not None and sha is not None and hashlib.sha256(text_.encode("utf-8")).hexdigest() != sha:
            self._fail(EDITED, c, f"seq {c['seq']}: the wording text does not match its wording_sha256")


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
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


#: PostgreSQL formats a timestamptz exactly as consent._iso does (UTC, microseconds, +00:00).
_PG_ISO = 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'


def _raw_ts(col, dialect: str):
    """Timestamps as text in the chain's ISO form, without per-value work in Python.

    SQLite stores UTC text already (``_iso_fast`` only adds the T and offset); PostgreSQL
    formats it with to_char.  Parsing three datetimes per row in Python cost a quarter
    of the export's time.
    """
    from sqlalchemy import String, func, literal_column, type_coerce

    if dialect == "sqlite":
        return type_coerce(col, String()).label(col.key)
    if dialect == "postgresql":
        utc = literal_column(f"({col.table.name}.{col.name} AT TIME ZONE 'UTC')")
        return type_coerce(func.to_char(utc, _PG_ISO), String()).label(col.key)
    return col


def _event_columns(dialect: str, *, evidence: bool):
    t = ConsentEvent.__table__.c
    from sqlalchemy import String, type_coerce

    cols = [t.id.label("event_id"), t.seq, t.customer_id, t.subject_hash, t.purpose,
            type_coerce(t.action, String()).label("action"), type_coerce(t.basis, String()).label("basis"),
            type_coerce(t.source, String()).label("source"),
            _raw_ts(t.occurred_at, dialect), _raw_ts(t.recorded_at, dialect), t.form_id, t.wording_sha256,
            t.wording_version, _raw_ts(t.confirmed_at, dialect), t.ip_digest, t.user_agent_digest, t.prev_hash,
            t.hash, t.wording]
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
     *clear) = row
    rec = {"type": "event", "seq": seq, "subject_hash": subject_hash, "purpose": purpose, "action": action,
           "basis": basis, "source": source, "occurred_at": _iso_fast(occurred_at),
           "recorded_at": _iso_fast(recorded_at), "form_id": form_id, "wording_sha256": wording_sha256,
           "wording_version": wording_version, "confirmed_at": _iso_fast(confirmed_at), "ip_digest": ip_digest,
           "user_agent_digest": user_agent_digest, "prev_hash": prev_hash, "hash": hash_, "event_id": event_id,
           "customer_id": customer_id}
    if evidence:
        rec["email"], rec["ip"], rec["user_agent"] = clear
    return rec


def verify_db(session: Session, settings: Settings, *, progress: Callable[[int], None] | None = None) -> Report:
    """Verify the whole chain in the database, then cross-check the current state against it."""
    dialect = session.get_bind().dialect.name
    t = ConsentEvent.__table__
    verifier = Verifier()
    n = 0
    # Ordered by seq (its unique index), streamed; the wording text is checked against its hash.
    for row in _stream(session, select(*_event_columns(dialect, evidence=False)).order_by(t.c.seq)):
        rec = _record(row, evidence=False)
        rec["wording"] = row[18]
        if not verifier.feed(rec):
            break
        n += 1
        if progress and n % STREAM_ROWS == 0:
            progress(STREAM_ROWS)
    report = verifier.finish()
    if progress:
        progress(n % STREAM_ROWS)
    if report.ok:
        _check_references(session, report)
    return report


def _check_references(session: Session, report: Report) -> None:
    """Events the current state or a confirmed request points at must still exist (tail truncation)."""
    ev = ConsentEvent.__table__.c
    for table, label in ((ConsentState.__table__, "consent_state"), (ConsentRequest.__table__, "consent_requests")):
        # Anti-join: references to events that are gone. Empty unless rows were deleted.
        missing = session.execute(
            select(table.c.event_id).select_from(table.outerjoin(ConsentEvent.__table__, ev.id == table.c.event_id))
            .where(table.c.event_id.is_not(None), ev.id.is_(None)).order_by(table.c.event_id).limit(1)).first()
        if missing is not None:
            report.problem = Problem(TRUNCATED, None, f"{label} refers to event id {missing[0]}, which is no longer "
                                                      "in the chain (events were deleted)", event_id=missing[0])
            return


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
            self.csv = csv.writer(self, lineterminator="\n")
            self.csv.writerow(CSV_COLUMNS)
        elif fmt != "jsonl":
            raise ValidationError(f"unknown export format {fmt!r}; use csv or jsonl", field="--format")

    def write(self, text_: str) -> None:  # the file-like side used by csv.writer
        self.digest.update(text_.encode("utf-8"))
        self.out.write(text_)

    def record(self, rec: dict) -> None:
        if self.fmt == "csv":
            self.csv.writerow(_csv_row(rec))
        else:
            self.write(_JSON.encode(rec) + "\n")


#: One encoder object for every JSON line (no per-call setup); same output as json.dumps.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _csv_row(rec: dict) -> list:
    row = []
    for col in CSV_COLUMNS:
        v = rec.get(col)
        if col == "info" and v is not None:
            v = _JSON.encode(v)
        row.append("" if v is None else v)
    return row


def _serialize(rec: dict, fmt: str) -> str:
    """One record exactly as the export writes it (used to re-check the end record)."""
    if fmt == "jsonl":
        return _JSON.encode(rec) + "\n"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(_csv_row(rec))
    return buf.getvalue()


def _parse_when(value: datetime | str | None, name: str) -> datetime | None:
    if value is None or isinstance(value, datetime):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"{name}: {value!r} is not an ISO 8601 date or date-time (e.g. 2026-01-31)",
                              field=name) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


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
    subject = email_hash(normalize(email), settings.effective_hash_salt) if email else None
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


# -- reading an export file -----------------------------------------------------------------------
class _Lines:
    """Decoded lines of a binary file, hashing as it goes; remembers the digest before each line."""

    def __init__(self, fh: IO[bytes]):
        self.fh = fh
        self.digest = hashlib.sha256()
        self.before_line = self.digest.copy()
        self.line = ""
        self.bad: str | None = None

    def __iter__(self) -> Iterator[str]:
        for raw in self.fh:
            self.before_line = self.digest.copy()
            self.digest.update(raw)
            try:
                self.line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.bad = f"not UTF-8 ({exc.reason} at byte {exc.start} of the line)"
                self.line = raw.decode("utf-8", "replace")
            yield self.line


def _read_jsonl(lines: _Lines) -> Iterator[tuple[int, dict]]:
    for line_no, line in enumerate(lines, start=1):
        if lines.bad:
            yield line_no, {"type": "__bad__", "error": lines.bad}
            return
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            yield line_no, {"type": "__bad__", "error": f"not JSON ({exc.msg} at column {exc.colno})"}
            return
        if not isinstance(rec, dict):
            yield line_no, {"type": "__bad__", "error": "not a JSON object"}
            return
        yield line_no, rec


def _read_csv(lines: _Lines) -> Iterator[tuple[int, dict]]:
    reader = csv.reader(iter(lines), strict=True)
    try:
        header = next(reader, None)
        if header is None or tuple(header) != CSV_COLUMNS:
            yield 1, {"type": "__bad__", "error": f"the header row is not the export's "
                                                  f"({', '.join(CSV_COLUMNS[:4])}, ...)"}
            return
        for row in reader:
            line_no = reader.line_num
            if lines.bad:
                yield line_no, {"type": "__bad__", "error": lines.bad}
                return
            if len(row) != len(CSV_COLUMNS):
                yield line_no, {"type": "__bad__", "error": f"{len(row)} columns, expected {len(CSV_COLUMNS)}"}
                return
            rec: dict = {}
            for col, v in zip(CSV_COLUMNS, row):
                if v == "":
                    rec[col] = None
                elif col in _INT_FIELDS:
                    try:
                        rec[col] = int(v)
                    except ValueError:
                        rec[col] = v
                elif col == "info":
                    try:
                        rec[col] = json.loads(v)
                    except json.JSONDecodeError:
                        rec[col] = {"__bad__": True}
                else:
                    rec[col] = v
            yield line_no, rec
    except csv.Error as exc:
        yield reader.line_num, {"type": "__bad__", "error": f"CSV syntax: {exc}"}


def detect_format(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(64).lstrip()
    return "jsonl" if head.startswith(b"{") else "csv"


def verify_file(path: Path | str, *, progress: Callable[[int], None] | None = None) -> Report:
    """Re-verify an export file with nothing but the file."""
    path = Path(path)
    fmt = detect_format(path)
    with open(path, "rb") as fh:
        return verify_stream(fh, fmt, progress=progress)


def verify_stream(fh: IO[bytes], fmt: str, *, progress: Callable[[int], None] | None = None) -> Report:
    """Verify an export read from a binary stream (``jsonl`` or ``csv``)."""
    lines = _Lines(fh)
    records = _read_jsonl(lines) if fmt == "jsonl" else _read_csv(lines)
    verifier: Verifier | None = None
    end: dict | None = None
    end_line = None
    sealed_digest = None
    n = 0
    for line_no, rec in records:
        n += 1
        if progress and n % STREAM_ROWS == 0:
            progress(STREAM_ROWS)
        kind = rec.get("type")
        if end is not None:
            return _bad(line_no, "data after the end record (lines appended?)", kind=INSERTED)
        if kind == "__bad__":
            return _bad(line_no, rec["error"])
        if verifier is None:
            if kind != "begin":
                return _bad(line_no, "the file does not start with its begin record (lines removed at the start?)",
                            kind=TRUNCATED)
            info = rec.get("info") or {}
            if info.get("format") != FORMAT_NAME:
                return _bad(line_no, f"not a {FORMAT_NAME} export (begin record edited?)")
            first_seq = rec.get("seq")
            verifier = Verifier(first_seq=first_seq, anchor=rec.get("prev_hash"))
            if first_seq == 1 and rec.get("prev_hash") != consent.GENESIS:
                return _bad(line_no, "the begin record's anchor is not the chain's genesis", kind=EDITED)
            unfiltered = not any((info.get("filters") or {}).values())
            if unfiltered and first_seq not in (1, None):
                return _bad(line_no, f"an unfiltered export must start at seq 1, this one starts at seq {first_seq} "
                                     "(events removed at the start?)", kind=TRUNCATED)
            continue
        if kind == "end":
            end, end_line, sealed_digest = rec, line_no, lines.before_line.hexdigest()
            if _serialize(rec, fmt) != lines.line:
                return _bad(line_no, "the end record was edited (it is not as the export wrote it)", kind=EDITED)
            continue
        if kind == "wording":
            sha, text_ = rec.get("wording_sha256"), rec.get("wording")
            if not sha or text_ is None or hashlib.sha256(text_.encode("utf-8")).hexdigest() != sha:
                return _bad(line_no, "a wording record's text does not match its wording_sha256", kind=EDITED)
            verifier.wordings[sha] = text_
            continue
        if kind not in ("event", "link"):
            return _bad(line_no, f"unknown record type {kind!r}")
        rec["line"] = line_no
        if not verifier.feed(rec):
            break
    if progress:
        progress(n % STREAM_ROWS)
    if verifier is None:
        return _bad(1, "the file is empty (no begin record)", kind=TRUNCATED)
    report = verifier.finish()
    if not report.ok:
        return report
    if end is None:
        report.problem = Problem(TRUNCATED, report.last_seq, "the file ends without its end record "
                                 "(it was cut short)", line=n)
        return report
    for _ in fh:  # bytes after the end record, e.g. blank lines appended
        report.problem = Problem(INSERTED, None, "data after the end record", line=end_line + 1)
        return report
    info = end.get("info") or {}
    claimed = (info.get("events"), info.get("links"), info.get("last_seq"), info.get("head_hash"))
    actual = (report.events, report.links, report.last_seq, report.head_hash)
    if claimed != actual or end.get("hash") != report.head_hash or end.get("seq") != report.last_seq:
        report.problem = Problem(TRUNCATED, report.last_seq,
                                 f"the end record announces {info.get('events')} events and {info.get('links')} "
                                 f"links up to seq {info.get('last_seq')} (head {str(info.get('head_hash'))[:12]}…), "
                                 f"the file holds {report.events} and {report.links} up to seq {report.last_seq}",
                                 line=end_line)
        return report
    if info.get("file_sha256") != sealed_digest:
        report.problem = Problem(EDITED, None, "the events verify, but other bytes before the end record changed "
                                 "(begin, wording or link records, or formatting): file_sha256 does not match",
                                 line=end_line)
    return report


def _bad(line: int, message: str, *, kind: str = MALFORMED) -> Report:
    report = Report()
    report.problem = Problem(kind, None, message, line=line)
    return report

