"""Rendering console pages: one Jinja2 environment (autoescape everywhere), the base context, the nav.

``render(request, user, "console/<area>/<page>.html", context)`` adds ``user``,
``csrf_token``, ``_`` (the user's translator), ``nav``, ``locale``, ``locale_names`` and
``csrf_field()`` to the context.  Templates extend ``console/base.html`` (blocks
``title`` and ``content``) and may ``{% from "console/_macros.html" import csrf_field with context %}``.
Templates hold no inline script, no ``style`` attribute and no event handler: the CSP
(:mod:`mailer.web.console.headers`) forbids them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.routing import iter_route_contexts
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from mailer.web.console import csrf, i18n, roles

#: The console's templates folder (templates/console/<area>/<page>.html).
TEMPLATE_DIR = Path(__file__).parent / "templates"

_env = Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)),
                   autoescape=select_autoescape(default=True, default_for_string=True),
                   trim_blocks=True, lstrip_blocks=True)


@dataclass(frozen=True)
class NavItem:
    area: str
    href: str
    label: str


#: The navigation, in order: (area, path, English label). Items whose page is not served are hidden.
NAV = (("dashboard", "/console/", "Dashboard"), ("campaigns", "/console/campaigns", "Campaigns"),
       ("segments", "/console/segments", "Segments"), ("templates", "/console/templates", "Templates"),
       ("automations", "/console/automations", "Automations"), ("customers", "/console/customers", "Customers"),
       ("consent", "/console/consent", "Consent"), ("audit", "/console/audit", "Audit log"),
       ("settings", "/console/settings", "Settings"), ("account", "/console/account", "Account"))


def environment() -> Environment:
    return _env


def _served_paths(request: Request) -> frozenset[str]:
    cached = getattr(request.app.state, "console_paths", None)
    if cached is None:
        # Included routers stay nested in FastAPI; iter_route_contexts gives each route's full path.
        cached = frozenset(ctx.path for ctx in iter_route_contexts(request.app.routes))
        request.app.state.console_paths = cached
    return cached


def nav_for(request: Request, user, translate) -> list[NavItem]:
    if user is None:
        return []
    served = _served_paths(request)
    return [NavItem(area, href, translate(label)) for area, href, label in NAV
            if href in served and roles.allowed(user.role, area)]


def csrf_token_for(request: Request, user) -> str:
    if user is not None and getattr(user, "csrf_token", None):
        return user.csrf_token
    settings = request.app.state.mailer.settings
    value, _new = csrf.pre_value(request)
    return csrf.pre_token(settings, value)


def render(request: Request, user, template: str, context: dict[str, Any] | None = None,
           status_code: int = 200) -> HTMLResponse:
    """The page ``template`` for ``user`` (None before login), with the base context."""
    locale = user.locale if user is not None else getattr(request.state, "console_locale", "en")
    if locale not in i18n.LOCALES:
        locale = "en"
    translate = i18n.translator(locale)
    token = csrf_token_for(request, user)

    def csrf_field() -> Markup:
        return Markup('<input type="hidden" name="csrf_token" value="{}">').format(escape(token))

    values = {"user": user, "csrf_token": token, "_": translate, "nav": nav_for(request, user, translate),
              "locale": locale, "locale_names": i18n.LOCALE_NAMES, "csrf_field": csrf_field,
              "request_path": request.url.path, "request": request}
    values.update(context or {})
    html = _env.get_template(template).render(values)
    response = HTMLResponse(html, status_code=status_code)
    pre = getattr(request.state, "console_pre", None)
    if user is None and pre and request.cookies.get(csrf.PRE_COOKIE) != pre:
        csrf.set_cookie(response, request, request.app.state.mailer.settings, csrf.PRE_COOKIE, pre,
                        max_age=csrf.PRE_COOKIE_MAX_AGE_S)
    return response
