"""Reward-code pools: importing discount / gift-card codes and giving each to one customer.

A pool is a name (``vip``, ``giftcard-50``) shared by the rows of ``reward_codes``
that carry it.  A code is free while ``assigned_at`` is NULL (and it has not expired);
:func:`claim` hands the first free code to one customer with one conditional UPDATE,
so a code goes to at most one customer however many workers claim at once:

* PostgreSQL: the UPDATE picks its row with ``FOR UPDATE SKIP LOCKED``, so concurrent
  claimers take different rows instead of queueing on the same one;
* SQLite: a single writer at a time; the UPDATE re-checks ``assigned_at IS NULL``.

Either way, a claim that matched no row looks again (another claimer may have held the
row it saw) until it gets a code or no free code is left, then raises
:class:`~mailer.errors.PoolExhausted`; the automation that asked logs an alert and
sends nothing (never a mail without a code).

Codes given to a delivery that then never left (cancelled, skipped for consent or the
frequency cap, suppressed) go back to the pool: :func:`release_unsent`.
"""

from __future__ import annotations

import csv
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from datetime import time as dtime
from pathlib import Path

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.customers.records import RowError  # the same "line N, column C: reason" report as customer imports
from mailer.db import all_or_nothing, insert_or_ignore
from mailer.errors import PoolExhausted, ValidationError
from mailer.models import Delivery, DeliveryStatus, RewardCode

log = logging.getLogger("mailer.codes")

#: A pool name: letters, digits, ``_ . : -``, up to 100 characters.
POOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
#: A code: printable, no spaces, up to 100 characters.
CODE = re.compile(r"^[\x21-\x7e]{1,100}$")
#: A code's worth: a non-negative number with at most 2 decimals ("15", "50.00").
_VALUE = re.compile(r"^\d{1,9}(\.\d{1,2})?$")
#: Rows per INSERT statement when importing.
IMPORT_BATCH_ROWS = 1000
#: How long a claim keeps looking when free codes exist but are all held by other
#: in-flight transactions (seconds), and the pause between looks (seconds).
CLAIM_PATIENCE_S = 30.0
CLAIM_PAUSE_S = 0.02
#: Delivery outcomes after which the code was certainly never mailed.
UNSENT = (DeliveryStatus.cancelled, DeliveryStatus.skipped, DeliveryStatus.suppressed)


def check_pool(pool: str) -> str:
    if not POOL_NAME.match(pool or ""):
        raise ValidationError(f"pool name {pool!r} must be 1-100 letters, digits or _ . : - "
                              "(starting with a letter or digit)", field="pool")
    return pool


@dataclass
class ImportResult:
    pool: str
    added: int = 0
    already_present: int = 0
    errors: list[RowError] = field(default_factory=list)


@dataclass(frozen=True)
class PoolStatus:
    pool: str
    total: int
    assigned: int
    free: int
    expired: int
    #: Assigned codes whose mail has not left yet (scheduled or queued).
    waiting: int


@dataclass(frozen=True)
class Claimed:
    id: int
    code: str
    value: str | None
    expires_at: datetime | None


