"""Shop events: declared schemas, validation, and the values automations compare and return.

Shops report what happened (an order was placed, delayed, shipped, delivered; a cart
changed or was abandoned; a product is back in stock; a customer's totals changed) and
mailer decides what to send, when, and what not to send (:mod:`mailer.automations`).
This module is below the automations that use it: :data:`SCHEMAS` and :func:`validate`
(an unknown type, a missing or mistyped field, or a field the schema does not declare is
refused with :class:`~mailer.errors.InvalidEvent` naming every bad field, such as
``data.items[2].quantity``), :class:`Snapshot` (the customer before the event),
:class:`Action` and :class:`Published`.  Accepting an event (storing it and running the
automations) is :func:`mailer.automations.publish.publish`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mailer import limits
from mailer.addresses import normalize
from mailer.errors import InvalidAddress, InvalidEvent
from mailer.models import Customer, ShopEvent
from mailer.rendering.i18n import is_valid_locale

log = logging.getLogger("mailer.events")

#: Longest free-text field (characters) unless a field says otherwise.
TEXT_MAX_CHARS = 500
#: Most entries in an ``items`` / ``tags`` list.
LIST_MAX = 200
#: Longest ``Idempotency-Key`` (characters).
IDEMPOTENCY_KEY_MAX_CHARS = 240
#: Largest whole number in a count field (quantity, stock, orders_count): a 32-bit ``INTEGER`` column.
COUNT_MAX = 2**31 - 1

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# -- field types -------------------------------------------------------------------------------
def _text(value: Any, where: str, limit: int = TEXT_MAX_CHARS) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidEvent(f"{where} must be a finite number or a string (NaN and Infinity are refused)",
                           field=where)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidEvent(f"{where} must be a string, not {type(value).__name__}", field=where)
    value = value.strip()
    if not value:
        raise InvalidEvent(f"{where} is empty", field=where)
    if _CONTROL.search(value):
        raise InvalidEvent(f"{where} contains a line break or control character", field=where)
    if len(value) > limit:
        raise InvalidEvent(f"{where} is longer than {limit} characters", field=where)
    return value


def _ident(value: Any, where: str) -> str:
    """Order numbers, SKUs, cart ids: text without spaces that could break a key."""
    text = _text(value, where, 100)
    if not re.fullmatch(r"[^\s:{}]+", text):
        raise InvalidEvent(f"{where} {text!r} must not contain spaces, ':' or braces", field=where)
    return text


def _email(value: Any, where: str) -> str:
    try:
        return normalize(_text(value, where, 320))
    except InvalidAddress as exc:
        raise InvalidEvent(f"{where}: {exc}", field=where) from exc


def _int(minimum: int = 0, maximum: int = COUNT_MAX):
    def check(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and re.fullmatch(r"-?\d{1,30}", value.strip()):
                value = int(value)
            else:
                raise InvalidEvent(f"{where} must be a whole number", field=where)
        if value < minimum:
            raise InvalidEvent(f"{where} must be at least {minimum}", field=where)
        if value > maximum:
            raise InvalidEvent(f"{where} must be at most {maximum}", field=where)
        return value
    return check


def _amount(value: Any, where: str) -> int | float:
    """Money as a JSON number (129.9); numbers and numeric strings accepted, 2 decimals at most."""
    if isinstance(value, bool):
        raise InvalidEvent(f"{where} must be an amount such as 129.90", field=where)
    if isinstance(value, str) and len(value) > 40:
        raise InvalidEvent(f"{where} must be an amount such as 129.90", field=where)
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidEvent(f"{where} must be an amount such as 129.90", field=where) from None
    if not amount.is_finite() or amount < 0:
        raise InvalidEvent(f"{where} must be a non-negative amount", field=where)
    if amount != amount.quantize(Decimal("0.01")) or amount >= Decimal("1e12"):
        raise InvalidEvent(f"{where} must have at most 2 decimals and 12 digits", field=where)
    # Templates format numbers (Babel); two decimals below 10^12 are exact enough as a double.
    return int(amount) if amount == amount.to_integral_value() else float(amount)


def _label(value: Any, where: str) -> str | dict:
    """A product name: text, or text per locale ({"en": "Linen shirt", "pl": "Lniana koszula"})."""
    if isinstance(value, dict):
        if not value:
            raise InvalidEvent(f"{where} is an empty object; give text or text per locale", field=where)
        out = {}
        for loc, text in value.items():
            if not is_valid_locale(str(loc)):
                raise InvalidEvent(f"{where}.{loc} is not a locale tag such as en, pl or zh-TW", field=f"{where}.{loc}")
            out[str(loc)] = _text(text, f"{where}.{loc}", 200)
        return out
    return _text(value, where, 200)


def _when(value: Any, where: str) -> str:
    """An ISO 8601 date or date-time, kept as the shop wrote it."""
    text = _text(value, where, 40)
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidEvent(f"{where} {text!r} is not an ISO 8601 date or date-time", field=where) from None
    return text


def _url(value: Any, where: str) -> str:
    text = _text(value, where, 2000)
    if not re.match(r"^https?://[^\s]+$", text):
        raise InvalidEvent(f"{where} must be an http(s) URL", field=where)
    return text


def _currency(value: Any, where: str) -> str:
    text = _text(value, where, 3).upper()
    if not re.fullmatch(r"[A-Z]{3}", text):
        raise InvalidEvent(f"{where} {text!r} is not a three-letter ISO 4217 code", field=where)
    return text


def _locale(value: Any, where: str) -> str:
    text = _text(value, where, 20)
    if not is_valid_locale(text):
        raise InvalidEvent(f"{where} {text!r} is not a locale tag such as en, pl or zh-TW", field=where)
    return text.replace("_", "-")


def _timezone(value: Any, where: str) -> str:
    text = _text(value, where, 64)
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidEvent(f"{where} {text!r} is not an IANA time zone such as Europe/Warsaw",
                           field=where) from None
    return text


def _country(value: Any, where: str) -> str:
    text = _text(value, where, 2).upper()
    if not re.fullmatch(r"[A-Z]{2}", text):
        raise InvalidEvent(f"{where} {text!r} is not a two-letter country code", field=where)
    return text


def _tags(value: Any, where: str) -> list[str]:
    if not isinstance(value, list):
        raise InvalidEvent(f"{where} must be a list of tags", field=where)
    if len(value) > LIST_MAX:
        raise InvalidEvent(f"{where} has more than {LIST_MAX} tags", field=where)
    return sorted({_text(t, f"{where}[{i}]", 100) for i, t in enumerate(value)})


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidEvent(f"{where} must be true or false", field=where)
    return value


@dataclass(frozen=True)
class Field:
    """One declared field of an event (or of an item inside ``items``)."""

    check: Callable[[Any, str], Any]
    required: bool = False
    doc: str = ""


ITEM_FIELDS: dict[str, Field] = {
    "name": Field(_label, True, "product name: text, or text per locale"),
    "sku": Field(_ident, doc="stock-keeping unit"),
    "variant": Field(_label, doc="size, colour, ...: text, or text per locale"),
    "quantity": Field(_int(1), doc="how many (1 when not given)"),
    "price": Field(_amount, doc="unit price"),
    "url": Field(_url, doc="product page"),
    "image_url": Field(_url, doc="product image"),
}
#: Cart items must carry their price (the reminder shows it).
CART_ITEM_FIELDS: dict[str, Field] = {**ITEM_FIELDS, "price": Field(_amount, True, "unit price")}


def _item_list(fields: dict[str, Field]):
    def check(value: Any, where: str) -> list[dict]:
        if not isinstance(value, list):
            raise InvalidEvent(f"{where} must be a list of items", field=where)
        if len(value) > LIST_MAX:
            raise InvalidEvent(f"{where} has more than {LIST_MAX} items", field=where)
        items, problems = [], []
        for i, item in enumerate(value):
            try:
                items.append(_object(item, fields, f"{where}[{i}]"))
            except InvalidEvent as exc:
                problems.extend(_problems_of(exc))
        if problems:
            raise InvalidEvent.listing(problems)
        return [{**item, "quantity": item.get("quantity", 1)} for item in items]
    return check


_items = _item_list(ITEM_FIELDS)


def _problems_of(exc: InvalidEvent) -> list[tuple[str, str]]:
    return list(exc.problems or [(exc.field or "data", str(exc))])


def _object(value: Any, fields: dict[str, Field], where: str) -> dict:
    """Check every field of ``value``; an InvalidEvent lists all the bad ones in ``problems``."""
    if not isinstance(value, dict):
        raise InvalidEvent(f"{where} must be an object", field=where)
    out: dict = {}
    problems: list[tuple[str, str]] = []
    for name in value:
        if name not in fields:
            problems.append((f"{where}.{name}", f"{where}.{name} is not a field of this object "
                                                f"(fields: {', '.join(fields)})"))
    for name, spec in fields.items():
        raw = value.get(name)
        if raw is None or raw == "":
            if spec.required:
                problems.append((f"{where}.{name}", f"{where}.{name} is required"))
            continue
        try:
            out[name] = spec.check(raw, f"{where}.{name}")
        except InvalidEvent as exc:
            problems.extend(_problems_of(exc))
    if problems:
        raise InvalidEvent.listing(problems)
    return out


_COMMON = {"occurred_at": Field(_when, doc="when it happened at the shop (ISO 8601)")}
_CUSTOMER = {"email": Field(_email, True, "the customer's address")}
_ORDER = {**_CUSTOMER, "order_number": Field(_ident, True, "the shop's order number"),
          "items": Field(_items, doc="ordered items"), "order_url": Field(_url, doc="the order's page in the shop"),
          **_COMMON}
_CART = {**_CUSTOMER, "cart_id": Field(_ident, True, "the shop's cart id"),
         "items": Field(_item_list(CART_ITEM_FIELDS), True,
                        "the cart's items (price required); an empty list means the cart was emptied"),
         "total": Field(_amount, True, "cart total"),
         "cart_url": Field(_url, True, "link that restores the cart"),
         "currency": Field(_currency), **_COMMON}

#: Every event type mailer accepts and its fields (``True`` = required).
SCHEMAS: dict[str, dict[str, Field]] = {
    "order_placed": {**_ORDER, "total": Field(_amount, doc="order total"), "currency": Field(_currency),
                     "cart_id": Field(_ident, doc="the cart the order came from")},
    "order_delayed": {**_ORDER, "new_eta": Field(_when, True, "new estimated delivery (ISO 8601)"),
                      "previous_eta": Field(_when, doc="the estimate given before"),
                      "reason": Field(_label, doc="why, in words for the customer: text, or text per locale"),
                      "compensation_code": Field(_ident, doc="a code the shop gives as an apology"),
                      "compensation_percent": Field(_int(1, 100), doc="what that code is worth, percent off")},
    "order_shipped": {**_ORDER, "carrier": Field(lambda v, w: _text(v, w, 100), True, "carrier name"),
                      "tracking_number": Field(_ident, True, "carrier tracking number"),
                      "tracking_url": Field(_url, True, "carrier tracking page"),
                      "eta": Field(_when, doc="estimated delivery (ISO 8601)")},
    # A carrier could not deliver (Shopify shipment_status ``failure`` / ``attempted_delivery``):
    # the customer gets a shipping update saying so (automations/shipping_problem.toml).
    "order_shipment_problem": {**_ORDER, "carrier": Field(lambda v, w: _text(v, w, 100), True, "carrier name"),
                               "tracking_number": Field(_ident, True, "carrier tracking number"),
                               "tracking_url": Field(_url, True, "carrier tracking page"),
                               "shipment_status": Field(_ident, True,
                                                        "what went wrong: failure or attempted_delivery"),
                               "eta": Field(_when, doc="estimated delivery (ISO 8601)")},
    "order_delivered": {**_ORDER, "delivered_at": Field(_when, doc="when it was delivered (ISO 8601)")},
    # A cancellation or refund keeps the order with that status and reverses its revenue
    # attribution (mailer/customers/attribution.py); a partial refund still reverses it whole.
    "order_cancelled": {**_CUSTOMER, "order_number": Field(_ident, True, "the shop's order number"),
                        "refunded": Field(_flag, doc="true when the order was refunded rather than cancelled"),
                        "reason": Field(lambda v, w: _text(v, w, 200), doc="why, for the shop's records"),
                        **_COMMON},
    "order_refunded": {**_CUSTOMER, "order_number": Field(_ident, True, "the shop's order number"),
                       "refund_total": Field(_amount, doc="amount refunded"), "currency": Field(_currency),
                       "reason": Field(lambda v, w: _text(v, w, 200), doc="why, for the shop's records"),
                       **_COMMON},
    "cart_updated": dict(_CART),
    "cart_abandoned": dict(_CART),
    "product_restocked": {"sku": Field(_ident, True, "the product's SKU (restock:<sku> requests)"),
                          "name": Field(_label, True, "product name: text, or text per locale"),
                          "price": Field(_amount, True, "price"),
                          "url": Field(_url, True, "product page"),
                          "stock": Field(_int(1), doc="units now available; low stock sends in waves"),
                          "variant": Field(_label, doc="size, colour, ...: text, or text per locale"),
                          "image_url": Field(_url, doc="product image"), "currency": Field(_currency),
                          **_COMMON},
    "customer_updated": {**_CUSTOMER,
                         "total_spent": Field(_amount, doc="lifetime spend"),
                         "orders_count": Field(_int(0), doc="lifetime orders"),
                         "last_order_at": Field(_when, doc="last order time (ISO 8601)"),
                         "tags": Field(_tags, doc="the customer's whole tag set (replaces it)"),
                         "add_tags": Field(_tags, doc="tags to add"),
                         "remove_tags": Field(_tags, doc="tags to remove"),
                         "first_name": Field(lambda v, w: _text(v, w, 200)),
                         "last_name": Field(lambda v, w: _text(v, w, 200)),
                         "locale": Field(_locale), "timezone": Field(_timezone), "country": Field(_country),
                         "currency": Field(_currency), **_COMMON},
}

def _choice(*allowed: str):
    def check(value: Any, where: str) -> str:
        text = _text(value, where, 40)
        if text not in allowed:
            raise InvalidEvent(f"{where} {text!r} is not one of {', '.join(allowed)}", field=where)
        return text
    return check


def _probability(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise InvalidEvent(f"{where} must be a probability from 0 to 1", field=where)
    return float(value)


def _figure(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidEvent(f"{where} must be a finite non-negative number", field=where)
    return round(float(value), 2)


_RISK = _choice("low", "medium", "high")

#: Events mailer raises itself from the prediction figures (mailer.automations.predicted);
#: rules trigger on them like on shop events, but shops cannot send them.
PREDICTION_SCHEMAS: dict[str, dict[str, Field]] = {
    "churn_risk_became": {**_CUSTOMER,
                          "churn_risk": Field(_RISK, True, "the customer's new churn risk"),
                          "previous_churn_risk": Field(_RISK, True, "their churn risk at the score before"),
                          "p_alive": Field(_probability, doc="probability they are still a customer"),
                          "predicted_clv": Field(_figure, doc="predicted 12-month value, shop currency"),
                          "as_of": Field(_when, True, "the day the figures are as of")},
    "expected_order_due": {**_CUSTOMER,
                           "expected_next_order_at": Field(_when, True,
                                                           "when the next order is expected (this purchase cycle)"),
                           "last_order_at": Field(_when, True, "the day of the last order (starts the cycle)"),
                           "as_of": Field(_when, True, "the day the figures are as of")},
}
SCHEMAS.update(PREDICTION_SCHEMAS)

EVENT_TYPES = tuple(SCHEMAS)
#: What shops may send (``POST /v1/events``, ``mailer events publish``, ``mailer.publish``).
SHOP_EVENT_TYPES = tuple(t for t in SCHEMAS if t not in PREDICTION_SCHEMAS)


def validate(type_: str, data: Any, *, internal: bool = False) -> dict:
    """The event's data, checked and normalized; :class:`InvalidEvent` names the bad field.

    ``internal`` (mailer's own prediction events) admits :data:`PREDICTION_SCHEMAS`.
    """
    if not isinstance(type_, str) or type_ not in SCHEMAS:
        shown = repr(type_)[:60]
        raise InvalidEvent(f"unknown event type {shown}; known types: {', '.join(SHOP_EVENT_TYPES)}", field="type")
    if type_ in PREDICTION_SCHEMAS and not internal:
        raise InvalidEvent(f"{type_} events are raised by mailer's predictions (after `mailer predict score` or "
                           f"the daily refit), not sent by shops; shop types: {', '.join(SHOP_EVENT_TYPES)}",
                           field="type")
    bounded = limits.check(data, "data")
    if bounded:
        raise InvalidEvent.listing(bounded)
    cleaned = _object(data, SCHEMAS[type_], "data")
    if type_ == "customer_updated" and "tags" in cleaned and ({"add_tags", "remove_tags"} & cleaned.keys()):
        raise InvalidEvent("data.tags replaces the tag set; do not combine it with add_tags / remove_tags",
                           field="data.tags")
    return cleaned


# -- customer snapshots --------------------------------------------------------------------------
@dataclass
class Snapshot:
    """A detached copy of a customer's record, so a rule can compare before and after."""

    id: int | None
    email: str | None
    first_name: str | None = None
    last_name: str | None = None
    locale: str | None = None
    timezone: str | None = None
    country: str | None = None
    total_spent: Decimal = Decimal("0")
    currency: str | None = None
    orders_count: int = 0
    last_order_at: datetime | None = None
    predicted_spend_tier: Any = None
    attributes: dict = field(default_factory=dict)
    created_at: datetime | None = None
    erased_at: datetime | None = None
    tag_names: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, c: Customer) -> Snapshot:
        return cls(id=c.id, email=c.email, first_name=c.first_name, last_name=c.last_name, locale=c.locale,
                   timezone=c.timezone, country=c.country, total_spent=c.total_spent or Decimal("0"),
                   currency=c.currency, orders_count=c.orders_count or 0, last_order_at=c.last_order_at,
                   predicted_spend_tier=c.predicted_spend_tier, attributes=dict(c.attributes or {}),
                   created_at=c.created_at, erased_at=c.erased_at, tag_names=list(c.tag_names))


