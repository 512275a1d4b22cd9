"""The console's dashboard figures: mail sent by kind, the queue, outcomes, sender-health rates, running campaigns,
and the prediction figures (churn-risk counts and the distribution of predicted CLV, :func:`predictions`).

Every query reads a bounded time range through an index made for it (migration 0007),
so the page stays fast on a million customers' mail: ``deliveries (sent_at, kind)``,
``(status, updated_at)``, ``(status, created_at)``, ``bounces (occurred_at, kind)``,
``tracking_events (occurred_at)`` and ``deliveries (campaign_id, status)``.

Rates are over the last 7 days' sent mail, against the bulk-sender rules Gmail and Yahoo
enforce since February 2024: a spam-complaint rate kept below 0.1% and never reaching
0.3%.  For hard bounces the common practice is to stay under 2% (5% is trouble); for
unsubscribes there is no rule, the figure is shown for trend only.

With the settings, the dashboard also shows the brakes' sender health
(:mod:`mailer.delivery.brakes`): the **rolling 24-hour complaint rate per sending domain**
against 0.1% and 0.3%, beside the same rate for the 24 hours before, so a rising rate
warns (:class:`DomainTrend`); and the **unsubscribe latency** of the last 30 days (link
clicked to the last marketing mail after it) against the 2-day limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.delivery import brakes
from mailer.models import (
    Bounce,
    Campaign,
    CampaignStatus,
    Customer,
    Delivery,
    DeliveryStatus,
    PredictionFit,
    TrackingEvent,
    TrackingKind,
)
from mailer.settings import Settings

#: Complaint rate Gmail and Yahoo want senders below (fraction of mail sent).
COMPLAINT_WARN = 0.001
#: Complaint rate a sender must never reach (fraction).
COMPLAINT_LIMIT = 0.003
#: Hard-bounce rate that calls for a look at list hygiene (fraction; common practice).
BOUNCE_WARN = 0.02
#: Hard-bounce rate that harms the sender's reputation (fraction).
BOUNCE_LIMIT = 0.05
#: Fewer sent mails than this in the window: rates are shown but never alarm (too few to judge).
MIN_SENT_FOR_ALERT = 100
#: Statuses of mail still waiting to go (the queue).
WAITING = (DeliveryStatus.queued, DeliveryStatus.sending)
#: Campaigns shown as running now.
LIVE_CAMPAIGNS = (CampaignStatus.running, CampaignStatus.paused, CampaignStatus.scheduled)
#: Most campaigns listed on the dashboard.
MAX_CAMPAIGNS = 20
#: The unsubscribe latency is measured over the unsubscribes of this many last days.
LATENCY_WINDOW_DAYS = 30
#: Bars of the predicted-CLV chart: equal widths from 0 up to the CLV_TOP_QUANTILE value, the
#: last bar open-ended (CLV is long-tailed: a few big spenders would squash every other bar).
CLV_BINS = 8
CLV_TOP_QUANTILE = 0.99


@dataclass(frozen=True)
class ClvBin:
    low: float  # in the shop's currency
    high: float | None  # None: the open-ended last bar
    customers: int


@dataclass(frozen=True)
class PredictionFigures:
    """The latest fit and what the scored customers look like (all zero before the first score)."""

    fitted_at: datetime | None
    as_of: object | None  # date of the latest successful fit
    scored: int
    churn_risk: dict[str, int]  # low / medium / high -> customers
    clv_bins: list[ClvBin]


@dataclass(frozen=True)
class Rate:
    name: str
    count: int
    sent: int
    #: count / sent (0 when nothing was sent).
    value: float
    warn: float | None
    limit: float | None
    #: "ok", "warn" or "limit" ("ok" also when there is no rule or too little mail to judge).
    level: str


@dataclass(frozen=True)
class CampaignProgress:
    id: int
    name: str
    status: str
    total: int
    done: int
    sent: int


@dataclass(frozen=True)
class DomainTrend:
    """One sending domain's complaint rate over the last 24 hours and the 24 hours before."""

    now: brakes.DomainRate
    before: brakes.DomainRate

    @property
    def rising(self) -> bool:
        """The rate is higher than the day before (and there is a complaint to speak of)."""
        return self.now.complaints > 0 and self.now.rate > self.before.rate

    @property
    def warn(self) -> bool:
        """Worth a warning: at or above 0.1% (``warning``) or 0.3% (``critical``) with enough mail
        to judge (the alert then says whether it is rising)."""
        return self.now.level != "ok" and self.now.sent >= MIN_SENT_FOR_ALERT


