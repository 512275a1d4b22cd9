"""Customers: the CSV import (create or update by e-mail) and lookups.

Every row is checked on its own; a bad row is reported with its line number, column
and reason, and every good row is imported (``strict=True`` imports nothing if any
row is bad).  Rows are written in batches with one upsert statement per batch, so
100,000 rows take seconds.

The reader never lets one bad line cost the rest of the file: the file is decoded
line by line (a byte that is not valid in the given encoding is an error for its row
only), lines and quoted values are bounded (:data:`MAX_LINE_CHARS`,
:data:`MAX_RECORD_LINES`, :data:`MAX_RECORD_CHARS`; an unterminated quote is an error
for the line that opened it and reading resumes on the next line), and NUL bytes,
wrong field counts and values the database columns cannot hold are row errors.
Only a bad header, an unknown encoding or delimiter, or an unreadable file stop the
import (:class:`~mailer.errors.ValidationError`, naming the file and line 1).
"""

from __future__ import annotations

import codecs
import csv
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from mailer import limits
from mailer.addresses import email_hash, normalize
from mailer.clock import utcnow
from mailer.db import all_or_nothing, dialect_insert
from mailer.errors import ControlFlow, InvalidAddress, NotFound, ValidationError
from mailer.instance_secrets import address_hash_salt
from mailer.models import Customer, CustomerTag, SpendTier
from mailer.rendering.i18n import is_valid_locale
from mailer.settings import Settings

#: Columns the import understands; others are kept in ``customers.attributes``.
COLUMNS = ("email", "first_name", "last_name", "locale", "timezone", "country", "tags", "total_spent",
           "currency", "orders_count", "last_order_at", "predicted_spend_tier")
#: Rows per upsert statement.
BATCH_ROWS = 2000
#: Default text encoding of an import file (``utf-8-sig`` also strips a byte-order mark;
#: a BOM is tolerated with ``utf-8`` too).
DEFAULT_ENCODING = "utf-8"
#: Default field separator.
DEFAULT_DELIMITER = ","
#: Longest physical line read, characters; a longer line is a row error and is skipped.
MAX_LINE_CHARS = 100_000
#: Most physical lines one record (a quoted value with line breaks) may span.
MAX_RECORD_LINES = 50
#: Most characters in one record, all its lines together (below csv.field_size_limit()).
MAX_RECORD_CHARS = 100_000
#: Largest total_spent the column holds: customers.total_spent is NUMERIC(14, 2).
MAX_TOTAL_SPENT = Decimal("999999999999.99")
#: Decimal places customers.total_spent keeps.
TOTAL_SPENT_DECIMAL_PLACES = 2
#: Largest orders_count the column holds: customers.orders_count is INTEGER (32-bit on PostgreSQL).
MAX_ORDERS_COUNT = 2**31 - 1
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: What ``errors="surrogateescape"`` turns an undecodable byte into.
_UNDECODED = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True)
class RowError:
    line: int
    column: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.reason}"


@dataclass
class ImportResult:
    created: int = 0
    updated: int = 0
    errors: list[RowError] = field(default_factory=list)
    strict_aborted: bool = False

    @property
    def imported(self) -> int:
        return self.created + self.updated


@lru_cache(maxsize=1024)
def _zone_ok(name: str) -> bool:
    try:
        ZoneInfo(name)
        return True
    except (ZoneInfoNotFoundError, ValueError):
        return False


def _text(value: str, column: str, limit: int = 200) -> str | None:
    value = value.strip()
    if not value:
        return None
    if _CONTROL.search(value):
        raise ValueError("contains a line break or control character")
    if len(value) > limit:
        raise ValueError(f"longer than {limit} characters")
    return value


