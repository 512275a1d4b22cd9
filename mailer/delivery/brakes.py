"""Brakes: a running campaign pauses itself before the mailbox providers act; the sender's health.

Owns pausing and resuming at the level of rows (``campaigns.status``, ``brake``,
``brake_detail``, the held deliveries, the ``campaign_actions`` log) so that both a person
(:mod:`mailer.campaigns.service`) and a brake (here, called by the bounce and complaint
recording of :mod:`mailer.delivery.bounces`) pause the same way:

* **complaint brake**: complaints / sent reach ``MAILER_MAX_COMPLAINT_RATE`` (0.3%, the
  rate Gmail and Yahoo enforce since 2024);
* **hard-bounce brake**: hard bounces / attempted pass ``MAILER_MAX_HARD_BOUNCE_RATE``
  (5%: a stale list);

both only once the campaign has at least ``MAILER_BRAKE_MIN_SENT`` mails out (a rate of
one complaint in ten mails says nothing).  The pause is one conditional UPDATE (only a
``running`` or ``scheduled`` campaign pauses, so two reports racing pause it once), in
the transaction that records the report; from its commit on, the send path's gate
(:func:`mailer.delivery.process.gate`, which re-reads the campaign's status for every
delivery) holds every mail of the campaign.  Resuming is always explicit
(``mailer campaign resume``) and recorded.

Also here, for the dashboard and ``mailer campaign report``: the rolling 24-hour
complaint rate per sending domain against 0.1% / 0.3% (:func:`domain_complaint_rates`)
and the unsubscribe latency, link clicked to the last mail after it, against the 2-day
limit (:func:`unsubscribe_latency`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, distinct, func, select, update
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.models import (
    Bounce,
    Campaign,
    CampaignAction,
    CampaignStatus,
    Delivery,
    DeliveryStatus,
    TrackingEvent,
    TrackingKind,
)
from mailer.settings import Settings

log = logging.getLogger("mailer.brakes")

COMPLAINT_BRAKE = "complaint_rate"
HARD_BOUNCE_BRAKE = "hard_bounce_rate"
#: The rolling window of the sending-domain complaint rate, seconds.
DOMAIN_WINDOW_S = 24 * 3600
#: Complaint-rate levels of the dashboard: above WARN it warns, at LIMIT providers block (Gmail, Yahoo).
COMPLAINT_WARN_RATE = 0.001
COMPLAINT_LIMIT_RATE = 0.003
#: The longest an unsubscribe may take to stop the mail (Gmail / Yahoo bulk-sender rules), seconds.
UNSUBSCRIBE_LIMIT_S = 2 * 86400
#: Deliveries a worker may still pick up: what a pause holds.
_HOLDABLE = (DeliveryStatus.queued, DeliveryStatus.scheduled)


# -- pausing and resuming (rows) ----------------------------------------------------------------
def pause_campaign(s: Session, campaign_id: int, *, actor: str, brake: str | None = None,
                   detail: dict | None = None, now: datetime | None = None) -> int | None:
    """Pause a running or scheduled campaign, hold its unsent deliveries, record who did it.

    Returns how many deliveries were held, or None when the campaign was not running or
    scheduled (nothing changed: another report or a person paused it first).
    """
    now = now or utcnow()
    # Conditional on the status, so of two racing pauses exactly one acts (and records).
    res = s.execute(update(Campaign)
                    .where(Campaign.id == campaign_id,
                           Campaign.status.in_([CampaignStatus.running, CampaignStatus.scheduled]))
                    .values(status=CampaignStatus.paused, brake=brake, brake_detail=detail)
                    .execution_options(synchronize_session=False))
    if res.rowcount != 1:
        return None
    # One UPDATE over the (campaign_id, status) index; rows a worker holds under a lease
    # are stopped by the gate (it sees the paused campaign) instead.
    held = s.execute(update(Delivery)
                     .where(Delivery.campaign_id == campaign_id, Delivery.status.in_(_HOLDABLE))
                     .values(status=DeliveryStatus.held, reason="campaign paused" + (f" by the {brake} brake"
                                                                                     if brake else ""),
                             updated_at=now)
                     .execution_options(synchronize_session=False)).rowcount
    s.add(CampaignAction(campaign_id=campaign_id, action="paused", actor=actor,
                         detail={**(detail or {}), "held": held}, occurred_at=now))
    s.flush()
    c = s.get(Campaign, campaign_id)
    if c is not None:
        s.refresh(c)
    return held


def record_resume(s: Session, campaign: Campaign, *, actor: str, now: datetime | None = None) -> None:
    """Record an explicit resume (the caller changed the status) and clear the brake."""
    detail = {"brake": campaign.brake, "brake_detail": campaign.brake_detail} if campaign.brake else None
    campaign.brake = None
    campaign.brake_detail = None
    s.add(CampaignAction(campaign_id=campaign.id, action="resumed", actor=actor, detail=detail,
                         occurred_at=now or utcnow()))


def actions(s: Session, campaign_id: int) -> list[CampaignAction]:
    """The campaign's pauses and resumes, oldest first (ix_campaign_actions_campaign)."""
    return list(s.execute(select(CampaignAction).where(CampaignAction.campaign_id == campaign_id)
                          .order_by(CampaignAction.occurred_at, CampaignAction.id)).scalars())


