"""Revenue attribution: which campaign or automation send an order goes to, and the figures.

Owns the ``attributions`` table.  The rule (issue 20, docs/campaigns.md "Revenue"):

* an order (``orders`` row, status ``placed``) goes to the **campaign or automation send
  whose tracked link the customer clicked last** within ``MAILER_ATTRIBUTION_CLICK_DAYS``
  before the order was placed (``basis = 'click'``);
* failing that, to the send the customer **last opened, human opens only**, within
  ``MAILER_ATTRIBUTION_OPEN_HOURS`` before it (``basis = 'open'``); machine opens
  (privacy proxies, scanners: ``tracking_events.kind = 'machine_open'``) never count;
* **one order, one send**: ``attributions.order_id`` is unique; the first attribution
  stands (a replayed ``order_placed`` only refreshes the amount);
* a cancellation or refund (``order_cancelled`` / ``order_refunded`` events, or an import
  row with that status) sets ``reversed_at``: the figures leave the order out.

Attribution is set-based SQL (:func:`attribute_where`): one ``INSERT ... SELECT`` per
basis over a set of orders, the touch picked with ``ROW_NUMBER()`` per order, ``ON
CONFLICT (order_id) DO NOTHING`` keeping one send per order.  The stream path (one event,
:func:`attribute_order`) and the batch path (an import, a backfill:
:func:`attribute_customers`, :func:`attribute_range`) are the same statement over a
different set, so they cannot disagree.

Figures (:func:`revenue`, :func:`campaign_revenue`, :func:`automation_revenue`) are
sums over non-reversed rows, per currency (amounts in different currencies are never
added up).  Anything finer (an A/B variant) is a join on ``delivery_id``: pass criteria
on :class:`~mailer.models.Delivery` to :func:`revenue`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import Interval, and_, distinct, func, literal, or_, select, update
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.db import dialect_insert
from mailer.models import (
    Attribution,
    Delivery,
    DeliveryStatus,
    Order,
    OrderStatus,
    TrackingEvent,
    TrackingKind,
    UTCDateTime,
)
from mailer.settings import Settings

#: The two bases, in the order they are tried.
CLICK = "click"
OPEN = "open"
#: Order statuses that reverse an attribution.
REVERSALS = (OrderStatus.cancelled.value, OrderStatus.refunded.value)
#: Orders per statement when attributing a range (a backfill or the benchmark's batch).
ATTRIBUTE_BATCH_ORDERS = 20_000
#: Delivery statuses that count as a recipient (the mail reached a mailbox provider).
RECIPIENT_STATUSES = (DeliveryStatus.sent, DeliveryStatus.bounced)

_o = Order.__table__
_t = TrackingEvent.__table__
_d = Delivery.__table__
_a = Attribution.__table__


def _window_start(session: Session, seconds: int):
    """SQL for ``orders.placed_at`` minus ``seconds``, comparable with ``tracking_events.occurred_at``.

    PostgreSQL subtracts an interval from the timestamptz.  SQLite stores both as text
    ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC), so ``strftime`` yields the same shape (to the
    millisecond: a touch exactly on the boundary still compares as inside).
    """
    if session.get_bind().dialect.name == "postgresql":
        return _o.c.placed_at - literal(dt.timedelta(seconds=seconds), Interval())
    return func.strftime("%Y-%m-%d %H:%M:%f", _o.c.placed_at, f"-{int(seconds)} seconds")


def _insert_basis(session: Session, settings: Settings, scope, basis: str, now: dt.datetime) -> int:
    kind, seconds = ((TrackingKind.click, settings.attribution_click_days * 86400) if basis == CLICK
                     else (TrackingKind.open, settings.attribution_open_hours * 3600))
    # Latest touch first, per order; the id breaks a tie of two touches in one instant.
    rank = func.row_number().over(partition_by=_o.c.id,
                                  order_by=(_t.c.occurred_at.desc(), _t.c.id.desc())).label("rank")
    # Why this shape: orders in scope joined to their customer's touches of this kind inside
    # the window, through ix_tracking_customer_kind (customer_id, kind, occurred_at), so each
    # order reads only its own customer's few events in the window; the delivery (primary
    # key) says whether the touch came from a campaign or an automation send. Only placed
    # orders: a cancelled or refunded one is never attributed.
    touches = (
        select(_o.c.id.label("order_id"), _o.c.customer_id, _t.c.delivery_id, _d.c.campaign_id,
               _d.c.automation, func.coalesce(_o.c.currency, settings.default_currency).label("currency"),
               _o.c.total.label("amount"), _t.c.occurred_at.label("touched_at"), _o.c.placed_at, rank)
        .select_from(_o.join(_t, and_(_t.c.customer_id == _o.c.customer_id, _t.c.kind == kind,
                                      _t.c.occurred_at <= _o.c.placed_at,
                                      _t.c.occurred_at >= _window_start(session, seconds)))
                     .join(_d, _d.c.id == _t.c.delivery_id))
        .where(scope, _o.c.status == OrderStatus.placed.value,
               or_(_d.c.campaign_id.is_not(None), _d.c.automation.is_not(None)))
        .subquery("touches"))
    rows = select(touches.c.order_id, touches.c.customer_id, touches.c.delivery_id, touches.c.campaign_id,
                  touches.c.automation, touches.c.currency, touches.c.amount, literal(basis).label("basis"),
                  touches.c.touched_at, touches.c.placed_at,
                  literal(now, UTCDateTime()).label("attributed_at")).where(touches.c.rank == 1)
    columns = ["order_id", "customer_id", "delivery_id", "campaign_id", "automation", "currency", "amount",
               "basis", "touched_at", "placed_at", "attributed_at"]
    # One order, one send: an order attributed before (by a click, or earlier) is left alone.
    stmt = (dialect_insert(session, _a).from_select(columns, rows).on_conflict_do_nothing(index_elements=["order_id"])
            .returning(_a.c.id))
    # RETURNING counts the rows added on both databases (rowcount of INSERT ... SELECT is not reliable).
    return len(session.execute(stmt).all())


def attribute_where(session: Session, settings: Settings, scope, *, now: dt.datetime | None = None) -> int:
    """Attribute every placed, unattributed order matching ``scope`` (a SQL criterion on ``orders``).

    Clicks first, then human opens for the orders no click claimed; returns the rows added.
    Runs inside the caller's transaction.
    """
    now = now or utcnow()
    added = _insert_basis(session, settings, scope, CLICK, now)
    return added + _insert_basis(session, settings, scope, OPEN, now)


def attribute_order(session: Session, settings: Settings, order_id: int, *,
                    now: dt.datetime | None = None) -> Attribution | None:
    """The stream path: attribute one order (an ``order_placed`` event) and return its attribution, if any.

    An order attributed before keeps its send; its amount and currency follow the order
    (a corrected ``order_placed``).
    """
    attribute_where(session, settings, _o.c.id == order_id, now=now)
    # The order's current amount onto its attribution (one row by the unique order_id).
    session.execute(update(_a).where(_a.c.order_id == order_id)
                    .values(amount=select(_o.c.total).where(_o.c.id == order_id).scalar_subquery(),
                            currency=select(func.coalesce(_o.c.currency, settings.default_currency))
                            .where(_o.c.id == order_id).scalar_subquery()))
    return session.execute(select(Attribution).where(Attribution.order_id == order_id)
                           .execution_options(populate_existing=True)).scalar_one_or_none()


def attribute_customers(session: Session, settings: Settings, customer_ids: Iterable[int], *,
                        now: dt.datetime | None = None) -> int:
    """The batch path for an import: attribute these customers' unattributed orders, reverse their
    cancelled or refunded ones.  Returns the attributions added."""
    ids = sorted(set(customer_ids))
    if not ids:
        return 0
    # uq_orders_customer_shop_order's prefix (customer_id) finds the orders.
    added = attribute_where(session, settings, _o.c.customer_id.in_(ids), now=now)
    reverse_where(session, _o.c.customer_id.in_(ids), now=now)
    return added


def attribute_range(session: Session, settings: Settings, first_id: int, last_id: int, *,
                    now: dt.datetime | None = None) -> int:
    """The batch path for a backfill: orders with ``first_id <= id <= last_id`` (primary-key range)."""
    return attribute_where(session, settings, _o.c.id.between(first_id, last_id), now=now)


def reverse_where(session: Session, scope, *, now: dt.datetime | None = None) -> int:
    """Reverse the attributions of cancelled or refunded orders matching ``scope``; returns how many."""
    now = now or utcnow()
    # Orders in scope whose status says reversed, and attributions not reversed yet (unique order_id).
    reversed_orders = select(_o.c.id).where(scope, _o.c.status.in_(REVERSALS))
    status = select(_o.c.status).where(_o.c.id == _a.c.order_id).scalar_subquery()
    res = session.execute(update(_a).where(_a.c.order_id.in_(reversed_orders), _a.c.reversed_at.is_(None))
                          .values(reversed_at=now, reversal=status).execution_options(synchronize_session=False))
    return res.rowcount or 0


def reverse_order(session: Session, order_id: int, *, now: dt.datetime | None = None) -> bool:
    """The stream path of ``order_cancelled`` / ``order_refunded``: True when an attribution was reversed."""
    return reverse_where(session, _o.c.id == order_id, now=now) > 0


# -- figures ------------------------------------------------------------------------------------
@dataclass
class Revenue:
    """Attributed orders and revenue per currency (reversed orders left out)."""

    orders: int = 0
    #: Currency -> total, never summed across currencies.
    revenue: dict[str, Decimal] = field(default_factory=dict)
    #: Distinct customers with an attributed order (the converted recipients).
    customers: int = 0
    #: Orders attributed by a click, and by a human open.
    by_click: int = 0
    by_open: int = 0

    def conversion_rate(self, recipients: int) -> float:
        """Converted customers / recipients (mails that reached a mailbox provider)."""
        return round(self.customers / recipients, 4) if recipients else 0.0

    def per_recipient(self, recipients: int) -> dict[str, Decimal]:
        """Revenue per recipient, per currency (to the cent)."""
        if not recipients:
            return {c: Decimal("0.00") for c in self.revenue}
        return {c: (v / recipients).quantize(Decimal("0.01")) for c, v in self.revenue.items()}

    def as_dict(self, recipients: int | None = None) -> dict:
        out = {"attributed_orders": self.orders,
               "attributed_revenue": {c: str(v) for c, v in sorted(self.revenue.items())},
               "converted_customers": self.customers, "by_click": self.by_click, "by_open": self.by_open}
        if recipients is not None:
            out["conversion_rate"] = self.conversion_rate(recipients)
            out["revenue_per_recipient"] = {c: str(v) for c, v in sorted(self.per_recipient(recipients).items())}
        return out


def _money(value) -> Decimal:
    return Decimal(str(value or 0)).quantize(Decimal("0.01"))


def revenue(session: Session, *criteria, through_deliveries: bool = False) -> Revenue:
    """Figures over non-reversed attributions matching ``criteria``.

    ``through_deliveries`` joins each attribution's delivery (primary key), so criteria may
    name :class:`~mailer.models.Delivery` columns (an A/B variant, a kind).
    """
    base = select(Attribution.currency, func.count(), func.sum(Attribution.amount)).select_from(Attribution)
    count_customers = select(func.count(distinct(Attribution.customer_id))).select_from(Attribution)
    count_basis = select(Attribution.basis, func.count()).select_from(Attribution)
    if through_deliveries:
        join = (Delivery, Delivery.id == Attribution.delivery_id)
        base, count_customers, count_basis = (q.join(*join) for q in (base, count_customers, count_basis))
    live = (Attribution.reversed_at.is_(None), *criteria)
    out = Revenue()
    # Grouped by currency in the database (ix_attributions_campaign / _automation for the usual criteria).
    for currency, n, total in session.execute(base.where(*live).group_by(Attribution.currency)).all():
        out.orders += n
        out.revenue[currency] = _money(total)
    if out.orders:
        out.customers = session.execute(count_customers.where(*live)).scalar_one()
        basis = dict(session.execute(count_basis.where(*live).group_by(Attribution.basis)).all())
        out.by_click, out.by_open = basis.get(CLICK, 0), basis.get(OPEN, 0)
    return out


def campaign_revenue(session: Session, campaign_id: int) -> Revenue:
    """One campaign's attributed orders and revenue."""
    return revenue(session, Attribution.campaign_id == campaign_id)


def automation_revenue(session: Session, rules: Sequence[str] | None = None) -> dict[str, tuple[Revenue, int]]:
    """Per automation rule: (figures, recipients), for the named rules or every rule that sent."""
    # Recipients per rule: automation sends that reached a mailbox provider (a scan of the
    # automation sends, grouped; rules are few).
    q = (select(Delivery.automation, func.count()).where(Delivery.automation.is_not(None),
                                                         Delivery.status.in_(RECIPIENT_STATUSES))
         .group_by(Delivery.automation))
    if rules is not None:
        q = q.where(Delivery.automation.in_(list(rules)))
    recipients = dict(session.execute(q).all())
    names = sorted(set(recipients) | set(rules or ()))
    if rules is None:
        names = sorted(set(names) | set(session.execute(
            select(Attribution.automation).where(Attribution.automation.is_not(None)).distinct()).scalars()))
    return {name: (revenue(session, Attribution.automation == name), recipients.get(name, 0)) for name in names}


def order_attribution(session: Session, order_id: int) -> Attribution | None:
    """The attribution of one order (reversed or not), if it has one."""
    return session.execute(select(Attribution).where(Attribution.order_id == order_id)).scalar_one_or_none()
