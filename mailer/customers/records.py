"""Customers: the CSV import (create or update by e-mail) and lookups.

Every row is checked on its own; a bad row is reported with its line number, column
and reason, and every good row is imported (``strict=True`` imports nothing if any
row is bad).  Rows are written in batches with one upsert statement per batch, so
100,000 rows take seconds.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import delete, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from mailer.addresses import email_hash, normalize
from mailer.clock import utcnow
from mailer.db import all_or_nothing
from mailer.errors import InvalidAddress, NotFound, ValidationError
from mailer.models import Customer, CustomerTag, SpendTier
from mailer.settings import Settings

#: Columns the import understands; others are kept in ``customers.attributes``.
COLUMNS = ("email", "first_name", "last_name", "locale", "timezone", "country", "tags", "total_spent",
           "currency", "orders_count", "last_order_at", "predicted_spend_tier")
#: Rows per upsert statement.
BATCH_ROWS = 2000

_LOCALE = re.compile(r"^[a-zA-Z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


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
    if locale and not _LOCALE.match(locale):
        raise _Bad("locale", f"{locale!r} is not a locale tag such as en, pl or zh-TW")
    out["locale"] = locale.replace("_", "-") or None
    tz = (row.get("timezone") or "").strip()
    if tz and not _zone_ok(tz):
        raise _Bad("timezone", f"{tz!r} is not an IANA time zone such as Europe/Warsaw")
    out["timezone"] = tz or None
    country = (row.get("country") or "").strip().upper()
    if country and not re.fullmatch(r"[A-Z]{2}", country):
        raise _Bad("country", f"{country!r} is not a two-letter country code")
    out["country"] = country or None
    tags = [t.strip() for t in re.split(r"[;,]", row.get("tags") or "") if t.strip()]
    if any(len(t) > 100 or _CONTROL.search(t) for t in tags):
        raise _Bad("tags", "a tag is longer than 100 characters or has a control character")
    out["tags"] = sorted(set(tags))
    spent = (row.get("total_spent") or "").strip()
    try:
        out["total_spent"] = Decimal(spent) if spent else Decimal("0")
        if out["total_spent"] < 0 or not out["total_spent"].is_finite():
            raise InvalidOperation
    except InvalidOperation:
        raise _Bad("total_spent", f"{spent!r} is not a non-negative amount") from None
    currency = (row.get("currency") or "").strip().upper()
    if currency and not re.fullmatch(r"[A-Z]{3}", currency):
        raise _Bad("currency", f"{currency!r} is not a three-letter ISO 4217 code")
    out["currency"] = currency or None
    orders = (row.get("orders_count") or "").strip()
    try:
        out["orders_count"] = int(orders) if orders else 0
        if out["orders_count"] < 0:
            raise ValueError
    except ValueError:
        raise _Bad("orders_count", f"{orders!r} is not a non-negative whole number") from None
    last = (row.get("last_order_at") or "").strip()
    try:
        out["last_order_at"] = _parse_datetime(last) if last else None
    except ValueError:
        raise _Bad("last_order_at", f"{last!r} is not an ISO 8601 date or date-time") from None
    tier = (row.get("predicted_spend_tier") or "").strip().lower()
    if tier and tier not in SpendTier.__members__:
        raise _Bad("predicted_spend_tier", f"{tier!r} is not one of high, medium, low")
    out["predicted_spend_tier"] = tier or None
    return out


class _Bad(Exception):
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
    dialect = session.get_bind().dialect.name
    ins = pg_insert if dialect == "postgresql" else sqlite_insert
    now = utcnow()
    values = [{k: v for k, v in r.items() if k != "tags"} | {
        "email_hash": email_hash(r["email"], settings.effective_hash_salt), "attributes": r.get("attributes", {}),
        "created_at": now, "updated_at": now} for r in rows]
    table = Customer.__table__
    stmt = ins(table)
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


def iter_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) pairs; the header is line 1. Quoted fields may span lines."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "email" not in [f.strip() for f in reader.fieldnames]:
            raise ValidationError(f"{path}: line 1: the header must have an 'email' column "
                                  f"(columns understood: {', '.join(COLUMNS)})", where=f"{path}:1")
        reader.fieldnames = [f.strip() for f in reader.fieldnames]
        line = reader.line_num
        for row in reader:
            yield line + 1, row
            line = reader.line_num


def import_csv(session: Session, settings: Settings, path: Path, *, strict: bool = False,
               progress: Callable[[int], None] | None = None) -> ImportResult:
    """Import customers from ``path`` inside the caller's transaction.

    With ``strict`` the caller must roll back when ``result.errors`` is not empty;
    :func:`import_file` does.
    """
    result = ImportResult()
    batch: list[dict] = []
    for line, row in iter_rows(Path(path)):
        if None in row:
            result.errors.append(RowError(line, "-", f"{len(row[None])} value(s) more than the header has columns"))
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
                progress: Callable[[int], None] | None = None) -> ImportResult:
    """Import in one transaction; roll back everything in strict mode when a row is bad."""
    return all_or_nothing(settings, lambda session: import_csv(session, settings, path, strict=strict,
                                                                progress=progress),
                          keep=lambda result: not result.strict_aborted)


def get_or_create(session: Session, settings: Settings, address: str, *, locale: str | None = None,
                  first_name: str | None = None) -> Customer:
    """The customer with this (normalized) address, created when unknown."""
    email = normalize(address)
    customer = session.execute(select(Customer).where(Customer.email == email)).scalar_one_or_none()
    if customer is None:
        customer = Customer(email=email, email_hash=email_hash(email, settings.effective_hash_salt),
                            locale=locale, first_name=first_name, total_spent=Decimal("0"), orders_count=0,
                            attributes={})
        session.add(customer)
        session.flush()
    return customer


def by_email(session: Session, address: str) -> Customer:
    email = normalize(address)
    customer = session.execute(select(Customer).where(Customer.email == email)).scalar_one_or_none()
    if customer is None:
        raise NotFound(f"no customer with address {email}")
    return customer