@dataclass(frozen=True)
class Dashboard:
    now: datetime
    #: kind -> mails sent in the last 24 hours / 7 days.
    sent_24h: dict[str, int]
    sent_7d: dict[str, int]
    queued: int
    sending: int
    scheduled_due: int
    #: created_at of the oldest queued mail (any queue), and of the oldest queued notice (transactional).
    oldest_waiting: datetime | None
    oldest_waiting_notice: datetime | None
    #: status -> deliveries that reached it in the last 7 days.
    outcomes_7d: dict[str, int]
    rates: list[Rate] = field(default_factory=list)
    campaigns: list[CampaignProgress] = field(default_factory=list)
    #: Per sending domain, the rolling 24-hour complaint rate and the day before (needs the settings).
    domains: list[DomainTrend] = field(default_factory=list)
    #: Unsubscribe latency over the last LATENCY_WINDOW_DAYS (needs the settings).
    latency: brakes.Latency | None = None
    predictions: PredictionFigures | None = None

    @property
    def alerts(self) -> list[Rate]:
        return [r for r in self.rates if r.level != "ok"]

    @property
    def domain_alerts(self) -> list[DomainTrend]:
        return [d for d in self.domains if d.warn]


def _level(value: float, sent: int, warn: float | None, limit: float | None) -> str:
    if sent < MIN_SENT_FOR_ALERT:
        return "ok"
    if limit is not None and value >= limit:
        return "limit"
    if warn is not None and value >= warn:
        return "warn"
    return "ok"


def _rate(name: str, count: int, sent: int, warn: float | None, limit: float | None) -> Rate:
    value = count / sent if sent else 0.0
    return Rate(name, count, sent, value, warn, limit, _level(value, sent, warn, limit))


def sent_by_kind(session: Session, since: datetime) -> dict[str, int]:
    # Range on ix_deliveries_sent_at_kind (sent_at, kind): an index-only scan of the window.
    rows = session.execute(select(Delivery.kind, func.count()).where(Delivery.sent_at >= since)
                           .group_by(Delivery.kind).order_by(func.count().desc()))
    return {kind: n for kind, n in rows}


def queue(session: Session, now: datetime) -> tuple[int, int, int, datetime | None, datetime | None]:
    """queued, sending, scheduled and due, oldest queued, oldest queued notice."""
    # Counts per waiting status: each an equality prefix of ix_deliveries_status_created.
    counts = dict(session.execute(select(Delivery.status, func.count()).where(Delivery.status.in_(WAITING))
                                  .group_by(Delivery.status)).all())
    # Due scheduled mail: ix_deliveries_status_send_after (status, send_after) range.
    due = session.execute(select(func.count()).where(Delivery.status == DeliveryStatus.scheduled,
                                                     Delivery.send_after <= now)).scalar_one()
    # The oldest queued mail: the first entry of ix_deliveries_status_created (status, created_at).
    oldest = session.execute(select(Delivery.created_at).where(Delivery.status == DeliveryStatus.queued)
                             .order_by(Delivery.created_at).limit(1)).scalar_one_or_none()
    # The oldest waiting notice: the same index walked in order, first transactional row.
    oldest_notice = session.execute(select(Delivery.created_at)
                                    .where(Delivery.status == DeliveryStatus.queued,
                                           Delivery.queue == "transactional")
                                    .order_by(Delivery.created_at).limit(1)).scalar_one_or_none()
    return (counts.get(DeliveryStatus.queued, 0), counts.get(DeliveryStatus.sending, 0), due, oldest, oldest_notice)


