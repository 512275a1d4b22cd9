"""The console: server-rendered pages for marketers, compliance staff and admins under ``/console``.

``router`` carries :func:`auth.enforce_csrf` as a dependency, so every route any area adds
refuses a state-changing request without the CSRF token.  Each area includes its router
with one line below; :func:`install` mounts it all on the FastAPI app (static files at
``/console/static``, the security headers, the 303 / 403 responses of ``auth.require``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from mailer.web.console import auth, headers

#: The console's static files (htmx, console.css, console.js).
STATIC_DIR = Path(__file__).parent / "static"

router = APIRouter(prefix="/console", dependencies=[Depends(auth.enforce_csrf)], include_in_schema=False)

router.include_router(auth.router)
# One line per area (console-core: dashboard, settings; console-marketer: campaigns, segments,
# templates_page, automations; console-compliance: customers, consent, audit_page).
from . import dashboard; router.include_router(dashboard.router)  # noqa: E402, E702, I001
from . import settings; router.include_router(settings.router)  # noqa: E402, E702, I001


def install(api: FastAPI) -> None:
    """Serve the console on ``api``: static files, the routers, the headers, the exception responses."""
    api.mount("/console/static", StaticFiles(directory=str(STATIC_DIR)), name="console-static")
    api.include_router(router)
    for exc_class, handler in auth.EXCEPTION_HANDLERS.items():
        api.add_exception_handler(exc_class, handler)
    api.add_middleware(headers.ConsoleHeadersMiddleware)
