"""Console authentication and authorization: the session behind the cookie, ``require()``, CSRF, login pages.

* :func:`require` (``Depends(require("campaigns", write=True))``) gives the logged-in
  :class:`ConsoleUser`; without a live session it answers 303 to
  ``/console/login?next=<path>``, with the wrong role a 403 page.  An admin or compliance
  user without TOTP under ``MAILER_CONSOLE_REQUIRE_2FA=1`` is sent to ``/console/account/2fa``.
* :func:`enforce_csrf` runs on every console route (a dependency of the console router):
  a POST, PUT, PATCH or DELETE without the session's token (form field ``csrf_token`` or
  header ``X-CSRF-Token``) gets 403 before the handler runs.
* Pages: ``GET/POST /console/login``, ``POST /console/logout``,
  ``GET/POST /console/set-password/{token}`` (the one-time link of ``mailer users create``),
  ``GET /console/account``, ``POST /console/account/locale``,
  ``POST /console/account/logout-everywhere``, ``GET/POST /console/account/2fa``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from mailer.app import App
from mailer.errors import (
    LoginFailed,
    LoginThrottled,
    NotFound,
    SecondFactorRequired,
    TransientDeliveryError,
    ValidationError,
)
from mailer.users import accounts, sessions
from mailer.web import security as web_security
from mailer.web.console import csrf, i18n, roles
from mailer.web.console.render import render

log = logging.getLogger("mailer.web.console")

router = APIRouter()

#: Methods that change something: each needs the CSRF token.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Longest form value read by the login forms, characters.
MAX_FIELD_CHARS = 400
#: Where a login goes when ``next`` is missing or not a console path.
HOME = "/console/"


@dataclass(frozen=True)
class ConsoleUser:
    id: int
    email: str
    role: str
    locale: str
    session_id: str
    #: The session's CSRF token (templates get it as ``csrf_token``).
    csrf_token: str = ""
    has_totp: bool = False


class ConsoleRedirect(Exception):
    """Answer 303 to ``location`` (raised by dependencies; see :func:`install`)."""

    def __init__(self, location: str):
        super().__init__(location)
        self.location = location


class ConsoleForbidden(Exception):
    """Answer the 403 page (wrong role, or a state-changing request without the CSRF token)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _mailer(request: Request) -> App:
    return request.app.state.mailer


def client_ip(request: Request) -> str | None:
    return web_security.client_ip(request, _mailer(request).settings)


def current_session(request: Request) -> sessions.Current | None:
    """The live session of this request (looked up once per request)."""
    if hasattr(request.state, "console_current"):
        return request.state.console_current
    token = request.cookies.get(csrf.SESSION_COOKIE)
    cur = None
    if token:
        m = _mailer(request)
        with m.session() as s:
            cur = sessions.current(s, m.settings, token)
    request.state.console_current = cur
    if cur is not None:
        request.state.console_locale = cur.locale
    return cur


def _user_of(cur: sessions.Current) -> ConsoleUser:
    return ConsoleUser(cur.user_id, cur.email, cur.role, cur.locale, str(cur.session_row_id), cur.csrf_token,
                       cur.has_totp)


def optional_user(request: Request) -> ConsoleUser | None:
    cur = current_session(request)
    return _user_of(cur) if cur is not None else None


def require(area: str, *, write: bool = False):
    """FastAPI dependency: the logged-in user allowed into ``area`` (``write``: to change something)."""
    if area not in roles.AREAS:
        raise ValueError(f"unknown console area {area!r}")

    def dependency(request: Request) -> ConsoleUser:
        cur = current_session(request)
        if cur is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise ConsoleRedirect(f"/console/login?next={quote(target, safe='')}")
        if cur.needs_totp_setup and area != "account":
            raise ConsoleRedirect("/console/account/2fa")
        if not roles.allowed(cur.role, area, write=write):
            raise ConsoleForbidden(f"the {cur.role} role may not {'change' if write else 'open'} {area}")
        return _user_of(cur)

    dependency.__name__ = f"require_{area}{'_write' if write else ''}"
    dependency.console_area = area  # read by the route-coverage security test
    dependency.console_write = write
    return dependency