# -- results ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Action:
    """What an automation did with an event, for the caller to read."""

    automation: str
    kind: str
    outcome: str            # queued, scheduled, merged, cancelled, deduplicated, skipped, failed
    customer_id: int | None = None
    delivery_id: int | None = None
    send_after: datetime | None = None
    detail: str = ""

    def as_dict(self) -> dict:
        return {"automation": self.automation, "kind": self.kind, "outcome": self.outcome,
                "customer_id": self.customer_id, "delivery_id": self.delivery_id,
                "send_after": self.send_after.isoformat() if self.send_after else None, "detail": self.detail}


@dataclass(frozen=True)
class Published:
    event_id: int
    type: str
    #: True when the Idempotency-Key was seen before: nothing was applied again.
    duplicate: bool
    customer_id: int | None
    actions: tuple[Action, ...] = ()

    @property
    def failures(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.outcome == "failed")

    def as_dict(self) -> dict:
        return {"event_id": self.event_id, "type": self.type, "duplicate": self.duplicate,
                "customer_id": self.customer_id, "actions": [a.as_dict() for a in self.actions],
                "failures": len(self.failures)}


def event_data(event: ShopEvent) -> dict:
    """A stored event's payload without mailer's bookkeeping fields."""
    return {k: v for k, v in (event.data or {}).items() if not k.startswith("_")}
