"""Shared FastAPI dependencies of every router: the App, API keys, idempotency, the client IP, cross-site refusal."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from mailer import limits
from mailer.addresses import normalize
from mailer.app import App
from mailer.errors import InvalidAddress
from mailer.models import ApiKey
from mailer.web import apikeys, idempotency
from mailer.web import security as web_security
from mailer.web.pages import recipient as web_pages

log = logging.getLogger("mailer.web")


#: Tracking and unsubscribe responses must never be cached or set cookies.
NO_STORE = {"Cache-Control": "no-store, max-age=0", "Referrer-Policy": "no-referrer"}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


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
        s.flush()  # last_used_at, before the row leaves the session
        s.expunge(key)
    return key


def require_scope(scope: str) -> Callable[..., ApiKey]:
    """FastAPI dependency factory: the caller's live API key holding ``scope``, else 401 or 403 naming it."""
    if scope not in apikeys.SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def dependency(key: Annotated[ApiKey, Depends(require_api_key)]) -> ApiKey:
        if scope not in apikeys.scopes_of(key):
            raise HTTPException(403, f"this API key lacks the '{scope}' scope; create one with "
                                     f"'mailer apikey create NAME --scope {scope}'")
        return key

    dependency.__name__ = f"require_scope_{scope}"
    return dependency


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


def path_address(email: str) -> str:
    """The normalized address of an ``{email}`` path parameter, or a 422 naming it."""
    try:
        return normalize(email)
    except InvalidAddress as exc:
        raise limits.InvalidData.listing([("email", str(exc))]) from None


def clean(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    value = _CONTROL.sub("", value).strip()
    return value[:limit] or None


class Problem(BaseModel):
    detail: Any
