"""What every topic handler works with: the delivery's context, bounded reading of a shop's
JSON, publishing events idempotently, linking customers to their shop, consent from a shop.

A shop's payload is data from outside: every value is read through :func:`text`,
:func:`money`, :func:`count` or :func:`when` (bounded, control characters removed, wrong
types treated as absent), so an odd payload is skipped with a note, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import func, select, update

from mailer.addresses import normalize
from mailer.app import App
from mailer.automations.publish import publish
from mailer.consent import ledger as consent
from mailer.db import insert_or_ignore
from mailer.errors import InvalidAddress
from mailer.events.schemas import Published
from mailer.models import ConsentEvent, ConsentSource, ConsentState, Customer, Order, OrderStatus, ShopCustomer

log = logging.getLogger("mailer.connectors")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_IDENT = re.compile(r"[\s:{}]+")


@dataclass
class Ctx:
    """One delivery being processed: where it came from, the clock, what it did."""

    app: App
    platform: str
    shop: str
    webhook_id: str
    topic: str
    now: datetime
    notes: list[str] = field(default_factory=list)

    @property
    def settings(self):
        return self.app.settings

    def note(self, text_: str) -> None:
        self.notes.append(text_)

    def publish(self, type_: str, data: dict, key: str) -> Published:
        """Publish one event under a key of this shop: the same key again applies it once."""
        # The key names what happened (order 1001 placed) plus a digest of what was said about it:
        # the same again is applied once, a corrected version is a new event.
        digest = hashlib.sha256(json.dumps([type_, data], sort_keys=True).encode()).hexdigest()[:16]
        result = publish(type_, data, idempotency_key=f"{self.platform}:{self.shop}:{key}"[:220] + f":{digest}",
                         app=self.app, now=self.now)
        outcomes = ",".join(f"{a.automation}={a.outcome}" for a in result.actions) or "no automation"
        self.note(f"{type_}{' (again)' if result.duplicate else ''}: {outcomes}")
        return result

    @property
    def form_id(self) -> str:
        """The proof's form id on consent events from this shop (the write-back never echoes them)."""
        return f"{self.platform}:{self.shop}"[:200]


# -- reading a shop's JSON --------------------------------------------------------------------------
def obj(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def items_of(value: Any) -> list:
    return value if isinstance(value, list) else []


def text(value: Any, limit: int = 200) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | Decimal):
        value = str(value)
    if not isinstance(value, str):
        return None
    cleaned = _CONTROL.sub(" ", value).strip()
    return cleaned[:limit] or None


def ident(value: Any) -> str | None:
    """An id for an event key: no spaces, ':' or braces, at most 100 characters."""
    cleaned = text(value, 100)
    if cleaned is None:
        return None
    cleaned = _IDENT.sub("-", cleaned).strip("-")
    return cleaned or None


def money(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None or (isinstance(value, str) and len(value) > 40):
        return None
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount < 0 or amount >= Decimal("1e12"):
        return None
    return amount.quantize(Decimal("0.01"))


def number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,12}", value.strip()):
        value = int(value)
    if isinstance(value, int) and -(2**31) < value < 2**31:
        return value
    return None


def when(value: Any) -> datetime | None:
    """An ISO 8601 time as aware UTC (a naive one is taken as UTC), or None."""
    raw = text(value, 40)
    if raw is None:
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def iso(value: Any) -> str | None:
    """An ISO 8601 time kept as the shop wrote it, when it parses."""
    return text(value, 40) if when(value) is not None else None


def email(value: Any) -> str | None:
    raw = text(value, 320)
    if raw is None:
        return None
    try:
        return normalize(raw)
    except InvalidAddress:
        return None


def currency(value: Any) -> str | None:
    raw = text(value, 3)
    return raw.upper() if raw and re.fullmatch(r"[A-Za-z]{3}", raw) else None


def url(value: Any) -> str | None:
    raw = text(value, 2000)
    return raw if raw and re.match(r"^https?://[^\s]+$", raw) else None


def country(value: Any) -> str | None:
    raw = text(value, 2)
    return raw.upper() if raw and re.fullmatch(r"[A-Za-z]{2}", raw) else None


def item(name: Any, *, sku: Any = None, variant: Any = None, quantity: Any = None, price: Any = None,
         url_: Any = None, image: Any = None) -> dict | None:
    """One line item in the events' shape, or None without a name."""
    label = text(name)
    if label is None:
        return None
    out: dict[str, Any] = {"name": label}
    if ident(sku):
        out["sku"] = ident(sku)
    if text(variant) and text(variant) != "Default Title":
        out["variant"] = text(variant)
    qty = count(quantity)
    out["quantity"] = qty if qty and qty > 0 else 1
    p = money(price)
    if p is not None:
        out["price"] = number(p)
    if url(url_):
        out["url"] = url(url_)
    if url(image):
        out["image_url"] = url(image)
    return out


