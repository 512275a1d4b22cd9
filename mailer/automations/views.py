"""Views: the scheduled automation sends still waiting (``mailer automations pending``), and cancelling one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mailer.addresses import normalize
from mailer.clock import utcnow
from mailer.models import Delivery, DeliveryStatus


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
