"""Shopify topics to mailer events and consent (the REST webhook payloads).

=========================  ==============================================================
``orders/create``          ``order_placed`` (presentment currency: what the customer paid),
                           then the customer's order count and spend; cancels cart reminders
``orders/cancelled``       ``order_cancelled`` (the order's pending sends are cancelled)
``fulfillments/create``,   ``shipment_status`` ``delivered`` -> ``order_delivered``; other
``fulfillments/update``    statuses with a tracking number -> ``order_shipped``; ``failure`` and
                           ``attempted_delivery`` -> ``order_shipment_problem`` (a shipping
                           update saying the delivery has a problem);
                           ``estimated_delivery_at`` later than the ETA last told ->
                           ``order_delayed`` (with ``new_eta`` / ``previous_eta``)
``checkouts/create``,      ``cart_updated`` with ``abandoned_checkout_url`` as the cart link
``checkouts/update``       (a completed checkout sends nothing: its order will come)
``customers/create``,      the customer record; ``email_marketing_consent`` to the ledger
``customers/update``       (:func:`mailer.connectors.common.apply_consent`)
``inventory_levels/update``  stock per location summed per inventory item, joined to the
``products/update``        variant's SKU (kept from ``products/update``): rising from 0 ->
                           ``product_restocked`` with the stock count
=========================  ==============================================================
"""

from __future__ import annotations

from typing import Any

from mailer.connectors import common as c
from mailer.connectors.common import Ctx
from mailer.models import ConnectorItem, ConnectorOrder, ConsentSource

#: shipment_status values that mean "on its way" (order_shipped); ``delivered`` is order_delivered.
SHIPPING_STATUSES = ("label_printed", "label_purchased", "confirmed", "in_transit", "out_for_delivery",
                     "ready_for_pickup", "picked_up")
#: shipment_status values that mean the carrier could not deliver (order_shipment_problem).
PROBLEM_STATUSES = ("failure", "attempted_delivery")


def _presentment(o: dict, name: str) -> tuple[Any, Any]:
    """An amount in the customer's currency: ``<name>_set.presentment_money``, else the shop's."""
    money_set = c.obj(c.obj(o.get(f"{name}_set")).get("presentment_money"))
    if money_set.get("amount") is not None:
        return money_set.get("amount"), money_set.get("currency_code")
    return o.get(name), o.get("presentment_currency") or o.get("currency")


def _line_items(ctx: Ctx, lines: Any) -> list[dict]:
    out = []
    for line in c.items_of(lines)[:200]:
        line = c.obj(line)
        price, _ = _presentment(line, "price")
        it = c.item(line.get("title") or line.get("name"), sku=line.get("sku"), variant=line.get("variant_title"),
                    quantity=line.get("quantity"), price=price)
        if it is not None:
            out.append(it)
    return out


def _address(o: dict) -> str | None:
    return c.email(o.get("email")) or c.email(o.get("contact_email")) or c.email(c.obj(o.get("customer")).get("email"))


def _order_number(o: dict) -> str | None:
    return c.ident(o.get("order_number")) or c.ident(str(o.get("name") or "").lstrip("#")) or c.ident(o.get("id"))


def _remember_order(ctx: Ctx, order_id: str, number: str, customer_id: int | None) -> None:
    with ctx.app.session() as s:
        row = s.get(ConnectorOrder, (ctx.platform, ctx.shop, order_id))
        if row is None:
            s.add(ConnectorOrder(platform=ctx.platform, shop=ctx.shop, order_id=order_id, order_number=number,
                                 customer_id=customer_id, updated_at=ctx.now))
        else:
            row.order_number, row.customer_id = number, customer_id or row.customer_id


