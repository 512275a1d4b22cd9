"""``GET /v1/campaigns/{id}/stats``: a campaign's figures, with its attributed orders and revenue.

Scope ``reports``.  The figures are those of ``mailer campaign status --json``
(:func:`mailer.campaigns.reports.figures`): counts, rates, the brake that paused the
campaign (if one did), and the revenue attribution (``attributed_orders``,
``attributed_revenue`` by currency as decimal strings, ``conversion_rate``,
``revenue_per_recipient``); for an A/B-tested campaign, ``ab_test``: its state, settings,
each variant's figures (sent, opens, clicks, attributed orders and revenue per currency,
conversion rate), the decision (``winner``, ``no_winner``) and the interval of the
difference between the best variant and the runner-up (``interval``, ``level``, ``p_value``).
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


class AbVariantStats(BaseModel):
    label: str
    template: str
    subjects: dict[str, str]
    preheaders: dict[str, str]
    sent: int
    unique_opens: int
    open_rate: float
    unique_clicks: int
    click_rate: float
    attributed_orders: int
    attributed_revenue: dict[str, str] = Field(description="Revenue per currency (ISO 4217), decimal strings.")
    conversion_rate: float
    revenue_per_recipient: dict[str, str]


class AbTestStats(BaseModel):
    state: str = Field(description="testing, waiting or decided.")
    winner_metric: str = Field(description="opens, clicks or revenue.")
    test_share_percent: float
    wait_s: int
    confidence: float
    test_ends_at: str | None = None
    decided_at: str | None = None
    winner: str | None = Field(None, description="The variant sent to the rest (the default one when no winner).")
    no_winner: bool | None = Field(None, description="True when the difference was not significant.")
    best: str | None = None
    runner_up: str | None = None
    difference: float | None = Field(None, description="Best minus runner-up in the winning metric.")
    interval: list[float] | None = Field(None, description="Confidence interval of the difference [low, high].")
    level: float | None = None
    p_value: float | None = None
    variants: list[AbVariantStats]


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
    ab_test: AbTestStats | None = Field(None, description="The A/B test, when the campaign has one.")


@router.get("/v1/campaigns/{campaign_id}/stats", tags=["reports"], response_model=CampaignStats,
            responses={401: {"model": Problem}, 403: {"model": Problem, "description": "Lacks the reports scope."},
                       404: {"model": Problem, "description": "No such campaign."}, 422: {"model": Problem}})
def campaign_stats(campaign_id: Annotated[int, Path(ge=1, le=MAX_CAMPAIGN_ID)], request: Request,
                   _key: Annotated[ApiKey, Depends(require_scope("reports"))]) -> CampaignStats:
    """Every figure of one campaign, as ``mailer campaign status --json`` prints it."""
    m = get_mailer(request)
    with m.session() as s:
        f = reports.figures(s, campaign_id)
        ab = reports.ab_summary(s, campaign_id)
        money = reports.variant_revenue(s, campaign_id) if ab else {}
    ab_test = None
    if ab is not None:
        none = {"attributed_orders": 0, "attributed_revenue": {}, "conversion_rate": 0.0, "revenue_per_recipient": {}}
        shown = ("label", "template", "subjects", "preheaders", "sent", "unique_opens", "open_rate", "unique_clicks",
                 "click_rate")
        variants = [AbVariantStats(**{k: v[k] for k in shown},
                                   **{k: money.get(v["label"], none).get(k, none[k]) for k in none})
                    for v in ab["variants"]]
        ab_test = AbTestStats(**{k: v for k, v in ab.items() if k in AbTestStats.model_fields and k != "variants"},
                              variants=variants)
    return CampaignStats(**f.as_dict(), ab_test=ab_test)
