"""``/console/automations``: the rules in words, the pending sends (cancel one), reward-code pools.

Rules are described by :func:`mailer.automations.describe` (the lines of ``mailer
automations list``), pending sends are :func:`mailer.automations.pending` (``mailer
automations pending``), pools are :func:`mailer.automations.codes.status` (``mailer codes
status``). Cancelling one send is :func:`mailer.automations.cancel_pending`, recorded in
the audit log as ``automation.cancel``.

Each rule also shows what it sold: its attributed orders, revenue per currency, conversion
rate and revenue per recipient (:func:`mailer.customers.attribution.automation_revenue`,
the same last-click / last-human-open rule as campaigns), and for a rule with a holdout
the mailed sends against the held-out ones and the incremental revenue
(:func:`mailer.automations.views.holdout_figures`, ``mailer automations holdout``), over
``MAILER_ATTRIBUTION_CLICK_DAYS`` after each send.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse

from mailer import audit
from mailer.automations import cancel_pending, codes, describe, load_each, pending
from mailer.automations.views import holdout_figures
from mailer.customers.attribution import automation_revenue
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
    names = [r["name"] for r in rules if not r["error"]]
    with m.session() as s:
        waiting = pending(s, limit=PENDING_SHOWN)
        pools = [codes.status(s, p) for p in codes.pools(s)]
        money = automation_revenue(s, names) if names else {}
        holdouts = {h.rule: h for h in holdout_figures(s, window_days=m.settings.attribution_click_days)}
    for r in rules:
        figures, recipients = money.get(r["name"], (None, 0))
        r["revenue"] = figures.as_dict(recipients) if figures is not None else None
        r["recipients"] = recipients
        r["holdout"] = holdouts.get(r["name"])
    q = request.query_params
    return render(request, user, "console/automations/index.html",
                  {"rules": rules, "pending": waiting, "pools": pools, "shown": PENDING_SHOWN,
                   "holdout_days": m.settings.attribution_click_days,
                   "default_currency": m.settings.default_currency,
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
