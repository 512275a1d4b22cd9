"""The bulk consent import: existing consents from another tool, appended to the ledger in batches.

``mailer consent import FILE.csv`` reads one event per row (:data:`COLUMNS`; the
header must hold :data:`REQUIRED`) with the customer import's reader
(:func:`mailer.customers.records.iter_rows`: decoded line by line, bounded lines and
records, ``--encoding``, ``--delimiter``), checks every row on its own and reports a bad
one by line, column and reason.  Unknown header names stop the import (a misspelt
``confirmed_at`` must not silently drop the proof of a double opt-in).

Good rows are written in batches of :data:`BATCH_ROWS`: missing customers are created
(one statement), then the batch's events are chained in Python, exactly as
:func:`mailer.consent.ledger.append` chains one (format 2, the hash covers
``customer_id``; :func:`_canonical_v2` is byte for byte the ledger's canonical JSON),
and written through the driver in ``seq`` order with their evidence rows: on SQLite an
executemany inside an open derive batch (``consent_derive_batches``, migration 0019),
whose closing derives ``consent_state`` for the batch set-based (the row trigger is
dropped for the batch's INSERTs and recreated from its own text before the batch closes,
see :meth:`_Writer._sqlite_batch`); on PostgreSQL a COPY,
after which the statement-level ``consent_events_derive_state`` trigger does the same.
No code here writes ``consent_state``; the guard triggers check every row the
derivation writes (on PostgreSQL once per statement, migration 0025), and a back-dated
event never overrides a later decision.  On PostgreSQL a reader thread
(:func:`_read_ahead`) decodes and checks the next batch while the server writes this one.

The whole file is one transaction holding the chain lock (PostgreSQL's advisory lock,
SQLite's single writer) from the first batch to the commit, so the chain never forks,
``mailer consent verify`` passes afterwards, and a failed or ``--strict``-rejected import
leaves nothing behind.  Other consent writes wait for the import meanwhile (about one
second per 20,000 rows on SQLite, see docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import queue
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from mailer.addresses import email_hash, normalize
from mailer.clock import utcnow
from mailer.consent.ledger import CHAIN_FORMAT, GENESIS, busy_on_lock_timeout, lock_chain, purpose_ok
from mailer.customers.records import (
    DEFAULT_DELIMITER,
    DEFAULT_ENCODING,
    RowError,
    check_delimiter,
    check_encoding,
    iter_rows,
)
from mailer.db import all_or_nothing
from mailer.errors import ConsentError, InvalidAddress
from mailer.instance_secrets import address_hash_salt
from mailer.models import ConsentAction, ConsentSource, LawfulBasis
from mailer.settings import Settings

#: Columns the import understands, in the documented order (docs/consent.md).
COLUMNS = ("email", "purpose", "action", "occurred_at", "source", "ip", "user_agent", "wording_id",
           "wording_version", "confirmed_at", "basis", "external_id")
#: Columns the header must have.
REQUIRED = ("email", "purpose", "action", "occurred_at")
#: Events per batch (one statement each for new customers, events and evidence; one derivation).
BATCH_ROWS = 20_000
#: The source recorded when a row leaves ``source`` empty.
DEFAULT_SOURCE = ConsentSource.import_
#: Longest user agent kept, characters.
MAX_USER_AGENT_CHARS = 1000
#: Longest wording_id (it becomes the event's form_id, VARCHAR(200)), characters.
MAX_WORDING_ID_CHARS = 200
#: Longest wording_version (VARCHAR(50)), characters.
MAX_WORDING_VERSION_CHARS = 50
#: Longest external_id, characters.
MAX_EXTERNAL_ID_CHARS = 200
#: A time may lie at most this many seconds after the import's clock (skew between tools).
MAX_FUTURE_S = 300
#: No e-mail consent predates this; an earlier time is a typo (or a 0001-01-01 placeholder).
EARLIEST_AT = datetime(1990, 1, 1, tzinfo=UTC)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: A dotted quad already in the form ipaddress prints (no leading zeros): kept as it is.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
#: Accepted spellings of ``action`` (other tools' words for the two outcomes).
_ACTIONS = {"granted": ConsentAction.granted, "grant": ConsentAction.granted,
            "withdrawn": ConsentAction.withdrawn, "withdraw": ConsentAction.withdrawn}
#: ``source`` and ``basis`` values by their text (a dict probe, not an Enum lookup, per row).
_SOURCES = {s.value: s for s in ConsentSource}
_BASES = {b.value: b for b in LawfulBasis}


@dataclass
class ConsentImportResult:
    events: int = 0
    customers_created: int = 0
    errors: list[RowError] = field(default_factory=list)
    strict_aborted: bool = False
    first_seq: int | None = None
    last_seq: int | None = None


class _Bad(Exception):
    def __init__(self, column: str, reason: str):
        super().__init__(column, reason)
        self.column, self.reason = column, reason


def _short(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _text(row: dict, column: str, limit: int) -> str | None:
    value = (row.get(column) or "").strip()
    if not value:
        return None
    # isprintable() is one C pass and false for every control character; the regex then
    # decides (a printable-false value may be e.g. a no-break space, which is allowed).
    if not value.isprintable() and _CONTROL.search(value):
        raise _Bad(column, "contains a line break or control character")
    if len(value) > limit:
        raise _Bad(column, f"longer than {limit} characters")
    return value


@lru_cache(maxsize=4096)
def _parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        parsed = datetime.combine(date.fromisoformat(value), time())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


#: The usual spelling of a UTC time (2024-03-01T12:00:00Z, optionally with microseconds, a
#: space for the T or +00:00 for the Z): its hashed form is a matter of string slicing.
_UTC_TIME = re.compile(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(\.\d{6})?(?:Z|\+00:00)")
#: EARLIEST_AT as the ledger hashes times (see _iso): ISO strings of this one fixed-width
#: UTC form sort as the times they name, so bounds are compared as strings.
_EARLIEST_ISO = EARLIEST_AT.isoformat(timespec="microseconds")


def _iso_of(value: str) -> str:
    """``value`` (ISO 8601) as the ledger hashes a time: UTC, microseconds; ValueError if not a time."""
    m = _UTC_TIME.fullmatch(value)
    if m is not None:
        datetime.fromisoformat(m[1] + "T" + m[2])  # the calendar check: month 13, 30 February, 24:00
        return f"{m[1]}T{m[2]}{m[3] or '.000000'}+00:00"
    return _parse_time(value).isoformat(timespec="microseconds")


def _time(row: dict, column: str, latest: str, *, required: bool) -> str | None:
    """The column's time as the ledger hashes it (:func:`_iso`), within [EARLIEST_AT, ``latest``]."""
    value = (row.get(column) or "").strip()
    if not value:
        if required:
            raise _Bad(column, "is empty; give an ISO 8601 date-time such as 2024-03-01T12:00:00Z")
        return None
    try:
        parsed = _iso_of(value)
    except (ValueError, OverflowError):
        raise _Bad(column, f"{_short(value)} is not an ISO 8601 date or date-time "
                           "(e.g. 2024-03-01T12:00:00Z; no zone means UTC)") from None
    if parsed < _EARLIEST_ISO:
        raise _Bad(column, f"{_short(value)} is before {EARLIEST_AT:%Y-%m-%d}")
    if parsed > latest:
        raise _Bad(column, f"{_short(value)} is in the future")
    return parsed


