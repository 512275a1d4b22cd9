"""Views: the scheduled automation sends still waiting (``mailer automations pending``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer.addresses import normalize
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