# -- the brakes ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Health:
    """What the brakes look at for one campaign."""

    sent: int          # mails out: accepted by the relay (sent) or bounced since
    complaints: int    # deliveries with a complaint
    hard_bounces: int  # deliveries with a hard bounce

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.sent if self.sent else 0.0

    @property
    def hard_bounce_rate(self) -> float:
        return self.hard_bounces / self.sent if self.sent else 0.0


def health(s: Session, campaign_id: int) -> Health:
    """The campaign's sent, complaint and hard-bounce counts."""
    # Sent (or bounced after) over ix_deliveries_campaign_status.
    sent = s.execute(select(func.count()).select_from(Delivery)
                     .where(Delivery.campaign_id == campaign_id,
                            Delivery.status.in_([DeliveryStatus.sent, DeliveryStatus.bounced]))).scalar_one()

    def bounced(kind: str) -> int:
        # Bounce rows of this kind joined to the campaign's deliveries; distinct deliveries.
        return s.execute(select(func.count(distinct(Bounce.delivery_id)))
                         .join(Delivery, Delivery.id == Bounce.delivery_id)
                         .where(Delivery.campaign_id == campaign_id, Bounce.kind == kind)).scalar_one()

    return Health(sent=sent, complaints=bounced("complaint"), hard_bounces=bounced("hard"))


def verdict(settings: Settings, h: Health) -> tuple[str, dict] | None:
    """Which brake acts on these figures (the complaint brake first), with the figures; None: none."""
    if h.sent < max(settings.brake_min_sent, 1):
        return None
    figures = {"sent": h.sent, "complaints": h.complaints, "hard_bounces": h.hard_bounces,
               "complaint_rate": round(h.complaint_rate, 6), "hard_bounce_rate": round(h.hard_bounce_rate, 6),
               "max_complaint_rate": settings.max_complaint_rate,
               "max_hard_bounce_rate": settings.max_hard_bounce_rate, "min_sent": settings.brake_min_sent}
    if settings.max_complaint_rate > 0 and h.complaint_rate >= settings.max_complaint_rate:
        return COMPLAINT_BRAKE, figures
    if settings.max_hard_bounce_rate > 0 and h.hard_bounce_rate > settings.max_hard_bounce_rate:
        return HARD_BOUNCE_BRAKE, figures
    return None


def check(s: Session, settings: Settings, campaign_id: int | None, *, now: datetime | None = None) -> str | None:
    """After a complaint or hard bounce of a campaign's mail: pause it if a brake acts; the brake's name."""
    if campaign_id is None:
        return None
    # Primary-key read: only a running (or scheduled) campaign can be braked.
    status = s.execute(select(Campaign.status).where(Campaign.id == campaign_id)).scalar_one_or_none()
    if status not in (CampaignStatus.running, CampaignStatus.scheduled):
        return None
    s.flush()  # the report just recorded counts
    found = verdict(settings, health(s, campaign_id))
    if found is None:
        return None
    brake, figures = found
    held = pause_campaign(s, campaign_id, actor=f"brake:{brake}", brake=brake, detail=figures, now=now)
    if held is None:
        return None
    log.error("ALERT: campaign %s paused by the %s brake: %s complaints, %s hard bounces in %s sent "
              "(complaint rate %.4f%%, hard-bounce rate %.2f%%); %s deliveries held; resume explicitly",
              campaign_id, brake, figures["complaints"], figures["hard_bounces"], figures["sent"],
              figures["complaint_rate"] * 100, figures["hard_bounce_rate"] * 100, held,
              extra={"campaign_id": campaign_id})
    return brake


# -- sender health --------------------------------------------------------------------------------
@dataclass(frozen=True)
class DomainRate:
    """The rolling complaint rate of one sending domain (the domain of the From address)."""

    domain: str
    sent: int
    complaints: int
    rate: float
    #: ``ok`` (below 0.1%), ``warning`` (0.1% and up), ``critical`` (0.3% and up: providers block).
    level: str

    def as_dict(self) -> dict:
        return asdict(self)


