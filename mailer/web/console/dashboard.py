"""``GET /console/`` the dashboard: mail sent by kind, the queue, outcomes, sender-health rates, live campaigns.

The figures come from :mod:`mailer.dashboard`; ``GET /console/dashboard/live`` returns the
same panels alone, which the page re-fetches every 15 seconds through htmx. Among them: the
rolling 24-hour complaint rate per sending domain (against 0.1% and 0.3%, with the day
before, warning when it is high or rising) and the unsubscribe latency against 2 days.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from mailer import dashboard as figures
from mailer.delivery import brakes
from mailer.web.console.auth import ConsoleUser, require
from mailer.web.console.render import render

router = APIRouter()


def _context(request: Request) -> dict:
    m = request.app.state.mailer
    with m.session() as s:
        board = figures.build(s, settings=m.settings)
    return {"board": board, "complaint_warn": figures.COMPLAINT_WARN, "complaint_limit": figures.COMPLAINT_LIMIT,
            "latency_limit_days": brakes.UNSUBSCRIBE_LIMIT_S // 86400}


@router.get("/", include_in_schema=False)
def dashboard_page(request: Request, user: Annotated[ConsoleUser, Depends(require("dashboard"))]):
    return render(request, user, "console/dashboard/index.html", _context(request))


@router.get("/dashboard/live", include_in_schema=False)
def dashboard_live(request: Request, user: Annotated[ConsoleUser, Depends(require("dashboard"))]):
    return render(request, user, "console/dashboard/_panels.html", _context(request))
