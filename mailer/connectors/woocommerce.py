"""WooCommerce topics (``X-WC-Webhook-Topic``) to mailer events (the REST API v3 payloads).

==================================  ========================================================
``order.created``, ``order.updated``  by ``status``: ``processing`` -> ``order_placed`` (once
                                    per order); ``completed`` -> ``order_delivered``, or
                                    ``order_shipped`` when MAILER_WOOCOMMERCE_COMPLETED=shipped
                                    (needs tracking); ``cancelled`` / ``refunded`` ->
                                    ``order_cancelled``.  Shipment Tracking items
                                    (meta ``_wc_shipment_tracking_items``) -> ``order_shipped``
                                    with carrier and tracking number, once per number
``customer.created``, ``customer.updated``  the customer record
``product.updated``                 ``stock_status`` from ``outofstock`` to ``instock`` ->
                                    ``product_restocked`` (with ``stock_quantity`` when managed)
==================================  ========================================================

WooCommerce has no e-mail marketing consent of its own, so nothing here grants or withdraws.
"""

from __future__ import annotations

from typing import Any

from mailer.connectors import common as c
from mailer.connectors.common import Ctx
from mailer.models import ConnectorItem

TRACKING_META_KEY = "_wc_shipment_tracking_items"
#: Tracking pages of the carriers the Shipment Tracking extension names most (provider slug -> URL).
CARRIER_URLS = {
    "ups": "https://www.ups.com/track?tracknum={n}",
    "usps": "https://tools.usps.com/go/TrackConfirmAction?tLabels={n}",
    "fedex": "https://www.fedex.com/fedextrack/?trknbr={n}",
    "dhl": "https://www.dhl.com/en/express/tracking.html?AWB={n}",
    "royal-mail": "https://www.royalmail.com/track-your-item#/tracking-results/{n}",
    "dpd": "https://tracking.dpd.de/status/en_US/parcel/{n}",
    "inpost": "https://inpost.pl/sledzenie-przesylek?number={n}",
}


def _address(o: dict) -> str | None:
    return c.email(c.obj(o.get("billing")).get("email")) or c.email(o.get("email"))


def _items(o: dict) -> list[dict]:
    out = []
    for line in c.items_of(o.get("line_items"))[:200]:
        line = c.obj(line)
        it = c.item(line.get("name"), sku=line.get("sku"), quantity=line.get("quantity"), price=line.get("price"),
                    image=c.obj(line.get("image")).get("src"))
        if it is not None:
            out.append(it)
    return out


def _tracking(o: dict) -> list[dict]:
    for meta in c.items_of(o.get("meta_data")):
        meta = c.obj(meta)
        if meta.get("key") == TRACKING_META_KEY:
            return [c.obj(t) for t in c.items_of(meta.get("value"))[:20]]
    return []


