"""The bulk consent import: existing consents from another tool, appended to the ledger in batches.

``mailer consent import FILE.csv`` reads one event per row (:data:`COLUMNS`; the
header must hold :data:`REQUIRED`) with the customer import's reader
(:func:`mailer.customers.records.iter_rows`: decoded line by line, bounded lines and
records, ``--encoding``, ``--delimiter``), checks every row on its own and reports a bad
one by line, column and reason.  Unknown header names stop the import (a misspelt
``confirmed_at`` must not silently drop the proof of a double opt-in).

Good rows are written in batches of :data:`BATCH_ROWS`: missing customers are created
(one executemany), then the batch's events are chained in Python, exactly as
:func:`mailer.consent.ledger.append` chains one (format 2, the hash covers
``customer_id``), and inserted with one Core executemany, in ``seq`` order, with their
evidence rows.  The ``consent_events_derive_state`` trigger derives ``consent_state``
per row as for any append; a back-dated event never overrides a later decision.

The whole file is one transaction holding the chain lock (PostgreSQL's advisory lock,
SQLite's single writer) from the first batch to the commit, so the chain never forks,
``mailer consent verify`` passes afterwards, and a failed or ``--strict``-rejected import
leaves nothing behind.  Other consent writes wait for the import meanwhile (about one
second per 20,000 rows on SQLite).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from mailer.addresses import email_hash, normalize
from mailer.clock import utcnow
from mailer.consent.ledger import CHAIN_FORMAT, GENESIS, lock_chain, purpose_ok
from mailer.consent.verify import fast_chain_hash
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
from mailer.models import ConsentAction, ConsentEvent, ConsentEvidence, ConsentSource, Customer, LawfulBasis
from mailer.settings import Settings

#: Columns the import understands, in the documented order (docs/consent.md).
COLUMNS = ("email", "purpose", "action", "occurred_at", "source", "ip", "user_agent", "wording_id",
           "wording_version", "confirmed_at", "basis", "external_id")
#: Columns the header must have.
REQUIRED = ("email", "purpose", "action", "occurred_at")
#: Events per batch (one executemany of events, one of evidence, one of new customers).
BATCH_ROWS = 5000
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
#: Accepted spellings of ``action`` (other tools' words for the two outcomes).
_ACTIONS = {"granted": ConsentAction.granted, "grant": ConsentAction.granted,
            "withdrawn": ConsentAction.withdrawn, "withdraw": ConsentAction.withdrawn}


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
    if _CONTROL.search(value):
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


def _time(row: dict, column: str, latest: datetime, *, required: bool) -> datetime | None:
    value = (row.get(column) or "").strip()
    if not value:
        if required:
            raise _Bad(column, "is empty; give an ISO 8601 date-time such as 2024-03-01T12:00:00Z")
        return None
    try:
        parsed = _parse_time(value)
    except (ValueError, OverflowError):
        raise _Bad(column, f"{_short(value)} is not an ISO 8601 date or date-time "
                           "(e.g. 2024-03-01T12:00:00Z; no zone means UTC)") from None
    if parsed < EARLIEST_AT:
        raise _Bad(column, f"{_short(value)} is before {EARLIEST_AT:%Y-%m-%d}")
    if parsed > latest:
        raise _Bad(column, f"{_short(value)} is in the future")
    return parsed


@lru_cache(maxsize=65536)
def _address(raw: str) -> str:
    return normalize(raw)


def parse_row(settings: Settings, row: dict, latest: datetime) -> dict:
    """One CSV row as event values; raises :class:`_Bad` naming the column."""
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
    try:
        source = ConsentSource(source_text) if source_text else DEFAULT_SOURCE
    except ValueError:
        raise _Bad("source", f"{_short(source_text)} is not one of "
                             f"{', '.join(s.value for s in ConsentSource)}") from None
    basis_text = (row.get("basis") or "").strip().lower()
    try:
        basis = LawfulBasis(basis_text) if basis_text else LawfulBasis.consent
    except ValueError:
        raise _Bad("basis", f"{_short(basis_text)} is not one of "
                            f"{', '.join(b.value for b in LawfulBasis)}") from None
    if basis is LawfulBasis.soft_opt_in and action is ConsentAction.granted and not settings.soft_opt_in:
        raise _Bad("basis", "soft opt-in is switched off for this deployment (MAILER_SOFT_OPT_IN=0)")
    occurred_at = _time(row, "occurred_at", latest, required=True)
    confirmed_at = _time(row, "confirmed_at", latest, required=False)
    if confirmed_at is not None and action is not ConsentAction.granted:
        raise _Bad("confirmed_at", "only a grant is confirmed (double opt-in); leave it empty for a withdrawal")
    ip = (row.get("ip") or "").strip() or None
    if ip is not None:
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


class _Writer:
    """Appends batches to the chain inside one transaction; takes the chain lock once."""

    def __init__(self, session: Session, settings: Settings, result: ConsentImportResult):
        self.session, self.settings, self.result = session, settings, result
        self.salt = address_hash_salt(settings)
        self.conn: Connection = session.connection()
        self.dialect = self.conn.dialect.name
        self.tail: tuple[int, str] | None = None
        self._digests: dict[str, str] = {}
        self._subjects: dict[str, str] = {}

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

    def _customers(self, rows: list[dict], now: datetime) -> dict[str, int]:
        t = Customer.__table__
        emails = list(dict.fromkeys(r["email"] for r in rows))
        ids = dict(self.conn.execute(select(t.c.email, t.c.id).where(t.c.email.in_(emails))).all())
        new = {}
        for r in rows:
            if r["email"] not in ids and r["email"] not in new:
                attributes = {"external_id": r["external_id"]} if r["external_id"] else {}
                new[r["email"]] = {"email": r["email"], "email_hash": self.subject(r["email"]), "attributes": attributes,
                                   "total_spent": 0, "orders_count": 0, "created_at": now, "updated_at": now}
        if new:
            ins = pg_insert if self.dialect == "postgresql" else sqlite_insert
            # DO NOTHING: a customer created meanwhile by another writer is simply reused.
            self.conn.execute(ins(t).on_conflict_do_nothing(index_elements=["email"]), list(new.values()))
            ids.update(self.conn.execute(select(t.c.email, t.c.id).where(t.c.email.in_(list(new)))).all())
            self.result.customers_created += len(new)
        return ids

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        now = utcnow()
        ids = self._customers(rows, now)
        if self.tail is None:
            lock_chain(self.session, self.settings)
            # The tail, read once: from here to the commit no one else appends (the lock on
            # PostgreSQL; on SQLite the customers' INSERT above took the single write lock).
            last = self.conn.execute(select(ConsentEvent.seq, ConsentEvent.hash)
                                     .order_by(ConsentEvent.seq.desc()).limit(1)).first()
            self.tail = (last.seq, last.hash) if last else (0, GENESIS)
        seq, prev = self.tail
        first = seq + 1
        recorded = _iso(now)
        events, evidence = [], []
        for r in rows:
            seq += 1
            cid = ids[r["email"]]
            subject = self.subject(r["email"])
            ip_digest, ua_digest = self.digest(r["ip"]), self.digest(r["user_agent"])
            fields = {"seq": seq, "subject_hash": subject, "purpose": r["purpose"], "action": r["action"].value,
                      "basis": r["basis"].value, "source": r["source"].value, "occurred_at": _iso(r["occurred_at"]),
                      "recorded_at": recorded, "form_id": r["form_id"], "wording_sha256": None,
                      "wording_version": r["wording_version"], "confirmed_at": _iso(r["confirmed_at"]),
                      "ip_digest": ip_digest, "user_agent_digest": ua_digest, "customer_id": cid,
                      "chain_format": CHAIN_FORMAT}
            digest = fast_chain_hash(prev, fields)
            events.append({"seq": seq, "customer_id": cid, "subject_hash": subject, "purpose": r["purpose"],
                           "action": r["action"], "basis": r["basis"], "source": r["source"],
                           "occurred_at": r["occurred_at"], "recorded_at": now, "form_id": r["form_id"],
                           "wording": None, "wording_version": r["wording_version"], "wording_sha256": None,
                           "confirmed_at": r["confirmed_at"], "ip_digest": ip_digest, "user_agent_digest": ua_digest,
                           "prev_hash": prev, "hash": digest, "chain_format": CHAIN_FORMAT})
            evidence.append((seq, r))
            prev = digest
        ev = ConsentEvent.__table__
        # One cached statement, executemany in seq order (insertmanyvalues batches it).
        self.conn.execute(insert(ev), events)
        by_seq = dict(self.conn.execute(select(ev.c.seq, ev.c.id).where(ev.c.seq >= first, ev.c.seq <= seq)).all())
        self.conn.execute(insert(ConsentEvidence.__table__),
                          [{"event_id": by_seq[s], "email": r["email"], "ip": r["ip"], "user_agent": r["user_agent"]}
                           for s, r in evidence])
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
    latest = utcnow() + timedelta(seconds=MAX_FUTURE_S)
    batch: list[dict] = []
    for line, row, error in iter_rows(Path(path), encoding=encoding, delimiter=delimiter, columns=COLUMNS,
                                      required=REQUIRED, only_known=True):
        if error is not None:
            result.errors.append(error)
            continue
        try:
            batch.append(parse_row(settings, row, latest))
        except _Bad as bad:
            result.errors.append(RowError(line, bad.column, bad.reason))
            continue
        if len(batch) >= BATCH_ROWS:
            if not (strict and result.errors):
                writer.write(batch)
            if progress:
                progress(len(batch))
            batch = []
    if not (strict and result.errors):
        writer.write(batch)
    if progress and batch:
        progress(len(batch))
    if strict and result.errors:
        result.strict_aborted = True
        result.events = result.customers_created = 0
        result.first_seq = result.last_seq = None
    return result


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
