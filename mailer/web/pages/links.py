"""The recipient's own links: the open pixel, clicks, unsubscribe (with RFC 8058 one-click), the preference centre and CSAT.

* ``GET  /t/o/{token}.gif``     open pixel: records an open (human or machine), returns a 1x1 GIF.
* ``GET  /t/c/{token}``         click: records it and redirects to the URL signed into the token only.
* ``GET  /u/{token}``           unsubscribe page asking to confirm (a GET never changes anything:
                                link scanners fetch URLs).
* ``POST /u/{token}``           RFC 8058 one-click: body ``List-Unsubscribe=One-Click`` withdraws
                                consent at once; 200, no redirect, no cookie.
* ``GET/POST /preferences/{token}`` the preference centre: opt in or out per purpose.
* ``GET/POST /csat/{token}``    survey rating links (last click wins) and a comment.

A tampered, forged or expired token changes nothing and gets 404.  Cross-site POSTs to the
preference and CSAT pages get 403 (see :mod:`mailer.web.security`).
"""

from __future__ import annotations

import base64
import logging
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from mailer.app import App
from mailer.errors import (
    TokenError,
)
from mailer.models import CsatRating, Customer
from mailer.tracking import service as tracking
from mailer.web import security as web_security
from mailer.web.deps import (
    NO_STORE,
    clean,
    client_ip,
    get_mailer,
    refuse_cross_site,
)
from mailer.web.pages import recipient as web_pages

log = logging.getLogger("mailer.web")


#: A transparent 1x1 GIF (43 bytes).
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
#: Longest comment kept from a CSAT form, characters.
MAX_COMMENT_CHARS = 5000

router = APIRouter(route_class=web_security.StrictJSONRoute)


# -- tracking ---------------------------------------------------------------------------------
@router.get("/t/o/{token}.gif", tags=["tracking"], response_class=Response,
            responses={200: {"content": {"image/gif": {}}, "description": "A 1x1 GIF; the open is recorded."},
                       404: {"content": {"image/gif": {}}, "description": "Invalid or expired token."}})
def open_pixel(token: str, request: Request) -> Response:
    """Record an open; privacy proxies, scanners and very early fetches count as machine opens."""
    m = get_mailer(request)
    try:
        link = tracking.read(m.settings, tracking.OPEN, token)
    except TokenError:
        return Response(PIXEL_GIF, status_code=404, media_type="image/gif", headers=NO_STORE)
    with m.session() as s:
        kind = tracking.record_open(s, m.settings, link, ip=client_ip(request),
                                    user_agent=request.headers.get("user-agent"))
    return Response(PIXEL_GIF, status_code=200 if kind else 404, media_type="image/gif", headers=NO_STORE)


@router.get("/t/c/{token}", tags=["tracking"], response_class=RedirectResponse, status_code=302,
            responses={302: {"description": "Redirect to the URL signed into the token."},
                       404: {"content": {"text/html": {}}, "description": "Invalid or expired token."}})
def click(token: str, request: Request) -> Response:
    """Record a click and redirect to the one URL the token was signed for (never a query parameter)."""
    m = get_mailer(request)
    try:
        link = tracking.read(m.settings, tracking.CLICK, token)
    except TokenError:
        return HTMLResponse(web_pages.invalid(m.settings.default_locale), status_code=404, headers=NO_STORE)
    with m.session() as s:
        tracking.record_click(s, m.settings, link, ip=client_ip(request),
                              user_agent=request.headers.get("user-agent"))
    return RedirectResponse(link.url, status_code=302, headers=NO_STORE)


# -- unsubscribe ------------------------------------------------------------------------------
def _customer_locale(m: App, customer: Customer | None) -> str:
    return web_pages.page_locale(customer.locale if customer else None, m.settings.default_locale)


def _read_unsubscribe(m: App, token: str):
    link = tracking.read(m.settings, tracking.UNSUBSCRIBE, token)
    if not link.purpose or link.purpose == "transactional":
        raise TokenError("unsubscribe token names no marketing purpose")
    return link


def _invalid(m: App, status: int = 404) -> HTMLResponse:
    return HTMLResponse(web_pages.invalid(m.settings.default_locale), status_code=status, headers=NO_STORE)


_HTML = {"content": {"text/html": {}}}


@router.get("/u/{token}", tags=["unsubscribe"], response_class=HTMLResponse,
            responses={404: {**_HTML, "description": "Invalid or expired token."}})
def unsubscribe_page(token: str, request: Request) -> HTMLResponse:
    """A localized page asking to confirm; a GET never unsubscribes."""
    m = get_mailer(request)
    try:
        link = _read_unsubscribe(m, token)
    except TokenError:
        return _invalid(m)
    with m.session() as s:
        customer, purpose, _ = tracking.target_of(s, link)
        locale = _customer_locale(m, customer)
    prefs = tracking.preferences_url(m.settings, customer.id) if customer is not None else None
    return HTMLResponse(web_pages.unsubscribe_confirm(locale, store=m.settings.store_name, purpose=purpose,
                                                      action=request.url.path, prefs_url=prefs), headers=NO_STORE)


@router.post("/u/{token}", tags=["unsubscribe"], response_class=HTMLResponse,
             responses={400: {**_HTML, "description": "The body is not List-Unsubscribe=One-Click."},
                        404: {**_HTML, "description": "Invalid or expired token."}})
