"""``POST /webhooks/shopify`` and ``POST /webhooks/woocommerce``: a shop's webhooks, signed.

Thin HTTP door over :mod:`mailer.connectors`: the signature (base64 HMAC-SHA256 of the raw
body with the shop's secret) is checked first, in constant time; a wrong or missing one,
an unknown shop or a body changed after signing is 401 and nothing is stored.  A signed
delivery is stored once under its webhook id and acknowledged with 200 at once
(``stored``, ``duplicate`` or ``ignored`` for a topic mailer does not map); a worker
applies it (actor ``process_shop_webhook``).  WooCommerce's unsigned ping when a webhook
is saved (body ``webhook_id=<n>``, no topic) is answered 200 and stores nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import weakref

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from mailer.connectors import inbox, signing
from mailer.errors import ConfigurationError

log = logging.getLogger("mailer.web")

router = APIRouter(tags=["shop webhooks"])

_PROBLEM = {"content": {"application/problem+json": {"schema": {"type": "object"}}}}
_RESPONSES = {
    200: {"description": "Acknowledged: `outcome` is stored, duplicate, ignored (topic not mapped) or ping."},
    400: {"description": "Signed, but not a JSON object, or a required header is missing.", **_PROBLEM},
    401: {"description": "Signature not valid, missing, or the shop unknown: nothing stored.", **_PROBLEM},
    413: {"description": "Body over MAILER_MAX_BODY_BYTES."},
}
#: Deliveries acknowledged at once (threads), per database.  SQLite has one writer: more
#: threads would wait in its busy handler, which sleeps in steps of up to 100 ms, and the
#: GIL would be shared by threads that cannot progress; one thread taking them in turn
#: (anyio's limiter is first come, first served) keeps every wait short.  PostgreSQL:
#: fewer than the pool's 10 connections, so no overflow connection is ever opened on this path.
ACK_THREADS = {"sqlite": 1}
DEFAULT_ACK_THREADS = 4
_PING = re.compile(rb"^webhook_id=\d{1,20}$")
#: The headers each platform sends: (shop, topic, delivery id, signature).
HEADERS = {
    "shopify": ("x-shopify-shop-domain", "x-shopify-topic", "x-shopify-webhook-id", "x-shopify-hmac-sha256"),
    "woocommerce": ("x-wc-webhook-source", "x-wc-webhook-topic", "x-wc-webhook-delivery-id",
                    "x-wc-webhook-signature"),
}


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse({"type": "about:blank", "title": title, "status": status, "detail": detail},
                        status_code=status, media_type="application/problem+json")


def _take(app, platform: str, headers, raw: bytes) -> JSONResponse:
    shop_h, topic_h, id_h, sig_h = HEADERS[platform]
    shop = signing.normalize_shop(platform, headers.get(shop_h))
    try:
        secret = signing.secret_for(None, app.settings, platform, shop) if shop else None
        if shop and secret is None:
            with app.session() as s:
                secret = signing.secret_for(s, app.settings, platform, shop)
    except ConfigurationError as exc:
        log.error("%s webhook refused: %s", platform, exc)
        secret = None
    if not signing.valid(secret, raw, headers.get(sig_h)):
        log.warning("%s webhook refused: %s", platform,
                    "unknown shop" if secret is None else "signature not valid")
        return _problem(401, "Unauthorized", f"{platform} webhook signature not valid (or the shop is not connected)")
    topic, webhook_id = (headers.get(topic_h) or "").strip(), (headers.get(id_h) or "").strip()
    if not topic or not webhook_id:
        return _problem(400, "Bad Request", f"{topic_h if not topic else id_h} is required")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        body = None
    if not isinstance(body, dict):
        return _problem(400, "Bad Request", "the body is not a JSON object")
    receipt = inbox.receive(app, platform, shop, webhook_id, topic, raw)
    return JSONResponse({"outcome": receipt.outcome})


async def _handle(request: Request, platform: str) -> JSONResponse:
    raw = await request.body()
    if platform == "woocommerce" and not request.headers.get("x-wc-webhook-topic") and _PING.match(raw.strip()):
        return JSONResponse({"outcome": "ping"})
    app = request.app.state.mailer
    return await anyio.to_thread.run_sync(_take, app, platform, request.headers, raw, limiter=_limiter(request, app))


def _limiter(request: Request, app) -> anyio.CapacityLimiter:
    """The acknowledge path's own limiter, not the shared threadpool's: one per event loop
    (a limiter belongs to the loop it was made in; uvicorn has one, a test client one per request)."""
    state = request.app.state
    limiters = getattr(state, "shop_webhook_limiters", None)
    if limiters is None:
        limiters = state.shop_webhook_limiters = weakref.WeakKeyDictionary()
    loop = asyncio.get_running_loop()
    limiter = limiters.get(loop)
    if limiter is None:
        kind = app.settings.database_url.split(":", 1)[0].split("+", 1)[0]
        limiter = limiters[loop] = anyio.CapacityLimiter(ACK_THREADS.get(kind, DEFAULT_ACK_THREADS))
    return limiter


@router.post("/webhooks/shopify", responses=_RESPONSES,
             summary="Shopify webhooks (X-Shopify-Hmac-Sha256 verified, deduplicated by X-Shopify-Webhook-Id)")
async def shopify(request: Request) -> JSONResponse:
    return await _handle(request, "shopify")


@router.post("/webhooks/woocommerce", responses=_RESPONSES,
             summary="WooCommerce webhooks (X-WC-Webhook-Signature verified, deduplicated by X-WC-Webhook-Delivery-ID)")
async def woocommerce(request: Request) -> JSONResponse:
    return await _handle(request, "woocommerce")
