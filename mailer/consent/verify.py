"""Proving the consent ledger: hash-chain verification, in the database or in an export file.

Verification walks the chain in ``seq`` order with a window of four records (the two
before, the one being checked and the one after), so it runs in constant memory and
can name *what* happened at the first break:

* **edited**: an event's content no longer matches its hash, or its hash was rewritten
  and the next event still links to the original;
* **removed**: a gap in ``seq`` or a link that skips events;
* **inserted**: an event the next one does not link to (the next links past it);
* **reordered**: an event appears before the event it links to;
* **truncated**: the file ends early (no end record, or fewer events than it says), or
  the database's current state points at events that are gone;
* **downgraded**: a format-1 event after a format-2 one, or after the recorded v2 boundary.

The report lists the chain format of each part of the chain (``formats``).  In the
database, :func:`verify_db` then replays the events into the state they imply (the
latest event per customer and purpose) and compares it row by row with
``consent_state``, naming every (customer, purpose) that disagrees.

The export file layout, and the streaming of the chain out of the database, live in
:mod:`mailer.consent_export`.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from sqlalchemy import and_, func, literal, or_, select, union_all
from sqlalchemy.orm import Session

from mailer import csvsafe
from mailer.consent import ledger as consent
from mailer.consent.export import (
    CSV_COLUMNS,
    CSV_COLUMNS_V1,
    CSV_COLUMNS_V2,
    FORMAT_NAME,
    LINE_HASH_VERSION,
    LINE_HASHED_TYPES,
    STREAM_ROWS,
    _event_columns,
    _record,
    _serialize,
    _stream,
    line_digest,
)
from mailer.errors import ChainBroken
from mailer.models import ConsentAction, ConsentChainFormat, ConsentEvent, ConsentRequest, ConsentState
from mailer.settings import Settings

_INT_FIELDS = ("seq", "event_id", "customer_id", "chain_format")

#: Kinds of break, in the words the report uses.
EDITED, REMOVED, INSERTED, REORDERED, TRUNCATED, MALFORMED, DOWNGRADED = (
    "edited", "removed", "inserted", "reordered", "truncated", "malformed", "downgraded")

#: Kinds of disagreement between consent_state and the state the events imply.
STATE_MISSING, STATE_EXTRA, STATE_WRONG_STATUS, STATE_WRONG_EVENT = (
    "missing row", "extra row", "wrong status", "wrong event")


@dataclass(frozen=True)
class StateMismatch:
    """One (customer, purpose) whose consent_state row disagrees with the ledger."""

    customer_id: int
    purpose: str
    kind: str
    detail: str


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
    #: Parts of the chain by format: [chain_format, first seq, last seq], in chain order.
    formats: list[list[int]] = field(default_factory=list)
    #: (customer, purpose) pairs whose consent_state disagrees with the events (database only).
    state_mismatches: list[StateMismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None and not self.state_mismatches

    def formats_text(self) -> str:
        """E.g. ``events 1–120: format v1; 121–140: format v2``."""
        parts = [f"{lo}–{hi}: format v{fmt}" if lo != hi else f"{lo}: format v{fmt}" for fmt, lo, hi in self.formats]
        return ("events " + "; ".join(parts)) if parts else "no events"

    def raise_for_problem(self) -> None:
        if self.problem is not None:
            p = self.problem
            raise ChainBroken(f"{p.kind}: {p.message} ({p.where()})", event_id=p.event_id, position=p.seq)


# -- hashing, fast ------------------------------------------------------------------------------
_encode_str = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) uses for str
_SORTED_PREFIXES = {fmt: tuple((k, ('{"' if i == 0 else ',"') + k + '":') for i, k in enumerate(sorted(names)))
                    for fmt, names in consent.CHAIN_FORMATS.items()}


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
    prefixes = _SORTED_PREFIXES[fields.get("chain_format") or 1]
    return ("".join([p + _json_value(fields.get(k)) for k, p in prefixes]) + "}").encode("utf-8")


def fast_chain_hash(prev_hash: str, fields: dict) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + fast_canonical(fields)).hexdigest()


# -- the streaming verifier -----------------------------------------------------------------
class Verifier:
    """Feed records in file/seq order; stops at the first break.

    A record is a dict with the hashed fields, ``prev_hash``, ``hash`` and ``type``
    (``event`` or ``link``), optionally ``event_id``, ``line`` and ``wording``.
    """

    def __init__(self, *, first_seq: int | None = 1, anchor: str | None = consent.GENESIS,
                 v2_from_seq: int | None = None):
        self.expect_first_seq = first_seq
        #: The recorded start of chain format 2 (database), if known.
        self.v2_from_seq = v2_from_seq
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
        except (AttributeError, TypeError, UnicodeEncodeError, KeyError):
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
        fmt = c.get("chain_format") or 1
        if r.formats and fmt < r.formats[-1][0]:
            self._fail(DOWNGRADED, c, f"seq {c['seq']} is chain format v{fmt} after format v{r.formats[-1][0]} "
                                      "events (a v2 event rewritten as v1 no longer covers its customer)")
            return
        if self.v2_from_seq is not None and fmt < 2 and c["seq"] >= self.v2_from_seq:
            self._fail(DOWNGRADED, c, f"seq {c['seq']} is chain format v{fmt}, but format v2 starts at seq "
                                      f"{self.v2_from_seq} (consent_chain_formats)")
            return
        if r.formats and r.formats[-1][0] == fmt:
            r.formats[-1][2] = c["seq"]
        else:
            r.formats.append([fmt, c["seq"], c["seq"]])
        sha = c.get("wording_sha256")
        text_ = c.get("wording")
        if text_ is None and sha is not None:
            text_ = self.wordings.get(sha)
        if text_ is not None and sha is not None and hashlib.sha256(text_.encode("utf-8")).hexdigest() != sha:
            self._fail(EDITED, c, f"seq {c['seq']}: the wording text does not match its wording_sha256")


def verify_db(session: Session, settings: Settings, *, progress: Callable[[int], None] | None = None) -> Report:
    """Verify the whole chain in the database, then cross-check the current state against it."""
    dialect = session.get_bind().dialect.name
    t = ConsentEvent.__table__
    v2_from = session.execute(select(ConsentChainFormat.first_seq).where(ConsentChainFormat.chain_format == 2)
                              ).scalar()
    verifier = Verifier(v2_from_seq=v2_from)
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
    report.state_mismatches = list(state_mismatches(session))
    return report


def state_mismatches(session: Session) -> Iterator[StateMismatch]:
    """Replay the events into the state they imply and name every (customer, purpose) where
    ``consent_state`` disagrees: a missing row, an extra row, a wrong status or basis, or a
    row that names another event than the latest one.

    The replay is one SQL pass (the latest event per customer and purpose by
    ``occurred_at, id``, as the derivation trigger and ``has_consent(at=...)`` order them),
    compared in the database, so only disagreements reach Python.
    """
    ev, cs = ConsentEvent.__table__.c, ConsentState.__table__
    rank = func.row_number().over(partition_by=(ev.customer_id, ev.purpose),
                                  order_by=(ev.occurred_at.desc(), ev.id.desc())).label("rank")
    ranked = select(ev.customer_id, ev.purpose, ev.id.label("event_id"), ev.action, ev.basis, rank) \
        .where(ev.customer_id.is_not(None)).subquery("ranked")
    latest = select(ranked).where(ranked.c.rank == 1).subquery("latest")
    granted = latest.c.action == ConsentAction.granted.value
    wrong_status = or_(cs.c.granted != granted, cs.c.basis != latest.c.basis)
    # Derived rows without a matching state row (missing) or with a different one.
    left = (select(latest.c.customer_id, latest.c.purpose, latest.c.event_id, latest.c.action, latest.c.basis,
                   cs.c.event_id.label("state_event"), cs.c.granted.label("state_granted"),
                   cs.c.basis.label("state_basis"))
            .select_from(latest.outerjoin(cs, and_(cs.c.customer_id == latest.c.customer_id,
                                                   cs.c.purpose == latest.c.purpose)))
            .where(or_(cs.c.customer_id.is_(None), cs.c.event_id != latest.c.event_id, wrong_status)))
    # State rows no event implies (extra).
    right = (select(cs.c.customer_id, cs.c.purpose, literal(None).label("event_id"), literal(None).label("action"),
                    literal(None).label("basis"), cs.c.event_id.label("state_event"),
                    cs.c.granted.label("state_granted"), cs.c.basis.label("state_basis"))
             .select_from(cs.outerjoin(latest, and_(cs.c.customer_id == latest.c.customer_id,
                                                    cs.c.purpose == latest.c.purpose)))
             .where(latest.c.customer_id.is_(None)))
    both = union_all(left, right).subquery("mismatches")
    rows = session.execute(select(both).order_by(both.c.customer_id, both.c.purpose))
    for cid, purpose, event_id, action, basis, state_event, state_granted, state_basis in rows:
        if event_id is None:
            yield StateMismatch(cid, purpose, STATE_EXTRA,
                                f"consent_state says {'granted' if state_granted else 'withdrawn'} (event id "
                                f"{state_event}), but no event of this customer and purpose exists")
        elif state_event is None:
            yield StateMismatch(cid, purpose, STATE_MISSING,
                                f"the ledger says {action} (event id {event_id}), consent_state has no row")
        elif state_event != event_id:
            yield StateMismatch(cid, purpose, STATE_WRONG_EVENT,
                                f"consent_state names event id {state_event}, the latest event is id {event_id} "
                                f"({action})")
        else:
            state_basis = getattr(state_basis, "value", state_basis)
            yield StateMismatch(cid, purpose, STATE_WRONG_STATUS,
                                f"consent_state says {'granted' if state_granted else 'withdrawn'} ({state_basis}), "
                                f"event id {event_id} says {action} ({basis})")


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


# -- reading an export file -----------------------------------------------------------------------
class _Lines:
    """Decoded lines of a binary file, hashing as it goes; remembers the digest before each line."""

    def __init__(self, fh: IO[bytes]):
        self.fh = fh
        self.digest = hashlib.sha256()
        self.before_line = self.digest.copy()
        self.line = ""
        self.bad: str | None = None
        #: The CSV header row of the file (its export version's columns).
        self.columns: tuple[str, ...] = CSV_COLUMNS

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
        if header is None or tuple(header) not in (CSV_COLUMNS, CSV_COLUMNS_V2, CSV_COLUMNS_V1):
            yield 1, {"type": "__bad__", "error": f"the header row is not the export's "
                                                  f"({', '.join(CSV_COLUMNS[:4])}, ...)"}
            return
        columns = tuple(header)
        lines.columns = columns
        # Cells are un-escaped only when the begin record announces the escaping (export
        # version 2); a version-1 file is read exactly as written.
        unescape = None
        for row in reader:
            line_no = reader.line_num
            if lines.bad:
                yield line_no, {"type": "__bad__", "error": lines.bad}
                return
            if len(row) != len(columns):
                yield line_no, {"type": "__bad__", "error": f"{len(row)} columns, expected {len(columns)}"}
                return
            rec: dict = {}
            for col, v in zip(columns, row, strict=False):
                if unescape is not None:
                    v = unescape(v)
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
            if rec.get("type") == "begin" and isinstance(rec.get("info"), dict):
                escaping = rec["info"].get("escaping")
                if escaping == csvsafe.ESCAPING:
                    unescape = csvsafe.unescape
                elif escaping is not None:
                    yield line_no, {"type": "__bad__", "error": f"unknown CSV escaping {escaping!r} in the begin "
                                                                f"record (known: {csvsafe.ESCAPING})"}
                    return
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
    line_hashes = False
    #: The first line whose content its line_sha256 does not allow; reported when the chain holds.
    line_edit: Problem | None = None
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
            line_hashes = isinstance(info.get("version"), int) and info["version"] >= LINE_HASH_VERSION
            if line_hashes and rec.get("line_sha256") != line_digest(rec):
                return _bad(line_no, "the begin record was edited: its bytes do not match its line_sha256",
                            kind=EDITED)
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
            if _serialize(rec, fmt, lines.columns) != lines.line:
                return _bad(line_no, "the end record was edited (it is not as the export wrote it)", kind=EDITED)
            continue
        if kind == "wording":
            sha, text_ = rec.get("wording_sha256"), rec.get("wording")
            if not sha or text_ is None or hashlib.sha256(text_.encode("utf-8")).hexdigest() != sha:
                return _bad(line_no, "a wording record's text does not match its wording_sha256", kind=EDITED)
            if line_hashes and rec.get("line_sha256") != line_digest(rec):
                return _bad(line_no, "a wording record was edited: its bytes do not match its line_sha256",
                            kind=EDITED)
            verifier.wordings[sha] = text_
            continue
        if kind not in ("event", "link"):
            return _bad(line_no, f"unknown record type {kind!r}")
        if line_edit is None and line_hashes and kind in LINE_HASHED_TYPES \
                and rec.get("line_sha256") != line_digest(rec):
            seq = rec.get("seq") if isinstance(rec.get("seq"), int) else None
            line_edit = Problem(EDITED, seq, f"the event line of seq {seq} was edited: its chain hash holds, but "
                                "its bytes do not match its line_sha256 (a field outside the chain hash, such as "
                                "the email, ip, user_agent, event_id or customer_id evidence, changed)",
                                event_id=rec.get("event_id") if isinstance(rec.get("event_id"), int) else None,
                                line=line_no)
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
    if line_edit is not None:
        report.problem = line_edit
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
        report.problem = Problem(EDITED, None, "every record's content verifies, but bytes before the end record "
                                 "changed (formatting: spacing, quoting or key order"
                                 + (")" if line_hashes else ", or a begin, wording or event line of an export "
                                    "older than version 3, which has no line hashes)")
                                 + ": file_sha256 does not match", line=end_line)
    return report


def _bad(line: int, message: str, *, kind: str = MALFORMED) -> Report:
    report = Report()
    report.problem = Problem(kind, None, message, line=line)
    return report