@lru_cache(maxsize=65536)
def _address(raw: str) -> str:
    return normalize(raw)


def parse_row(settings: Settings, row: dict, latest: str) -> dict:
    """One CSV row as event values; raises :class:`_Bad` naming the column.

    ``latest`` is the latest time accepted, as :func:`_iso` writes it; the row's times come
    back in that form too (what the chain hashes), not as datetimes.
    """
    raw_email = (row.get("email") or "").strip()
    try:
        email = _address(raw_email)
    except InvalidAddress as exc:
        raise _Bad("email", str(exc)) from None
    purpose = (row.get("purpose") or "").strip()
    try:
        purpose_ok(settings, purpose)
    except ConsentError as exc:
        raise _Bad("purpose", str(exc)) from None
    action = _ACTIONS.get((row.get("action") or "").strip().lower())
    if action is None:
        raise _Bad("action", f"{_short(row.get('action') or '')} is not granted or withdrawn")
    source_text = (row.get("source") or "").strip().lower()
    source = _SOURCES.get(source_text) if source_text else DEFAULT_SOURCE
    if source is None:
        raise _Bad("source", f"{_short(source_text)} is not one of "
                             f"{', '.join(s.value for s in ConsentSource)}")
    basis_text = (row.get("basis") or "").strip().lower()
    basis = _BASES.get(basis_text) if basis_text else LawfulBasis.consent
    if basis is None:
        raise _Bad("basis", f"{_short(basis_text)} is not one of "
                            f"{', '.join(b.value for b in LawfulBasis)}")
    if basis is LawfulBasis.soft_opt_in and action is ConsentAction.granted and not settings.soft_opt_in:
        raise _Bad("basis", "soft opt-in is switched off for this deployment (MAILER_SOFT_OPT_IN=0)")
    occurred_at = _time(row, "occurred_at", latest, required=True)
    confirmed_at = _time(row, "confirmed_at", latest, required=False)
    if confirmed_at is not None and action is not ConsentAction.granted:
        raise _Bad("confirmed_at", "only a grant is confirmed (double opt-in); leave it empty for a withdrawal")
    ip = (row.get("ip") or "").strip() or None
    if ip is not None and _IPV4.fullmatch(ip) is None:
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            raise _Bad("ip", f"{_short(ip)} is not an IPv4 or IPv6 address") from None
    return {"email": email, "purpose": purpose, "action": action, "source": source, "basis": basis,
            "occurred_at": occurred_at, "confirmed_at": confirmed_at, "ip": ip,
            "user_agent": _text(row, "user_agent", MAX_USER_AGENT_CHARS),
            "form_id": _text(row, "wording_id", MAX_WORDING_ID_CHARS),
            "wording_version": _text(row, "wording_version", MAX_WORDING_VERSION_CHARS),
            "external_id": _text(row, "external_id", MAX_EXTERNAL_ID_CHARS)}


