"""Hardening of the HTTP layer: body size, client IPs, cross-site POSTs, token-free logs, JSON.

* :class:`BodyLimitMiddleware` answers 413 to a body over ``MAILER_MAX_BODY_BYTES``,
  by its ``Content-Length`` or, for chunked bodies, by counting what arrives.
* :func:`client_ip` is the address that goes into consent proof: the socket peer, or
  (only when that peer is in ``MAILER_TRUSTED_PROXIES``) the right-most address of
  ``X-Forwarded-For`` that is not itself a trusted proxy.
* :func:`refuse_cross_site` is the check state-changing recipient pages run (403 for a
  browser's cross-site POST).  The RFC 8058 one-click unsubscribe does not call it.
* :class:`TokenRedactingFilter` and :func:`log_config` keep link tokens out of logs.
* :class:`StrictJSONRoute` parses JSON bodies so that nesting too deep for Python is a
  422, not a 500.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import logging
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import LOGGING_CONFIG

from mailer.errors import ConfigurationError
from mailer.settings import Settings

#: Path prefixes whose next segment is a secret link token.
TOKEN_PATHS = ("/t/o/", "/t/c/", "/u/", "/preferences/", "/csat/", "/confirm/", "/console/set-password/")
#: What a token is replaced with in logs.
REDACTED = "[redacted]"

_TOKEN_IN_PATH = re.compile(r"(/(?:t/o|t/c|u|preferences|csat|confirm|console/set-password)/)[^/?#\s\"']+")


# -- body size --------------------------------------------------------------------------------
class BodyLimitMiddleware:
    """Pure ASGI middleware: 413 for a request body larger than ``max_body_bytes``."""

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _too_large(send, "Content-Length is not a number", 400)
                    return
                if declared > self.max_body_bytes:
                    await _too_large(send, f"request body larger than {self.max_body_bytes} bytes")
                    return
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge(self.max_body_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                await _too_large(send, f"request body larger than {self.max_body_bytes} bytes")


class _BodyTooLarge(HTTPException):
    """Raised from ``receive`` mid-body; FastAPI re-raises HTTPExceptions, so this becomes a 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit} bytes")


async def _too_large(send: Send, message: str, status: int = 413) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# -- client IP --------------------------------------------------------------------------------
@lru_cache(maxsize=32)
def trusted_networks(spec: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Parse ``MAILER_TRUSTED_PROXIES`` (comma-separated IPs or CIDRs)."""
    networks = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError as exc:
            raise ConfigurationError(f"MAILER_TRUSTED_PROXIES: {part!r} is not an IP address or CIDR") from exc
    return tuple(networks)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _trusted(ip, networks) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def client_ip(request: Request, settings: Settings) -> str | None:
    """The client's IP: ``X-Forwarded-For`` walked from the right past trusted proxies only."""
    peer_text = request.client.host if request.client else None
    networks = trusted_networks(settings.trusted_proxies)
    peer = _parse_ip(peer_text) if peer_text else None
    if not networks or peer is None or not _trusted(peer, networks):
        return peer_text
    hops: list[str] = []
    for header in request.headers.getlist("x-forwarded-for"):
        hops.extend(h for h in header.split(",") if h.strip())
    client = peer
    for hop in reversed(hops):
        ip = _parse_ip(hop)
        if ip is None:
            break  # garbage: believe nothing further left
        client = ip
        if not _trusted(ip, networks):
            break
    return str(client)


# -- cross-site POSTs -------------------------------------------------------------------------
def _origin_of(url: str) -> tuple[str, str] | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    netloc = parts.netloc.lower()
    default = {"http": ":80", "https": ":443"}.get(parts.scheme.lower())
    if default and netloc.endswith(default):
        netloc = netloc[: -len(default)]
    return parts.scheme.lower(), netloc


def is_cross_site(request: Request, settings: Settings) -> bool:
    """True for a browser POST from another site.

    ``Sec-Fetch-Site`` decides when present (``same-origin`` and ``none`` pass).  Otherwise
    ``Origin`` must match ``MAILER_BASE_URL`` or the request's own ``Host``.  A request
    with neither header is not from a current browser (browsers send ``Origin`` on every
    cross-origin POST), so it cannot be a forged browser submission and passes.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site.strip().lower() not in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return False
    theirs = _origin_of(origin.strip())
    if theirs is None:  # "null" (sandboxed frames, privacy redirects) or garbage
        return True
    ours = _origin_of(settings.base_url)
    if theirs == ours:
        return False
    host = request.headers.get("host")
    return host is None or _origin_of(f"{theirs[0]}://{host}") != theirs


# -- logs -------------------------------------------------------------------------------------
def redact(text: str) -> str:
    """``text`` with every link token in a URL path replaced by :data:`REDACTED`."""
    return _TOKEN_IN_PATH.sub(lambda m: m.group(1) + REDACTED, text)


class TokenRedactingFilter(logging.Filter):
    """Logging filter: link tokens in a record (e.g. the uvicorn access line) become ``[redacted]``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's logging config with token redaction on every handler, mailer's logs included."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_tokens"] = {"()": "mailer.web.security.TokenRedactingFilter"}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact_tokens")
    config["loggers"]["mailer"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


# -- JSON bodies ------------------------------------------------------------------------------
class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(body)
            except RecursionError:
                text = body.decode("utf-8", "replace")
                raise json.JSONDecodeError("JSON nests too deeply", text, 0) from None
            except UnicodeDecodeError as exc:
                raise json.JSONDecodeError(f"body is not UTF-8 ({exc.reason})", "", exc.start) from None
        return self._json


class StrictJSONRoute(APIRoute):
    """An APIRoute whose JSON parsing turns over-deep nesting into a 422 (not a RecursionError)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def strict_handler(request: Request):
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return strict_handler