def orders_create(ctx: Ctx, o: dict) -> None:
    address, number, order_id = _address(o), _order_number(o), c.ident(o.get("id"))
    if address is None or number is None:
        ctx.note("order without a customer e-mail or number: nothing to do")
        return
    data: dict[str, Any] = {"email": address, "order_number": number}
    items = _line_items(ctx, o.get("line_items"))
    if items:
        data["items"] = items
    total, cur = _presentment(o, "total_price")
    if c.money(total) is not None:
        data["total"] = c.number(c.money(total))
    if c.currency(cur):
        data["currency"] = c.currency(cur)
    if c.url(o.get("order_status_url")):
        data["order_url"] = c.url(o.get("order_status_url"))
    if c.ident(o.get("cart_token") or o.get("checkout_token")):
        data["cart_id"] = c.ident(o.get("cart_token") or o.get("checkout_token"))
    if c.iso(o.get("created_at")):
        data["occurred_at"] = c.iso(o.get("created_at"))
    result = ctx.publish("order_placed", data, f"order:{order_id or number}:placed")
    customer = c.obj(o.get("customer"))
    c.link(ctx, result.customer_id, customer.get("id"))
    _remember_order(ctx, order_id or number, number, result.customer_id)
    c.refresh_totals(ctx, address, result.customer_id,
                     orders_count=customer.get("orders_count", customer.get("number_of_orders")),
                     total_spent=customer.get("total_spent", c.obj(customer.get("amount_spent")).get("amount")),
                     key=f"order:{order_id or number}:totals")


def orders_cancelled(ctx: Ctx, o: dict) -> None:
    address, number = _address(o), _order_number(o)
    if address is None or number is None:
        ctx.note("cancelled order without a customer e-mail or number: nothing to do")
        return
    data: dict[str, Any] = {"email": address, "order_number": number,
                            "refunded": str(o.get("financial_status")) == "refunded"}
    if c.iso(o.get("cancelled_at")):
        data["occurred_at"] = c.iso(o.get("cancelled_at"))
    ctx.publish("order_cancelled", data, f"order:{c.ident(o.get('id')) or number}:cancelled")


def fulfillment(ctx: Ctx, f: dict) -> None:
    order_id = c.ident(f.get("order_id"))
    with ctx.app.session() as s:
        known = s.get(ConnectorOrder, (ctx.platform, ctx.shop, order_id)) if order_id else None
        number = known.order_number if known else None
        last_eta = known.last_eta if known else None
    number = number or c.ident(str(f.get("name") or "").lstrip("#").split(".")[0]) or order_id
    address = c.email(f.get("email")) or c.email(c.obj(f.get("destination")).get("email"))
    if address is None or number is None:
        ctx.note("fulfillment without a customer e-mail or order: nothing to do")
        return
    fid = c.ident(f.get("id")) or ctx.webhook_id
    status = c.text(f.get("shipment_status"), 40) or ""
    items = _line_items(ctx, f.get("line_items"))
    base: dict[str, Any] = {"email": address, "order_number": number}
    if items:
        base["items"] = items
    eta = c.iso(f.get("estimated_delivery_at"))
    if status == "delivered":
        data = dict(base)
        if c.iso(f.get("delivered_at") or f.get("updated_at")):
            data["delivered_at"] = c.iso(f.get("delivered_at") or f.get("updated_at"))
        ctx.publish("order_delivered", data, f"fulfillment:{fid}:delivered")
        return
    tracking = c.ident(f.get("tracking_number")) or c.ident(next(iter(c.items_of(f.get("tracking_numbers"))), None))
    tracking_url = c.url(f.get("tracking_url")) or c.url(next(iter(c.items_of(f.get("tracking_urls"))), None))
    carrier = c.text(f.get("tracking_company"), 100)
    if status in ("", *SHIPPING_STATUSES) and tracking and tracking_url and carrier:
        data = {**base, "carrier": carrier, "tracking_number": tracking, "tracking_url": tracking_url}
        if eta:
            data["eta"] = eta
        ctx.publish("order_shipped", data, f"fulfillment:{fid}:{tracking}:{status or 'created'}")
    elif status in PROBLEM_STATUSES and tracking and tracking_url and carrier:
        data = {**base, "carrier": carrier, "tracking_number": tracking, "tracking_url": tracking_url,
                "shipment_status": status}
        if eta:
            data["eta"] = eta
        ctx.publish("order_shipment_problem", data, f"fulfillment:{fid}:{tracking}:{status}")
    elif status in PROBLEM_STATUSES:
        ctx.note(f"shipment {status} without a tracking number, link or carrier: nothing sent")
    elif not tracking:
        ctx.note(f"fulfillment {status or 'created'} without tracking: nothing sent")
    if eta:
        new, old = c.when(eta), c.when(last_eta)
        if old is not None and new is not None and new > old:
            ctx.publish("order_delayed", {**base, "new_eta": eta, "previous_eta": last_eta},
                        f"order:{order_id or number}:eta:{eta}")
        if old is None or (new is not None and new > old):
            with ctx.app.session() as s:
                row = s.get(ConnectorOrder, (ctx.platform, ctx.shop, order_id or number))
                if row is None:
                    s.add(ConnectorOrder(platform=ctx.platform, shop=ctx.shop, order_id=order_id or number,
                                         order_number=number, last_eta=eta, updated_at=ctx.now))
                else:
                    row.last_eta = eta


