"""Webhook payloads in the shapes Shopify's and WooCommerce's documentation show (trimmed to
the fields a connector reads, plus some it must ignore), with realistic variants."""

from __future__ import annotations

import copy

SHOP = "northwind-demo.myshopify.com"
STORE = "https://shop.northwind.example"

CUSTOMER = {
    "id": 706405506930370084, "email": "Alice@Example.com", "created_at": "2026-11-30T10:00:00-05:00",
    "updated_at": "2026-11-30T10:00:00-05:00", "first_name": "Alice", "last_name": "Nowak", "state": "enabled",
    "note": None, "verified_email": True, "multipass_identifier": None, "tax_exempt": False, "phone": None,
    "tags": "", "currency": "PLN", "orders_count": 0, "total_spent": "0.00",
    "email_marketing_consent": {"state": "not_subscribed", "opt_in_level": "single_opt_in",
                                "consent_updated_at": None},
    "sms_marketing_consent": None,
    "default_address": {"id": 1, "customer_id": 706405506930370084, "first_name": "Alice", "last_name": "Nowak",
                        "city": "Warszawa", "country": "Poland", "country_code": "PL", "default": True},
    "admin_graphql_api_id": "gid://shopify/Customer/706405506930370084",
}


def customer(state: str = "not_subscribed", level: str | None = "single_opt_in",
             updated_at: str | None = "2026-11-30T15:00:00Z", **changes) -> dict:
    c = copy.deepcopy(CUSTOMER)
    c["email_marketing_consent"] = {"state": state, "opt_in_level": level, "consent_updated_at": updated_at}
    c.update(changes)
    return c


def line(title: str, sku: str, price: str, qty: int = 1, *, variant: str | None = None,
         presentment: tuple[str, str] | None = None) -> dict:
    amount, cur = presentment or (price, "USD")
    return {"id": abs(hash(sku)) % 10**12, "variant_id": 39072856, "product_id": 632910392, "title": title,
            "name": f"{title} - {variant}" if variant else title, "variant_title": variant, "sku": sku,
            "quantity": qty, "price": price, "vendor": "Northwind", "requires_shipping": True, "taxable": True,
            "gift_card": False, "fulfillable_quantity": qty, "grams": 200,
            "price_set": {"shop_money": {"amount": price, "currency_code": "USD"},
                          "presentment_money": {"amount": amount, "currency_code": cur}}}


def order(number: int = 1001, *, email: str = "alice@example.com", multi_currency: bool = False,
          customer_fields: dict | None = None) -> dict:
    pres = ("PLN", "569.00", "239.00") if multi_currency else ("USD", "140.00", "59.00")
    o = {
        "id": 450789469 + number, "admin_graphql_api_id": f"gid://shopify/Order/{450789469 + number}",
        "email": email, "contact_email": email, "created_at": "2026-12-01T10:00:00-05:00",
        "currency": "USD", "presentment_currency": pres[0], "total_price": "140.00", "subtotal_price": "118.00",
        "total_price_set": {"shop_money": {"amount": "140.00", "currency_code": "USD"},
                            "presentment_money": {"amount": pres[1], "currency_code": pres[0]}},
        "financial_status": "paid", "fulfillment_status": None, "name": f"#{number}", "order_number": number,
        "order_status_url": f"https://{SHOP}/1/orders/abc{number}/authenticate?key=k",
        "cart_token": f"cart{number}", "checkout_token": f"chk{number}", "buyer_accepts_marketing": True,
        "line_items": [line("Linen shirt", "LIN-M", "59.00", 1, variant="M",
                            presentment=("239.00", "PLN") if multi_currency else None),
                       line("Wool socks", "SOCK-3", "29.50", 2,
                            presentment=("119.50", "PLN") if multi_currency else None)],
        "customer": {**copy.deepcopy(CUSTOMER), "email": email, "orders_count": 1, "total_spent": "140.00",
                     **(customer_fields or {})},
        "shipping_address": {"country_code": "PL"},
    }
    return o


def checkout(token: str = "cart-abc", *, email: str | None = "alice@example.com", guest: bool = False,
             updated_at: str = "2026-12-01T09:00:00-05:00", completed: bool = False) -> dict:
    c = {"id": 981820079255243500, "token": token, "cart_token": token, "email": email,
         "created_at": "2026-12-01T08:55:00-05:00", "updated_at": updated_at,
         "completed_at": "2026-12-01T09:10:00-05:00" if completed else None,
         "currency": "USD", "presentment_currency": "USD", "total_price": "59.00", "subtotal_price": "59.00",
         "abandoned_checkout_url": f"https://{SHOP}/59710963/checkouts/{token}/recover?key=k",
         "line_items": [{"title": "Linen shirt", "variant_title": "M", "quantity": 1, "price": "59.00",
                         "sku": "LIN-M", "variant_id": 39072856, "product_id": 632910392}],
         "customer": None if guest else {"id": CUSTOMER["id"], "email": email}}
    return c