def _iso(value: datetime | None) -> str | None:
    # As mailer.consent.ledger hashes times: UTC, microseconds.
    return None if value is None else value.isoformat(timespec="microseconds")


#: Columns of consent_events the import writes, in the order of its rows.
_EVENT_COLUMNS = ("id", "seq", "customer_id", "subject_hash", "purpose", "action", "basis", "source",
                  "occurred_at", "recorded_at", "form_id", "wording", "wording_version", "wording_sha256",
                  "confirmed_at", "ip_digest", "user_agent_digest", "prev_hash", "hash", "chain_format")
_EVIDENCE_COLUMNS = ("event_id", "email", "ip", "user_agent")
_CUSTOMER_COLUMNS = ("email", "email_hash", "attributes", "total_spent", "orders_count", "created_at",
                     "updated_at")
#: SQLite page cache for the import's connection, KiB (restored afterwards).  The chain's
#: unique hash index and the subject and customer e-mail indexes take random inserts; with
#: SQLite's default 2 MiB cache every one of them is a page read (measured: the events'
#: INSERT takes 1.5x as long at 50,000 rows, and it grows with the table).
IMPORT_CACHE_KIB = 256 * 1024
#: Most bound parameters in one SQLite statement we issue (SQLite >= 3.32 allows 32,766).
_SQLITE_MAX_VARS = 30_000
#: SQLite's per-row derivation trigger (migration 0019), dropped while an import batch is
#: open and recreated from its own text before the batch closes (:meth:`_Writer._sqlite_batch`).
_ROW_TRIGGER = "consent_events_derive_state"
#: Whether the SQLite import drops the row trigger during a batch (False: the trigger stays
#: and skips the batch's rows by its WHEN clause, at 12 to 18 µs per event).
SQLITE_SWAP_ROW_TRIGGER = True


_encode_str = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) uses for a str


def _json_text(value: str | None) -> str:
    return "null" if value is None else _encode_str(value)


def _json_safe(value: str | None) -> str:
    # A value with no character JSON escapes (a hex digest, an ISO time, an enum value).
    return "null" if value is None else '"' + value + '"'


def _canonical_v2(seq: int, cid: int, subject: str, purpose_json: str, action: str, basis: str, source: str,
                  occurred: str, recorded: str, form_json: str, version_json: str, confirmed: str | None,
                  ip_digest: str | None, ua_digest: str | None) -> bytes:
    """Byte for byte :func:`mailer.consent.ledger.canonical` of a format-2 event without a
    wording (``wording_sha256`` null), keys in sorted order; the three values a file
    chooses freely (purpose, wording_id, wording_version) arrive JSON-encoded."""
    return (f'{{"action":"{action}","basis":"{basis}","chain_format":2,"confirmed_at":{_json_safe(confirmed)},'
            f'"customer_id":{cid},"form_id":{form_json},"ip_digest":{_json_safe(ip_digest)},'
            f'"occurred_at":"{occurred}","purpose":{purpose_json},"recorded_at":"{recorded}","seq":{seq},'
            f'"source":"{source}","subject_hash":"{subject}","user_agent_digest":{_json_safe(ua_digest)},'
            f'"wording_sha256":null,"wording_version":{version_json}}}').encode()