def order(ctx: Ctx, o: dict) -> None:
    address = _address(o)
    number = c.ident(o.get("number")) or c.ident(o.get("id"))
    order_id = c.ident(o.get("id")) or number
    if address is None or number is None:
        ctx.note("order without a billing e-mail or number: nothing to do")
        return
    status = c.text(o.get("status"), 40) or ""
    base: dict[str, Any] = {"email": address, "order_number": number}
    items = _items(o)
    if items:
        base["items"] = items
    if status in ("processing", "completed"):
        data = dict(base)
        if c.money(o.get("total")) is not None:
            data["total"] = c.number(c.money(o.get("total")))
        if c.currency(o.get("currency")):
            data["currency"] = c.currency(o.get("currency"))
        created = o.get("date_created_gmt")
        if c.when(created) is not None:
            data["occurred_at"] = c.when(created).isoformat()
        result = ctx.publish("order_placed", data, f"order:{order_id}:placed")
        customer_id = result.customer_id
        # customer_id 0 is a guest: linked to the store, without a remote id.
        c.link(ctx, customer_id, o.get("customer_id") if c.count(o.get("customer_id")) else None)
        c.refresh_totals(ctx, address, customer_id, key=f"order:{order_id}:totals")
    if status in ("cancelled", "refunded"):
        ctx.publish("order_cancelled", {"email": address, "order_number": number, "refunded": status == "refunded"},
                    f"order:{order_id}:{status}")
        return
    order_url = f"{ctx.shop}/my-account/view-order/{order_id}/"
    shipped_any = False
    for t in _tracking(o):
        tracking = c.ident(t.get("tracking_number"))
        carrier = c.text(t.get("custom_tracking_provider"), 100) or c.text(t.get("tracking_provider"), 100)
        if not tracking or not carrier:
            continue
        link_ = c.url(t.get("custom_tracking_link"))
        slug = (c.text(t.get("tracking_provider"), 100) or "").lower().replace(" ", "-")
        if link_ is None and slug in CARRIER_URLS:
            link_ = CARRIER_URLS[slug].format(n=tracking)
        data = {**base, "carrier": carrier, "tracking_number": tracking, "tracking_url": link_ or c.url(order_url)
                or order_url}
        ctx.publish("order_shipped", data, f"order:{order_id}:shipped:{tracking}")
        shipped_any = True
    if status == "completed":
        if ctx.settings.woocommerce_completed == "shipped":
            if not shipped_any:
                ctx.note("completed without shipment tracking: order_shipped needs a tracking number")
        else:
            data = dict(base)
            if c.when(o.get("date_completed_gmt")) is not None:
                data["delivered_at"] = c.when(o.get("date_completed_gmt")).isoformat()
            ctx.publish("order_delivered", data, f"order:{order_id}:delivered")


def customer(ctx: Ctx, o: dict) -> None:
    address = c.email(o.get("email"))
    if address is None:
        ctx.note("customer without a valid e-mail: nothing to do")
        return
    data: dict[str, Any] = {"email": address}
    for name in ("first_name", "last_name"):
        if c.text(o.get(name)):
            data[name] = c.text(o.get(name))
    if c.country(c.obj(o.get("billing")).get("country")):
        data["country"] = c.country(c.obj(o.get("billing")).get("country"))
    result = ctx.publish("customer_updated", data,
                         f"customer:{c.ident(o.get('id')) or address}:{c.ident(o.get('date_modified_gmt')) or ctx.webhook_id}")
    c.link(ctx, result.customer_id, o.get("id"))


def product(ctx: Ctx, p: dict) -> None:
    pid = c.ident(p.get("id"))
    if pid is None:
        ctx.note("product without an id: nothing to do")
        return
    key = f"product:{pid}"
    status = c.text(p.get("stock_status"), 20)
    qty = c.count(p.get("stock_quantity"))
    image = c.url(c.obj(next(iter(c.items_of(p.get("images"))), None)).get("src"))
    price = c.money(p.get("price"))
    with ctx.app.session() as s:
        row = s.get(ConnectorItem, (ctx.platform, ctx.shop, key), with_for_update=True)
        if row is None:
            row = ConnectorItem(platform=ctx.platform, shop=ctx.shop, item_key=key, levels={}, updated_at=ctx.now)
            s.add(row)
        before = (row.levels or {}).get("stock_status")
        row.sku = c.ident(p.get("sku")) or row.sku
        row.name = c.text(p.get("name")) or row.name
        row.price = str(price) if price is not None else row.price
        row.url = c.url(p.get("permalink")) or row.url
        row.image_url = image or row.image_url
        if status:
            row.levels = {**(row.levels or {}), "stock_status": status}
        row.available = qty if qty is not None else row.available
        snapshot = (row.sku, row.name, row.price, row.url, row.image_url)
    if not (before == "outofstock" and status == "instock"):
        return
    sku, name, price_, url_, image_ = snapshot
    if not (sku and name and price_ is not None and url_):
        ctx.note(f"{key} back in stock but has no SKU, name, price or permalink")
        return
    data: dict[str, Any] = {"sku": sku, "name": name, "price": c.number(c.money(price_) or c.money(0)), "url": url_}
    if qty is not None and qty > 0:
        data["stock"] = qty
    if image_:
        data["image_url"] = image_
    ctx.publish("product_restocked", data, f"restock:{key}:{ctx.webhook_id}")


TOPICS = {
    "order.created": order,
    "order.updated": order,
    "customer.created": customer,
    "customer.updated": customer,
    "product.updated": product,
}
