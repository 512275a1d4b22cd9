"""``GET /console/`` the dashboard: mail sent by kind, the queue, outcomes, sender-health rates, live campaigns,
and the prediction figures (churn-risk counts, a chart of the predicted-CLV distribution).

The figures come from :mod:`mailer.dashboard`; ``GET /console/dashboard/live`` returns the
same panels alone, which the page re-fetches every 15 seconds through htmx. Among them: the
rolling 24-hour complaint rate per sending domain (against 0.1% and 0.3%, with the day
before, warning when it is high or rising) and the unsubscribe latency against 2 days.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from markupsafe import Markup

from mailer import dashboard as figures
from mailer.delivery import brakes
from mailer.web.console import charts, i18n
from mailer.web.console.auth import ConsoleUser, require
from mailer.web.console.render import render

router = APIRouter()


def clv_chart(pf: figures.PredictionFigures | None, translate) -> Markup:
    """The predicted-CLV distribution as a bar chart: one bar per range, customers per bar."""
    if pf is None or not pf.clv_bins:
        return Markup("")
    rows = [(f"{b.low:g}–{b.high:g}" if b.high is not None else f"≥ {b.low:g}", b.customers, str(b.customers))
            for b in pf.clv_bins]
    return charts.bar_chart(rows, label=translate("Customers by predicted lifetime value (12 months)"))


def _context(request: Request, user: ConsoleUser) -> dict:
    with request.app.state.mailer.session() as s:
        board = figures.build(s, settings=request.app.state.mailer.settings)
    return {"board": board, "complaint_warn": figures.COMPLAINT_WARN, "complaint_limit": figures.COMPLAINT_LIMIT,
            "latency_limit_days": brakes.UNSUBSCRIBE_LIMIT_S // 86400,
            "clv_chart": clv_chart(board.predictions, i18n.translator(user.locale)),
            "shop_currency": request.app.state.mailer.settings.default_currency}


@router.get("/", include_in_schema=False)
def dashboard_page(request: Request, user: Annotated[ConsoleUser, Depends(require("dashboard"))]):
    return render(request, user, "console/dashboard/index.html", _context(request, user))


@router.get("/dashboard/live", include_in_schema=False)
def dashboard_live(request: Request, user: Annotated[ConsoleUser, Depends(require("dashboard"))]):
    return render(request, user, "console/dashboard/_panels.html", _context(request, user))
