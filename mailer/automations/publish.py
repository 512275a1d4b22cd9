"""Accepting a shop event: :func:`publish`, the one way in.

The HTTP ``POST /v1/events``, ``mailer events publish`` and Python callers
(``mailer.publish``) all use it.  It:

1. checks the event against its type's schema (:data:`mailer.events.schemas.SCHEMAS`)
   before touching the database;
2. in **one transaction**: stores the ``shop_events`` row (its ``Idempotency-Key`` is
   unique: the same key again returns the first event and changes nothing), finds or
   creates the customer, applies ``customer_updated`` / ``order_placed`` to the
   customer record (an ``order_placed`` is kept in ``orders`` too and attributed to the
   campaign or automation send that brought it; ``order_cancelled`` / ``order_refunded``
   mark it and reverse that), and runs the automations (cancel, schedule, merge, claim codes).
   Any error rolls all of it back: nothing is half-applied;
3. after the commit, enqueues the sends that are due now (and, as a fast path, the
   scheduled ones with a Dramatiq ``delay``; the database row decides either way).
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from mailer.addresses import email_hash
from mailer.app import App, get_app
from mailer.automations.engine import handle, wake
from mailer.automations.rules import load
from mailer.clock import utcnow
from mailer.customers.attribution import attribute_order, reverse_order
from mailer.customers.orders import record_order
from mailer.db import insert_or_ignore
from mailer.errors import ControlFlow, ValidationError
from mailer.events.schemas import _CONTROL, IDEMPOTENCY_KEY_MAX_CHARS, Published, Snapshot, validate
from mailer.instance_secrets import address_hash_salt
from mailer.models import Customer, CustomerTag, OrderStatus, ShopEvent
from mailer.settings import Settings

log = logging.getLogger("mailer.events")


#: Events that end an order, and the status the order keeps.
_ORDER_ENDINGS = {"order_cancelled": OrderStatus.cancelled, "order_refunded": OrderStatus.refunded}


def _parse_time(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _apply_customer_update(session, customer: Customer, data: dict) -> None:
    """Write a ``customer_updated`` event's fields to the customer record."""
    for name in ("first_name", "last_name", "locale", "timezone", "country", "currency", "orders_count"):
        if name in data:
            setattr(customer, name, data[name])
    if "total_spent" in data:
        customer.total_spent = Decimal(str(data["total_spent"]))
    if "last_order_at" in data:
        customer.last_order_at = _parse_time(data["last_order_at"])
    tags = set(customer.tag_names)
    if "tags" in data:
        tags = set(data["tags"])
    tags |= set(data.get("add_tags", ()))
    tags -= set(data.get("remove_tags", ()))
    if tags != set(customer.tag_names):
        # Replace the tag rows with two statements rather than ORM collection churn.
        session.execute(delete(CustomerTag).where(CustomerTag.customer_id == customer.id))
        if tags:
            session.execute(insert(CustomerTag), [{"customer_id": customer.id, "tag": t} for t in sorted(tags)])
        session.expire(customer, ["tags"])


def _customer(session, settings: Settings, email: str) -> Customer:
    """The customer with this (normalized) address, created if new, safe against a concurrent create."""

    customer = session.execute(select(Customer).where(Customer.email == email)).scalar_one_or_none()
    if customer is not None:
        return customer
    now = utcnow()
    # Two events about one new customer at once: the second INSERT waits for the first and
    # then does nothing, instead of failing the whole event on the unique address.
    session.execute(insert_or_ignore(session, Customer,
                                     dict(email=email, email_hash=email_hash(email, address_hash_salt(settings)),
                                          total_spent=Decimal("0"), orders_count=0, attributes={}, created_at=now,
                                          updated_at=now),
                                     index_elements=["email"]))
    return session.execute(select(Customer).where(Customer.email == email)).scalar_one()


def _fingerprint(type_: str, data: dict) -> str:
    return hashlib.sha256(json.dumps([type_, data], sort_keys=True, default=str).encode()).hexdigest()


def _app_for(settings: Settings | None) -> App:
    if settings is None:
        return get_app()
    current = get_app()
    return current if current.settings == settings else App(settings)


