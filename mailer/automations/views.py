"""Views: the scheduled automation sends still waiting (``mailer automations pending``), cancelling one,
and the incremental revenue of rules with a holdout (``mailer automations holdout``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from mailer.addresses import normalize
from mailer.automations.sends import HOLDOUT
from mailer.clock import utcnow
from mailer.models import Delivery, DeliveryStatus, Order, OrderStatus


@dataclass(frozen=True)
class Pending:
    delivery_id: int
    automation: str
    kind: str
    email: str | None
    customer_id: int | None
    send_after: datetime | None
    group: str | None
    data: dict


def pending(session: Session, *, email: str | None = None, limit: int = 1000) -> list[Pending]:
    """Scheduled automation sends, soonest first (optionally one customer's)."""
    # ix_deliveries_status_send_after: scheduled rows in time order.
    q = (select(Delivery).where(Delivery.status == DeliveryStatus.scheduled, Delivery.automation.is_not(None))
         .order_by(Delivery.send_after, Delivery.id).limit(limit))
    if email is not None:
        q = q.where(Delivery.to_address == normalize(email))
    return [Pending(d.id, d.automation, d.kind, d.to_address, d.customer_id, d.send_after, d.cancel_group,
                    dict(d.data or {})) for d in session.execute(q).scalars()]


def cancel_pending(session: Session, delivery_id: int) -> bool:
    """Cancel one scheduled automation send; False when it is no longer waiting (sent, cancelled...).

    A conditional UPDATE by primary key: a worker that claimed it first wins, and the
    mail is then not cancelled. A reward code it held goes back to its pool through the
    sweeper's ``release_codes_hook``.
    """
    res = session.execute(update(Delivery)
                          .where(Delivery.id == delivery_id, Delivery.status == DeliveryStatus.scheduled,
                                 Delivery.automation.is_not(None))
                          .values(status=DeliveryStatus.cancelled, reason="cancelled in the console",
                                  updated_at=utcnow())
                          .execution_options(synchronize_session=False))
    return res.rowcount == 1
@dataclass(frozen=True)
class Group:
    """One side of a holdout comparison: sends, those followed by an order, revenue (shop currency)."""

    sends: int
    converted: int
    revenue: Decimal

    @property
    def conversion_rate(self) -> float:
        return round(self.converted / self.sends, 4) if self.sends else 0.0

    @property
    def per_send(self) -> Decimal:
        return (self.revenue / self.sends).quantize(Decimal("0.01")) if self.sends else Decimal("0.00")


@dataclass(frozen=True)
class Holdout:
    """A rule's mailed sends against its holdout, and the revenue the mails added.

    ``incremental_revenue`` = (revenue per mailed send - revenue per held-out send) x mailed
    sends: what the rule brought beyond what those customers would have bought anyway.
    """

    rule: str
    mailed: Group
    holdout: Group
    window_days: int

    @property
    def incremental_revenue(self) -> Decimal:
        return ((self.mailed.per_send - self.holdout.per_send) * self.mailed.sends).quantize(Decimal("0.01"))

    def as_dict(self) -> dict:
        side = lambda g: {"sends": g.sends, "converted": g.converted, "conversion_rate": g.conversion_rate,  # noqa: E731
                          "revenue": str(g.revenue), "revenue_per_send": str(g.per_send)}
        return {"rule": self.rule, "window_days": self.window_days, "mailed": side(self.mailed),
                "holdout": side(self.holdout), "incremental_revenue": str(self.incremental_revenue)}


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _group(session: Session, rule: str, *, held: bool, window: timedelta) -> Group:
    """Sends of ``rule`` (mailed: sent and not held out; or held out) and the orders that followed."""
    if held:
        which = and_(Delivery.variant == HOLDOUT)
        when = func.coalesce(Delivery.send_after, Delivery.created_at)
    else:
        which = and_(Delivery.status == DeliveryStatus.sent, Delivery.variant.is_(None))
        when = Delivery.sent_at
    base = and_(Delivery.automation == rule, which, Delivery.customer_id.is_not(None))
    sends = session.execute(select(func.count()).select_from(Delivery).where(base)).scalar_one()
    # Each send joined to its customer's placed orders after it (a column comparison, the same
    # on both databases); the window's end is applied here in Python, since interval arithmetic
    # differs between SQLite and PostgreSQL.  Revenue in the shop's currency (orders.total_shop).
    rows = session.execute(select(Delivery.id, when, Order.placed_at, Order.total_shop)
                           .join(Order, and_(Order.customer_id == Delivery.customer_id, Order.placed_at >= when,
                                             Order.status == OrderStatus.placed))
                           .where(base)).all()
    converted: set[int] = set()
    revenue = Decimal("0")
    for delivery_id, start, placed_at, total in rows:
        if _aware(placed_at) < _aware(start) + window:
            converted.add(delivery_id)
            revenue += Decimal(total or 0)
    return Group(sends=sends, converted=len(converted), revenue=revenue.quantize(Decimal("0.01")))


def holdout_figures(session: Session, *, window_days: int, rules: list[str] | None = None) -> list[Holdout]:
    """Mailed against held-out sends for every rule that has held out anyone (or ``rules``)."""
    names = rules or list(session.execute(select(Delivery.automation).where(Delivery.variant == HOLDOUT,
                                                                          Delivery.automation.is_not(None))
                                          .distinct()).scalars())
    window = timedelta(days=window_days)
    return [Holdout(rule=name, mailed=_group(session, name, held=False, window=window),
                    holdout=_group(session, name, held=True, window=window), window_days=window_days)
            for name in sorted(names)]