def checkout(ctx: Ctx, o: dict) -> None:
    address = _address(o)
    cart_url = c.url(o.get("abandoned_checkout_url"))
    cart_id = c.ident(o.get("token") or o.get("cart_token") or o.get("id"))
    if address is None or cart_url is None or cart_id is None:
        ctx.note("checkout without an e-mail, abandoned_checkout_url or token: nothing to do")
        return
    if o.get("completed_at"):
        ctx.note("checkout completed: its order cancels the reminders")
        return
    items = [i for i in _line_items(ctx, o.get("line_items")) if "price" in i]
    total, cur = _presentment(o, "total_price")
    data: dict[str, Any] = {"email": address, "cart_id": cart_id, "items": items, "cart_url": cart_url,
                            "total": c.number(c.money(total) or c.money(0))}
    if c.currency(cur):
        data["currency"] = c.currency(cur)
    if c.iso(o.get("updated_at")):
        data["occurred_at"] = c.iso(o.get("updated_at"))
    result = ctx.publish("cart_updated", data, f"checkout:{cart_id}:{c.ident(o.get('updated_at')) or ctx.webhook_id}")
    c.link(ctx, result.customer_id, c.obj(o.get("customer")).get("id"))


def customer(ctx: Ctx, o: dict) -> None:
    address = c.email(o.get("email"))
    if address is None:
        ctx.note("customer without a valid e-mail: nothing to do")
        return
    data: dict[str, Any] = {"email": address}
    for name in ("first_name", "last_name"):
        if c.text(o.get(name)):
            data[name] = c.text(o.get(name))
    addr = c.obj(o.get("default_address"))
    if c.country(addr.get("country_code")):
        data["country"] = c.country(addr.get("country_code"))
    if c.currency(o.get("currency")):
        data["currency"] = c.currency(o.get("currency"))
    n = c.count(o.get("orders_count", o.get("number_of_orders")))
    if n is not None and n >= 0:
        data["orders_count"] = n
    spent = c.money(o.get("total_spent", c.obj(o.get("amount_spent")).get("amount")))
    if spent is not None:
        data["total_spent"] = c.number(spent)
    result = ctx.publish("customer_updated", data, f"customer:{c.ident(o.get('id')) or address}:"
                                                   f"{c.ident(o.get('updated_at')) or ctx.webhook_id}")
    c.link(ctx, result.customer_id, o.get("id"))
    consent = o.get("email_marketing_consent")
    if isinstance(consent, dict):
        ctx.note(c.apply_consent(ctx, address, c.text(consent.get("state"), 40) or "",
                                 opt_in_level=c.text(consent.get("opt_in_level"), 40),
                                 updated_at=c.when(consent.get("consent_updated_at")), source=ConsentSource.shopify))