def _parse_expiry(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        # A bare date means "valid through that day" (UTC).
        parsed = datetime.combine(date.fromisoformat(value), dtime(23, 59, 59))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def read_csv(path: Path) -> tuple[list[dict], list[RowError]]:
    """Parse a codes file: rows of (code[, value[, expires_at]]), header optional.

    With a header the columns are named ``code``, ``value``, ``expires_at`` (others are
    refused); without one they are taken in that order.
    """
    rows: list[dict] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    try:
        fh = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - opened apart to report OSError clearly; closed by `with fh` below
    except OSError as exc:
        raise ValidationError(f"{path}: cannot read: {exc.strerror}") from exc
    with fh:
        reader = csv.reader(fh)
        columns = ["code", "value", "expires_at"]
        line = 0
        first = True
        for record in reader:
            line_start, line = line + 1, reader.line_num
            cells = [c.strip() for c in record]
            if not any(cells):
                continue
            if first:
                first = False
                if cells[0].lower() == "code":
                    unknown = [c for c in cells if c.lower() not in columns]
                    if unknown:
                        raise ValidationError(f"{path}: line {line_start}: unknown column {unknown[0]!r} "
                                              "(columns: code, value, expires_at)",
                                              field=unknown[0])
                    columns = [c.lower() for c in cells]
                    continue
            if len(cells) > len(columns):
                errors.append(RowError(line_start, "-", f"{len(cells)} values but only {len(columns)} columns "
                                                        f"({', '.join(columns)})"))
                continue
            row = dict(zip(columns, cells, strict=False))
            code = row.get("code", "")
            if not CODE.match(code):
                errors.append(RowError(line_start, "code", "empty, longer than 100 characters, or has spaces "
                                                           "or control characters" if code else "empty"))
                continue
            if code in seen:
                errors.append(RowError(line_start, "code", f"{code!r} already appears on line {seen[code]}"))
                continue
            seen[code] = line_start
            value = row.get("value") or None
            if value is not None and not _VALUE.match(value):
                errors.append(RowError(line_start, "value", f"{value!r} is not a number such as 15 or 50.00 "
                                                            "(percent or amount, as the automation says)"))
                continue
            expires = row.get("expires_at") or None
            try:
                expires_at = _parse_expiry(expires) if expires else None
            except ValueError:
                errors.append(RowError(line_start, "expires_at", f"{expires!r} is not an ISO 8601 date or date-time"))
                continue
            rows.append({"code": code, "value": value, "expires_at": expires_at})
    return rows, errors


def import_codes(session: Session, pool: str, path: Path) -> ImportResult:
    """Load the codes in ``path`` into ``pool`` inside the caller's transaction.

    All or nothing: when any row is bad, nothing is added and ``errors`` says which
    (line, column, reason).  Codes already in the pool are left as they are and
    counted, so importing the same file twice adds nothing the second time.
    """
    check_pool(pool)
    result = ImportResult(pool=pool)
    rows, result.errors = read_csv(Path(path))
    if result.errors or not rows:
        return result
    for start in range(0, len(rows), IMPORT_BATCH_ROWS):
        batch = rows[start:start + IMPORT_BATCH_ROWS]
        # One INSERT per batch; an existing (pool, code) keeps its row and assignment.
        stmt = insert_or_ignore(session, RewardCode, [{"pool": pool, **r} for r in batch],
                                index_elements=["pool", "code"]).returning(RewardCode.id)
        added = len(session.execute(stmt).all())
        result.added += added
        result.already_present += len(batch) - added
    return result


def import_file(settings, pool: str, path: Path) -> ImportResult:
    """:func:`import_codes` in its own transaction (rolled back when a row is bad)."""
    return all_or_nothing(settings, lambda session: import_codes(session, pool, path),
                          keep=lambda result: not result.errors)


def _free(pool: str, now: datetime):
    return and_(RewardCode.pool == pool, RewardCode.assigned_at.is_(None),
                or_(RewardCode.expires_at.is_(None), RewardCode.expires_at > now))


def claim(session: Session, pool: str, *, customer_id: int, delivery_id: int | None = None,
          now: datetime | None = None) -> Claimed:
    """Give the first free code of ``pool`` to ``customer_id``, inside the caller's transaction.

    Raises :class:`PoolExhausted` when no free, unexpired code is left.
    """
    now = now or utcnow()
    postgres = session.get_bind().dialect.name == "postgresql"
    deadline = time.monotonic() + CLAIM_PATIENCE_S
    while True:
        # The first free code in id order (ix_reward_codes_pool_free).  On PostgreSQL,
        # SKIP LOCKED lets concurrent claimers each lock a different row at once.
        pick = select(RewardCode.id).where(_free(pool, now)).order_by(RewardCode.id).limit(1)
        if postgres:
            pick = pick.with_for_update(skip_locked=True)
        # The conditional UPDATE is the claim: ``assigned_at IS NULL`` is re-checked on
        # the row itself, so two claimers can never both take it.
        stmt = (update(RewardCode)
                .where(RewardCode.id == pick.scalar_subquery(), RewardCode.assigned_at.is_(None))
                .values(customer_id=customer_id, delivery_id=delivery_id, assigned_at=now)
                .returning(RewardCode.id, RewardCode.code, RewardCode.value, RewardCode.expires_at)
                .execution_options(synchronize_session=False))
        row = session.execute(stmt).first()
        if row is not None:
            return Claimed(row.id, row.code, row.value, row.expires_at)
        # Nothing matched: either the pool is empty, or every free row we could see is
        # held by another transaction (PostgreSQL) that may still roll back.
        left = session.execute(select(func.count()).select_from(RewardCode).where(_free(pool, now))).scalar_one()
        if left == 0 or not postgres or time.monotonic() > deadline:
            total = session.execute(select(func.count()).select_from(RewardCode)
                                    .where(RewardCode.pool == pool)).scalar_one()
            if total == 0:
                raise PoolExhausted(f"reward-code pool {pool!r} has no codes; load some with "
                                    f"`mailer codes import {pool} codes.csv`")
            raise PoolExhausted(f"reward-code pool {pool!r} is exhausted: all {total} codes are given out "
                                f"or expired; load more with `mailer codes import {pool} codes.csv`")
        time.sleep(CLAIM_PAUSE_S)


def attach(session: Session, code_id: int, delivery_id: int) -> None:
    """Record which delivery carries a claimed code."""
    session.execute(update(RewardCode).where(RewardCode.id == code_id).values(delivery_id=delivery_id)
                    .execution_options(synchronize_session=False))


def status(session: Session, pool: str, *, now: datetime | None = None) -> PoolStatus:
    """How many codes the pool has, how many are given out, free, expired, waiting to be mailed."""
    check_pool(pool)
    now = now or utcnow()
    assigned = RewardCode.assigned_at.is_not(None)
    expired = and_(RewardCode.assigned_at.is_(None), RewardCode.expires_at.is_not(None),
                   RewardCode.expires_at <= now)
    # One pass over the pool's rows (ix_reward_codes_pool_free) with conditional counts.
    row = session.execute(select(
        func.count(),
        func.count().filter(assigned),
        func.count().filter(expired),
    ).select_from(RewardCode).where(RewardCode.pool == pool)).one()
    # Assigned codes whose delivery has not reached a final state yet.
    waiting = session.execute(
        select(func.count()).select_from(RewardCode).join(Delivery, Delivery.id == RewardCode.delivery_id)
        .where(RewardCode.pool == pool,
               Delivery.status.in_([DeliveryStatus.scheduled, DeliveryStatus.queued, DeliveryStatus.sending]))
    ).scalar_one()
    total, given, gone = row
    return PoolStatus(pool=pool, total=total, assigned=given, free=total - given - gone, expired=gone,
                      waiting=waiting)


def pools(session: Session) -> list[str]:
    return list(session.execute(select(RewardCode.pool).distinct().order_by(RewardCode.pool)).scalars())


def release_unsent(session: Session) -> int:
    """Return codes whose delivery ended without being mailed to their pool; how many."""
    # Codes attached to deliveries that were cancelled, skipped or suppressed: those
    # mails never reached a relay, so nobody holds the code.
    unsent = select(Delivery.id).where(Delivery.id == RewardCode.delivery_id, Delivery.status.in_(UNSENT))
    res = session.execute(update(RewardCode).where(RewardCode.assigned_at.is_not(None), unsent.exists())
                          .values(customer_id=None, delivery_id=None, assigned_at=None)
                          .execution_options(synchronize_session=False))
    if res.rowcount:
        log.info("released %d reward codes whose mail was never sent", res.rowcount)
    return res.rowcount or 0
