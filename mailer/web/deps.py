"""Shared FastAPI dependencies of every router: the App, API keys, idempotency, the client IP, cross-site refusal."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, Callable

from fastapi import Depends, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from mailer.app import App
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


def clean(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    value = _CONTROL.sub("", value).strip()
    return value[:limit] or None


class Problem(BaseModel):
    detail: Any
