"""``mailer serve``: the HTTP app (tracking, unsubscribe, preferences, notice API) under uvicorn."""

from __future__ import annotations

import click
import uvicorn

from mailer.app import get_app
from mailer.cli.base import main, pass_settings, setup_broker
from mailer.web.app import create_app
from mailer.web.security import log_config, trusted_networks


@main.command("serve")
@click.option("--host", default=None, help="Bind address (MAILER_HTTP_HOST).")
@click.option("--port", default=None, type=int, help="Port (MAILER_HTTP_PORT).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="uvicorn worker processes.")
@pass_settings
def serve_cmd(settings, host: str | None, port: int | None, workers: int) -> None:
    """Serve the ASGI app (OpenAPI at /openapi.json, docs at /docs).

    uvicorn's own proxy-header handling is off: mailer believes ``X-Forwarded-For`` only
    from ``MAILER_TRUSTED_PROXIES`` (:func:`mailer.web_security.client_ip`).  Access and
    mailer logs go through :class:`~mailer.web_security.TokenRedactingFilter`.
    """
    trusted_networks(settings.trusted_proxies)  # a bad CIDR fails here, not on the first request
    host = host or settings.http_host
    port = port or settings.http_port
    common = {"host": host, "port": port, "proxy_headers": False, "log_config": log_config(), "log_level": "info"}
    if workers > 1:
        # Each worker process builds its own app (and broker) from the environment.
        uvicorn.run("mailer.web:app_from_env", factory=True, workers=workers, **common)
        return
    setup_broker(settings)
    run_server(get_app(), host=host, port=port)


def run_server(app, *, host: str, port: int) -> None:
    """Serve ``app`` under uvicorn in this process until Ctrl-C (one worker)."""
    uvicorn.run(create_app(app=app), host=host, port=port, proxy_headers=False, log_config=log_config(),
                log_level="info")