def unsubscribe_one_click(token: str, request: Request,
                          list_unsubscribe: Annotated[str | None, Form(alias="List-Unsubscribe")] = None
                          ) -> HTMLResponse:
    """RFC 8058 one-click unsubscribe: withdraws consent for the mail's purpose at once.

    Mail providers send this POST cross-site and without cookies, so it has no
    cross-site check: the signed token is the authority.
    """
    m = get_mailer(request)
    try:
        link = _read_unsubscribe(m, token)
    except TokenError:
        return _invalid(m)
    if list_unsubscribe != "One-Click":
        return _invalid(m, 400)
    with m.session() as s:
        result = tracking.unsubscribe(s, m.settings, link, ip=client_ip(request),
                                      user_agent=request.headers.get("user-agent"))
        locale = _customer_locale(m, result.customer)
        customer_id = result.customer.id if result.customer is not None else None
    log.info("unsubscribe via link: customer %s purpose %s (changed=%s)", customer_id, link.purpose,
             result.changed)
    prefs = tracking.preferences_url(m.settings, customer_id) if customer_id else None
    return HTMLResponse(web_pages.unsubscribed(locale, store=m.settings.store_name, purpose=link.purpose,
                                               prefs_url=prefs), headers=NO_STORE)


# -- preference centre ------------------------------------------------------------------------
def _preferences_customer(m: App, s, token: str) -> Customer | None:
    link = tracking.read(m.settings, tracking.PREFERENCES, token)
    customer = s.get(Customer, link.customer_id) if link.customer_id else None
    if customer is None or customer.email is None:
        raise TokenError("the customer of this link no longer exists")
    return customer


@router.get("/preferences/{token}", tags=["preferences"], response_class=HTMLResponse,
            responses={404: {**_HTML, "description": "Invalid or expired token."}})
def preferences_page(token: str, request: Request) -> HTMLResponse:
    """The preference centre: one checkbox per purpose, showing the current consent."""
    m = get_mailer(request)
    with m.session() as s:
        try:
            customer = _preferences_customer(m, s, token)
        except TokenError:
            return _invalid(m)
        prefs = tracking.current_preferences(s, m.settings, customer)
        locale = _customer_locale(m, customer)
    return HTMLResponse(web_pages.preferences(locale, store=m.settings.store_name, action=request.url.path,
                                              prefs=prefs, saved=False), headers=NO_STORE)


@router.post("/preferences/{token}", tags=["preferences"], response_class=HTMLResponse,
             responses={404: {**_HTML, "description": "Invalid or expired token."}})
def preferences_save(token: str, request: Request,
                     purposes: Annotated[list[str], Form()] = [],  # noqa: B006 - FastAPI copies defaults
                     ) -> HTMLResponse:
    """Save the ticked purposes: one consent event (source preference_centre) per change."""
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    m = get_mailer(request)
    with m.session() as s:
        try:
            customer = _preferences_customer(m, s, token)
        except TokenError:
            return _invalid(m)
        locale = _customer_locale(m, customer)
        current = tracking.current_preferences(s, m.settings, customer)
        wanted = {p: p in purposes for p in current}
        wording = web_pages.t(locale, "prefs_intro", store=m.settings.store_name)
        tracking.set_preferences(s, m.settings, customer, wanted, ip=client_ip(request),
                                 user_agent=request.headers.get("user-agent"), wording=wording)
        prefs = tracking.current_preferences(s, m.settings, customer)
    return HTMLResponse(web_pages.preferences(locale, store=m.settings.store_name, action=request.url.path,
                                              prefs=prefs, saved=True), headers=NO_STORE)


# -- CSAT -------------------------------------------------------------------------------------
def _csat_locale(m: App, s, link: tracking.Link) -> str:
    customer = s.get(Customer, link.customer_id) if link.customer_id else None
    return _customer_locale(m, customer)


@router.get("/csat/{token}", tags=["csat"], response_class=HTMLResponse,
            responses={404: {**_HTML, "description": "Invalid or expired token."}})
def csat_rate(token: str, request: Request) -> HTMLResponse:
    """A rating link: records the rating for the order (the last click wins) and offers a comment box."""
    m = get_mailer(request)
    try:
        link = tracking.read(m.settings, tracking.CSAT, token)
    except TokenError:
        return _invalid(m)
    with m.session() as s:
        row = tracking.record_rating(s, link) if link.rating is not None else None
        rating = row.rating if row is not None else _existing_rating(s, link)
        locale = _csat_locale(m, s, link)
    return HTMLResponse(web_pages.csat(locale, rating=rating, action=request.url.path, comment_saved=False),
                        headers=NO_STORE)


def _existing_rating(s, link: tracking.Link) -> int | None:
    return s.execute(select(CsatRating.rating).where(CsatRating.order_number == link.order_number)
                     ).scalar_one_or_none()


@router.post("/csat/{token}", tags=["csat"], response_class=HTMLResponse,
             responses={404: {**_HTML, "description": "Invalid or expired token."}})
def csat_comment(token: str, request: Request,
                 comment: Annotated[str | None, Form(max_length=20_000)] = None,
                 # Optional but never null: a form field is absent or a number 1-5.
                 rating: Annotated[int, Form(ge=1, le=5)] = None) -> HTMLResponse:  # type: ignore[assignment]
    """Save a comment (and optionally a changed rating) for the order."""
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    m = get_mailer(request)
    try:
        link = tracking.read(m.settings, tracking.CSAT, token)
    except TokenError:
        return _invalid(m)
    with m.session() as s:
        row = tracking.record_rating(s, link, rating=rating, comment=clean(comment, MAX_COMMENT_CHARS))
        locale = _csat_locale(m, s, link)
        saved = row is not None
        current = row.rating if row is not None else None
    return HTMLResponse(web_pages.csat(locale, rating=current, action=request.url.path, comment_saved=saved),
                        status_code=200 if saved else 422, headers=NO_STORE)


# -- notice API -------------------------------------------------------------------------------
