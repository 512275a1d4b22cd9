"""Restock fan-out: a ``product_restocked`` event mailed to everyone with a current restock request.

A rule with ``audience = "restock_requests"`` writes to every customer holding a current
``restock:<sku>`` request, read in keyset pages, first to ask first told; :func:`wave_plan`
splits them into waves when stock is low (``[waves]``); with ``[merge]`` a product restocked
while a customer's mail is still pending joins that mail instead of sending another.
"""

from __future__ import annotations

import math
from datetime import timedelta

from sqlalchemy import and_, select, update

from mailer.automations.conditions import customer_matches
from mailer.automations.rules import Rule, Waves
from mailer.automations.sends import _Context, _format, _ikey, _lock, _notice_data, _schedule
from mailer.clock import utcnow
from mailer.events.schemas import Action
from mailer.models import ConsentState, Customer, Delivery, DeliveryStatus, LawfulBasis

#: Recipients read per query when a rule fans out to restock requests.
AUDIENCE_BATCH = 1000


def _restock_audience(ctx: _Context, sku: str) -> list[int]:
    """Customers with a current ``restock:<sku>`` request, earliest request first."""
    settings = ctx.app.settings
    purpose = f"restock:{sku}"
    bases = [LawfulBasis.consent] + ([LawfulBasis.soft_opt_in] if settings.soft_opt_in else [])
    ids: list[int] = []
    last: tuple | None = None
    while True:
        # Keyset pages over ix_consent_state_purpose (purpose, granted, customer_id),
        # ordered by when the request was made so the first to ask are the first told.
        q = (select(ConsentState.customer_id, ConsentState.updated_at)
             .join(Customer, Customer.id == ConsentState.customer_id)
             .where(ConsentState.purpose == purpose, ConsentState.granted.is_(True),
                    ConsentState.basis.in_(bases), Customer.email.is_not(None))
             .order_by(ConsentState.updated_at, ConsentState.customer_id).limit(AUDIENCE_BATCH))
        if last is not None:
            q = q.where((ConsentState.updated_at > last[0])
                        | and_(ConsentState.updated_at == last[0], ConsentState.customer_id > last[1]))
        rows = ctx.session.execute(q).all()
        ids.extend(r.customer_id for r in rows)
        if len(rows) < AUDIENCE_BATCH:
            return ids
        last = (rows[-1].updated_at, rows[-1].customer_id)


def wave_plan(n: int, stock: int | None, waves: Waves | None) -> list[int]:
    """How many recipients go in each wave: all at once unless stock is low."""
    if n == 0:
        return []
    if waves is None or stock is None:
        return [n]
    size = max(math.ceil(stock * waves.per_unit), waves.min_size)
    if size >= n:
        return [n]
    return [min(size, n - i) for i in range(0, n, size)]


def _fan_out_restock(ctx: _Context, rule: Rule) -> list:
    s = ctx.session
    sku = ctx.data["sku"]
    audience = _restock_audience(ctx, sku)
    stock = ctx.data.get(rule.waves.stock_field) if rule.waves else None
    plan = wave_plan(len(audience), stock, rule.waves)
    actions: list[Action] = []
    item_fields = ("sku", "name", "variant", "price", "url", "image_url")
    item = {k: ctx.data[k] for k in item_fields if k in ctx.data}
    position = 0
    for wave, size in enumerate(plan):
        offset = (rule.waves.interval * wave) if rule.waves else timedelta(0)
        for customer_id in audience[position:position + size]:
            customer = s.get(Customer, customer_id)
            base = {**ctx.data, "event_id": ctx.event.id, "customer_id": customer_id}
            if rule.customer_if is not None and not customer_matches(rule.customer_if, customer, ctx.now, s):
                continue
            actions.append(_restock_one(ctx, rule, customer, base, item, offset, wave))
        position += size
    if not audience:
        actions.append(Action(rule.name, rule.kind, "skipped", None, detail=f"nobody asked for restock:{sku}"))
    return actions


def _restock_one(ctx: _Context, rule: Rule, customer: Customer, base: dict, item: dict, offset: timedelta,
                 wave: int):
    s = ctx.session
    group = _format(rule.group, base)
    _lock(ctx, rule, group)
    if rule.merge is not None:
        pending = s.execute(select(Delivery)
                            .where(Delivery.cancel_group == group, Delivery.automation == rule.name,
                                   Delivery.status == DeliveryStatus.scheduled)
                            .order_by(Delivery.id).limit(1)).scalar_one_or_none()
        if pending is not None:
            items = list((pending.data or {}).get(rule.merge.into) or [])
            if any(i.get(rule.merge.key) == item.get(rule.merge.key) for i in items):
                return Action(rule.name, rule.kind, "deduplicated", customer.id, pending.id,
                              detail=f"{item.get(rule.merge.key)} already in pending delivery {pending.id}")
            merged = {**(pending.data or {}), rule.merge.into: items + [item]}
            # Append only while the mail is still pending: if a worker claimed it meanwhile
            # the UPDATE matches nothing and this product gets a mail of its own.
            res = s.execute(update(Delivery)
                            .where(Delivery.id == pending.id, Delivery.status == DeliveryStatus.scheduled)
                            .values(data=merged, updated_at=utcnow())
                            .execution_options(synchronize_session=False))
            if res.rowcount == 1:
                s.expire(pending)
                return Action(rule.name, rule.kind, "merged", customer.id, pending.id, send_after=pending.send_after,
                              detail=f"{item.get(rule.merge.key)} added to pending delivery {pending.id}")
    data = _notice_data(rule, base, ctx.app.settings)
    if rule.merge is not None:
        data[rule.merge.into] = [item]
    wait = (rule.merge.window if rule.merge else timedelta(0)) + max(rule.delays) + offset
    return _schedule(ctx, rule, customer, data, group=group, key=_ikey(rule, group, f"e{ctx.event.id}"),
                     send_after=ctx.now + wait)
