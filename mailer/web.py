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
* ``GET  /healthz``             liveness with a database round trip.

Other capabilities add their routers here (double opt-in confirmation, shop events) and
reuse :func:`require_api_key` and :func:`idempotent`.

A tampered, forged or expired token changes nothing and gets 404.  Every handler is a
plain ``def`` so FastAPI runs it in its thread pool next to the synchronous database.

Bad input is a 422 whose ``detail[]`` lists every problem found (``loc``, ``msg``,
``type``, ``field``); bodies over ``MAILER_MAX_BODY_BYTES`` get 413; cross-site POSTs to
the preference and CSAT pages get 403 (see :mod:`mailer.web_security`).
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.util
import logging
import re
from typing import Annotated, Any, Callable

from fastapi import APIRouter, Depends, FastAPI, Form, Header, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from mailer import apikeys, i18n, idempotency, limits, notices, tracking, web_pages, web_security
from mailer.app import App
from mailer.errors import (
    ConsentError,
    InvalidState,
    MailerError,
    NotFound,
    TemplateError,
    TokenError,
    ValidationError,
)
from mailer.models import ApiKey, Customer, Delivery
from mailer.settings import Settings

log = logging.getLogger("mailer.web")

#: A transparent 1x1 GIF (43 bytes).
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
#: Tracking and unsubscribe responses must never be cached or set cookies.
NO_STORE = {"Cache-Control": "no-store, max-age=0", "Referrer-Policy": "no-referrer"}
#: Longest comment kept from a CSAT form, characters.
MAX_COMMENT_CHARS = 5000
#: Routers other modules contribute, included when the module exists.
OPTIONAL_ROUTERS = ("mailer.web_consent", "mailer.web_events")

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# -- wiring -----------------------------------------------------------------------------------
def get_mailer(request: Request) -> App:
    """The mailer App this HTTP app serves (settings, sessions, renderer)."""
    return request.app.state.mailer


_bearer = HTTPBearer(auto_error=False, description="An API key from `mailer apikey create NAME`.")