def _parse_datetime(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        parsed = datetime.combine(date.fromisoformat(value), time())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_row(row: dict[str, str]) -> dict:
    """Turn one CSV row into column values; raises ``(column, reason)`` as a ValueError pair."""
    out: dict = {}
    raw_email = (row.get("email") or "").strip()
    try:
        out["email"] = normalize(raw_email)
    except InvalidAddress as exc:
        raise _Bad("email", str(exc)) from None
    for col in ("first_name", "last_name"):
        try:
            out[col] = _text(row.get(col) or "", col)
        except ValueError as exc:
            raise _Bad(col, str(exc)) from None
    locale = (row.get("locale") or "").strip()
    if locale and not is_valid_locale(locale):
        raise _Bad("locale", f"{_short(locale)} is not a locale tag such as en, pl or zh-TW")
    out["locale"] = locale.replace("_", "-") or None
    tz = (row.get("timezone") or "").strip()
    if tz and not _zone_ok(tz):
        raise _Bad("timezone", f"{_short(tz)} is not an IANA time zone such as Europe/Warsaw")
    out["timezone"] = tz or None
    country = (row.get("country") or "").strip().upper()
    if country and not re.fullmatch(r"[A-Z]{2}", country):
        raise _Bad("country", f"{_short(country)} is not a two-letter country code")
    out["country"] = country or None
    tags = [t.strip() for t in re.split(r"[;,]", row.get("tags") or "") if t.strip()]
    if any(len(t) > 100 or _CONTROL.search(t) for t in tags):
        raise _Bad("tags", "a tag is longer than 100 characters or has a control character")
    out["tags"] = sorted(set(tags))
    spent = (row.get("total_spent") or "").strip()
    try:
        amount = Decimal(spent) if spent else Decimal("0")
        if not amount.is_finite() or amount < 0:
            raise InvalidOperation
    except InvalidOperation:
        raise _Bad("total_spent", f"{_short(spent)} is not a non-negative amount") from None
    if amount > MAX_TOTAL_SPENT:
        raise _Bad("total_spent", f"{_short(spent)} is more than the column holds (at most {MAX_TOTAL_SPENT})")
    if amount.as_tuple().exponent < -TOTAL_SPENT_DECIMAL_PLACES and amount != amount.quantize(Decimal("0.01")):
        raise _Bad("total_spent", f"{_short(spent)} has more than {TOTAL_SPENT_DECIMAL_PLACES} decimal places")
    out["total_spent"] = amount.quantize(Decimal("0.01"))
    currency = (row.get("currency") or "").strip().upper()
    if currency and not re.fullmatch(r"[A-Z]{3}", currency):
        raise _Bad("currency", f"{_short(currency)} is not a three-letter ISO 4217 code")
    out["currency"] = currency or None
    orders = (row.get("orders_count") or "").strip()
    if orders and not re.fullmatch(r"\+?[0-9]{1,30}", orders):
        raise _Bad("orders_count", f"{_short(orders)} is not a non-negative whole number")
    out["orders_count"] = int(orders) if orders else 0
    if out["orders_count"] > MAX_ORDERS_COUNT:
        raise _Bad("orders_count", f"{_short(orders)} is more than the column holds (at most {MAX_ORDERS_COUNT})")
    last = (row.get("last_order_at") or "").strip()
    try:
        out["last_order_at"] = _parse_datetime(last) if last else None
    except (ValueError, OverflowError):
        raise _Bad("last_order_at", f"{_short(last)} is not an ISO 8601 date or date-time") from None
    tier = (row.get("predicted_spend_tier") or "").strip().lower()
    if tier and tier not in SpendTier.__members__:
        raise _Bad("predicted_spend_tier", f"{_short(tier)} is not one of high, medium, low")
    out["predicted_spend_tier"] = tier or None
    return out


def _short(value: str, limit: int = 40) -> str:
    """A value for an error message: repr, cut to ``limit`` characters."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


class _Bad(ControlFlow):
    """One cell is bad: ``column`` names it, ``reason`` says why (becomes a row error)."""

    def __init__(self, column: str, reason: str):
        super().__init__(column, reason)
        self.column = column
        self.reason = reason


def _upsert(session: Session, settings: Settings, rows: list[dict], result: ImportResult) -> None:
    if not rows:
        return
    # Later rows win when the file names one address twice.
    by_email = {r["email"]: r for r in rows}
    rows = list(by_email.values())
    emails = list(by_email)
    existing = set(session.execute(select(Customer.email).where(Customer.email.in_(emails))).scalars())
    now = utcnow()
    values = [{k: v for k, v in r.items() if k != "tags"} | {
        "email_hash": email_hash(r["email"], address_hash_salt(settings)), "attributes": r.get("attributes", {}),
        "created_at": now, "updated_at": now} for r in rows]
    table = Customer.__table__
    stmt = dialect_insert(session, table)
    updatable = [c for c in COLUMNS if c not in ("email", "tags")] + ["email_hash", "updated_at"]
    # executemany of one cached statement (insertmanyvalues batches it): insert new
    # addresses, update known ones in place. A multi-VALUES literal would recompile per batch.
    stmt = stmt.on_conflict_do_update(index_elements=["email"],
                                      set_={c: getattr(stmt.excluded, c) for c in updatable})
    conn = session.connection()
    conn.execute(stmt, values)
    ids = dict(conn.execute(select(Customer.email, Customer.id).where(Customer.email.in_(emails))).all())
    if existing:
        conn.execute(delete(CustomerTag.__table__).where(
            CustomerTag.__table__.c.customer_id.in_([ids[e] for e in existing])))
    tag_rows = [{"customer_id": ids[r["email"]], "tag": t} for r in rows for t in r["tags"]]
    if tag_rows:
        conn.execute(insert(CustomerTag.__table__), tag_rows)
    result.updated += len(existing)
    result.created += len(rows) - len(existing)


def check_encoding(encoding: str) -> str:
    """The codec name, or ValidationError when Python has no such text encoding."""
    try:
        info = codecs.lookup(encoding)
    except (LookupError, TypeError, ValueError):
        info = None
    if info is None or not getattr(info, "_is_text_encoding", True):
        raise ValidationError(f"unknown text encoding {encoding!r}: pass a Python codec name such as "
                              "utf-8, utf-8-sig (a file with a byte-order mark), cp1252 or latin-1",
                              field="encoding")
    return encoding


def check_delimiter(delimiter: str) -> str:
    """One separator character (``\\t`` or ``tab`` for a tab), or ValidationError."""
    if delimiter in ("\\t", "tab", "TAB"):
        delimiter = "\t"
    if len(delimiter) != 1 or delimiter in "\"\r\n\x00" or delimiter.isalnum():
        raise ValidationError(f"delimiter {delimiter!r} must be one character that is not a letter, digit, "
                              "quote or line break, such as ',' ';' or '\\t'", field="delimiter")
    return delimiter


def _lines(fh) -> Iterator[tuple[int, str | None]]:
    """(line number, text with its line ending); text is None for a line over MAX_LINE_CHARS (skipped)."""
    number = 0
    while True:
        text = fh.readline(MAX_LINE_CHARS + 1)
        if not text:
            return
        number += 1
        if len(text) > MAX_LINE_CHARS and not text.endswith(("\n", "\r")):
            while True:  # skip the rest of the line, a bounded piece at a time
                more = fh.readline(MAX_LINE_CHARS)
                if not more or more.endswith(("\n", "\r")):
                    break
            yield number, None
            continue
        yield number, text


# Quote-scanner states (the csv module's, for the default dialect with a given delimiter).
_START, _FIELD, _QUOTED, _QUOTE_IN_QUOTED = range(4)


def _scan(text: str, delimiter: str, state: int) -> int:
    """The state after ``text``; ``_QUOTED`` means a quoted value is still open."""
    if state != _QUOTED and '"' not in text:
        return _START
    for ch in text:
        if state == _QUOTED:
            if ch == '"':
                state = _QUOTE_IN_QUOTED
        elif state == _QUOTE_IN_QUOTED:
            state = _QUOTED if ch == '"' else _START if ch in (delimiter, "\n", "\r") else _FIELD
        elif state == _START:
            state = _QUOTED if ch == '"' else _FIELD if ch not in (delimiter, "\n", "\r") else _START
        elif ch in (delimiter, "\n", "\r"):
            state = _START
    return _START if state != _QUOTED else _QUOTED


def _records(lines: Iterator[tuple[int, str | None]], delimiter: str) -> Iterator[tuple[int, str | None, str]]:
    """(first line, record text or None, problem) for each record; quoted values may span lines.

    A quote still open after MAX_RECORD_LINES lines or MAX_RECORD_CHARS characters (or at
    the end of the file) is a problem of the line that opened it, and reading resumes on
    the next line, so the rows an unterminated quote would swallow are still read.
    """
    back: deque[tuple[int, str | None]] = deque()
    while True:
        item = back.popleft() if back else next(lines, None)
        if item is None:
            return
        number, text = item
        if text is None:
            yield number, None, f"the line is longer than {MAX_LINE_CHARS} characters"
            continue
        state = _scan(text, delimiter, _START)
        if state != _QUOTED:
            yield number, text, ""
            continue
        parts, size = [item], len(text)
        while True:
            more = back.popleft() if back else next(lines, None)
            if (more is None or more[1] is None or len(parts) >= MAX_RECORD_LINES
                    or size + len(more[1]) > MAX_RECORD_CHARS):
                if more is not None:
                    back.appendleft(more)
                back.extendleft(reversed(parts[1:]))
                yield number, None, (f"a quoted value opened on this line is not closed within "
                                     f"{MAX_RECORD_LINES} lines / {MAX_RECORD_CHARS} characters "
                                     "(a missing closing quote?)")
                break
            parts.append(more)
            size += len(more[1])
            state = _scan(more[1], delimiter, state)
            if state != _QUOTED:
                yield number, "".join(t for _, t in parts), ""
                break


def _strip_ending(text: str) -> str:
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith(("\n", "\r")) else text


def _split(text: str, delimiter: str) -> list[str]:
    try:
        return next(csv.reader([text], delimiter=delimiter, strict=False), [])
    except csv.Error as exc:
        raise _Bad("-", f"not a CSV record: {exc}") from None


def _undecoded(value: str, encoding: str) -> str | None:
    m = _UNDECODED.search(value)
    if m is None:
        return None
    return (f"byte 0x{ord(m.group()) - 0xDC00:02x} is not valid {encoding} text; if the file is in another "
            "encoding, pass --encoding (e.g. --encoding cp1252)")


def _header(path: Path, records, encoding: str, delimiter: str, columns: tuple[str, ...] = COLUMNS,
            required: tuple[str, ...] = ("email",), only_known: bool = False) -> list[str]:
    first = next(records, None)
    if first is None:
        raise ValidationError(f"{path}: line 1: the file is empty; the first line must be a header with the "
                              f"column(s) {', '.join(required)} (columns understood: {', '.join(columns)})")
    _, text, problem = first
    if text is None:
        raise ValidationError(f"{path}: line 1: {problem}")
    try:
        names = [f.strip() for f in _split(_strip_ending(text), delimiter)]
    except _Bad as bad:
        raise ValidationError(f"{path}: line 1: {bad.reason}") from None
    if names:
        names[0] = names[0].lstrip("\ufeff").strip()
    for name in names:
        problem = _undecoded(name, encoding)
        if problem:
            raise ValidationError(f"{path}: line 1: {problem}")
    missing = [c for c in required if c not in names]
    if missing:
        hint = ""
        if len(names) == 1:
            for sep, shown in ((";", "';'"), ("\t", "'\\t'"), ("|", "'|'"), (",", "','")):
                if sep != delimiter and sep in names[0]:
                    hint = f"; looks like {shown}-separated; pass --delimiter {shown}"
                    break
        need = (f"an {missing[0]!r} column" if len(missing) == 1
                else "the columns " + ", ".join(repr(c) for c in missing))
        raise ValidationError(f"{path}: line 1: the header must have {need} "
                              f"(columns understood: {', '.join(columns)}){hint}")
    seen = set()
    for name in names:
        if name in seen:
            raise ValidationError(f"{path}: line 1: column {_short(name)} appears twice")
        seen.add(name)
    unknown = [n for n in names if n not in columns] if only_known else []
    if unknown:
        raise ValidationError(f"{path}: line 1: unknown column {_short(unknown[0])} (columns understood: "
                              f"{', '.join(columns)}); rename or drop it")
    return names


def iter_rows(path: Path, *, encoding: str = DEFAULT_ENCODING, delimiter: str = DEFAULT_DELIMITER,
              columns: tuple[str, ...] = COLUMNS, required: tuple[str, ...] = ("email",),
              only_known: bool = False) -> Iterator[tuple[int, dict[str, str] | None, RowError | None]]:
    """(line number, row, None) or (line number, None, error) per record; the header is line 1.

    ``columns`` are the names error messages list as understood and ``required`` the ones
    the header must have (the consent import, :mod:`mailer.consent.importer`, passes its
    own, and so does the orders import; ``only_known`` makes any other header name an error).  Quoted fields may span
    lines.  Blank lines between rows are errors; blank lines at
    the end of the file are ignored.  Raises ValidationError (naming the file and line 1)
    for an unknown encoding or delimiter, a file that cannot be opened, or a bad header.
    """
    check_encoding(encoding)
    check_delimiter(delimiter)
    try:
        # surrogateescape: an undecodable byte becomes one marker character, reported for its row.
        with open(path, newline="", encoding=encoding, errors="surrogateescape") as fh:
            yield from _rows(path, fh, encoding, delimiter, columns, required, only_known)
    except OSError as exc:
        raise ValidationError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeError as exc:  # codecs that refuse a whole stream (UTF-16 without a BOM, a cut-off last byte)
        raise ValidationError(f"{path}: cannot be read as {encoding} ({exc}); pass --encoding with the file's "
                              "encoding (e.g. --encoding utf-16-le)") from None


def _rows(path: Path, fh, encoding: str, delimiter: str, columns: tuple[str, ...] = COLUMNS,
          required: tuple[str, ...] = ("email",), only_known: bool = False
          ) -> Iterator[tuple[int, dict | None, RowError | None]]:
    records = _records(_lines(fh), delimiter)
    names = _header(path, records, encoding, delimiter, columns, required, only_known)
    blank: list[int] = []
    for number, text, problem in records:
        if text is None:
            yield number, None, RowError(number, "-", problem)
            continue
        body = _strip_ending(text)
        if not body.strip():
            blank.append(number)
            continue
        for b in blank:  # a blank line followed by more rows
            yield b, None, RowError(b, "-", "blank line")
        blank = []
        try:
            fields = _split(body, delimiter)
        except _Bad as bad:
            yield number, None, RowError(number, bad.column, bad.reason)
            continue
        if len(fields) != len(names):
            more = len(fields) > len(names)
            reason = (f"{abs(len(fields) - len(names))} value(s) {'more' if more else 'fewer'} than the "
                      f"header has columns ({len(fields)} instead of {len(names)})")
            yield number, None, RowError(number, "-", reason)
            continue
        bad_row = None
        # The per-field scan only when the record has an undecodable byte or a NUL at all
        # (it names the column); most records have neither.
        clean = _UNDECODED.search(body) is None and "\x00" not in body
        for name, value in ([] if clean else zip(names, fields, strict=False)):
            reason = _undecoded(value, encoding) or ("contains a NUL byte" if "\x00" in value else None)
            if reason:
                bad_row = RowError(number, name, reason)
                break
        if bad_row:
            yield number, None, bad_row
            continue
        yield number, dict(zip(names, fields, strict=False)), None


def import_csv(session: Session, settings: Settings, path: Path, *, strict: bool = False,
               progress: Callable[[int], None] | None = None, encoding: str = DEFAULT_ENCODING,
               delimiter: str = DEFAULT_DELIMITER) -> ImportResult:
    """Import customers from ``path`` inside the caller's transaction.

    With ``strict`` the caller must roll back when ``result.errors`` is not empty;
    :func:`import_file` does.
    """
    result = ImportResult()
    batch: list[dict] = []
    for line, row, error in iter_rows(Path(path), encoding=encoding, delimiter=delimiter):
        if error is not None:
            result.errors.append(error)
            continue
        try:
            values = parse_row(row)
        except _Bad as bad:
            result.errors.append(RowError(line, bad.column, bad.reason))
            continue
        extra = {k: v for k, v in row.items() if k not in COLUMNS and v not in (None, "")}
        if extra:
            values["attributes"] = extra
        batch.append(values)
        if len(batch) >= BATCH_ROWS:
            if not (strict and result.errors):
                _upsert(session, settings, batch, result)
            if progress:
                progress(len(batch))
            batch = []
    if not (strict and result.errors):
        _upsert(session, settings, batch, result)
    if progress and batch:
        progress(len(batch))
    if strict and result.errors:
        result.strict_aborted = True
        result.created = result.updated = 0
    return result


def import_file(settings: Settings, path: Path, *, strict: bool = False,
                progress: Callable[[int], None] | None = None, encoding: str = DEFAULT_ENCODING,
                delimiter: str = DEFAULT_DELIMITER) -> ImportResult:
    """Import in one transaction; roll back everything in strict mode when a row is bad."""
    check_encoding(encoding)
    check_delimiter(delimiter)
    return all_or_nothing(settings, lambda session: import_csv(session, settings, path, strict=strict,
                                                                progress=progress, encoding=encoding,
                                                                delimiter=delimiter),
                          keep=lambda result: not result.strict_aborted)


#: A well-formed address beside which each column of a record is checked on its own.
_PROBE_ADDRESS = "probe@example.com"
#: Most extra attributes one record carries (beyond COLUMNS), and the longest of each, characters.
MAX_ATTRIBUTES = 50
MAX_ATTRIBUTE_CHARS = 1000


def parse_record(row: dict[str, str]) -> dict:
    """One record (e.g. from ``PUT /v1/customers/{email}``) by the import's rules, every bad column reported.

    Values are the strings a CSV cell would hold.  Raises :class:`mailer.limits.InvalidData`
    listing (column, reason) for every bad column, not only the first.
    """
    try:
        values = parse_row(row)
    except _Bad:
        problems = []
        for column in COLUMNS:
            probe = {"email": row.get("email") or ""} if column == "email" else {
                "email": _PROBE_ADDRESS, column: row.get(column) or ""}
            try:
                parse_row(probe)
            except _Bad as bad:
                problems.append((bad.column, bad.reason))
        raise limits.InvalidData.listing(problems) from None
    extra = {k: v for k, v in row.items() if k not in COLUMNS and v not in (None, "")}
    problems = [(f"attributes.{k}", f"longer than {MAX_ATTRIBUTE_CHARS} characters or has a control character")
                for k, v in extra.items() if len(v) > MAX_ATTRIBUTE_CHARS or _CONTROL.search(v)]
    if len(extra) > MAX_ATTRIBUTES:
        problems.insert(0, ("attributes", f"more than {MAX_ATTRIBUTES} attributes"))
    if problems:
        raise limits.InvalidData.listing(problems)
    if extra:
        values["attributes"] = extra
    return values


def upsert_record(session: Session, settings: Settings, values: dict) -> tuple[Customer, bool]:
    """Create or update one customer from :func:`parse_record`'s values, exactly as the import does.

    Returns (customer, created).
    """
    result = ImportResult()
    _upsert(session, settings, [values], result)
    customer = session.execute(select(Customer).where(Customer.email == values["email"])
                               .execution_options(populate_existing=True)).scalar_one()
    return customer, result.created == 1


def get_or_create(session: Session, settings: Settings, address: str, *, locale: str | None = None,
                  first_name: str | None = None) -> Customer:
    """The customer with this (normalized) address, created when unknown."""
    email = normalize(address)
    customer = session.execute(select(Customer).where(Customer.email == email)).scalar_one_or_none()
    if customer is None:
        customer = Customer(email=email, email_hash=email_hash(email, address_hash_salt(settings)),
                            locale=locale, first_name=first_name, total_spent=Decimal("0"), orders_count=0,
                            attributes={})
        session.add(customer)
        session.flush()
    return customer


def by_email(session: Session, address: str) -> Customer:
    """The (not erased) customer with this address, or NotFound."""
    email = normalize(address)
    customer = session.execute(select(Customer).where(Customer.email == email)).scalar_one_or_none()
    if customer is None:
        raise NotFound(f"no customer with address {email}")
    return customer

