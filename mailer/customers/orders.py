"""Orders: the shop's order history, kept from ``order_placed`` events and ``mailer orders import``.

Owns the ``orders`` table's writes and reads: the CSV import (``email, order_id,
placed_at, total, currency`` and an optional ``status``), recording one order from an
event, the shop's rate table (:func:`load_rates`, ``MAILER_FX_RATES_FILE``: never a live
lookup) and reading the orders the prediction models are fitted on
(:func:`order_arrays`).

The import reads its file with the customer import's reader
(:func:`mailer.customers.records.iter_rows`): the same bounded lines, row errors naming
line and column, progress and ``--strict`` (nothing stored when any row is bad).  An
order whose currency has no rate is a row error in the import; from an event it is kept
with ``total_shop`` NULL (the event itself must not fail), and the models leave it out.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from mailer.addresses import email_hash, normalize
from mailer.clock import utcnow
from mailer.customers.attribution import attribute_customers
from mailer.customers.records import (
    DEFAULT_DELIMITER,
    DEFAULT_ENCODING,
    MAX_TOTAL_SPENT,
    ImportResult,
    RowError,
    _parse_datetime,
    _short,
    check_delimiter,
    check_encoding,
    iter_rows,
)
from mailer.db import all_or_nothing
from mailer.errors import ConfigurationError, InvalidAddress
from mailer.instance_secrets import address_hash_salt
from mailer.models import Customer, Order, OrderStatus
from mailer.settings import Settings

#: Columns the orders import understands (``status`` is optional: placed by default).
ORDER_COLUMNS = ("email", "order_id", "placed_at", "total", "currency", "status")
#: Columns the header must have.
REQUIRED_COLUMNS = ("email", "order_id", "placed_at", "total")
#: Rows per upsert statement.
ORDER_BATCH_ROWS = 2000
#: Longest shop order id, characters (orders.shop_order_id is VARCHAR(200)).
MAX_ORDER_ID_CHARS = 200
#: Largest rate table read, bytes.
MAX_RATES_FILE_BYTES = 1024 * 1024
#: Most currencies in a rate table.
MAX_RATES = 1000
#: Largest rate accepted (shop-currency units per unit).
MAX_RATE = Decimal("1e9")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CENT = Decimal("0.01")


@dataclass(frozen=True)
class Rates:
    """The shop's rate table: shop-currency units per unit of each currency."""

    shop_currency: str
    rates: dict[str, Decimal]
    source: str  # the file, for messages

    def convert(self, amount: Decimal, currency: str | None) -> Decimal | None:
        """``amount`` in the shop's currency, or None when the table has no rate for ``currency``."""
        currency = currency or self.shop_currency
        if currency == self.shop_currency:
            return amount
        rate = self.rates.get(currency)
        if rate is None:
            return None
        return (amount * rate).quantize(_CENT)

    def missing(self, currency: str) -> str:
        if not self.source:
            return (f"{currency} is not the shop's currency ({self.shop_currency}) and MAILER_FX_RATES_FILE is not "
                    "set; give the shop's rate table to convert it")
        return f"no rate for {currency} in the rate table {self.source} (MAILER_FX_RATES_FILE)"


_rates_cache: dict[tuple, Rates] = {}


def _rate(value, where: str) -> Decimal:
    try:
        rate = Decimal(str(value).strip())
    except InvalidOperation:
        rate = None
    if rate is None or not rate.is_finite() or rate <= 0 or rate > MAX_RATE:
        raise ConfigurationError(f"{where}: rate {_short(str(value))} must be a positive number "
                                 f"(at most {MAX_RATE})")
    return rate


def _currency_key(value, where: str) -> str:
    code = str(value).strip().upper()
    if not _CURRENCY.match(code):
        raise ConfigurationError(f"{where}: {_short(str(value))} is not a three-letter ISO 4217 code")
    return code