def _sqlite_time(iso: str | None) -> str | None:
    # The text SQLAlchemy's SQLite DateTime stores for an aware UTC time (see UTCDateTime):
    # "YYYY-MM-DD HH:MM:SS.ffffff", from the hash's "YYYY-MM-DDTHH:MM:SS.ffffff+00:00".
    return None if iso is None else iso[:10] + " " + iso[11:26]


class _Writer:
    """Appends batches to the chain inside one transaction; takes the chain lock once.

    Writes go through the driver (sqlite3's executemany, psycopg's COPY), not SQLAlchemy
    Core: at 20,000 events/s the per-parameter type processing was a third of the time.
    Values are therefore written exactly as the models' types would store them (UTC times
    as SQLAlchemy's SQLite text, ``attributes`` as JSON text).
    """

    def __init__(self, session: Session, settings: Settings, result: ConsentImportResult):
        self.session, self.settings, self.result = session, settings, result
        self.salt = address_hash_salt(settings)
        self.conn: Connection = session.connection()
        self.dialect = self.conn.dialect.name
        self.raw = self.conn.connection.driver_connection
        self.tail: tuple[int, str] | None = None
        self.next_id = 0
        self._digests: dict[str, str] = {}
        self._subjects: dict[str, str] = {}
        self._cache_size: int | None = None
        self._row_trigger_sql: str | None = None
        if self.dialect == "sqlite":
            self._cache_size = self.raw.execute("PRAGMA cache_size").fetchone()[0]
            self.raw.execute(f"PRAGMA cache_size = -{int(IMPORT_CACHE_KIB)}")

    def close(self) -> None:
        """Give the pooled connection its page cache size back."""
        if self._cache_size is not None:
            self.raw.execute(f"PRAGMA cache_size = {int(self._cache_size)}")
            self._cache_size = None

    def subject(self, email: str) -> str:
        s = self._subjects.get(email)
        if s is None:
            if len(self._subjects) > 100_000:
                self._subjects.clear()
            s = self._subjects[email] = email_hash(email, self.salt)
        return s

    def digest(self, value: str | None) -> str | None:
        # Salted SHA-256, as mailer.consent.ledger digests the address, IP and user agent.
        if value is None:
            return None
        d = self._digests.get(value)
        if d is None:
            if len(self._digests) > 100_000:
                self._digests.clear()
            d = self._digests[value] = hashlib.sha256(self.salt + value.encode("utf-8")).hexdigest()
        return d

    # -- customers ----------------------------------------------------------------------------
    def _known(self, emails: list[str]) -> dict[str, int]:
        cur = self.raw.cursor()
        ids: dict[str, int] = {}
        if self.dialect == "postgresql":
            # One round trip; LATERAL ... LIMIT 1 keeps it one probe of the unique index on
            # email per address (email = ANY(...) was planned as a scan of the whole table,
            # which the import itself grows).
            cur.execute("SELECT e.email, c.id FROM unnest(%s::varchar[]) AS e(email) CROSS JOIN LATERAL "
                        "(SELECT id FROM customers WHERE customers.email = e.email LIMIT 1) c", (emails,))
            ids.update(cur.fetchall())
        else:
            # Probes of the unique index on email, in chunks below SQLite's variable limit.
            for i in range(0, len(emails), _SQLITE_MAX_VARS):
                chunk = emails[i:i + _SQLITE_MAX_VARS]
                cur.execute(f"SELECT email, id FROM customers WHERE email IN ({','.join('?' * len(chunk))})",  # nosec B608 - placeholders only
                            chunk)
                ids.update(cur.fetchall())
        return ids

    def _customers(self, rows: list[dict], now: datetime) -> dict[str, int]:
        emails = list(dict.fromkeys(r["email"] for r in rows))
        ids = self._known(emails)
        new: dict[str, tuple] = {}
        stamp = now.isoformat(timespec="microseconds")
        if self.dialect == "sqlite":
            stamp = _sqlite_time(stamp)
        for r in rows:
            email = r["email"]
            if email not in ids and email not in new:
                attributes = json.dumps({"external_id": r["external_id"]}) if r["external_id"] else "{}"
                new[email] = (email, self.subject(email), attributes, 0, 0, stamp, stamp)
        if not new:
            return ids
        cur = self.raw.cursor()
        cols = ", ".join(_CUSTOMER_COLUMNS)
        if self.dialect == "postgresql":
            # One statement for the batch; DO NOTHING: a customer created meanwhile by
            # another writer is reused (looked up below), RETURNING gives the new ids.
            columns = [list(c) for c in zip(*new.values(), strict=True)]
            cur.execute(f"INSERT INTO customers ({cols}) SELECT * FROM unnest(%s::varchar[], %s::varchar[], "  # nosec B608 - fixed columns
                        "%s::json[], %s::numeric[], %s::int[], %s::timestamptz[], %s::timestamptz[]) "
                        "ON CONFLICT (email) DO NOTHING RETURNING email, id", columns)
            created = dict(cur.fetchall())
        else:
            cur.executemany(f"INSERT INTO customers ({cols}) VALUES (?, ?, ?, ?, ?, ?, ?) "  # nosec B608 - fixed columns
                            "ON CONFLICT (email) DO NOTHING", list(new.values()))
            created = self._known(list(new))
        ids.update(created)
        missing = [e for e in new if e not in ids]
        if missing:
            ids.update(self._known(missing))
        self.result.customers_created += len(created)
        return ids

    # -- the chain ----------------------------------------------------------------------------
    def _open(self) -> None:
        """Take the chain lock and read the tail once (first batch only)."""
        if self.dialect == "postgresql":
            lock_chain(self.session, self.settings)
            # Batch-sized statements cross jit_above_cost; compiling them costs more than
            # running them (the derivation trigger's upsert, the customer lookup).
            self.raw.execute("SET LOCAL jit = off")
        else:
            # Any write takes SQLite's single write lock for the rest of the transaction;
            # the batch table is empty at rest, so this deletes nothing.
            self.raw.execute("DELETE FROM consent_derive_batches")
            # The row trigger's own text, to put it back byte for byte after each batch
            # (see _sqlite_batch).  By name and table, one row of the schema table.
            row = self.raw.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ? "
                                   "AND tbl_name = 'consent_events'", (_ROW_TRIGGER,)).fetchone()
            self._row_trigger_sql = row[0] if row else None
        cur = self.raw.cursor()
        # The tail by the unique index on seq, and the highest id by the primary key.
        cur.execute("SELECT seq, hash FROM consent_events ORDER BY seq DESC LIMIT 1")
        last = cur.fetchone()
        self.tail = (last[0], last[1]) if last else (0, GENESIS)
        cur.execute("SELECT COALESCE(MAX(id), 0) FROM consent_events")
        self.next_id = cur.fetchone()[0] + 1

    def _ids(self, n: int) -> list[int]:
        if self.dialect == "postgresql":
            # n ids from the column's own sequence in one call instead of n nextval()s
            # (measured: 1.5 s of 60 per 40,000 events at load 30): take one, then move
            # the sequence n - 1 further.  Every insert into consent_events holds the
            # chain lock we hold, so no other session draws from the sequence in
            # between; if one ever did, its id would repeat one of ours and the primary
            # key would refuse the COPY (the import fails whole, nothing is duplicated).
            cur = self.raw.cursor()
            cur.execute("SELECT setval(s.name, nextval(s.name) + %s - 1) FROM "
                        "(SELECT pg_get_serial_sequence('consent_events', 'id') AS name) s", (n,))
            last = cur.fetchone()[0]
            return list(range(last - n + 1, last + 1))
        # SQLite: we hold the write lock, so max(id)+1... is what SQLite itself would assign.
        first, self.next_id = self.next_id, self.next_id + n
        return list(range(first, first + n))

    def _row_trigger_present(self) -> bool:
        return self.raw.execute("SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?",
                                (_ROW_TRIGGER,)).fetchone() is not None

    def _sqlite_batch(self, cur, first: int, last: int, events: list[tuple], evidence: list[tuple]) -> None:
        """One batch on SQLite: open a derive batch, append, close it (which derives).

        The batch row over ``[first, last]`` makes the row trigger skip these events, and
        its DELETE derives their consent_state set-based (migration 0019).  The row
        trigger's program still runs for every row, WHEN or not (12 to 18 µs per event,
        docs/benchmarks.md), so while the batch is open the trigger is dropped and then
        recreated from its own text in sqlite_master.  Why that cannot let a write past
        the derivation (docs/consent.md, "Current state"): this connection holds SQLite's
        only write lock from _open to COMMIT, so no other connection writes while the
        trigger is absent, and readers see the committed schema, trigger included; DDL is
        transactional, so a rollback restores it; and the trigger is absent only while
        the batch row exists, and COMMIT fails while it exists.  The trigger is back
        before the batch closes, so the next statement is checked as before.
        """
        cur.execute("INSERT INTO consent_derive_batches (first_seq, last_seq) VALUES (?, ?)", (first, last))
        swap = self._row_trigger_sql is not None and SQLITE_SWAP_ROW_TRIGGER
        if swap:
            cur.execute(f"DROP TRIGGER {_ROW_TRIGGER}")
        try:
            cur.executemany(f"INSERT INTO consent_events ({', '.join(_EVENT_COLUMNS)}) "  # nosec B608 - fixed columns
                            f"VALUES ({', '.join('?' * len(_EVENT_COLUMNS))})", events)
            cur.executemany("INSERT INTO consent_evidence (event_id, email, ip, user_agent) VALUES (?, ?, ?, ?)",
                            evidence)
        except BaseException:
            # Back even when an INSERT failed: SQLite undoes only the failed statement, and
            # a caller that goes on in this transaction must find the trigger.  Unless SQLite
            # rolled the whole transaction back itself (full disk, interrupt), which already
            # restored it; the schema table says which.
            if swap and self.raw.in_transaction and not self._row_trigger_present():
                cur.execute(self._row_trigger_sql)
            raise
        if swap:
            cur.execute(self._row_trigger_sql)
        cur.execute("DELETE FROM consent_derive_batches WHERE first_seq = ?", (first,))

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        now = utcnow()
        ids = self._customers(rows, now)
        if self.tail is None:
            self._open()
        seq, prev = self.tail
        first = seq + 1
        recorded = _iso(now)
        sqlite = self.dialect == "sqlite"
        stored_recorded = _sqlite_time(recorded) if sqlite else recorded
        event_ids = self._ids(len(rows))
        events, evidence = [], []
        json_of: dict[str, str] = {}
        for r, event_id in zip(rows, event_ids, strict=True):
            seq += 1
            cid = ids[r["email"]]
            subject = self.subject(r["email"])
            ip_digest, ua_digest = self.digest(r["ip"]), self.digest(r["user_agent"])
            action, basis, source = r["action"].value, r["basis"].value, r["source"].value
            occurred, confirmed = r["occurred_at"], r["confirmed_at"]
            purpose_json = json_of.get(r["purpose"]) or json_of.setdefault(r["purpose"], _json_text(r["purpose"]))
            form_json = _json_text(r["form_id"])
            version_json = _json_text(r["wording_version"])
            digest = hashlib.sha256(prev.encode("ascii") + _canonical_v2(
                seq, cid, subject, purpose_json, action, basis, source, occurred, recorded, form_json,
                version_json, confirmed, ip_digest, ua_digest)).hexdigest()
            if sqlite:
                occurred, confirmed = _sqlite_time(occurred), _sqlite_time(confirmed)
            events.append((event_id, seq, cid, subject, r["purpose"], action, basis, source, occurred,
                           stored_recorded, r["form_id"], None, r["wording_version"], None, confirmed,
                           ip_digest, ua_digest, prev, digest, CHAIN_FORMAT))
            evidence.append((event_id, r["email"], r["ip"], r["user_agent"]))
            prev = digest
        cur = self.raw.cursor()
        if sqlite:
            self._sqlite_batch(cur, first, seq, events, evidence)
        else:
            # COPY: one stream per table; the statement-level trigger derives consent_state
            # for the whole batch once the COPY ends.
            # (busy_on_lock_timeout: the derivation rewrites state rows a worker may hold.)
            with busy_on_lock_timeout(), cur.copy(f"COPY consent_events ({', '.join(_EVENT_COLUMNS)}) FROM STDIN") as copy:
                for row in events:
                    copy.write_row(row)
            with cur.copy(f"COPY consent_evidence ({', '.join(_EVIDENCE_COLUMNS)}) FROM STDIN") as copy:
                for row in evidence:
                    copy.write_row(row)
        self.tail = (seq, prev)
        self.result.events += len(rows)
        self.result.first_seq = self.result.first_seq or first
        self.result.last_seq = seq