async def enforce_csrf(request: Request) -> None:
    """Dependency of every console route: state-changing requests must carry the CSRF token."""
    if request.method not in UNSAFE_METHODS:
        return
    given = request.headers.get(csrf.HEADER)
    if not given:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            value = form.get(csrf.FORM_FIELD)
            given = value if isinstance(value, str) else None
    cur = current_session(request)
    if cur is not None:
        expected = cur.csrf_token
    else:
        pre = request.cookies.get(csrf.PRE_COOKIE)
        expected = csrf.pre_token(_mailer(request).settings, pre) if pre else None
    if not csrf.matches(expected, given):
        log.info("console %s %s refused: missing or wrong CSRF token", request.method,
                 web_security.redact(request.url.path))
        raise ConsoleForbidden("this form has expired or did not come from the console; reload the page and try again")


def safe_next(value: str | None) -> str:
    """Only console paths on this site (no scheme, no host, no //)."""
    if not value or len(value) > 2000:
        return HOME
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/console") or value.startswith("//") or "\\" in value:
        return HOME
    return value


def _field(value: str | None) -> str:
    return (value or "")[:MAX_FIELD_CHARS]


# -- pages -------------------------------------------------------------------------------------
@router.get("/login", include_in_schema=False)
def login_page(request: Request, next: str | None = None):
    if current_session(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return render(request, None, "console/auth/login.html", {"next": safe_next(next), "error": None,
                                                              "need_code": False, "email": ""})


@router.post("/login", include_in_schema=False)
def login_submit(request: Request, email: Annotated[str, Form()] = "", password: Annotated[str, Form()] = "",  # nosec B107 - an absent form field, not a password
                 totp: Annotated[str, Form()] = "", next: Annotated[str, Form()] = ""):
    m = _mailer(request)
    target = safe_next(next)
    try:
        with m.session() as s:
            opened = sessions.login(s, m.settings, email=_field(email), password=_field(password),
                                    totp=_field(totp) or None, ip=client_ip(request),
                                    user_agent=request.headers.get("user-agent"),
                                    previous_token=request.cookies.get(csrf.SESSION_COOKIE))
    except TransientDeliveryError:  # the shared rate limiter (Redis) cannot be reached
        log.warning("console login refused: the rate limiter is unavailable")
        return render(request, None, "console/auth/login.html",
                      {"next": target, "error": "Logging in is not possible right now; try again in a minute.",
                       "need_code": False, "email": _field(email)}, status_code=503)
    except LoginThrottled as exc:
        return render(request, None, "console/auth/login.html",
                      {"next": target, "error": str(exc), "need_code": False,
                       "email": _field(email), "throttled": True}, status_code=429)
    except SecondFactorRequired as exc:
        return render(request, None, "console/auth/login.html",
                      {"next": target, "error": str(exc) if totp else None, "need_code": True,
                       "email": _field(email)}, status_code=401 if totp else 200)
    except LoginFailed as exc:
        return render(request, None, "console/auth/login.html",
                      {"next": target, "error": str(exc), "need_code": False, "email": _field(email)},
                      status_code=401)
    response = RedirectResponse(target, status_code=303)
    csrf.set_cookie(response, request, m.settings, csrf.SESSION_COOKIE, opened.token)
    csrf.delete_cookie(response, request, m.settings, csrf.PRE_COOKIE)
    return response


@router.post("/logout", include_in_schema=False)
def logout(request: Request):
    m = _mailer(request)
    token = request.cookies.get(csrf.SESSION_COOKIE)
    if token:
        with m.session() as s:
            sessions.logout(s, token)
    response = RedirectResponse("/console/login", status_code=303)
    csrf.delete_cookie(response, request, m.settings, csrf.SESSION_COOKIE)
    return response


@router.get("/set-password/{token}", include_in_schema=False)
def set_password_page(request: Request, token: str):
    m = _mailer(request)
    with m.session() as s:
        user = accounts.token_user(s, token)
        email = user.email if user else None
    if email is None:
        return render(request, None, "console/auth/set_password.html", {"email": None, "error": None}, 404)
    return render(request, None, "console/auth/set_password.html", {"email": email, "error": None})


@router.post("/set-password/{token}", include_in_schema=False)
def set_password_submit(request: Request, token: str, password: Annotated[str, Form()] = "",  # nosec B107 - an absent form field
                        confirm: Annotated[str, Form()] = ""):
    m = _mailer(request)
    with m.session() as s:
        user = accounts.token_user(s, token)
        email = user.email if user else None
    if email is None:
        return render(request, None, "console/auth/set_password.html", {"email": None, "error": None}, 404)
    error = None
    if password != confirm:
        error = "The two passwords differ."
    else:
        try:
            with m.session() as s:
                accounts.set_password_with_token(s, token, password[:accounts.MAX_PASSWORD_CHARS + 1],
                                                 ip=client_ip(request))
        except ValidationError as exc:
            error = str(exc)
        except NotFound:
            return render(request, None, "console/auth/set_password.html", {"email": None, "error": None}, 404)
    if error:
        return render(request, None, "console/auth/set_password.html", {"email": email, "error": error}, 422)
    return RedirectResponse("/console/login?password_set=1", status_code=303)


@router.get("/account", include_in_schema=False)
def account_page(request: Request, user: Annotated[ConsoleUser, Depends(require("account"))]):
    m = _mailer(request)
    return render(request, user, "console/auth/account.html",
                  {"locales": i18n.LOCALES, "require_2fa": m.settings.console_require_2fa,
                   "ended": request.query_params.get("ended")})


@router.post("/account/locale", include_in_schema=False)
def account_locale(request: Request, user: Annotated[ConsoleUser, Depends(require("account", write=True))],
                   locale: Annotated[str, Form()] = "en"):
    with _mailer(request).session() as s:
        accounts.set_locale(s, user.id, _field(locale))
    return RedirectResponse("/console/account", status_code=303)


@router.post("/account/logout-everywhere", include_in_schema=False)
def account_logout_everywhere(request: Request,
                              user: Annotated[ConsoleUser, Depends(require("account", write=True))]):
    m = _mailer(request)
    with m.session() as s:
        sessions.logout_everywhere(s, user.id, ip=client_ip(request))
    response = RedirectResponse("/console/login", status_code=303)
    csrf.delete_cookie(response, request, m.settings, csrf.SESSION_COOKIE)
    return response


@router.get("/account/2fa", include_in_schema=False)
def totp_page(request: Request, user: Annotated[ConsoleUser, Depends(require("account"))]):
    m = _mailer(request)
    secret = uri = None
    if not user.has_totp:
        with m.session() as s:
            secret, uri = accounts.start_totp(s, user.id)
    return render(request, user, "console/auth/totp.html", {"secret": secret, "uri": uri, "error": None})


@router.post("/account/2fa", include_in_schema=False)
def totp_confirm(request: Request, user: Annotated[ConsoleUser, Depends(require("account", write=True))],
                 code: Annotated[str, Form()] = ""):
    m = _mailer(request)
    with m.session() as s:
        ok = accounts.confirm_totp(s, user.id, _field(code), ip=client_ip(request))
    if ok:
        return RedirectResponse("/console/account", status_code=303)
    with m.session() as s:
        secret, uri = accounts.start_totp(s, user.id)
    return render(request, user, "console/auth/totp.html",
                  {"secret": secret, "uri": uri, "error": "That code did not match; try the next one."},
                  status_code=422)


# -- responses for the exceptions above -----------------------------------------------------------
async def _redirect_response(request: Request, exc: ConsoleRedirect) -> Response:
    return RedirectResponse(exc.location, status_code=303)


async def _forbidden_response(request: Request, exc: ConsoleForbidden) -> Response:
    cur = getattr(request.state, "console_current", None)
    user = _user_of(cur) if cur is not None else None
    return render(request, user, "console/forbidden.html", {"reason": exc.reason}, status_code=403)


EXCEPTION_HANDLERS = {ConsoleRedirect: _redirect_response, ConsoleForbidden: _forbidden_response}
