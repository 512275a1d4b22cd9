"""Triggering a notice: validate, store one delivery per idempotency key, enqueue.

Everything is checked before anything is stored or enqueued: the data keeps within
:mod:`mailer.limits` (sizes, depth, no NaN/Infinity, 64-bit integers), the kind exists, the
required data fields are present, the address is valid, and the template renders for
the recipient's locale with this data.  The delivery row is committed first and the
Dramatiq message sent after; if the broker is down at that moment the row stays
``queued`` and the worker's sweeper enqueues it later, so nothing is lost.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from mailer import limits
from mailer.addresses import email_hash, normalize
from mailer.app import App, get_app
from mailer.customers.records import get_or_create
from mailer.delivery import preview
from mailer.errors import NotFound, ValidationError
from mailer.instance_secrets import address_hash_salt
from mailer.message.mime import header_text
from mailer.models import Customer, Delivery, DeliveryStatus
from mailer.queue import port
from mailer.queue.port import QUEUE_BULK, QUEUE_TRANSACTIONAL
from mailer.settings import Settings

log = logging.getLogger("mailer.notices")


@dataclass(frozen=True)
class Enqueued:
    """A stored delivery: its id, whether this call created it, and its queue."""

    delivery_id: int
    created: bool
    queue: str = QUEUE_TRANSACTIONAL


def idempotency_key(kind: str, key: str | None, *, to: str, data: dict, locale: str | None) -> str:
    """``notice:<kind>:<key>``, or a hash of the content when the caller gave no key."""
    if key:
        if len(key) > 200:
            raise ValidationError("idempotency key longer than 200 characters", field="idempotency_key")
        return f"notice:{kind}:{key}"
    digest = hashlib.sha256(json.dumps({"to": to, "data": data, "locale": locale}, sort_keys=True,
                                       default=str).encode()).hexdigest()
    return f"notice:{kind}:sha256:{digest}"


def purpose_for(spec_purpose: str, data: dict) -> str:
    """The consent purpose of a mail; ``restock:{sku}`` style purposes take values from the data."""
    if "{" in spec_purpose:
        try:
            return spec_purpose.format(**data)
        except KeyError as exc:
            raise ValidationError(f"data field {exc.args[0]!r} is needed to know the consent purpose",
                                  field=f"data.{exc.args[0]}") from exc
    return spec_purpose


def create(app: App, kind: str, *, to: str | None = None, customer_id: int | None = None,
           data: dict | None = None, locale: str | None = None, key: str | None = None,
           send_after=None, cancel_group: str | None = None, automation: str | None = None,
           status: DeliveryStatus = DeliveryStatus.queued) -> Enqueued:
    """Validate and store the delivery (no enqueue); return its id and whether it is new."""
    data = dict(data or {})
    limits.ensure(data)
    settings = app.settings
    renderer = app.renderer
    spec = renderer.validate(kind, data)
    if (to is None) == (customer_id is None):
        raise ValidationError("give exactly one of an address (to / email) or a customer id", field="to")
    with app.session() as s:
        if customer_id is not None:
            customer = s.get(Customer, customer_id)
            if customer is None or customer.email is None:
                raise NotFound(f"no customer with id {customer_id}")
        else:
            customer = get_or_create(s, settings, normalize(to), locale=locale)
        address = customer.email
        loc = locale or customer.locale or settings.default_locale
        # Fail early: the template must render for this locale and data before we store anything.
        probe = preview.probe(customer, kind=kind, to_address=address, locale=loc, data=data, purpose=spec.purpose)
        rendered = renderer.render(kind, loc, data, context=preview.probe_context(settings, probe, customer))
        # The header rule (mailer.mime.header_text) applied now, not at send time: line
        # breaks in the subject are flattened (the renderer already did), and any other
        # control character smuggled in through the data is refused before anything is stored.
        header_text("Subject", rendered.subject)
        ikey = idempotency_key(kind, key, to=address, data=data, locale=loc)
        purpose = purpose_for(spec.purpose, data)
        # The unique index on idempotency_key makes this one lookup.
        existing = s.execute(select(Delivery.id, Delivery.queue).where(Delivery.idempotency_key == ikey)).first()
        if existing is not None:
            return Enqueued(existing.id, False, existing.queue)
        delivery = Delivery(idempotency_key=ikey, kind=kind, customer_id=customer.id, to_address=address,
                            to_hash=email_hash(address, address_hash_salt(settings)), locale=loc, data=data,
                            purpose=purpose, queue=QUEUE_TRANSACTIONAL if spec.transactional else QUEUE_BULK,
                            status=status, send_after=send_after, cancel_group=cancel_group,
                            automation=automation)
        s.add(delivery)
        try:
            s.flush()
        except IntegrityError:
            # Another request with the same key won the race: return its delivery.
            s.rollback()
            with app.session() as s2:
                row = s2.execute(select(Delivery.id, Delivery.queue).where(Delivery.idempotency_key == ikey)).one()
                return Enqueued(row.id, False, row.queue)
        return Enqueued(delivery.id, True, delivery.queue)


def enqueue(result: Enqueued) -> Enqueued:
    """Send the message for a delivery this call created (through the port; broker down: the sweeper sends it)."""
    if result.created:
        port.enqueue_delivery(result.delivery_id, result.queue)
    return result


def trigger(app: App, kind: str, **fields) -> Enqueued:
    """:func:`create` then :func:`enqueue`: store one notice and hand it to the workers."""
    return enqueue(create(app, kind, **fields))


def notify(kind: str, *, to: str | None = None, customer_id: int | None = None, data: dict | None = None,
           locale: str | None = None, idempotency_key: str | None = None,
           settings: Settings | None = None) -> int:
    """Validate, store and enqueue one notice; the same idempotency key gives the same id."""
    app = get_app() if settings is None or settings == get_app().settings else App(settings)
    return trigger(app, kind, to=to, customer_id=customer_id, data=data, locale=locale,
                   key=idempotency_key).delivery_id
