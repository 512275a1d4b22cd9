"""Segment resolution: count, stream (keyset + id windows), sample and membership.

Resolution drives from ``consent_state`` (purpose, granted, customer_id index): only
customers with current consent for the segment's purpose are considered (each state
row confirmed by a primary-key join to the grant event it names), suppressed
addresses (scope ``all``, ``marketing`` or the purpose) are excluded, and recipients
come out in customer-id order, ``batch_size`` at a time, so a caller (campaign
fan-out) can resume from the last id it handled and never holds the segment.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import BigInteger, Integer, bindparam, exists, func, select, true
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.consent.ledger import granted_state_join
from mailer.errors import SegmentError
from mailer.models import ConsentEvent, ConsentState, Customer, LawfulBasis, Suppression
from mailer.segments.conditions import _sql
from mailer.segments.files import Segment
from mailer.settings import Settings

#: Default recipients per batch when streaming.
BATCH_SIZE = 500
#: Largest window of consenting customers one streaming query examines, in batch sizes.
WINDOW_MAX_FACTOR = 16
#: Upper bound of the last window (largest BIGINT).
_MAX_ID = 2**63 - 1


class Recipient(NamedTuple):
    """One segment member, with what a campaign needs to address and render the mail."""

    customer_id: int
    email: str
    email_hash: str
    locale: str | None
    timezone: str | None
    first_name: str | None
    last_name: str | None
    currency: str | None


# -- resolution -----------------------------------------------------------------------------------
def _suppression_scopes(purpose: str) -> list[str]:
    return ["all", "marketing", purpose]


def _base_where(settings: Settings, segment: Segment, now: datetime, *, bulk: bool = False,
                window: tuple | None = None) -> list:
    cs, c, sup = ConsentState.__table__.c, Customer.__table__.c, Suppression.__table__.c
    where = [cs.purpose == segment.purpose, cs.granted == true(), c.email.is_not(None),
             # Suppressions always win (ix_suppressions_email_hash probe per candidate).
             ~exists(select(1).where(sup.email_hash == c.email_hash,
                                     sup.scope.in_(_suppression_scopes(segment.purpose))))]
    if not settings.soft_opt_in:
        # The basis of the grant itself (the event the state row names), not the row's copy.
        where.append(ConsentEvent.__table__.c.basis == LawfulBasis.consent)
    if segment.conditions:
        where.append(_sql(segment.conditions, now, unindexed=True, bulk=bulk, window=window))
    return where


def _from():
    # Each consenting state row is confirmed, by a primary-key join to the event it names,
    # to be a grant of that customer and purpose (see consent.granted_state_join).
    c = Customer.__table__
    return granted_state_join().join(c, c.c.id == ConsentState.__table__.c.customer_id)


def count(session: Session, settings: Settings, segment: Segment, *, now: datetime | None = None) -> int:
    """How many customers the segment resolves to right now."""
    now = now or utcnow()
    # Driven by ix_consent_state_purpose (purpose, granted, customer_id): only consenting
    # customers are visited; the customer row is fetched by primary key for the conditions.
    stmt = select(func.count()).select_from(_from()).where(*_base_where(settings, segment, now, bulk=True))
    return int(session.execute(stmt).scalar_one())


def locales(session: Session, settings: Settings, segment: Segment, *,
            now: datetime | None = None) -> dict[str, int]:
    """Members per locale right now (a customer without a locale counts under MAILER_DEFAULT_LOCALE).

    The console shows these next to the subjects a marketer types, so it can flag the
    locales that will fall back to another language's subject.
    """
    now = now or utcnow()
    loc = Customer.__table__.c.locale
    # The same FROM and WHERE as count(), grouped by the customer's locale: one pass over
    # the consenting customers, a handful of result rows.
    stmt = (select(loc, func.count()).select_from(_from())
            .where(*_base_where(settings, segment, now, bulk=True)).group_by(loc))
    out: dict[str, int] = {}
    for value, n in session.execute(stmt).all():
        key = value or settings.default_locale
        out[key] = out.get(key, 0) + int(n)
    return dict(sorted(out.items()))


def _page_stmt(settings: Settings, segment: Segment, now: datetime, *, window: tuple | None = None):
    c = Customer.__table__.c
    return (select(c.id, c.email, c.email_hash, c.locale, c.timezone, c.first_name, c.last_name, c.currency)
            .select_from(_from()).where(*_base_where(settings, segment, now, bulk=window is not None,
                                                     window=window)))


def stream(session: Session, settings: Settings, segment: Segment, *, after_id: int = 0,
           batch_size: int = BATCH_SIZE, now: datetime | None = None) -> Iterator[list[Recipient]]:
    """Yield the segment's recipients in customer-id order, ``batch_size`` per list (the last may be shorter).

    Keyset pagination, never an offset into the segment; ``after_id`` resumes after the
    last customer a caller handled, and at most one window plus one batch is in memory.

    * The first batch is one query: ``customer id > after_id ORDER BY id LIMIT batch``
      (a campaign fan-out step takes just this and comes back later with its cursor).
    * A caller that keeps reading gets windows of consenting ids: one index-only query
      finds the id ``hi`` of the n-th consenting customer after the last id seen, one
      query returns the recipients in ``(last, hi]`` with every table read as a range of
      that window.  n aims at several batches divided by the share of consenting
      customers the segment keeps (a segment keeping 1 in 60 reads bigger windows),
      capped at ``WINDOW_MAX_FACTOR * batch_size``.
    """
    if batch_size < 1:
        raise SegmentError("batch_size must be at least 1", field="batch_size")
    now = now or utcnow()
    cs, c = ConsentState.__table__.c, Customer.__table__.c
    lo, hi = bindparam("lo", type_=BigInteger()), bindparam("hi", type_=BigInteger())
    # The bound on customers.id too lets PostgreSQL start its merge join at the cursor
    # instead of scanning customers from id 1.
    first = (_page_stmt(settings, segment, now).where(cs.customer_id > lo, c.id > lo)
             .order_by(cs.customer_id).limit(batch_size))
    rows = session.execute(first, {"lo": after_id}).all()
    if not rows:
        return
    yield [Recipient(*r) for r in rows]
    if len(rows) < batch_size:
        return
    # The window bound on both join sides (and in tag / engagement subqueries) lets each
    # database read only the window's ids: merge or range joins instead of probes.
    page = (_page_stmt(settings, segment, now, window=(lo, hi))
            .where(cs.customer_id > lo, cs.customer_id <= hi, c.id > lo, c.id <= hi).order_by(cs.customer_id))
    # The window's upper id: an OFFSET walk over ix_consent_state_purpose (index only).
    bound = (select(cs.customer_id).where(cs.purpose == segment.purpose, cs.granted == true(), cs.customer_id > lo)
             .order_by(cs.customer_id).offset(bindparam("skip", type_=Integer())).limit(1))
    last = rows[-1][0]
    buffer: list[Recipient] = []
    examined, kept = 0, 0
    while True:
        target = batch_size - len(buffer) + 3 * batch_size
        share = kept / examined if kept else (1.0 if not examined else 1.0 / (examined + 1))
        window = max(1, min(WINDOW_MAX_FACTOR * batch_size, math.ceil(target / share)))
        upper = session.execute(bound, {"lo": last, "skip": window - 1}).scalar()
        rows = session.execute(page, {"lo": last, "hi": upper if upper is not None else _MAX_ID}).all()
        examined += window
        kept += len(rows)
        buffer.extend(Recipient(*r) for r in rows)
        while len(buffer) >= batch_size:
            yield buffer[:batch_size]
            buffer = buffer[batch_size:]
        if upper is None:
            break
        last = upper
    if buffer:
        yield buffer


def sample(session: Session, settings: Settings, segment: Segment, n: int = 10, *,
           now: datetime | None = None) -> list[Recipient]:
    """The first ``n`` recipients (lowest customer ids)."""
    for page in stream(session, settings, segment, batch_size=max(1, n), now=now):
        return page
    return []


def contains(session: Session, settings: Settings, segment: Segment, customer_id: int, *,
             now: datetime | None = None) -> bool:
    """Is this customer in the segment right now (consent, suppressions and conditions)?"""
    cs, c = ConsentState.__table__.c, Customer.__table__.c
    stmt = (_page_stmt(settings, segment, now or utcnow())
            .where(cs.customer_id == customer_id, c.id == customer_id).limit(1))
    return session.execute(stmt).first() is not None