def import_csv(session: Session, settings: Settings, path: Path, *, strict: bool = False,
               progress: Callable[[int], None] | None = None, encoding: str = DEFAULT_ENCODING,
               delimiter: str = DEFAULT_DELIMITER) -> ConsentImportResult:
    """Append the file's events inside the caller's transaction.

    With ``strict`` nothing is written once a row is bad (the rest is still checked) and
    the caller must roll back; :func:`import_file` does.
    """
    result = ConsentImportResult()
    writer = _Writer(session, settings, result)
    try:
        _import_rows(writer, settings, path, strict, progress, encoding, delimiter, result)
    finally:
        writer.close()
    if strict and result.errors:
        result.strict_aborted = True
        result.events = result.customers_created = 0
        result.first_seq = result.last_seq = None
    return result


def _parsed_batches(settings: Settings, path: Path, encoding: str, delimiter: str,
                    result: ConsentImportResult) -> Iterator[tuple[list[dict], int]]:
    """The file's good rows in batches of :data:`BATCH_ROWS` (the last may be shorter or
    empty), each with the number of rows read for it, good or bad; bad rows go to
    ``result.errors`` before the batch they precede is yielded."""
    latest = _iso(utcnow() + timedelta(seconds=MAX_FUTURE_S))
    batch: list[dict] = []
    read = 0  # rows read since the last progress report, good or bad (the bar counts the file's rows)
    for line, row, error in iter_rows(Path(path), encoding=encoding, delimiter=delimiter, columns=COLUMNS,
                                      required=REQUIRED, only_known=True):
        read += 1
        if error is not None:
            result.errors.append(error)
            continue
        try:
            batch.append(parse_row(settings, row, latest))
        except _Bad as bad:
            result.errors.append(RowError(line, bad.column, bad.reason))
            continue
        if len(batch) >= BATCH_ROWS:
            yield batch, read
            batch, read = [], 0
    yield batch, read