# -- stock -------------------------------------------------------------------------------------------
def _stock_change(ctx: Ctx, key: str, *, available: int | None = None, location: str | None = None,
                  **facts: Any) -> None:
    """Record what the shop said about one item; rising from zero (or below) publishes a restock."""
    with ctx.app.session() as s:
        row = s.get(ConnectorItem, (ctx.platform, ctx.shop, key), with_for_update=True)
        if row is None:
            row = ConnectorItem(platform=ctx.platform, shop=ctx.shop, item_key=key, levels={}, updated_at=ctx.now)
            s.add(row)
        for name, value in facts.items():
            if value is not None:
                setattr(row, name, value)
        before = row.available
        if location is not None and available is not None:
            levels = dict(row.levels or {})
            levels[location] = available
            row.levels = levels
            available = sum(v for v in levels.values() if isinstance(v, int))
        if available is not None:
            row.available = available
        restocked = before is not None and before <= 0 and available is not None and available > 0
        snapshot = (row.sku, row.name, row.price, row.url, row.image_url)
    if not restocked:
        return
    sku, name, price, url_, image = snapshot
    if not (sku and name and price is not None and url_):
        ctx.note(f"{key} back in stock but its SKU, name, price or page is not known yet (products/update)")
        return
    data: dict[str, Any] = {"sku": sku, "name": name, "price": c.number(c.money(price) or c.money(0)),
                            "url": url_, "stock": available}
    if image:
        data["image_url"] = image
    ctx.publish("product_restocked", data, f"restock:{key}:{ctx.webhook_id}")


def products_update(ctx: Ctx, p: dict) -> None:
    handle = c.ident(p.get("handle"))
    title = c.text(p.get("title"))
    image = c.url(c.obj(p.get("image")).get("src")) or c.url(c.obj(next(iter(c.items_of(p.get("images"))), None))
                                                            .get("src"))
    for v in c.items_of(p.get("variants"))[:500]:
        v = c.obj(v)
        inv = c.ident(v.get("inventory_item_id"))
        if inv is None:
            continue
        variant = c.text(v.get("title"))
        name = title if not variant or variant == "Default Title" else f"{title} ({variant})" if title else None
        page = f"https://{ctx.shop}/products/{handle}" + (f"?variant={c.ident(v.get('id'))}" if v.get("id") else "") \
            if handle else None
        price = c.money(v.get("price"))
        qty = c.count(v.get("inventory_quantity"))
        key = f"inv:{inv}"
        old = c.count(v.get("old_inventory_quantity"))
        if old is not None and qty is not None:
            _seed(ctx, key, old)
        _stock_change(ctx, key, available=qty, sku=c.ident(v.get("sku")), name=name[:200] if name else None,
                      price=str(price) if price is not None else None, url=c.url(page), image_url=image)


def _seed(ctx: Ctx, key: str, old: int) -> None:
    """A first-seen item takes the payload's ``old_inventory_quantity`` as what it was before."""
    with ctx.app.session() as s:
        if s.get(ConnectorItem, (ctx.platform, ctx.shop, key)) is None:
            s.add(ConnectorItem(platform=ctx.platform, shop=ctx.shop, item_key=key, available=old, levels={},
                                updated_at=ctx.now))


def inventory_levels_update(ctx: Ctx, p: dict) -> None:
    inv, location, available = c.ident(p.get("inventory_item_id")), c.ident(p.get("location_id")), \
        c.count(p.get("available"))
    if inv is None or available is None:
        ctx.note("inventory level without an item or a count: nothing to do")
        return
    _stock_change(ctx, f"inv:{inv}", available=available, location=location or "default")


TOPICS = {
    "orders/create": orders_create,
    "orders/cancelled": orders_cancelled,
    "fulfillments/create": fulfillment,
    "fulfillments/update": fulfillment,
    "checkouts/create": checkout,
    "checkouts/update": checkout,
    "customers/create": customer,
    "customers/update": customer,
    "inventory_levels/update": inventory_levels_update,
    "products/update": products_update,
}
