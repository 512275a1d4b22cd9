"""``mailer serve``: the HTTP app (tracking, unsubscribe, preferences, notice API) under uvicorn."""

from __future__ import annotations

import click

from mailer.app import get_app
from mailer.cli.base import main, pass_settings, setup_broker
from mailer.web.app import create_app


@main.command("serve")
@click.option("--host", default=None, help="Bind address (MAILER_HTTP_HOST).")
@click.option("--port", default=None, type=int, help="Port (MAILER_HTTP_PORT).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="uvicorn worker processes.")
@click.option("--proxy-headers/--no-proxy-headers", default=True, show_default=True,
              help="Trust X-Forwarded-For from the proxy in front (client IPs in consent proof).")
@pass_settings
def serve_cmd(settings, host: str | None, port: int | None, workers: int, proxy_headers: bool) -> None:
    """Serve the ASGI app (OpenAPI at /openapi.json, docs at /docs)."""
    import uvicorn

    host = host or settings.http_host
    port = port or settings.http_port
    if workers > 1:
        # Each worker process builds its own app (and broker) from the environment.
        uvicorn.run("mailer.web:app_from_env", factory=True, host=host, port=port, workers=workers,
                    proxy_headers=proxy_headers, log_level="info")
        return
    setup_broker(settings)

    uvicorn.run(create_app(app=get_app()), host=host, port=port, proxy_headers=proxy_headers, log_level="info")
