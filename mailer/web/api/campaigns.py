"""``GET /v1/campaigns/{id}/stats``: a campaign's figures, with its attributed orders and revenue.

Scope ``reports``.  The figures are those of ``mailer campaign status --json``
(:func:`mailer.campaigns.reports.figures`): counts, rates, the brake that paused the
campaign (if one did), and the revenue attribution (``attributed_orders``,
``attributed_revenue`` by currency as decimal strings, ``conversion_rate``,
``revenue_per_recipient``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field

from mailer.campaigns import reports
from mailer.models import ApiKey
from mailer.web.deps import Problem, get_mailer, require_scope

router = APIRouter()

#: Largest campaign id accepted in the path (a BIGINT).
MAX_CAMPAIGN_ID = 2**63 - 1


class CampaignStats(BaseModel):
    campaign_id: int
    name: str
    status: str
    total: int
    pending: int
    held: int
    sent: int
    failed: int
    bounced: int
    suppressed: int
    skipped: int
    frequency_capped: int
    cancelled: int
    unique_opens: int
    machine_opens: int
    unique_clicks: int
    unsubscribes: int
    complaints: int
    rates: dict[str, float]
    attributed_orders: int = Field(description="Orders attributed to the campaign (last click, else last human "
                                               "open), cancelled and refunded ones left out.")
    attributed_revenue: dict[str, str] = Field(description="Revenue per currency (ISO 4217), decimal strings.")
    conversion_rate: float = Field(description="Customers with an attributed order / recipients (sent + bounced).")
    revenue_per_recipient: dict[str, str]
    brake: str | None = Field(None, description="complaint_rate or hard_bounce_rate when a brake paused it.")
    brake_detail: dict | None = None


@router.get("/v1/campaigns/{campaign_id}/stats", tags=["reports"], response_model=CampaignStats,
            responses={401: {"model": Problem}, 403: {"model": Problem, "description": "Lacks the reports scope."},
                       404: {"model": Problem, "description": "No such campaign."}, 422: {"model": Problem}})
def campaign_stats(campaign_id: Annotated[int, Path(ge=1, le=MAX_CAMPAIGN_ID)], request: Request,
                   _key: Annotated[ApiKey, Depends(require_scope("reports"))]) -> CampaignStats:
    """Every figure of one campaign, as ``mailer campaign status --json`` prints it."""
    m = get_mailer(request)
    with m.session() as s:
        f = reports.figures(s, campaign_id)
    return CampaignStats(**f.as_dict())
