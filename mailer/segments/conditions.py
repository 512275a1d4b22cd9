"""Segment conditions: the compiler to SQL and the plain-Python evaluator.

Works on the normalized trees :mod:`mailer.segments.files` validates.  Every leaf
compiles to a two-valued SQL expression (NULL-guarded), so ``not`` means the same in
SQL as in :func:`evaluate`, the plain-Python reference the property tests compare
against.  :func:`describe` puts a tree in words.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, exists, func, not_, or_, select, true
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

from mailer.clock import utcnow
from mailer.errors import SegmentError
from mailer.models import Customer, CustomerTag, TrackingEvent, TrackingKind
from mailer.segments.files import validate_condition
from mailer.settings import Settings

#: Tracking kinds each engagement operator counts (machine opens are not engagement).
ENGAGEMENT_KINDS = {
    "opened_within_days": (TrackingKind.open,),
    "clicked_within_days": (TrackingKind.click,),
    "within_days": (TrackingKind.open, TrackingKind.click),
}


_OP_WORDS = {"eq": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def describe(node: tuple | None) -> str:
    """A validated condition tree in words, for ``mailer segments show``."""
    if not node:
        return "everyone with current consent"
    kind = node[0]
    if kind in ("all", "any"):
        inner = "; ".join(describe(n) for n in node[1])
        return f"{'all' if kind == 'all' else 'any'} of ({inner})"
    if kind == "not":
        return f"not ({describe(node[1])})"
    fname, op, value = node
    if fname == "tags":
        return f"tags {op} of {', '.join(value)}"
    if fname in ("total_spent", "orders_count", "predicted_clv", "p_alive"):
        return f"{fname} {_OP_WORDS[op]} {value}"
    if fname == "expected_next_order_at":
        return (f"next order expected within the next {value} days" if op == "within_next_days"
                else f"next order expected more than {value} days ago")
    if fname in ("last_order_at", "created_at"):
        return f"{fname} {'within the last' if op == 'within_days' else 'more than'} {value} days" + (
            "" if op == "within_days" else " ago")
    if fname == "engagement":
        what = {"opened_within_days": "opened", "clicked_within_days": "clicked",
                "within_days": "opened or clicked"}[op]
        return f"{what} a mail within the last {value} days"
    if op == "language":
        return f"{fname} language {value}"
    return f"{fname} in {', '.join(value)}" if len(value) > 1 else f"{fname} = {value[0]}"


# -- SQL compilation ----------------------------------------------------------------------------
def _cutoff(now: datetime, days: int) -> datetime:
    return now - timedelta(days=days)


class _Unindexed(ColumnElement):
    """A customers column the SQLite planner must not drive a query from: renders ``+col``.

    Segment resolution walks the consent-state index and filters the few consenting
    customers; without this, SQLite sometimes picks e.g. ix_customers_last_order_at for a
    wide range and visits most of the table (2.7 s instead of 0.3 s for 1M customers).
    Unary ``+`` is a no-op on values; elsewhere the column renders unchanged.
    """

    inherit_cache = True
    _traverse_internals = [("col", InternalTraversal.dp_clauseelement)]

    def __init__(self, col):
        self.col = col
        self.type = col.type


@compiles(_Unindexed)
def _compile_unindexed(element, compiler, **kw):
    return compiler.process(element.col, **kw)


@compiles(_Unindexed, "sqlite")
def _compile_unindexed_sqlite(element, compiler, **kw):
    return "+" + compiler.process(element.col, **kw)


def _sql(node: tuple, now: datetime, unindexed: bool = False, bulk: bool = False, window: tuple | None = None):
    c = Customer.__table__.c
    kind = node[0]
    if kind == "all":
        return and_(*(_sql(n, now, unindexed, bulk, window) for n in node[1]))
    if kind == "any":
        return or_(*(_sql(n, now, unindexed, bulk, window) for n in node[1]))
    if kind == "not":
        return not_(_sql(node[1], now, unindexed, bulk, window))
    fname, op, value = node
    if fname in ("tags", "engagement"):
        # Two shapes with the same meaning.  Probe (default): a correlated EXISTS per
        # customer, an index lookup each (best for one customer).  Bulk (counting or
        # streaming many): "id IN (uncorrelated subquery)", which PostgreSQL runs once as a
        # hashed subplan and SQLite as one ephemeral index, instead of one probe per
        # customer (PostgreSQL: 1.1 s -> 0.3 s to count vip over 1M customers).  A window
        # (lo, hi] bounds the subquery to the customer ids of one streamed page.
        if fname == "tags":
            t = CustomerTag.__table__.c

            def having(tags):
                # ix_customer_tags_tag (tag, customer_id) / customer_tags' key (customer_id, tag).
                if bulk:
                    sub = select(t.customer_id).where(t.tag.in_(tags))
                    if window is not None:
                        sub = sub.where(t.customer_id > window[0], t.customer_id <= window[1])
                    return c.id.in_(sub)
                return exists(select(1).where(t.customer_id == c.id, t.tag.in_(tags)))

            if op == "all":
                return and_(*(having((v,)) for v in value))
            return having(value) if op == "any" else not_(having(value))
        te = TrackingEvent.__table__.c
        recent = and_(te.kind.in_(ENGAGEMENT_KINDS[op]), te.occurred_at >= _cutoff(now, value))
        if bulk:
            sub = select(te.customer_id).where(recent, te.customer_id.is_not(None))
            if window is not None:  # ix_tracking_customer_kind, by customer id range
                sub = sub.where(te.customer_id > window[0], te.customer_id <= window[1])
            return c.id.in_(sub)  # else ix_tracking_occurred_at narrows to the period
        # ix_tracking_customer_kind (customer_id, kind, occurred_at) answers this probe.
        return exists(select(1).where(te.customer_id == c.id, recent))
    col = _Unindexed(c[fname]) if unindexed else c[fname]
    if fname in ("total_spent", "orders_count"):
        return {"eq": col == value, "gt": col > value, "gte": col >= value, "lt": col < value,
                "lte": col <= value}[op]
    if fname in ("predicted_clv", "p_alive"):
        # FLOAT columns, compared as floats (as evaluate does); NULL (not scored) never matches.
        v = float(value)
        return and_(col.is_not(None), {"eq": col == v, "gt": col > v, "gte": col >= v, "lt": col < v,
                                       "lte": col <= v}[op])
    if fname == "expected_next_order_at":
        if op == "within_next_days":
            return and_(col.is_not(None), col >= now, col <= now + timedelta(days=value))
        return and_(col.is_not(None), col < _cutoff(now, value))
    # Nullable columns: "IS NOT NULL AND ..." keeps every leaf TRUE/FALSE (never NULL), so
    # NOT in SQL agrees with Python's not.
    if fname in ("last_order_at", "created_at"):
        cut = _cutoff(now, value)
        return and_(col.is_not(None), col >= cut if op == "within_days" else col < cut)
    if op == "language":
        return and_(col.is_not(None), or_(col == value, func.substr(col, 1, len(value) + 1) == value + "-"))
    return and_(col.is_not(None), col.in_(value))


def compile_condition(cond: dict | tuple | None, *, settings: Settings | None = None, now: datetime | None = None,
                      unindexed: bool = False, bulk: bool = False):
    """A SQLAlchemy boolean clause over ``customers`` equivalent to :func:`evaluate`.

    ``unindexed=True`` keeps SQLite from driving the query from a customers column index
    (segment resolution drives from the consent state instead); ``bulk=True`` compiles
    tag and engagement conditions for scanning many customers at once (see :func:`_sql`).
    Every combination selects the same customers.
    """
    if cond is None:
        return true()
    tree = cond if isinstance(cond, tuple) else validate_condition(cond)
    return _sql(tree, now or utcnow(), unindexed, bulk)


# -- plain-Python evaluation ----------------------------------------------------------------------
def _get(customer: Any, name: str) -> Any:
    if isinstance(customer, dict):
        return customer.get(name)
    mapping = getattr(customer, "_mapping", None)
    if mapping is not None:
        return mapping.get(name)
    return getattr(customer, name, None)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _tags_of(customer: Any) -> set[str]:
    tags = _get(customer, "tags") or ()
    return {getattr(t, "tag", t) for t in tags}


def _tracking_of(customer: Any, tracking, session: Session | None) -> list[tuple[str, datetime]]:
    if tracking is None:
        tracking = _get(customer, "tracking")
    if tracking is None and session is not None:
        te = TrackingEvent.__table__.c
        # The customer's opens and clicks (ix_tracking_customer_kind).
        tracking = session.execute(select(te.kind, te.occurred_at).where(
            te.customer_id == _get(customer, "id"),
            te.kind.in_((TrackingKind.open, TrackingKind.click)))).all()
    if tracking is None:
        raise SegmentError("engagement conditions need the customer's tracking events: pass tracking= or session=")
    out = []
    for item in tracking:
        kind, when = (item if isinstance(item, (tuple, list)) or hasattr(item, "_mapping")
                      else (item.kind, item.occurred_at))
        out.append((getattr(kind, "value", kind), _aware(when)))
    return out


def _eval(node: tuple, customer: Any, now: datetime, ctx: dict) -> bool:
    kind = node[0]
    if kind == "all":
        return all(_eval(n, customer, now, ctx) for n in node[1])
    if kind == "any":
        return any(_eval(n, customer, now, ctx) for n in node[1])
    if kind == "not":
        return not _eval(node[1], customer, now, ctx)
    fname, op, value = node
    if fname == "tags":
        tags = _tags_of(customer)
        if op == "all":
            return all(v in tags for v in value)
        hit = any(v in tags for v in value)
        return hit if op == "any" else not hit
    if fname == "engagement":
        if "tracking" not in ctx:
            ctx["tracking"] = _tracking_of(customer, ctx.get("tracking_arg"), ctx.get("session"))
        kinds = {k.value for k in ENGAGEMENT_KINDS[op]}
        cut = _cutoff(now, value)
        return any(k in kinds and when is not None and when >= cut for k, when in ctx["tracking"])
    raw = _get(customer, fname)
    if fname in ("total_spent", "orders_count"):
        x = Decimal(str(raw if raw is not None else 0))
        v = Decimal(str(value))
        return {"eq": x == v, "gt": x > v, "gte": x >= v, "lt": x < v, "lte": x <= v}[op]
    if fname in ("predicted_clv", "p_alive"):
        if raw is None:
            return False
        x, v = float(raw), float(value)
        return {"eq": x == v, "gt": x > v, "gte": x >= v, "lt": x < v, "lte": x <= v}[op]
    if fname == "expected_next_order_at":
        when = _aware(raw)
        if when is None:
            return False
        if op == "within_next_days":
            return now <= when <= now + timedelta(days=value)
        return when < _cutoff(now, value)
    if fname in ("last_order_at", "created_at"):
        when = _aware(raw)
        if when is None:
            return False
        cut = _cutoff(now, value)
        return when >= cut if op == "within_days" else when < cut
    if raw is None:
        return False
    raw = getattr(raw, "value", raw)
    if op == "language":
        return raw == value or raw.startswith(value + "-")
    return raw in value


def evaluate(cond: dict | tuple | None, customer: Any, *, now: datetime | None = None, tracking=None,
             session: Session | None = None) -> bool:
    """Does ``customer`` (ORM object, row or dict) meet ``cond``? The reference for the SQL.

    ``tags`` may be tag names or CustomerTag rows; engagement reads ``tracking``
    ((kind, occurred_at) pairs), the customer's ``tracking`` key, or queries ``session``.
    """
    if cond is None:
        return True
    tree = cond if isinstance(cond, tuple) else validate_condition(cond)
    return _eval(tree, customer, now or utcnow(), {"tracking_arg": tracking, "session": session})
