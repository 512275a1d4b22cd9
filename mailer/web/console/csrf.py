"""CSRF tokens and the console's cookies.

A logged-in browser's token is its session's (``console_sessions.csrf_token``).  Before
login (the login and set-password forms) the browser gets a random ``mailer_console_pre``
cookie and the token is an HMAC of it under the instance's signing key, so a forged form
from another site cannot know it.  The token travels in form field ``csrf_token`` or header
``X-CSRF-Token`` (htmx: ``hx-headers`` on ``<body>``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import Request
from fastapi.responses import Response

from mailer.settings import Settings

#: The session cookie (a random id; the database keeps its SHA-256).
SESSION_COOKIE = "mailer_console"
#: The pre-login cookie the anonymous forms' CSRF token is derived from.
PRE_COOKIE = "mailer_console_pre"
#: Cookie path: the console only.
COOKIE_PATH = "/console"
#: Lifetime of the pre-login cookie, seconds.
PRE_COOKIE_MAX_AGE_S = 3600
#: Form field and header that carry the token.
FORM_FIELD = "csrf_token"  # a field name, not a secret  # nosec B105
HEADER = "X-CSRF-Token"


def secure(request: Request, settings: Settings) -> bool:
    """Cookies get ``Secure`` behind HTTPS: the request's scheme or MAILER_BASE_URL's."""
    return request.url.scheme == "https" or settings.base_url.lower().startswith("https://")


def pre_token(settings: Settings, pre_value: str) -> str:
    key = settings.signing_keys[0].encode("utf-8")
    return hmac.new(key, b"console-pre:" + pre_value.encode("utf-8"), hashlib.sha256).hexdigest()


def pre_value(request: Request) -> tuple[str, bool]:
    """The browser's pre-login cookie value, and whether it is new (to be set)."""
    value = getattr(request.state, "console_pre", None) or request.cookies.get(PRE_COOKIE)
    if value and 20 <= len(value) <= 100:
        return value, False
    value = secrets.token_urlsafe(24)
    request.state.console_pre = value
    return value, True


def set_cookie(response: Response, request: Request, settings: Settings, name: str, value: str,
               max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, path=COOKIE_PATH, httponly=True, samesite="lax",
                        secure=secure(request, settings))


def delete_cookie(response: Response, request: Request, settings: Settings, name: str) -> None:
    response.delete_cookie(name, path=COOKIE_PATH, httponly=True, samesite="lax", secure=secure(request, settings))


def matches(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))