#: Parsed batches the PostgreSQL import's reader thread may hold ahead of the writer (each
#: is BATCH_ROWS rows, about 15 MB).
READ_AHEAD_BATCHES = 2
_DONE = object()


def _read_ahead(batches: Iterator[tuple[list[dict], int]]) -> Iterator[tuple[list[dict], int]]:
    """``batches``, read and parsed by a thread of its own while the caller writes.

    On PostgreSQL the server works while the importer waits for each statement (psycopg
    releases the GIL), so the next batch's CSV decoding and row checks overlap the
    server's work on this one instead of following it.  Order is kept (one queue); an
    error in the reader is raised here; if the caller stops early, the reader stops at
    its next batch.
    """
    out: queue.Queue = queue.Queue(maxsize=READ_AHEAD_BATCHES)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            for item in batches:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the writer's thread, which raises it
            put(exc)

    thread = threading.Thread(target=reader, name="consent-import-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _import_rows(writer: _Writer, settings: Settings, path: Path, strict: bool,
                 progress: Callable[[int], None] | None, encoding: str, delimiter: str,
                 result: ConsentImportResult) -> None:
    batches = _parsed_batches(settings, path, encoding, delimiter, result)
    if writer.dialect == "postgresql":
        batches = _read_ahead(batches)
    # closing(): a failed write stops the reader thread now, not when the traceback goes.
    with contextlib.closing(batches):
        for batch, read in batches:
            # The reader may be ahead and have found a bad row further on: in strict mode
            # that only stops the writing sooner (the transaction is rolled back anyway).
            if not (strict and result.errors):
                writer.write(batch)
            if progress and read:
                progress(read)


def import_file(settings: Settings, path: Path, *, strict: bool = False,
                progress: Callable[[int], None] | None = None, encoding: str = DEFAULT_ENCODING,
                delimiter: str = DEFAULT_DELIMITER) -> ConsentImportResult:
    """Import in one transaction; in strict mode a bad row rolls everything back."""
    check_encoding(encoding)
    delimiter = check_delimiter(delimiter)
    return all_or_nothing(settings, lambda session: import_csv(session, settings, path, strict=strict,
                                                                progress=progress, encoding=encoding,
                                                                delimiter=delimiter),
                          keep=lambda result: not result.strict_aborted)
