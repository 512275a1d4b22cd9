"""What the console shows of campaigns: the list with progress, live progress, report series.

The figures themselves are :func:`mailer.campaigns.reports.figures` (the same numbers as
``mailer campaign status``); this module adds what a page needs around them:

* :func:`overview`: every campaign of a page of the list with its delivery counts, from
  one grouped query over the listed ids (not one query per campaign);
* :func:`progress`: live progress while a campaign sends: the figures, the expected total
  (the segment's live count until the fan-out is done), skipped and not-sent deliveries
  grouped by their reason, and the send rate over the last minutes;
* :func:`by_locale`, :func:`unsubscribes`, :func:`complaints`: the report's tables.

Test sends (``service.test_send``, purpose ``transactional``) are never counted: every
query keeps the campaign's own purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from mailer import segments
from mailer.campaigns import reports
from mailer.campaigns import service as campaigns
from mailer.clock import utcnow
from mailer.errors import SegmentError
from mailer.models import (
    Bounce,
    Campaign,
    CampaignStatus,
    Customer,
    Delivery,
    DeliveryStatus,
    TrackingEvent,
    TrackingKind,
)
from mailer.settings import Settings

#: Campaigns per page of the console's list.
PAGE_SIZE = 50
#: The window the send rate is measured over, seconds.
RATE_WINDOW_S = 300
#: Rows in the report's unsubscribe and complaint tables.
EVENTS_SHOWN = 50
#: Statuses that ended without a mail (the "not sent, and why" table).
NOT_SENT = (DeliveryStatus.skipped, DeliveryStatus.suppressed, DeliveryStatus.failed, DeliveryStatus.cancelled)


@dataclass(frozen=True)
class Row:
    """One campaign in the list."""

    campaign: Campaign
    total: int
    done: int
    sent: int

    @property
    def finished(self) -> bool:
        return self.campaign.status in (CampaignStatus.completed, CampaignStatus.cancelled)


def overview(session: Session, *, page: int = 1) -> list[Row]:
    """A page of campaigns, newest first, each with its delivery counts."""
    campaigns.finish_completed(session)
    page = max(1, page)
    listed = list(session.execute(select(Campaign).order_by(Campaign.id.desc())
                                  .offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE)).scalars())
    if not listed:
        return []
    # One grouped query over ix_deliveries_campaign_status for the listed ids only; the
    # join keeps each campaign's own purpose (test sends are transactional).
    rows = session.execute(
        select(Delivery.campaign_id, Delivery.status, func.count())
        .join(Campaign, Campaign.id == Delivery.campaign_id)
        .where(Delivery.campaign_id.in_([c.id for c in listed]), Delivery.purpose == Campaign.purpose)
        .group_by(Delivery.campaign_id, Delivery.status)).all()
    counts: dict[int, dict[DeliveryStatus, int]] = {}
    for cid, status, n in rows:
        counts.setdefault(cid, {})[status] = n
    out = []
    for c in listed:
        by = counts.get(c.id, {})
        total = sum(by.values())
        pending = sum(by.get(s, 0) for s in reports.PENDING)
        out.append(Row(campaign=c, total=total, done=total - pending, sent=by.get(DeliveryStatus.sent, 0)))
    return out


@dataclass(frozen=True)
class Progress:
    figures: reports.Figures
    #: Deliveries expected in all: the deliveries so far, or the segment's live count while
    #: the fan-out is still creating them (whichever is larger).
    expected: int
    #: (status, reason, count) of deliveries that ended without a mail, most frequent first.
    not_sent: list[tuple[str, str, int]]
    #: Mails sent per minute over the last RATE_WINDOW_S seconds.
    rate_per_minute: float
    fanout_done: bool

    @property
    def finished(self) -> bool:
        return self.figures.status in ("completed", "cancelled")

    @property
    def percent(self) -> int:
        return int(100 * self.figures.done / self.expected) if self.expected else (100 if self.finished else 0)


def progress(session: Session, settings: Settings, campaign_id: int, *, now: datetime | None = None) -> Progress:
    """The live figures of one campaign (the completion rule applied on read, as the CLI does)."""
    now = now or utcnow()
    campaigns.finish_completed(session)
    c = campaigns.get(session, campaign_id)
    f = reports.figures(session, campaign_id)
    expected = f.total
    if not c.fanout_done and c.status not in (CampaignStatus.completed, CampaignStatus.cancelled):
        try:
            expected = max(f.total, segments.count(session, settings, segments.load(settings, c.segment)))
        except SegmentError:
            expected = f.total
    mine = (Delivery.campaign_id == c.id, Delivery.purpose == c.purpose)
    # Grouped over ix_deliveries_campaign_status; reasons are few distinct texts.
    reasons = session.execute(select(Delivery.status, Delivery.reason, func.count())
                              .where(*mine, Delivery.status.in_(NOT_SENT))
                              .group_by(Delivery.status, Delivery.reason)
                              .order_by(func.count().desc())).all()
    not_sent = [(s.value, r or "", n) for s, r, n in reasons]
    since = now - timedelta(seconds=RATE_WINDOW_S)
    # Sent in the window: the campaign's rows by status, then the sent_at bound.
    recent = session.execute(select(func.count()).select_from(Delivery)
                             .where(*mine, Delivery.status == DeliveryStatus.sent, Delivery.sent_at >= since)
                             ).scalar_one()
    started = c.started_at
    window_s = RATE_WINDOW_S if started is None or started <= since else max((now - started).total_seconds(), 1.0)
    return Progress(figures=f, expected=expected, not_sent=not_sent,
                    rate_per_minute=round(recent * 60 / window_s, 1), fanout_done=bool(c.fanout_done))


@dataclass(frozen=True)
class LocaleRow:
    locale: str
    sent: int
    opened: int
    clicked: int

    @property
    def open_rate(self) -> float:
        return self.opened / self.sent if self.sent else 0.0

    @property
    def click_rate(self) -> float:
        return self.clicked / self.sent if self.sent else 0.0


def by_locale(session: Session, campaign_id: int) -> list[LocaleRow]:
    """Sent mails, unique human openers and unique clickers per delivery locale."""
    c = campaigns.get(session, campaign_id)
    mine = (Delivery.campaign_id == c.id, Delivery.purpose == c.purpose)
    # Sent per locale over ix_deliveries_campaign_status.
    sent = dict(session.execute(select(Delivery.locale, func.count())
                                .where(*mine, Delivery.status == DeliveryStatus.sent)
                                .group_by(Delivery.locale)).all())

    def engaged(kind: TrackingKind) -> dict[str, int]:
        # ix_tracking_campaign_kind, each event's delivery joined by primary key for its locale.
        return dict(session.execute(
            select(Delivery.locale, func.count(distinct(TrackingEvent.delivery_id)))
            .join(Delivery, Delivery.id == TrackingEvent.delivery_id)
            .where(TrackingEvent.campaign_id == c.id, TrackingEvent.kind == kind)
            .group_by(Delivery.locale)).all())

    opened, clicked = engaged(TrackingKind.open), engaged(TrackingKind.click)
    locales = sorted(set(sent) | set(opened) | set(clicked))
    return [LocaleRow(loc, sent.get(loc, 0), opened.get(loc, 0), clicked.get(loc, 0)) for loc in locales]


@dataclass(frozen=True)
class Event:
    occurred_at: datetime
    email: str | None
    detail: str


def unsubscribes(session: Session, campaign_id: int, *, limit: int = EVENTS_SHOWN) -> list[Event]:
    """The latest unsubscribes through this campaign's links (an erased customer shows no address)."""
    # ix_tracking_campaign_kind in time order; the customer by primary key.
    rows = session.execute(select(TrackingEvent.occurred_at, Customer.email)
                           .outerjoin(Customer, Customer.id == TrackingEvent.customer_id)
                           .where(TrackingEvent.campaign_id == campaign_id,
                                  TrackingEvent.kind == TrackingKind.unsubscribe)
                           .order_by(TrackingEvent.occurred_at.desc()).limit(limit)).all()
    return [Event(at, email, "") for at, email in rows]


def complaints(session: Session, campaign_id: int, *, limit: int = EVENTS_SHOWN) -> list[Event]:
    """The latest spam complaints about this campaign's mails (feedback-loop reports)."""
    # Complaint bounces joined to the campaign's deliveries (by delivery id), newest first.
    rows = session.execute(select(Bounce.occurred_at, Delivery.to_address, Bounce.reason)
                           .join(Delivery, Delivery.id == Bounce.delivery_id)
                           .where(Delivery.campaign_id == campaign_id, Bounce.kind == "complaint")
                           .order_by(Bounce.occurred_at.desc()).limit(limit)).all()
    return [Event(at, email, reason or "") for at, email, reason in rows]
