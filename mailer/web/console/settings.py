"""``/console/settings`` (admin): console users, API keys with scopes, relays and their health, DKIM records.

Users and keys are made by the same services as ``mailer users create`` and ``mailer apikey
create`` (:mod:`mailer.users.accounts`, :mod:`mailer.web.apikeys`); a new key and a new
user's set-password link are shown once, on the page answering the POST.

* ``GET  /console/settings``                 the overview (users, keys, relays, DKIM).
* ``POST /console/settings/users``           create a user (audited ``user.create``).
* ``POST /console/settings/users/disable``   disable one (audited ``user.disable``).
* ``POST /console/settings/apikeys``         create a key with scopes (audited ``apikey.create``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request

from mailer.errors import InvalidState, NotFound, ValidationError
from mailer.users import accounts
from mailer.web import apikeys
from mailer.web.console.auth import ConsoleUser, client_ip, require
from mailer.web.console.render import render

router = APIRouter()

#: Longest form value read, characters.
MAX_FIELD_CHARS = 400


def _page(request: Request, user: ConsoleUser, *, status_code: int = 200, check_relays: bool = False, **extra):
    m = request.app.state.mailer
    with m.session() as s:
        users = [{"email": u.email, "role": u.role.value, "disabled": u.disabled_at is not None,
                  "totp": bool(u.totp_secret), "last_login_at": u.last_login_at,
                  "pending": u.password_hash is None} for u in accounts.list_users(s)]
        keys = [{"name": k.name, "prefix": k.prefix, "scopes": apikeys.scopes_of(k), "created_at": k.created_at,
                 "last_used_at": k.last_used_at, "revoked": k.revoked_at is not None} for k in apikeys.list_keys(s)]
    context = {"users": users, "keys": keys, "roles": accounts.ROLES, "scopes": apikeys.SCOPES,
               "relays": m.transport.health(check=check_relays), "dkim": m.signer.zone_lines(),
               "dkim_domain": m.settings.dkim_domain, "error": None, "invite": None,
               "new_key": None}
    context.update(extra)
    return render(request, user, "console/settings/index.html", context, status_code=status_code)


@router.get("/settings", include_in_schema=False)
def settings_page(request: Request, user: Annotated[ConsoleUser, Depends(require("settings"))]):
    return _page(request, user)


@router.post("/settings/relays/check", include_in_schema=False)
def check_relays(request: Request, user: Annotated[ConsoleUser, Depends(require("settings", write=True))]):
    return _page(request, user, check_relays=True)


@router.post("/settings/users", include_in_schema=False)
def create_user(request: Request, user: Annotated[ConsoleUser, Depends(require("users", write=True))],
                email: Annotated[str, Form()] = "", role: Annotated[str, Form()] = "viewer",
                locale: Annotated[str, Form()] = "en"):
    m = request.app.state.mailer
    try:
        with m.session() as s:
            invite = accounts.create(s, m.settings, email[:MAX_FIELD_CHARS], role[:20], actor=user.email,
                                     locale=locale[:20], ip=client_ip(request))
    except (ValidationError, InvalidState) as exc:
        return _page(request, user, status_code=422, error=str(exc))
    link = m.settings.base_url.rstrip("/") + accounts.set_password_path(invite.token)
    return _page(request, user, invite={"email": invite.email, "role": invite.role, "link": link})


@router.post("/settings/users/disable", include_in_schema=False)
def disable_user(request: Request, user: Annotated[ConsoleUser, Depends(require("users", write=True))],
                 email: Annotated[str, Form()] = ""):
    m = request.app.state.mailer
    if email.strip().lower() == user.email:
        return _page(request, user, status_code=422, error="You cannot disable your own account.")
    try:
        with m.session() as s:
            accounts.disable(s, email[:MAX_FIELD_CHARS], actor=user.email, ip=client_ip(request))
    except NotFound as exc:
        return _page(request, user, status_code=404, error=str(exc))
    return _page(request, user)


@router.post("/settings/apikeys", include_in_schema=False)
def create_key(request: Request, user: Annotated[ConsoleUser, Depends(require("apikeys", write=True))],
               name: Annotated[str, Form()] = "", scope: Annotated[list[str] | None, Form()] = None):
    name = name[:MAX_FIELD_CHARS]
    scopes = [v[:40] for v in (scope or [])][:len(apikeys.SCOPES) + 1]
    m = request.app.state.mailer
    try:
        with m.session() as s:
            created = apikeys.create_audited(s, name, scopes, actor=user.email, ip=client_ip(request))
    except (ValidationError, InvalidState) as exc:
        return _page(request, user, status_code=422, error=str(exc))
    return _page(request, user, new_key={"name": created.name, "key": created.key, "scopes": created.scopes})
