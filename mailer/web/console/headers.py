"""Security headers on every console response: a strict Content-Security-Policy and friends.

The CSP allows only mailer's own scripts, styles, frames and images (plus ``data:``
images): no inline script or style, no CDN.  Pages are never cached (they show personal
data); static files may be, for an hour.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The console's Content-Security-Policy (docs/console.md#security).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-src 'self'; "
       "frame-ancestors 'self'; form-action 'self'; base-uri 'none'; object-src 'none'")
#: Path prefix of the console.
PREFIX = "/console"
#: How long browsers may cache the console's static files, seconds.
STATIC_MAX_AGE_S = 3600

_COMMON = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"SAMEORIGIN"),
           (b"cross-origin-opener-policy", b"same-origin")]


class ConsoleHeadersMiddleware:
    """Pure ASGI middleware: adds the headers to responses under ``/console``."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        static = path.startswith(PREFIX + "/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() not in (b"content-security-policy", b"cache-control")]
                headers += _COMMON
                headers.append((b"cache-control", f"public, max-age={STATIC_MAX_AGE_S}".encode() if static
                                else b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