def outcomes(session: Session, since: datetime) -> dict[str, int]:
    # One range of ix_deliveries_status_updated (status, updated_at) per status in the IN list:
    # rows that changed in the window, never a scan of older mail.
    rows = session.execute(select(Delivery.status, func.count())
                           .where(Delivery.status.in_(list(DeliveryStatus)), Delivery.updated_at >= since)
                           .group_by(Delivery.status))
    return {status.value: n for status, n in rows}


def rates(session: Session, since: datetime) -> list[Rate]:
    # Each count is a range scan of its own time index (see the module docstring).
    sent = session.execute(select(func.count()).where(Delivery.sent_at >= since)).scalar_one()
    by_kind = dict(session.execute(select(Bounce.kind, func.count()).where(Bounce.occurred_at >= since)
                                   .group_by(Bounce.kind)).all())
    unsubscribes = session.execute(select(func.count()).where(TrackingEvent.occurred_at >= since,
                                                              TrackingEvent.kind == TrackingKind.unsubscribe)
                                   ).scalar_one()
    return [_rate("complaints", by_kind.get("complaint", 0), sent, COMPLAINT_WARN, COMPLAINT_LIMIT),
            _rate("bounces", by_kind.get("hard", 0), sent, BOUNCE_WARN, BOUNCE_LIMIT),
            _rate("unsubscribes", unsubscribes, sent, None, None)]


def live_campaigns(session: Session) -> list[CampaignProgress]:
    # Few live campaigns; each one's counts come from ix_deliveries_campaign_status.
    found = list(session.execute(select(Campaign.id, Campaign.name, Campaign.status)
                                 .where(Campaign.status.in_(LIVE_CAMPAIGNS))
                                 .order_by(Campaign.id.desc()).limit(MAX_CAMPAIGNS)))
    if not found:
        return []
    counts: dict[int, dict[DeliveryStatus, int]] = {}
    for cid, status, n in session.execute(select(Delivery.campaign_id, Delivery.status, func.count())
                                          .where(Delivery.campaign_id.in_([c.id for c in found]))
                                          .group_by(Delivery.campaign_id, Delivery.status)):
        counts.setdefault(cid, {})[status] = n
    pending = {DeliveryStatus.queued, DeliveryStatus.sending, DeliveryStatus.scheduled, DeliveryStatus.held}
    out = []
    for c in found:
        per = counts.get(c.id, {})
        total = sum(per.values())
        done = sum(n for s, n in per.items() if s not in pending)
        out.append(CampaignProgress(c.id, c.name, c.status.value, total, done, per.get(DeliveryStatus.sent, 0)))
    return out


def domain_trends(session: Session, settings: Settings, now: datetime) -> list[DomainTrend]:
    """The rolling 24-hour complaint rate per sending domain, and the 24 hours before it."""
    before = {d.domain: d for d in brakes.domain_complaint_rates(
        session, settings, now=now - timedelta(seconds=brakes.DOMAIN_WINDOW_S))}
    out = []
    for d in brakes.domain_complaint_rates(session, settings, now=now):
        out.append(DomainTrend(d, before.get(d.domain) or brakes.DomainRate(d.domain, 0, 0, 0.0, "ok")))
    return out


def _nice_step(top: float, bins: int) -> float:
    """A bar width of 1, 2 or 5 times a power of ten, so that ``bins`` bars cover ``top``."""
    raw = top / bins
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return float(factor * power)
    return float(10 * power)


#: Prediction figures per (database, latest score): they change only when a score runs, and
#: counting a million customers' index entries every 15-second refresh would be wasted work.
_PREDICTION_CACHE: dict[tuple, PredictionFigures] = {}