def fulfillment(order_number: int = 1001, *, fid: int = 255858046, status: str | None = "in_transit",
                eta: str | None = None, tracking: str = "1Z2345", partial: bool = False,
                email: str = "alice@example.com") -> dict:
    items = [line("Linen shirt", "LIN-M", "59.00", 1, variant="M")]
    if not partial:
        items.append(line("Wool socks", "SOCK-3", "29.50", 2))
    return {"id": fid, "order_id": 450789469 + order_number, "status": "success",
            "created_at": "2026-12-02T10:00:00-05:00", "updated_at": "2026-12-03T10:00:00-05:00",
            "service": "manual", "tracking_company": "UPS", "shipment_status": status, "location_id": 905684977,
            "email": email, "destination": {"first_name": "Alice", "country_code": "PL"},
            "tracking_number": tracking, "tracking_numbers": [tracking],
            "tracking_url": f"https://www.ups.com/track?tracknum={tracking}",
            "tracking_urls": [f"https://www.ups.com/track?tracknum={tracking}"],
            "estimated_delivery_at": eta, "line_items": items, "name": f"#{order_number}.1",
            "admin_graphql_api_id": f"gid://shopify/Fulfillment/{fid}"}


def product(qty: int, *, old: int | None = None, sku: str = "LIN-M", inventory_item_id: int = 808950810) -> dict:
    return {"id": 632910392, "title": "Linen shirt", "handle": "linen-shirt", "status": "active",
            "image": {"src": "https://cdn.shopify.com/s/files/1/linen.jpg"},
            "variants": [{"id": 39072856, "product_id": 632910392, "title": "M", "price": "59.00", "sku": sku,
                          "inventory_item_id": inventory_item_id, "inventory_quantity": qty,
                          "old_inventory_quantity": qty if old is None else old}]}


def inventory_level(available: int, *, inventory_item_id: int = 808950810, location_id: int = 905684977) -> dict:
    return {"inventory_item_id": inventory_item_id, "location_id": location_id, "available": available,
            "updated_at": "2026-12-01T10:00:00-05:00", "admin_graphql_api_id": "gid://shopify/InventoryLevel/1"}


def data_request(email: str = "alice@example.com", request_id: int = 9999) -> dict:
    return {"shop_id": 954889, "shop_domain": SHOP, "orders_requested": [299938, 280263],
            "customer": {"id": CUSTOMER["id"], "email": email, "phone": "555-625-1199"},
            "data_request": {"id": request_id}}


def customer_redact(email: str = "alice@example.com") -> dict:
    return {"shop_id": 954889, "shop_domain": SHOP,
            "customer": {"id": CUSTOMER["id"], "email": email, "phone": "555-625-1199"},
            "orders_to_redact": [299938, 280263]}


def shop_redact() -> dict:
    return {"shop_id": 954889, "shop_domain": SHOP}


# -- WooCommerce (REST API v3 objects, as webhooks deliver them) --------------------------------------
def woo_order(status: str = "processing", *, oid: int = 727, email: str = "bob@example.com",
              tracking: list[dict] | None = None, customer_id: int = 25) -> dict:
    meta = [{"id": 1, "key": "_order_source", "value": "web"}]
    if tracking is not None:
        meta.append({"id": 2, "key": "_wc_shipment_tracking_items", "value": tracking})
    return {"id": oid, "parent_id": 0, "number": str(oid), "order_key": "wc_order_58d2d042d1d", "created_via": "rest-api",
            "status": status, "currency": "EUR", "date_created": "2026-12-01T10:00:00",
            "date_created_gmt": "2026-12-01T09:00:00", "date_completed_gmt": None, "total": "49.90",
            "customer_id": customer_id,
            "billing": {"first_name": "Bob", "last_name": "Smith", "email": email, "country": "DE"},
            "line_items": [{"id": 315, "name": "Woo Single #1", "product_id": 93, "quantity": 2, "sku": "WOO-1",
                            "price": 24.95, "total": "49.90"}],
            "meta_data": meta}


def woo_tracking(number: str = "00340434161094042557", provider: str = "dhl") -> dict:
    return {"tracking_provider": provider, "custom_tracking_provider": "", "custom_tracking_link": "",
            "tracking_number": number, "date_shipped": "1733050000", "tracking_id": "a1b2c3"}


def woo_customer(cid: int = 25, email: str = "bob@example.com") -> dict:
    return {"id": cid, "date_created_gmt": "2026-11-01T09:00:00", "date_modified_gmt": "2026-12-01T09:00:00",
            "email": email, "first_name": "Bob", "last_name": "Smith", "role": "customer", "username": "bob",
            "billing": {"country": "DE", "email": email}, "is_paying_customer": True}


def woo_product(stock_status: str, qty: int | None = None) -> dict:
    return {"id": 93, "name": "Woo Single #1", "slug": "woo-single-1", "permalink": f"{STORE}/product/woo-single-1/",
            "type": "simple", "status": "publish", "sku": "WOO-1", "price": "24.95", "regular_price": "24.95",
            "manage_stock": qty is not None, "stock_quantity": qty, "stock_status": stock_status,
            "images": [{"id": 1, "src": f"{STORE}/wp-content/uploads/woo-1.jpg"}]}
