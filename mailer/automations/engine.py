"""Handling one event: cancellations and triggers inside the publisher's transaction, wake-ups after it.

:func:`handle` (called by :func:`mailer.events.publish` inside its transaction) first
cancels the pending sends of every rule that lists the event in ``cancelled_by``
(:func:`cancel_group`), then triggers every rule whose ``event`` it is and whose
conditions hold, applying ``once`` and ``[repeat]`` before storing the sends
(:mod:`mailer.automations.sends`) or fanning out to restock requests
(:mod:`mailer.automations.restock`).  :func:`wake` runs after the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mailer.automations.conditions import customer_matches, event_matches
from mailer.automations.restock import _fan_out_restock
from mailer.automations.rules import Rule, format_duration
from mailer.automations.sends import _Context, _format, _ikey, _lock, _notice_data, _schedule
from mailer.clock import utcnow
from mailer.events.schemas import Action, event_data
from mailer.models import Customer, Delivery, DeliveryStatus, ShopEvent
from mailer.queue import port

log = logging.getLogger("mailer.automations")

#: Scheduled sends due within this many seconds also get a Dramatiq message with a
#: matching ``delay`` (a faster wake-up than the sweeper; the database row decides).
FAST_PATH_MAX_DELAY_S = 15 * 60


def cancel_group(session: Session, rule: str, group: str, *, reason: str) -> int:
    """Cancel the rule's pending sends in ``group``; how many were cancelled."""
    # Only rows still ``scheduled`` change: a row already claimed by a worker is past
    # cancelling, and the claim never takes a cancelled row (ix_deliveries_cancel_group).
    res = session.execute(update(Delivery)
                          .where(Delivery.cancel_group == group, Delivery.automation == rule,
                                 Delivery.status == DeliveryStatus.scheduled)
                          .values(status=DeliveryStatus.cancelled, reason=reason, updated_at=utcnow())
                          .execution_options(synchronize_session=False))
    return res.rowcount or 0


def handle(session: Session, app, rules: list[Rule], event: ShopEvent, customer: Customer | None, before,
           now: datetime) -> list:
    """Run every rule for one stored event inside the caller's transaction; return the actions."""
    ctx = _Context(session, app, event, event_data(event), now)
    actions: list[Action] = []
    base = {**ctx.data, "event_id": event.id, "customer_id": customer.id if customer else None}
    # 1. Cancellations first, so "a newer cart event cancels pending reminders" and then
    #    schedules its own.
    if customer is not None:
        for rule in rules:
            if rule.enabled and event.type in rule.cancelled_by:
                group = _format(rule.group, base)
                _lock(ctx, rule, group)
                n = cancel_group(session, rule.name, group, reason=f"cancelled by {event.type} event {event.id}")
                if n:
                    actions.append(Action(rule.name, rule.kind, "cancelled", customer.id,
                                          detail=f"{n} pending in {group}"))
    # 2. Triggers.
    for rule in rules:
        if not rule.enabled or rule.event != event.type:
            continue
        if not event_matches(rule.event_if, ctx.data):
            continue
        if rule.audience == "restock_requests":
            actions.extend(_fan_out_restock(ctx, rule))
            continue
        if customer is None:
            continue
        if rule.became is not None:
            was = customer_matches(rule.became, before, now, ctx.session) if before is not None else False
            if was or not customer_matches(rule.became, customer, now, ctx.session):
                continue
        if rule.customer_if is not None and not customer_matches(rule.customer_if, customer, now, ctx.session):
            continue
        actions.extend(_trigger(ctx, rule, customer, base))
    return actions


def _trigger(ctx: _Context, rule: Rule, customer: Customer, base: dict) -> list:
    s = ctx.session
    group = _format(rule.group, base)
    _lock(ctx, rule, group)
    values = {**base, "first_name": customer.first_name or "", "last_name": customer.last_name or ""}
    data = _notice_data(rule, values, ctx.app.settings)
    if rule.once:
        # ``once``: the group's keys are fixed, so a second mail can never be stored.
        taken = s.execute(select(Delivery.id).where(Delivery.idempotency_key == _ikey(rule, group, "once:0"))
                          ).scalar_one_or_none()
        if taken is not None:
            return [Action(rule.name, rule.kind, "deduplicated", customer.id, taken,
                           detail=f"once per {group}: delivery {taken} exists")]
    if rule.repeat is not None:
        # The rule's latest (not cancelled) mail in this group (ix_deliveries_cancel_group).
        last = s.execute(select(Delivery.id, Delivery.created_at, Delivery.data)
                         .where(Delivery.cancel_group == group, Delivery.automation == rule.name,
                                Delivery.status != DeliveryStatus.cancelled,
                                Delivery.idempotency_key.not_like(f"auto:{rule.name}:%:failed:%"))
                         .order_by(Delivery.created_at.desc(), Delivery.id.desc()).limit(1)).first()
        if last is not None and last.created_at > ctx.now - rule.repeat.window:
            previous = last.data or {}
            if all(str(previous.get(f)) == str(data.get(f, values.get(f))) for f in rule.repeat.unless_changed):
                return [Action(rule.name, rule.kind, "deduplicated", customer.id, last.id,
                               detail=f"same {', '.join(rule.repeat.unless_changed) or 'event'} as delivery "
                                      f"{last.id} within {format_duration(rule.repeat.window)}")]
    start = ctx.now
    if rule.before is not None and "expected_next_order_at" in ctx.data:
        # ``before``: N days before the expected next order, or at once when that is past.
        start = max(ctx.now, _parse_time(ctx.data["expected_next_order_at"]) - rule.before)
    actions = []
    for step, delay in enumerate(rule.delays):
        tail = f"once:{step}" if rule.once else f"e{ctx.event.id}:{step}"
        actions.append(_schedule(ctx, rule, customer, dict(data), group=group, key=_ikey(rule, group, tail),
                                 send_after=start + delay))
    return actions


def _parse_time(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# -- after the commit --------------------------------------------------------------------------------
def wake(app, actions: Iterable, *, now: datetime | None = None) -> None:
    """Enqueue sends that are due; give soon-due scheduled ones a delayed Dramatiq message."""
    now = now or utcnow()
    for action in actions:
        if action.delivery_id is None:
            continue
        if action.outcome == "queued":
            port.enqueue_delivery(action.delivery_id, _queue_of(app, action.delivery_id))
        elif action.outcome == "scheduled" and action.send_after is not None:
            delay_s = (action.send_after - utcnow()).total_seconds()
            if 0 < delay_s <= FAST_PATH_MAX_DELAY_S:
                # Broker down: the scheduled row is committed and the sweeper wakes it when due.
                port.enqueue_delivery(action.delivery_id, _queue_of(app, action.delivery_id),
                                      delay_ms=int(delay_s * 1000) + 1)


def _queue_of(app, delivery_id: int) -> str:
    with app.session() as s:
        return s.execute(select(Delivery.queue).where(Delivery.id == delivery_id)).scalar_one()