# -- customers and their shop ----------------------------------------------------------------------
def link(ctx: Ctx, customer_id: int | None, remote_id: Any) -> None:
    """Remember that the customer came from this shop (and the shop's id for them)."""
    if customer_id is None:
        return
    remote = ident(remote_id)
    with ctx.app.session() as s:
        s.execute(insert_or_ignore(s, ShopCustomer, dict(platform=ctx.platform, shop=ctx.shop,
                                                         customer_id=customer_id, remote_id=remote,
                                                         updated_at=ctx.now),
                                   index_elements=["platform", "shop", "customer_id"]))
        if remote is not None:
            # The shop's id can only become known later (a guest who registers), never change owner.
            s.execute(update(ShopCustomer).where(ShopCustomer.platform == ctx.platform, ShopCustomer.shop == ctx.shop,
                                                 ShopCustomer.customer_id == customer_id,
                                                 ShopCustomer.remote_id.is_distinct_from(remote))
                      .values(remote_id=remote, updated_at=ctx.now))


def refresh_totals(ctx: Ctx, address: str, customer_id: int | None, *, orders_count: Any = None,
                   total_spent: Any = None, key: str) -> None:
    """Set the customer's order count and spend: the shop's own figures when it sends them,
    else counted from the orders mailer holds (placed ones, in the shop's currency)."""
    data: dict[str, Any] = {"email": address}
    n, spent = count(orders_count), money(total_spent)
    if (n is None or spent is None) and customer_id is not None:
        with ctx.app.session() as s:
            # The customer's placed orders: one range of uq_orders_customer_shop_order.
            row = s.execute(select(func.count(), func.coalesce(func.sum(Order.total_shop), 0))
                            .where(Order.customer_id == customer_id, Order.status == OrderStatus.placed)).one()
        n = n if n is not None else int(row[0])
        spent = spent if spent is not None else money(row[1])
    if n is not None and n >= 0:
        data["orders_count"] = n
    if spent is not None:
        data["total_spent"] = number(spent)
    if len(data) > 1:
        ctx.publish("customer_updated", data, key)


#: Shopify ``email_marketing_consent.state`` values that withdraw consent held in mailer.
WITHDRAWING_STATES = ("unsubscribed", "redacted", "invalid")


def apply_consent(ctx: Ctx, address: str, state: str, *, opt_in_level: str | None, updated_at: datetime | None,
                  source: ConsentSource) -> str:
    """A shop's e-mail marketing state for ``address`` as a ledger event, when it changes anything.

    ``subscribed`` grants (the opt-in level is kept as the proof's wording; ``confirmed_opt_in``
    also sets ``confirmed_at``); ``unsubscribed`` / ``redacted`` / ``invalid`` withdraw;
    ``pending`` and ``not_subscribed`` never grant and change nothing.  A state older than
    mailer's latest consent event for the purpose is stale (mailer's newer withdrawal is on
    its way back to the shop) and changes nothing.
    """
    purpose = ctx.settings.connector_purpose
    if state not in ("subscribed", *WITHDRAWING_STATES):
        return f"consent {state or 'absent'}: nothing to record"
    occurred = min(updated_at or ctx.now, ctx.now)
    with ctx.app.session() as s:
        customer = s.execute(select(Customer).where(Customer.email == address)).scalar_one_or_none()
        if customer is None:
            return "consent: no such customer"
        granted = s.execute(select(ConsentState.granted).where(ConsentState.customer_id == customer.id,
                                                                ConsentState.purpose == purpose)
                            ).scalar_one_or_none()
        # The latest event of this customer and purpose (ix_consent_events_customer_purpose).
        latest = s.execute(select(func.max(ConsentEvent.occurred_at)).where(ConsentEvent.customer_id == customer.id,
                                                                            ConsentEvent.purpose == purpose)
                           ).scalar_one_or_none()
        if latest is not None and latest.tzinfo is None:
            latest = latest.replace(tzinfo=UTC)
        if latest is not None and occurred < latest:
            return f"consent {state} of {occurred:%Y-%m-%d %H:%M} is older than mailer's latest: unchanged"
        level = text(opt_in_level, 40) or "unknown"
        if state == "subscribed":
            if granted:
                return "consent subscribed: already granted"
            consent.append(s, ctx.settings, customer=customer, purpose=purpose, action="granted", source=source,
                           occurred_at=occurred,
                           proof=consent.Proof(form_id=ctx.form_id,
                                               wording=f"{ctx.platform} email marketing consent: subscribed, "
                                                       f"opt_in_level={level}",
                                               confirmed_at=occurred if level == "confirmed_opt_in" else None))
            return f"consent granted ({level})"
        if not granted:
            return f"consent {state}: not granted, nothing to withdraw"
        consent.withdraw(s, ctx.settings, customer=customer, purpose=purpose, source=source, occurred_at=occurred,
                         proof=consent.Proof(form_id=ctx.form_id,
                                             wording=f"{ctx.platform} email marketing consent: {state}"))
        return f"consent withdrawn ({state})"