def predictions(session: Session) -> PredictionFigures:
    """Churn-risk counts and the predicted-CLV distribution of the scored customers.

    Computed once per score (the latest fit's id and time key a small in-process cache).
    """
    # The newest successful fit: ix_prediction_fits_fitted_at walked backwards, one row.
    fit = session.execute(select(PredictionFit.id, PredictionFit.fitted_at, PredictionFit.as_of)
                          .where(PredictionFit.status == "fitted", PredictionFit.scored.is_not(None))
                          .order_by(PredictionFit.fitted_at.desc(), PredictionFit.id.desc()).limit(1)).first()
    key = (str(session.get_bind().url), fit.id if fit else None, fit.fitted_at if fit else None)
    if fit is not None and key in _PREDICTION_CACHE:
        return _PREDICTION_CACHE[key]
    figures = _prediction_figures(session, fit)
    if fit is not None:
        _PREDICTION_CACHE.clear()
        _PREDICTION_CACHE[key] = figures
    return figures


def _prediction_figures(session: Session, fit) -> PredictionFigures:
    # Counts per risk: ix_customers_churn_risk grouped in order (unscored customers are NULL there).
    risk = {"low": 0, "medium": 0, "high": 0}
    for value, n in session.execute(select(Customer.churn_risk, func.count()).where(Customer.churn_risk.is_not(None))
                                    .group_by(Customer.churn_risk)):
        risk[getattr(value, "value", value)] = n
    clv = Customer.predicted_clv
    scored_clv = session.execute(select(func.count()).where(clv.is_not(None))).scalar_one()
    bins: list[ClvBin] = []
    if scored_clv:
        # The CLV_TOP_QUANTILE value: one row at that offset of ix_customers_predicted_clv.
        top = session.execute(select(clv).where(clv.is_not(None)).order_by(clv)
                              .offset(min(int(scored_clv * CLV_TOP_QUANTILE), scored_clv - 1)).limit(1)).scalar_one()
        step = _nice_step(max(float(top), 0.01), CLV_BINS)
        # One pass over the index, grouped by bar number (the last bar takes everything above).
        # (CLV is never negative: SQLite's CAST truncates it down; PostgreSQL's would round, so floor.)
        if session.get_bind().dialect.name == "sqlite":
            bar = func.min(cast(clv / step, Integer), CLV_BINS - 1)
        else:
            bar = func.least(func.floor(clv / step), CLV_BINS - 1)
        counts = dict(session.execute(select(bar.label("bar"), func.count()).where(clv.is_not(None))
                                      .group_by("bar")).all())
        for i in range(CLV_BINS):
            n = sum(v for k, v in counts.items() if int(max(k, 0)) == i)
            bins.append(ClvBin(i * step, (i + 1) * step if i < CLV_BINS - 1 else None, n))
    return PredictionFigures(fitted_at=fit.fitted_at if fit else None, as_of=fit.as_of if fit else None,
                             scored=sum(risk.values()), churn_risk=risk, clv_bins=bins)


def build(session: Session, *, now: datetime | None = None, settings: Settings | None = None) -> Dashboard:
    """Every figure of the dashboard, as of ``now`` (the per-domain complaint rates and the
    unsubscribe latency too when ``settings`` are given)."""
    now = now or utcnow()
    domains = domain_trends(session, settings, now) if settings is not None else []
    latency = (brakes.unsubscribe_latency(session, since=now - timedelta(days=LATENCY_WINDOW_DAYS), now=now)
               if settings is not None else None)
    day, week = now - timedelta(hours=24), now - timedelta(days=7)
    queued, sending, due, oldest, oldest_notice = queue(session, now)
    return Dashboard(now=now, sent_24h=sent_by_kind(session, day), sent_7d=sent_by_kind(session, week),
                     queued=queued, sending=sending, scheduled_due=due, oldest_waiting=oldest,
                     oldest_waiting_notice=oldest_notice, outcomes_7d=outcomes(session, week),
                     rates=rates(session, week), campaigns=live_campaigns(session), domains=domains,
                     latency=latency, predictions=predictions(session))
