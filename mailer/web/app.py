"""The HTTP app (FastAPI, served by uvicorn through ``mailer serve``).

Endpoints (OpenAPI at ``/openapi.json``, docs at ``/docs``):

* ``GET  /t/o/{token}.gif``     open pixel: records an open (human or machine), returns a 1x1 GIF.
* ``GET  /t/c/{token}``         click: records it and redirects to the URL signed into the token only.
* ``GET  /u/{token}``           unsubscribe page asking to confirm (a GET never changes anything:
                                link scanners fetch URLs).
* ``POST /u/{token}``           RFC 8058 one-click: body ``List-Unsubscribe=One-Click`` withdraws
                                consent at once; 200, no redirect, no cookie.
* ``GET/POST /preferences/{token}`` the preference centre: opt in or out per purpose.
* ``GET/POST /csat/{token}``    survey rating links (last click wins) and a comment.
* ``POST /v1/notices``          other services trigger a notice (bearer API key, Idempotency-Key).
* ``POST /v1/consents``         grant or withdraw with proof; ``GET /v1/customers/{email}/consents``.
* ``GET  /v1/wordings/{id}``    the consent wording (text, version, SHA-256) to display.
* ``PUT/GET/DELETE /v1/customers/{email}``, ``GET .../export``: customers and GDPR requests.
* ``POST /v1/restock-requests``  a product page's "notify me" (``restock:<sku>`` consent).
* ``GET/POST/OPTIONS /f/{form_id}``, ``GET /f/{form_id}/embed``, ``GET /f/embed.js``: public
                                sign-up and restock forms (docs/forms.md).
* ``POST /webhooks/shopify``, ``POST /webhooks/woocommerce``: a shop's signed webhooks
                                (stored once, applied by a worker; docs/connectors.md).
* ``GET  /v1/campaigns/{id}/stats`` a campaign's figures with attributed orders and revenue.
* ``GET  /healthz``             liveness with a database round trip.
* ``/console/...``               the console for marketers, compliance staff and admins
                                (log in at ``/console/login``; docs/console.md).

API keys carry scopes (notices, events, consents, customers, gdpr, reports); a key without the
endpoint's scope gets 403 naming it.

The routers live in rooms of their own: :mod:`mailer.web.api` (``notices``, ``events``,
``consents``, ``wordings``, ``customers``, ``restock``, ``webhooks``, ``shops``, ``campaigns``)
and :mod:`mailer.web.pages` (``links``: tracking, unsubscribe, preferences, CSAT;
``confirm``: double opt-in; ``forms``: public sign-up forms).  They share :mod:`mailer.web.deps` (the App, API keys,
idempotency, the client IP) and :mod:`mailer.web.problems` (error responses); this module
only assembles them.

A tampered, forged or expired token changes nothing and gets 404.  Every handler is a
plain ``def`` so FastAPI runs it in its thread pool next to the synchronous database.

Bad input is a 422 whose ``detail[]`` lists every problem found (``loc``, ``msg``,
``type``, ``field``); bodies over ``MAILER_MAX_BODY_BYTES`` get 413; cross-site POSTs to
the preference and CSAT pages get 403 (see :mod:`mailer.web.security`).
"""
from __future__ import annotations

import gc
import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mailer.app import App, get_app, set_app
from mailer.errors import (
    MailerError,
)
from mailer.queue.broker import setup
from mailer.settings import Settings
from mailer.web import console
from mailer.web import security as web_security
from mailer.web.api import campaigns as campaigns_api
from mailer.web.api import consents as consents_api
from mailer.web.api import customers as customers_api
from mailer.web.api import events as events_api
from mailer.web.api import notices as notices_api
from mailer.web.api import restock as restock_api
from mailer.web.api import shops as shops_api
from mailer.web.api import webhooks as webhooks_api
from mailer.web.api import wordings as wordings_api
from mailer.web.pages import confirm, forms, links
from mailer.web.problems import _http_error_response, _mailer_error_response, _request_validation_response

log = logging.getLogger("mailer.web")


#: Every router the app serves, in the order of its OpenAPI document.
ROUTERS = (links.router, notices_api.router, confirm.router, events_api.router, consents_api.router,
           wordings_api.router, customers_api.router, restock_api.router, forms.router, webhooks_api.router,
           shops_api.router, campaigns_api.router)


def create_app(settings: Settings | None = None, *, app: App | None = None) -> FastAPI:
    """The ASGI app for ``settings`` (or an existing mailer :class:`App`)."""
    mailer_app = app or App(settings or Settings.from_env())
    api = FastAPI(title="mailer", version="0.1.0",
                  description="Tracking, one-click unsubscribe, preference centre and the notice API.")
    api.state.mailer = mailer_app
    api.add_exception_handler(MailerError, _mailer_error_response)
    api.add_exception_handler(RequestValidationError, _request_validation_response)
    api.add_exception_handler(StarletteHTTPException, _http_error_response)
    api.add_middleware(web_security.BodyLimitMiddleware, max_body_bytes=mailer_app.settings.max_body_bytes)
    for router in ROUTERS:
        api.include_router(router)
    console.install(api)
    return api


def app_from_env() -> FastAPI:
    """uvicorn factory (``mailer serve --workers N``): settings from MAILER_*, broker connected."""

    settings = Settings.from_env()
    set_app(App(settings))
    setup(settings)
    api = create_app(app=get_app())
    # The start-up heap (modules, routes, templates, models) leaves the collector's reach, so a
    # full collection scans only what requests made: no 100+ ms pause in the first seconds
    # of serving (measured with bench/webhooks.py, docs/benchmarks.md "Shop webhooks").
    gc.freeze()
    return api
