"""Storing one automation send: context, (rule, group) lock, idempotency key, notice data, the row.

:func:`_schedule` is where every rule's send ends up, whether it was triggered for the
event's customer (:mod:`mailer.automations.engine`) or fanned out to restock requests
(:mod:`mailer.automations.restock`): it deduplicates by idempotency key, skips
suppressed or unconsenting customers, defers marketing mail out of quiet hours, claims
a reward code (or records a ``failed`` row when the pool ran out), validates and
test-renders the notice, and stores the row ``queued`` (due now) or ``scheduled``
(``send_after``).  A rule with ``holdout_percent`` keeps that share of its eligible
customers back (:func:`held_out`: the same customers every time): their send is recorded
``skipped`` with variant ``holdout`` and never mailed, so the rule's incremental revenue
can be measured against them (:func:`mailer.automations.views.holdout_figures`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from mailer.addresses import email_hash
from mailer.automations import codes as codes_service
from mailer.automations.conditions import _number, out_of_quiet_hours
from mailer.automations.rules import ADD_DATA, Rule
from mailer.clock import utcnow
from mailer.consent import ledger as consent
from mailer.consent import suppressions
from mailer.delivery import preview
from mailer.errors import PoolExhausted
from mailer.events.schemas import Action
from mailer.instance_secrets import address_hash_salt
from mailer.models import Customer, Delivery, DeliveryStatus, ShopEvent
from mailer.notices.trigger import purpose_for
from mailer.queue.broker import QUEUE_BULK, QUEUE_TRANSACTIONAL
from mailer.rendering import TRANSACTIONAL
from mailer.settings import Settings

#: Classid of the two-key PostgreSQL advisory locks taken per (rule, group) (fits int4).
LOCK_CLASS = 0x6175746F  # "auto"
#: Longest delivery idempotency key (the column is 255 characters).
KEY_MAX_CHARS = 255
#: ``deliveries.variant`` and ``reason`` of a send kept back on purpose.
HOLDOUT = "holdout"
HOLDOUT_REASON = "holdout: not mailed on purpose (holdout_percent)"


def held_out(rule_name: str, customer_id: int, percent: float) -> bool:
    """Is this customer in the rule's holdout?  A seeded hash of rule and customer: the same
    customers every time (a customer held out once stays held out for the rule)."""
    digest = hashlib.sha256(f"holdout:{rule_name}:{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < percent / 100


@dataclass
class _Context:
    """One event being handled: its session, app, stored event and fields, the decision time,
    and the (kind, locale) pairs already test-rendered."""

    session: Session
    app: Any
    event: ShopEvent
    data: dict
    now: datetime
    probed: set = field(default_factory=set)


def _lock(ctx: _Context, rule: Rule, group: str) -> None:
    """Serialize changes to one (rule, group) on PostgreSQL until the transaction ends."""
    if ctx.session.get_bind().dialect.name != "postgresql":
        return
    digest = hashlib.sha256(f"{rule.name}\x00{group}".encode()).digest()
    key = int.from_bytes(digest[:4], "big", signed=True)
    ctx.session.execute(text("SELECT pg_advisory_xact_lock(:c, :k)"), {"c": LOCK_CLASS, "k": key})


def _format(template: str, values: dict) -> str:
    return template.format_map({k: v for k, v in values.items()})


def _ikey(rule: Rule, group: str, tail: str) -> str:
    key = f"auto:{rule.name}:{group}:{tail}"
    if len(key) > KEY_MAX_CHARS:
        key = f"auto:{rule.name}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"
    return key


def _notice_data(rule: Rule, values: dict, settings: Settings) -> dict:
    """The notice's data: the kind's declared fields taken from the event, then ``[data]``
    and ``add_data``.

    A ``[data]`` text is a template: ``"{field}"`` alone copies that value as it is (a
    list stays a list), ``"Order {order_number}"`` formats text, and text without braces
    is a literal (``status = "in_transit"``); numbers, booleans and lists are literals.
    """
    out = {f: values[f] for f in rule.fields if f in values} if rule.fields else dict(values)
    for key, source in rule.data.items():
        if not isinstance(source, str):
            out[key] = source
            continue
        whole = re.fullmatch(r"\{([a-z_][a-z0-9_]*)\}", source)
        if whole:
            if whole.group(1) in values:
                out[key] = values[whole.group(1)]
        elif "{" in source:
            try:
                out[key] = _format(source, values)
            except KeyError:
                continue
        else:
            out[key] = source
    for name in rule.add_data:
        out.update(ADD_DATA[name][1](settings, values))
    return {k: v for k, v in out.items() if not k.startswith("_") and k not in ("event_id", "customer_id")}


def _blocked(ctx: _Context, rule: Rule, customer: Customer, purpose: str) -> str | None:
    """Why a marketing mail should not even be scheduled now (the send gate re-checks later)."""
    s, settings = ctx.session, ctx.app.settings
    if customer.email is None:
        return "customer was erased"
    hit = suppressions.suppression_for(s, email_hash(customer.email, address_hash_salt(settings)), purpose)
    if hit is not None:
        return f"suppressed: {hit.reason.value} ({hit.scope})"
    if purpose != TRANSACTIONAL and rule.require_consent and not consent.has_consent(s, settings, customer.id,
                                                                                      purpose):
        return f"no current consent for {purpose}"
    return None


def _probe(ctx: _Context, rule: Rule, customer: Customer, locale: str, data: dict) -> None:
    """Render once per (kind, locale) per event, so a broken template fails the event, not the worker."""
    if (rule.kind, locale) in ctx.probed:
        return

    probe = preview.probe(customer, kind=rule.kind, to_address=customer.email, locale=locale, data=data,
                          purpose=rule.purpose)
    ctx.app.renderer.render(rule.kind, locale, data, context=preview.probe_context(ctx.app.settings, probe, customer))
    ctx.probed.add((rule.kind, locale))


def _schedule(ctx: _Context, rule: Rule, customer: Customer, data: dict, *, group: str, key: str,
              send_after: datetime):
    """Store one send for ``customer``: queued when due, scheduled otherwise; or say why not."""

    s, app, settings = ctx.session, ctx.app, ctx.app.settings
    existing = s.execute(select(Delivery.id).where(Delivery.idempotency_key == key)).scalar_one_or_none()
    if existing is not None:
        return Action(rule.name, rule.kind, "deduplicated", customer.id, existing, detail=f"key {key} exists")
    spec = app.renderer.spec(rule.kind)
    purpose = purpose_for(spec.purpose, {**ctx.data, **data})
    why_not = _blocked(ctx, rule, customer, purpose)
    if why_not:
        return Action(rule.name, rule.kind, "skipped", customer.id, detail=why_not)
    if not spec.transactional and rule.quiet_hours:
        send_after = out_of_quiet_hours(send_after, customer.timezone, settings,
                                        (customer.attributes or {}).get("quiet_hours"))
    if rule.holdout_percent and held_out(rule.name, customer.id, rule.holdout_percent):
        # Recorded, never mailed (no reward code is taken): the control group of the rule.
        delivery = Delivery(idempotency_key=key, kind=rule.kind, customer_id=customer.id, to_address=customer.email,
                            to_hash=email_hash(customer.email, address_hash_salt(settings)),
                            locale=customer.locale or settings.default_locale, data=data, purpose=purpose,
                            queue=QUEUE_BULK, status=DeliveryStatus.skipped, reason=HOLDOUT_REASON,
                            variant=HOLDOUT, send_after=send_after, cancel_group=group, automation=rule.name,
                            created_at=ctx.now)
        s.add(delivery)
        s.flush()
        return Action(rule.name, rule.kind, "holdout", customer.id, delivery.id, detail=HOLDOUT_REASON)
    claimed = None
    if rule.reward is not None:
        try:
            claimed = codes_service.claim(s, rule.reward.pool, customer_id=customer.id, now=ctx.now)
        except PoolExhausted as exc:
            return _record_failure(ctx, rule, customer, data, group, purpose, str(exc))
        data[rule.reward.field] = claimed.code
        value = _number_or_none(claimed.value)
        if value is None:
            value = rule.reward.value
        if value is not None:
            data["value"] = value
        if rule.reward.value_type:
            data["value_type"] = rule.reward.value_type
        if claimed.expires_at:
            data["expires_at"] = claimed.expires_at.date().isoformat()
    app.renderer.validate(rule.kind, data)
    locale = customer.locale or settings.default_locale
    _probe(ctx, rule, customer, locale, data)
    due = send_after <= ctx.now
    delivery = Delivery(idempotency_key=key, kind=rule.kind, customer_id=customer.id, to_address=customer.email,
                        to_hash=email_hash(customer.email, address_hash_salt(settings)), locale=locale, data=data,
                        purpose=purpose, queue=QUEUE_TRANSACTIONAL if spec.transactional else QUEUE_BULK,
                        status=DeliveryStatus.queued if due else DeliveryStatus.scheduled,
                        send_after=None if due else send_after, cancel_group=group, automation=rule.name,
                        created_at=ctx.now)  # decision time: [repeat] windows compare against it
    s.add(delivery)
    s.flush()
    if claimed is not None:
        codes_service.attach(s, claimed.id, delivery.id)
    return Action(rule.name, rule.kind, "queued" if due else "scheduled", customer.id, delivery.id,
                  send_after=None if due else send_after,
                  detail=f"code from pool {rule.reward.pool}" if claimed else "")


def _number_or_none(text_value: str | None) -> int | float | None:
    num = _number(text_value) if text_value is not None else None
    if num is None:
        return None
    return int(num) if num == num.to_integral_value() else float(num)


def _record_failure(ctx: _Context, rule: Rule, customer: Customer, data: dict, group: str, purpose: str,
                    reason: str):
    """A send the rule could not make (no reward code): a ``failed`` row that keeps the reason."""
    settings = ctx.app.settings
    delivery = Delivery(idempotency_key=_ikey(rule, group, f"failed:e{ctx.event.id}"), kind=rule.kind,
                        customer_id=customer.id, to_address=customer.email,
                        to_hash=email_hash(customer.email, address_hash_salt(settings)),
                        locale=customer.locale or settings.default_locale, data=data, purpose=purpose,
                        queue=QUEUE_BULK, status=DeliveryStatus.failed, reason=reason, cancel_group=group,
                        automation=rule.name, created_at=ctx.now, updated_at=utcnow())
    ctx.session.add(delivery)
    ctx.session.flush()
    return Action(rule.name, rule.kind, "failed", customer.id, delivery.id, detail=reason)