def require_api_key(request: Request,
                    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> ApiKey:
    """FastAPI dependency: the caller's live API key, or 401."""
    if credentials is None or not credentials.credentials:
        raise HTTPException(401, "missing API key: send 'Authorization: Bearer <key>'",
                            headers={"WWW-Authenticate": "Bearer"})
    with get_mailer(request).session() as s:
        key = apikeys.verify(s, credentials.credentials)
        if key is None:
            raise HTTPException(401, "unknown or revoked API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        s.expunge(key)
    return key


def idempotent(request: Request, api_key: ApiKey, endpoint: str, key: str | None, body: Any,
               work: Callable[[], idempotency.Response]) -> JSONResponse:
    """Run ``work`` at most once per (API key, endpoint, Idempotency-Key); replay its response."""
    result = idempotency.run(get_mailer(request), f"{endpoint}:key{api_key.id}", key, body, work)
    headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
    return JSONResponse(result.body, status_code=result.status_code, headers=headers)


def client_ip(request: Request) -> str | None:
    """The client's IP for consent proof (``X-Forwarded-For`` only from ``MAILER_TRUSTED_PROXIES``)."""
    return web_security.client_ip(request, get_mailer(request).settings)


def refuse_cross_site(request: Request) -> HTMLResponse | None:
    """A 403 page for a browser's cross-site POST to a recipient page, else None."""
    m = get_mailer(request)
    if web_security.is_cross_site(request, m.settings):
        log.info("cross-site POST to %s refused", web_security.redact(request.url.path))
        return HTMLResponse(web_pages.invalid(m.settings.default_locale), status_code=403, headers=NO_STORE)
    return None


def _clean(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    value = _CONTROL.sub("", value).strip()
    return value[:limit] or None


def _field_loc(field: str | None) -> list[str]:
    if not field:
        return ["body"]
    if field == "Idempotency-Key":
        return ["header", field]
    return ["body", *field.split(".")]


def _problem(field: str | None, msg: str, type_: str = "value_error") -> dict:
    return {"loc": _field_loc(field), "msg": msg, "type": type_, "field": field}


def _validation_response(exc: ValidationError | TemplateError) -> JSONResponse:
    problems = getattr(exc, "problems", None)
    if problems:
        return JSONResponse({"detail": [_problem(f, msg) for f, msg in problems]}, status_code=422)
    field = getattr(exc, "field", None)
    if isinstance(exc, TemplateError) and not field:
        field = "data"
    return JSONResponse({"detail": [_problem(field, str(exc))]}, status_code=422)


def _dotted(loc: tuple | list) -> str | None:
    """``("body", "data", "items", 3, "name")`` as ``data.items[3].name``."""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "header", "query", "path") else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _request_validation_response(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, without echoing the input (it may hold NaN, which JSON cannot carry), plus data limits."""
    detail = []
    for err in exc.errors():
        loc = [p if isinstance(p, (str, int)) else str(p) for p in err.get("loc", ())]
        detail.append({"loc": loc, "msg": str(err.get("msg", "invalid")), "type": str(err.get("type", "value_error")),
                       "field": _dotted(loc)})
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and "data" in body and not any(d["field"] and d["field"].startswith("data")
                                                             for d in detail):
        detail.extend(_problem(f, msg) for f, msg in limits.check(body["data"]))
    return JSONResponse({"detail": detail}, status_code=422)


def _mailer_error_response(_request: Request, exc: MailerError) -> JSONResponse:
    if isinstance(exc, (ValidationError, TemplateError)):
        return _validation_response(exc)
    status = 404 if isinstance(exc, (NotFound, TokenError)) else 409 if isinstance(
        exc, (InvalidState, ConsentError)) else 500
    return JSONResponse({"detail": str(exc)}, status_code=status)


def create_app(settings: Settings | None = None, *, app: App | None = None) -> FastAPI:
    """The ASGI app for ``settings`` (or an existing mailer :class:`App`)."""
    mailer_app = app or App(settings or Settings.from_env())
    api = FastAPI(title="mailer", version="0.1.0",
                  description="Tracking, one-click unsubscribe, preference centre and the notice API.")
    api.state.mailer = mailer_app
    api.add_exception_handler(MailerError, _mailer_error_response)
    api.add_exception_handler(RequestValidationError, _request_validation_response)
    api.add_middleware(web_security.BodyLimitMiddleware, max_body_bytes=mailer_app.settings.max_body_bytes)
    api.include_router(router)
    for name in OPTIONAL_ROUTERS:
        if importlib.util.find_spec(name) is not None:
            api.include_router(importlib.import_module(name).router)
    return api


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
    from sqlalchemy import select

    from mailer.models import CsatRating

    return s.execute(select(CsatRating.rating).where(CsatRating.order_number == link.order_number)
                     ).scalar_one_or_none()


@router.post("/csat/{token}", tags=["csat"], response_class=HTMLResponse,
             responses={404: {**_HTML, "description": "Invalid or expired token."}})
def csat_comment(token: str, request: Request,
                 comment: Annotated[str | None, Form(max_length=20_000)] = None,
                 rating: Annotated[int | None, Form(ge=1, le=5)] = None) -> HTMLResponse:
    """Save a comment (and optionally a changed rating) for the order."""
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    m = get_mailer(request)
    try:
        link = tracking.read(m.settings, tracking.CSAT, token)
    except TokenError:
        return _invalid(m)
    with m.session() as s:
        row = tracking.record_rating(s, link, rating=rating, comment=_clean(comment, MAX_COMMENT_CHARS))
        locale = _csat_locale(m, s, link)
        saved = row is not None
        current = row.rating if row is not None else None
    return HTMLResponse(web_pages.csat(locale, rating=current, action=request.url.path, comment_saved=saved),
                        status_code=200 if saved else 422, headers=NO_STORE)


# -- notice API -------------------------------------------------------------------------------
class NoticeIn(BaseModel):
    """A notice to send: the kind, one recipient (address or customer id), the template data."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, max_length=100, description="Notice kind, e.g. order_delayed.")
    email: str | None = Field(default=None, max_length=320, description="Recipient address.")
    customer_id: int | None = Field(default=None, ge=1, le=2**63 - 1, description="Or a known customer's id.")
    data: dict[str, Any] = Field(default_factory=dict, description="Template data (see the kind's schema).")
    # The rule of mailer.i18n.is_valid_locale (the CLI's --locale checks the same one).
    locale: str | None = Field(default=None, max_length=i18n.MAX_LOCALE_CHARS, pattern=i18n.LOCALE_PATTERN,
                               description="Override the customer's locale, e.g. pl or zh-TW.")


class NoticeAccepted(BaseModel):
    delivery_id: int
    kind: str
    queue: str
    status: str = "accepted"


class Problem(BaseModel):
    detail: Any


def _create_notice(m: App, api_key: ApiKey, body: NoticeIn, idem_key: str | None) -> notices.Enqueued:
    problems = limits.check(body.data)
    if (body.email is None) == (body.customer_id is None):
        problems.insert(0, ("email", "give exactly one of email or customer_id"))
    if problems:
        raise limits.InvalidData(problems)
    spec = m.renderer.validate(body.kind, body.data)
    if len(notices.purpose_for(spec.purpose, body.data)) > 100:
        raise ValidationError("data makes the consent purpose longer than 100 characters", field="data")
    # The delivery key is derived from the caller's key (scoped to the API key, hashed to a
    # fixed length), so the same Idempotency-Key can never produce a second delivery.
    key = None
    if idem_key is not None:
        key = f"api{api_key.id}:" + hashlib.sha256(idem_key.encode("utf-8")).hexdigest()[:40]
    for attempt in (1, 2):
        try:
            return notices.create(m, body.kind, to=body.email, customer_id=body.customer_id, data=body.data,
                                  locale=body.locale, key=key)
        except NotFound as exc:
            raise ValidationError(str(exc), field="customer_id") from exc
        except IntegrityError:
            # A concurrent request created the same new customer first; the retry finds it.
            if attempt == 2:
                raise
        except (TypeError, ValueError, ArithmeticError) as exc:
            # Data of the wrong shape for the template (a number where a list belongs...).
            raise ValidationError(f"data does not fit the {body.kind} template: {exc}", field="data") from exc
    raise AssertionError("unreachable")


@router.post("/v1/notices", tags=["notices"], status_code=202, response_model=NoticeAccepted,
             responses={401: {"model": Problem, "description": "No API key or a wrong one."},
                        422: {"model": Problem, "description": "Invalid request; `detail[].loc` names the field."}})
def post_notice(body: NoticeIn, request: Request, api_key: Annotated[ApiKey, Depends(require_api_key)],
                idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None
                ) -> JSONResponse:
    """Trigger a notice: 202 with the delivery id. The same Idempotency-Key gives the same delivery."""
    m = get_mailer(request)

    def work() -> idempotency.Response:
        result = _create_notice(m, api_key, body, idempotency_key)
        with m.session() as s:
            queue = s.get(Delivery, result.delivery_id).queue
        if result.created:
            notices.enqueue(result.delivery_id, queue=queue)
        return idempotency.Response(202, NoticeAccepted(delivery_id=result.delivery_id, kind=body.kind,
                                                        queue=queue).model_dump())

    return idempotent(request, api_key, "notices", idempotency_key, body.model_dump(mode="json"), work)


@router.get("/healthz", tags=["ops"])
def healthz(request: Request) -> dict:
    """Liveness: the app is up and the database answers."""
    with get_mailer(request).session() as s:
        s.execute(text("SELECT 1"))
    return {"status": "ok"}


def app_from_env() -> FastAPI:
    """uvicorn factory (``mailer serve --workers N``): settings from MAILER_*, broker connected."""
    from mailer.app import get_app, set_app
    from mailer.broker import setup

    settings = Settings.from_env()
    set_app(App(settings))
    setup(settings)
    return create_app(app=get_app())