def publish(type: str, data: dict, *, idempotency_key: str | None = None, settings: Settings | None = None,
            now: datetime | None = None, app: App | None = None, internal: bool = False) -> Published:
    """Accept one shop event: validate, store, apply and run the automations, atomically.

    ``now`` (aware UTC) stands in for the clock when computing delays, windows and quiet
    hours (tests, replays).  ``internal`` is for mailer's own prediction events
    (:mod:`mailer.automations.predicted`); shops cannot send those.  Raises :class:`~mailer.errors.InvalidEvent` before anything
    is stored when the event does not match its schema.
    """
    app = app or _app_for(settings)
    now = now or utcnow()
    if now.tzinfo is None:
        raise ValidationError("now must be an aware datetime", field="now")
    cleaned = validate(type, data, internal=internal)
    if idempotency_key is not None:
        idempotency_key = idempotency_key.strip()
        if not idempotency_key or len(idempotency_key) > IDEMPOTENCY_KEY_MAX_CHARS or _CONTROL.search(idempotency_key):
            raise ValidationError(f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX_CHARS} printable characters",
                                  field="idempotency_key")
    rules = load(app.settings)
    fingerprint = _fingerprint(type, cleaned)
    if idempotency_key is not None:
        replay = _replay(app, type, fingerprint, idempotency_key)
        if replay is not None:
            return replay
    try:
        with app.session() as s:
            # The first statement writes: on SQLite this takes the write lock for the whole
            # publish, so everything below sees a stable database (one writer at a time).
            stored = {**cleaned, "_fingerprint": fingerprint} if idempotency_key else dict(cleaned)
            event = ShopEvent(type=type, idempotency_key=idempotency_key, data=stored, received_at=now)
            s.add(event)
            try:
                s.flush()
            except IntegrityError as exc:
                # Same key stored by a concurrent publish since the check above.
                raise _Duplicate() from exc
            customer = None
            before = None
            if "email" in cleaned:
                customer = _customer(s, app.settings, cleaned["email"])
                event.customer_id = customer.id
                before = Snapshot.of(customer)
                if type == "customer_updated":
                    _apply_customer_update(s, customer, cleaned)
                elif type == "order_placed":
                    placed = _parse_time(cleaned["occurred_at"]) if "occurred_at" in cleaned else now
                    if customer.last_order_at is None or placed > customer.last_order_at:
                        customer.last_order_at = placed
                    total = Decimal(str(cleaned["total"])) if "total" in cleaned else None
                    order_id = record_order(s, app.settings, customer.id, cleaned["order_number"],
                                            placed_at=placed, total=total, currency=cleaned.get("currency"))
                    attribute_order(s, app.settings, order_id, now=now)
                elif type in _ORDER_ENDINGS:
                    # Kept as the order's status: a cancelled or refunded order leaves the
                    # prediction models' frequency and spend (mailer.customers.orders.order_arrays),
                    # and its revenue attribution is reversed.
                    refunded = type == "order_refunded" or bool(cleaned.get("refunded"))
                    status = OrderStatus.refunded if refunded else _ORDER_ENDINGS[type]
                    when = _parse_time(cleaned["occurred_at"]) if "occurred_at" in cleaned else now
                    order_id = record_order(s, app.settings, customer.id, cleaned["order_number"], placed_at=when,
                                            status=status)
                    reverse_order(s, order_id, now=now)
                s.flush()
            actions = handle(s, app, rules, event, customer, before, now)
            event.processed_at = utcnow()
            result = Published(event.id, type, False, event.customer_id, tuple(actions))
    except _Duplicate:
        replay = _replay(app, type, fingerprint, idempotency_key)
        if replay is None:
            raise ValidationError(f"Idempotency-Key {idempotency_key!r} is being used by another request; retry",
                                  field="idempotency_key") from None
        return replay
    for action in result.failures:
        log.error("ALERT: automation %s could not send %s to customer %s: %s", action.automation, action.kind,
                  action.customer_id, action.detail, extra={"customer_id": action.customer_id,
                                                            "event_id": result.event_id})
    wake(app, result.actions, now=now)
    log.info("event %s %s: %s", result.event_id, type,
             ", ".join(f"{a.automation}={a.outcome}" for a in result.actions) or "no automation",
             extra={"event_id": result.event_id, "customer_id": result.customer_id})
    return result


class _Duplicate(ControlFlow):
    """The event's Idempotency-Key is already stored."""


def _replay(app: App, type_: str, fingerprint: str, key: str) -> Published | None:
    """The event stored earlier under ``key`` (None if none); a different event under it is refused."""
    with app.session() as s:
        # The unique index on idempotency_key makes this one lookup.
        event = s.execute(select(ShopEvent).where(ShopEvent.idempotency_key == key)).scalar_one_or_none()
        if event is None:
            return None
        if event.type != type_ or (event.data or {}).get("_fingerprint") != fingerprint:
            raise ValidationError(f"Idempotency-Key {key!r} was already used for a different event "
                                  f"(event {event.id}, {event.type}); use a new key for a new event",
                                  field="idempotency_key")
        return Published(event.id, event.type, True, event.customer_id, ())


