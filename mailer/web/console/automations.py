"""``/console/automations``: the rules in words, the pending sends (cancel one), reward-code pools.

Rules are described by :func:`mailer.automations.describe` (the lines of ``mailer
automations list``), pending sends are :func:`mailer.automations.pending` (``mailer
automations pending``), pools are :func:`mailer.automations.codes.status` (``mailer codes
status``). Cancelling one send is :func:`mailer.automations.cancel_pending`, recorded in
the audit log as ``automation.cancel``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse

from mailer import audit
from mailer.automations import cancel_pending, codes, describe, load_each, pending
from mailer.errors import ConfigurationError
from mailer.web.console.auth import ConsoleUser, client_ip, require
from mailer.web.console.render import render

router = APIRouter()

#: Pending sends shown on the page (soonest first).
PENDING_SHOWN = 200


@router.get("/automations", include_in_schema=False)
def automations_page(request: Request, user: Annotated[ConsoleUser, Depends(require("automations"))]):
    m = request.app.state.mailer
    rules = []
    for path, r in load_each(m.settings, m.renderer):
        if isinstance(r, ConfigurationError):
            rules.append({"name": path.stem, "error": str(r), "lines": [], "enabled": False})
        else:
            rules.append({"name": r.name, "error": None, "lines": describe(r), "enabled": r.enabled})
    with m.session() as s:
        waiting = pending(s, limit=PENDING_SHOWN)
        pools = [codes.status(s, p) for p in codes.pools(s)]
    q = request.query_params
    return render(request, user, "console/automations/index.html",
                  {"rules": rules, "pending": waiting, "pools": pools, "shown": PENDING_SHOWN,
                   "cancelled": q.get("cancelled", "")[:20], "gone": q.get("gone", "")[:20]})


@router.post("/automations/pending/{delivery_id}/cancel", include_in_schema=False)
def cancel_one(request: Request, delivery_id: int,
               user: Annotated[ConsoleUser, Depends(require("automations", write=True))]):
    m = request.app.state.mailer
    with m.session() as s:
        done = cancel_pending(s, delivery_id)
        if done:
            audit.record(s, actor=user.email, action="automation.cancel", target=f"delivery:{delivery_id}",
                         ip=client_ip(request))
    key = "cancelled" if done else "gone"
    return RedirectResponse(f"/console/automations?{key}={delivery_id}", status_code=303)