def load_rates(settings: Settings) -> Rates:
    """The rate table of ``MAILER_FX_RATES_FILE`` (cached until the file changes).

    CSV: a header ``currency,rate`` then one row per currency; TOML: a ``[rates]`` table
    (``USD = 0.92``).  A rate is how many units of the shop's currency
    (``MAILER_DEFAULT_CURRENCY``) one unit of the currency is worth.  A bad file is a
    :class:`~mailer.errors.ConfigurationError` naming the file and line.
    """
    shop = settings.default_currency.strip().upper()
    if not settings.fx_rates_file:
        return Rates(shop, {}, "")
    path = Path(settings.fx_rates_file).expanduser()
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigurationError(f"MAILER_FX_RATES_FILE {path}: cannot read: {exc.strerror or exc}") from None
    key = (str(path), stat.st_mtime_ns, stat.st_size, shop)
    cached = _rates_cache.get(key)
    if cached is not None:
        return cached
    if stat.st_size > MAX_RATES_FILE_BYTES:
        raise ConfigurationError(f"{path}: the rate table is larger than {MAX_RATES_FILE_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeError) as exc:
        raise ConfigurationError(f"{path}: cannot read the rate table as UTF-8 ({exc})") from None
    rates: dict[str, Decimal] = {}
    if path.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{path}: TOML syntax: {exc}") from None
        table = data.get("rates")
        if not isinstance(table, dict):
            raise ConfigurationError(f"{path}: needs a [rates] table such as USD = 0.92")
        for name, value in table.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ConfigurationError(f"{path}: rates.{name}: must be a number")
            rates[_currency_key(name, f"{path}: rates.{name}")] = _rate(value, f"{path}: rates.{name}")
    else:
        reader = csv.reader(io.StringIO(text))
        header = [h.strip().lower() for h in next(reader, [])]
        if header[:2] != ["currency", "rate"]:
            raise ConfigurationError(f"{path}: line 1: the header must be currency,rate")
        for row in reader:
            line = reader.line_num
            if not any(v.strip() for v in row):
                continue
            if len(row) != 2:
                raise ConfigurationError(f"{path}: line {line}: expected currency,rate")
            code = _currency_key(row[0], f"{path}: line {line}, column currency")
            if code in rates:
                raise ConfigurationError(f"{path}: line {line}: {code} appears twice")
            rates[code] = _rate(row[1], f"{path}: line {line}, column rate")
    if len(rates) > MAX_RATES:
        raise ConfigurationError(f"{path}: more than {MAX_RATES} currencies")
    result = Rates(shop, rates, str(path))
    _rates_cache.clear()
    _rates_cache[key] = result
    return result


# -- the import ---------------------------------------------------------------------------------
class _Bad(Exception):
    def __init__(self, column: str, reason: str):
        super().__init__(column, reason)
        self.column = column
        self.reason = reason


def parse_order_row(row: dict[str, str], rates: Rates) -> dict:
    """One CSV row as order values (with ``email``); raises ``_Bad(column, reason)``."""
    raw_email = (row.get("email") or "").strip()
    try:
        email = normalize(raw_email)
    except InvalidAddress as exc:
        raise _Bad("email", str(exc)) from None
    order_id = (row.get("order_id") or "").strip()
    if not order_id:
        raise _Bad("order_id", "is required")
    if len(order_id) > MAX_ORDER_ID_CHARS or _CONTROL.search(order_id):
        raise _Bad("order_id", f"must be at most {MAX_ORDER_ID_CHARS} printable characters")
    placed = (row.get("placed_at") or "").strip()
    if not placed:
        raise _Bad("placed_at", "is required (an ISO 8601 date or date-time)")
    try:
        placed_at = _parse_datetime(placed)
    except (ValueError, OverflowError):
        raise _Bad("placed_at", f"{_short(placed)} is not an ISO 8601 date or date-time") from None
    text = (row.get("total") or "").strip()
    try:
        total = Decimal(text)
        if not total.is_finite() or total < 0:
            raise InvalidOperation
    except InvalidOperation:
        raise _Bad("total", f"{_short(text)} is not a non-negative amount") from None
    if total > MAX_TOTAL_SPENT:
        raise _Bad("total", f"{_short(text)} is more than the column holds (at most {MAX_TOTAL_SPENT})")
    if total != total.quantize(_CENT):
        raise _Bad("total", f"{_short(text)} has more than 2 decimal places")
    total = total.quantize(_CENT)
    currency = (row.get("currency") or "").strip().upper() or rates.shop_currency
    if not _CURRENCY.match(currency):
        raise _Bad("currency", f"{_short(currency)} is not a three-letter ISO 4217 code")
    total_shop = rates.convert(total, currency)
    if total_shop is None:
        raise _Bad("currency", rates.missing(currency))
    if total_shop > MAX_TOTAL_SPENT:
        raise _Bad("total", f"{total} {currency} is {total_shop} {rates.shop_currency}, more than the column holds")
    status = (row.get("status") or "").strip().lower() or OrderStatus.placed.value
    if status not in OrderStatus.__members__:
        raise _Bad("status", f"{_short(status)} is not one of {', '.join(OrderStatus.__members__)}")
    return {"email": email, "shop_order_id": order_id, "placed_at": placed_at, "total": total,
            "currency": currency, "total_shop": total_shop, "status": status}


@dataclass
class OrderImportResult(ImportResult):
    """``created`` / ``updated`` count orders; ``new_customers`` the addresses not known before."""

    new_customers: int = 0
    #: Imported orders attributed to a campaign or automation send (mailer/customers/attribution.py).
    attributed: int = 0


def _insert(session: Session):
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def _upsert_orders(session: Session, settings: Settings, rows: list[dict], result: OrderImportResult) -> None:
    if not rows:
        return
    # Later rows win when the file names one order twice.
    by_key = {(r["email"], r["shop_order_id"]): r for r in rows}
    rows = list(by_key.values())
    emails = sorted({r["email"] for r in rows})
    conn = session.connection()
    ins = _insert(session)
    now = utcnow()
    salt = address_hash_salt(settings)
    c = Customer.__table__
    known = dict(conn.execute(select(c.c.email, c.c.id).where(c.c.email.in_(emails))).all())
    new = [e for e in emails if e not in known]
    if new:
        # Unknown addresses become customers; a concurrent create of one is not an error.
        conn.execute(ins(c).on_conflict_do_nothing(index_elements=["email"]),
                     [{"email": e, "email_hash": email_hash(e, salt), "total_spent": Decimal("0"), "orders_count": 0,
                       "attributes": {}, "created_at": now, "updated_at": now} for e in new])
        known = dict(conn.execute(select(c.c.email, c.c.id).where(c.c.email.in_(emails))).all())
        result.new_customers += len(new)
    o = Order.__table__
    ids = sorted(set(known.values()))
    # Orders of these customers before and after: uq_orders_customer_shop_order's prefix.
    count = select(func.count()).select_from(o).where(o.c.customer_id.in_(ids))
    before = conn.execute(count).scalar_one()
    stmt = ins(o)
    # executemany of one cached statement: new orders inserted, known ones updated in place.
    stmt = stmt.on_conflict_do_update(
        index_elements=["customer_id", "shop_order_id"],
        set_={k: getattr(stmt.excluded, k) for k in ("placed_at", "total", "currency", "total_shop", "status",
                                                      "updated_at")})
    conn.execute(stmt, [{"customer_id": known[r["email"]], "shop_order_id": r["shop_order_id"],
                         "placed_at": r["placed_at"], "total": r["total"], "currency": r["currency"],
                         "total_shop": r["total_shop"], "status": r["status"], "created_at": now, "updated_at": now}
                        for r in rows])
    after = conn.execute(count).scalar_one()
    result.created += after - before
    result.updated += len(rows) - (after - before)
    # Revenue attribution of the imported orders (and reversal of cancelled / refunded ones).
    result.attributed += attribute_customers(session, settings, ids, now=now)


def import_orders_csv(session: Session, settings: Settings, path: Path, *, strict: bool = False,
                      progress: Callable[[int], None] | None = None, encoding: str = DEFAULT_ENCODING,
                      delimiter: str = DEFAULT_DELIMITER) -> OrderImportResult:
    """Import orders from ``path`` inside the caller's transaction (see :func:`import_orders_file`)."""
    rates = load_rates(settings)
    result = OrderImportResult()
    batch: list[dict] = []
    for line, row, error in iter_rows(Path(path), encoding=encoding, delimiter=delimiter, columns=ORDER_COLUMNS,
                                      required=REQUIRED_COLUMNS):
        if error is not None:
            result.errors.append(error)
            continue
        try:
            batch.append(parse_order_row(row, rates))
        except _Bad as bad:
            result.errors.append(RowError(line, bad.column, bad.reason))
            continue
        if len(batch) >= ORDER_BATCH_ROWS:
            if not (strict and result.errors):
                _upsert_orders(session, settings, batch, result)
            if progress:
                progress(len(batch))
            batch = []
    if not (strict and result.errors):
        _upsert_orders(session, settings, batch, result)
    if progress and batch:
        progress(len(batch))
    if strict and result.errors:
        result.strict_aborted = True
        result.created = result.updated = result.new_customers = result.attributed = 0
    return result


def import_orders_file(settings: Settings, path: Path, *, strict: bool = False,
                       progress: Callable[[int], None] | None = None, encoding: str = DEFAULT_ENCODING,
                       delimiter: str = DEFAULT_DELIMITER) -> OrderImportResult:
    """Import in one transaction; in strict mode nothing is stored when a row is bad."""
    check_encoding(encoding)
    check_delimiter(delimiter)
    load_rates(settings)  # a bad rate table stops the import before the file is read
    return all_or_nothing(settings, lambda session: import_orders_csv(session, settings, path, strict=strict,
                                                                      progress=progress, encoding=encoding,
                                                                      delimiter=delimiter),
                          keep=lambda result: not result.strict_aborted)


# -- events ----------------------------------------------------------------------------------------
def record_order(session: Session, settings: Settings, customer_id: int, shop_order_id: str, *,
                 placed_at: dt.datetime | None = None, total: Decimal | None = None, currency: str | None = None,
                 status: OrderStatus = OrderStatus.placed) -> int:
    """Keep one order from an event, inside the event's transaction (created, or updated in place); its id.

    A cancellation or refund of an order never seen before is kept too (it has no total
    then), so a later ``order_placed`` replay cannot resurrect it as placed.
    """
    currency = (currency or "").upper() or None
    total_shop = None
    if total is not None:
        try:
            total_shop = load_rates(settings).convert(total, currency)
        except ConfigurationError:
            total_shop = None  # a broken rate table must not fail the shop's event; the import reports it
    o = Order.__table__
    ins = _insert(session)
    now = utcnow()
    values = {"customer_id": customer_id, "shop_order_id": shop_order_id, "placed_at": placed_at or now,
              "total": total, "currency": currency, "total_shop": total_shop, "status": status.value,
              "created_at": now, "updated_at": now}
    stmt = ins(o).values(**values)
    if status is OrderStatus.placed:
        # A replayed or corrected order_placed updates the amounts, never a cancelled/refunded status.
        update = {k: getattr(stmt.excluded, k) for k in ("placed_at", "total", "currency", "total_shop", "updated_at")}
    else:
        update = {"status": stmt.excluded.status, "updated_at": stmt.excluded.updated_at}
    session.execute(stmt.on_conflict_do_update(index_elements=["customer_id", "shop_order_id"], set_=update))
    # The row just written, by uq_orders_customer_shop_order.
    return session.execute(select(o.c.id).where(o.c.customer_id == customer_id,
                                                o.c.shop_order_id == shop_order_id)).scalar_one()


# -- reading for the models -------------------------------------------------------------------------
@dataclass(frozen=True)
class OrderArrays:
    """The placed orders up to an as-of day, as aligned numpy arrays, and what was left out."""

    customer_ids: np.ndarray  # int64
    days: np.ndarray  # datetime64[D], the UTC day of placed_at
    amounts: np.ndarray  # float64, total in the shop's currency
    without_total: int  # placed orders left out: no total, or no rate for their currency


#: Rows fetched per round trip when reading orders (SQLite); bytes per block parsed (PostgreSQL).
READ_CHUNK_ROWS = 100_000
READ_CHUNK_BYTES = 8 * 1024 * 1024
#: One order as the reader keeps it: customer id, UTC day (days since 1970-01-01), total in the shop's currency.
_ORDER_ROW = np.dtype([("customer_id", "<i8"), ("day", "<i8"), ("amount", "<f8")])
#: One order as PostgreSQL's binary COPY sends it: field count, then (length, value) per
#: field, big-endian (int8 customer_id, int4 day, float8 amount; none of them NULL).
_PG_COPY_ROW = np.dtype([("fields", ">i2"), ("len_id", ">i4"), ("customer_id", ">i8"), ("len_day", ">i4"),
                         ("day", ">i4"), ("len_amount", ">i4"), ("amount", ">f8")])
_PG_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_PG_COPY_TRAILER = b"\xff\xff"


def _read_sqlite(dbapi, end_day: str) -> tuple[list[np.ndarray], int]:
    # A plain scan of orders (the period is normally most of the table, so ix_orders_placed_at
    # would only add a random row lookup per order). placed_at is stored as naive UTC text
    # 'YYYY-MM-DD HH:MM:SS...', so its first 10 characters are the UTC day: compared as text
    # and turned into whole days since 1970 by SQLite itself, no Python datetime per value.
    cur = dbapi.cursor()
    try:
        cur.execute("SELECT customer_id, CAST(julianday(substr(placed_at, 1, 10)) - 2440587.5 AS INTEGER), "
                    "CAST(total_shop AS REAL) FROM orders "
                    "WHERE status = 'placed' AND total_shop IS NOT NULL AND substr(placed_at, 1, 10) < ?",
                    (end_day,))
        parts = []
        while rows := cur.fetchmany(READ_CHUNK_ROWS):
            parts.append(np.array(rows, dtype=_ORDER_ROW))
        # The orders left out, over the same plain scan (through ix_orders_placed_at it would
        # be one random row lookup per order of the period).
        cur.execute("SELECT count(*) FROM orders WHERE status = 'placed' AND total_shop IS NULL "
                    "AND substr(placed_at, 1, 10) < ?", (end_day,))
        return parts, int(cur.fetchone()[0])
    finally:
        cur.close()


def _read_postgresql(session: Session, dbapi, end: dt.datetime) -> tuple[list[np.ndarray], int]:
    # The same scan as binary COPY: fixed-width rows parsed by numpy straight from the wire,
    # no Python object per value. The UTC day is computed by the server (timestamptz at UTC,
    # as a date, minus the epoch: an int4).
    sql = ("COPY (SELECT customer_id::int8, ((placed_at AT TIME ZONE 'UTC')::date - DATE '1970-01-01')::int4, "
           "total_shop::float8 FROM orders WHERE status = 'placed' AND total_shop IS NOT NULL "
           "AND placed_at < %s) TO STDOUT (FORMAT BINARY)")
    size = _PG_COPY_ROW.itemsize
    parts: list[np.ndarray] = []
    pending = bytearray()
    header_done = False

    def take(final: bool) -> None:
        nonlocal pending, header_done
        if not header_done:
            if len(pending) < len(_PG_COPY_SIGNATURE) + 8:
                if final:
                    raise RuntimeError("orders COPY: truncated binary header")
                return
            if pending[:len(_PG_COPY_SIGNATURE)] != _PG_COPY_SIGNATURE:
                raise RuntimeError("orders COPY: unexpected binary signature")
            ext = int.from_bytes(pending[len(_PG_COPY_SIGNATURE) + 4:len(_PG_COPY_SIGNATURE) + 8], "big")
            del pending[:len(_PG_COPY_SIGNATURE) + 8 + ext]
            header_done = True
        body = len(pending) - (len(_PG_COPY_TRAILER) if final else 0)
        whole = body // size * size
        if final and (body != whole or pending[body:] != _PG_COPY_TRAILER):
            raise RuntimeError("orders COPY: the binary stream does not end on a whole row")
        if whole:
            rows = np.frombuffer(bytes(pending[:whole]), dtype=_PG_COPY_ROW)
            if ((rows["fields"] != 3) | (rows["len_id"] != 8) | (rows["len_day"] != 4)
                    | (rows["len_amount"] != 8)).any():
                raise RuntimeError("orders COPY: a row is not (int8, int4, float8) without NULLs")
            part = np.empty(rows.shape[0], dtype=_ORDER_ROW)
            part["customer_id"], part["day"], part["amount"] = rows["customer_id"], rows["day"], rows["amount"]
            parts.append(part)
            del pending[:whole]

    with dbapi.cursor() as cur, cur.copy(sql, (end,)) as copy:
        for block in copy:
            pending += block
            if len(pending) >= READ_CHUNK_BYTES:
                take(final=False)
    take(final=True)
    o = Order.__table__
    # The orders left out (the planner picks the index or a scan by the period's share of the table).
    without = session.execute(select(func.count()).select_from(o).where(
        o.c.status == OrderStatus.placed.value, o.c.placed_at < end, o.c.total_shop.is_(None))).scalar_one()
    return parts, int(without)


def order_arrays(session: Session, as_of: dt.date) -> OrderArrays:
    """Every placed order up to the end of ``as_of`` (UTC) with a total in the shop's currency.

    Read through the session's own DB-API connection (its transaction), straight into
    numpy: a few hundred thousand rows per chunk, 24 bytes per order kept.
    """
    end = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    conn = session.connection()
    dbapi = conn.connection.dbapi_connection
    if conn.dialect.name == "postgresql":
        parts, without = _read_postgresql(session, dbapi, end)
    else:
        parts, without = _read_sqlite(dbapi, (as_of + dt.timedelta(days=1)).isoformat())
    parts = parts or [np.empty(0, dtype=_ORDER_ROW)]
    # Column by column, so the peak is the chunks plus one copy, not two.
    ids = np.concatenate([p["customer_id"] for p in parts])
    days = np.concatenate([p["day"] for p in parts]).astype("datetime64[D]")
    amounts = np.concatenate([p["amount"] for p in parts])
    del parts
    return OrderArrays(ids, days, amounts, int(without))


def customer_orders(session: Session, customer_id: int) -> list[Order]:
    """One customer's orders, oldest first (``mailer predict show``)."""
    return list(session.execute(select(Order).where(Order.customer_id == customer_id)
                                .order_by(Order.placed_at, Order.id)).scalars())