def level_of(rate: float) -> str:
    return "critical" if rate >= COMPLAINT_LIMIT_RATE else "warning" if rate >= COMPLAINT_WARN_RATE else "ok"


def domain_complaint_rates(s: Session, settings: Settings, *, now: datetime | None = None,
                           window_s: int = DOMAIN_WINDOW_S) -> list[DomainRate]:
    """Complaints / mails sent in the last ``window_s`` seconds, per sending domain, worst first.

    A mail's sending domain is the domain of the From it went out with: marketing mail
    uses ``MAILER_MARKETING_FROM``, transactional ``MAILER_TRANSACTIONAL_FROM`` (either
    falling back to ``MAILER_FROM_ADDRESS``), so the two streams are measured apart when
    they use separate subdomains.  Complaints count by when they arrived, against the
    mails sent in the same window (as Gmail's Postmaster Tools does).
    """
    now = now or utcnow()
    since = now - timedelta(seconds=window_s)
    marketing = Delivery.purpose != "transactional"
    # Mails sent in the window, split marketing / transactional (ix_deliveries_customer_sent
    # cannot help a scan by time; sent_at bounds it and the campaign index is not needed).
    sent = dict(s.execute(select(marketing.label("marketing"), func.count())
                          .where(Delivery.sent_at >= since, Delivery.sent_at <= now)
                          .group_by(marketing)).all())
    # Complaints recorded in the window, joined to their delivery for the stream.
    complaints = dict(s.execute(select(marketing.label("marketing"), func.count(distinct(Bounce.delivery_id)))
                                .join(Delivery, Delivery.id == Bounce.delivery_id)
                                .where(Bounce.kind == "complaint", Bounce.occurred_at >= since,
                                       Bounce.occurred_at <= now)
                                .group_by(marketing)).all())
    by_domain: dict[str, list[int]] = {}
    for is_marketing in (True, False):
        domain = sending_domain(settings, marketing=is_marketing)
        pair = by_domain.setdefault(domain, [0, 0])
        pair[0] += sent.get(is_marketing, 0) or 0
        pair[1] += complaints.get(is_marketing, 0) or 0
    out = []
    for domain, (n, c) in by_domain.items():
        rate = round(c / n, 6) if n else 0.0
        out.append(DomainRate(domain, n, c, rate, level_of(rate)))
    return sorted(out, key=lambda d: (-d.rate, d.domain))


def sending_domain(settings: Settings, *, marketing: bool) -> str:
    """The domain of the From address a stream uses."""
    address = (settings.marketing_from if marketing else settings.transactional_from) or settings.from_address
    return address.rpartition("@")[2].rstrip(">").strip().lower() or "localhost"


@dataclass(frozen=True)
class Latency:
    """Unsubscribes in a period and how long until mail stopped (the last marketing mail after the click)."""

    unsubscribes: int
    #: Unsubscribes after which some marketing mail still went out, and the worst delay, seconds.
    mailed_after: int
    max_s: float
    over_limit: int
    limit_s: int = UNSUBSCRIBE_LIMIT_S

    @property
    def within_limit(self) -> bool:
        return self.over_limit == 0

    def as_dict(self) -> dict:
        return {**asdict(self), "within_limit": self.within_limit}


def unsubscribe_latency(s: Session, *, campaign_id: int | None = None, since: datetime | None = None,
                        now: datetime | None = None) -> Latency:
    """Link clicked → no further mail: for each unsubscribe, the last marketing mail sent to
    that customer after it (a mail already in a worker's hands, at most one per thread).

    Measured over the unsubscribes of one campaign's links, or of every mail since ``since``
    (default: the last 30 days).
    """
    now = now or utcnow()
    t = TrackingEvent
    scope = [t.kind == TrackingKind.unsubscribe, t.customer_id.is_not(None)]
    if campaign_id is not None:
        scope.append(t.campaign_id == campaign_id)
    else:
        scope.append(t.occurred_at >= (since or now - timedelta(days=30)))
    # Per unsubscribe event, the latest marketing mail to the same customer sent after it:
    # ix_deliveries_customer_sent (customer_id, sent_at) answers each lookup.
    last_after = (select(func.max(Delivery.sent_at))
                  .where(Delivery.customer_id == t.customer_id, Delivery.sent_at > t.occurred_at,
                         Delivery.purpose != "transactional")
                  .correlate(t).scalar_subquery())
    rows = s.execute(select(t.occurred_at, last_after.label("last")).where(and_(*scope))).all()
    delays = [(last - clicked).total_seconds() for clicked, last in rows if last is not None]
    return Latency(unsubscribes=len(rows), mailed_after=len(delays), max_s=max(delays, default=0.0),
                   over_limit=sum(1 for d in delays if d > UNSUBSCRIBE_LIMIT_S))
