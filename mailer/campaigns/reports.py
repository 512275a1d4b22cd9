"""Figures: campaign status and rates, the self-contained HTML report, the CSAT score.

Definitions (the same in ``mailer campaign status``, the HTML report and the docs):

* **pending**: deliveries queued, scheduled, being sent or held (paused campaign).
* **sent**: accepted by the relay and not bounced since.
* **bounced**: a hard or soft bounce was recorded (synchronously or by a DSN later).
* **failed**: given up without a bounce (e.g. retries exhausted, template error).
* **suppressed** / **skipped**: not sent at send time (suppression list; no consent or
  the frequency cap; ``frequency_capped`` counts the latter).
* **unique human opens**: deliveries with at least one open not classified as a
  machine open; **machine opens** counts the machine-open events.
* **unique clicks**: deliveries with at least one click.
* **unsubscribes**: customers who withdrew through this campaign's unsubscribe link.
* **complaints**: deliveries with a spam complaint (feedback loop report).
* Rates use *sent + bounced* (attempted deliveries that reached a mailbox provider) for
  the bounce rate and *sent* for the others; click-to-open is clicks / human opens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from html import escape

from sqlalchemy import distinct, func, literal_column, or_, select, union
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.errors import NotFound
from mailer.models import Bounce, Campaign, CsatRating, Delivery, DeliveryStatus, TrackingEvent, TrackingKind

PENDING = (DeliveryStatus.queued, DeliveryStatus.scheduled, DeliveryStatus.sending, DeliveryStatus.held)
#: Links shown in the report's "most clicked" table.
TOP_LINKS = 10


@dataclass
class Figures:
    campaign_id: int
    name: str
    status: str
    total: int = 0
    pending: int = 0
    held: int = 0
    sent: int = 0
    failed: int = 0
    bounced: int = 0
    suppressed: int = 0
    skipped: int = 0
    frequency_capped: int = 0
    cancelled: int = 0
    unique_opens: int = 0
    machine_opens: int = 0
    unique_clicks: int = 0
    unsubscribes: int = 0
    complaints: int = 0
    rates: dict = field(default_factory=dict)

    @property
    def done(self) -> int:
        """Deliveries that reached a final outcome."""
        return self.total - self.pending

    def as_dict(self) -> dict:
        return asdict(self)


def _rate(n: int, d: int) -> float:
    return round(n / d, 4) if d else 0.0


def figures(session: Session, campaign_id: int) -> Figures:
    """Every figure of one campaign, from deliveries, bounces and tracking events."""
    c = session.get(Campaign, campaign_id)
    if c is None:
        raise NotFound(f"no campaign with id {campaign_id}")
    f = Figures(campaign_id=c.id, name=c.name, status=c.status.value)
    # Counts per status over ix_deliveries_campaign_status.
    by_status = dict(session.execute(select(Delivery.status, func.count()).where(Delivery.campaign_id == c.id)
                                     .group_by(Delivery.status)).all())
    f.total = sum(by_status.values())
    f.pending = sum(by_status.get(s, 0) for s in PENDING)
    f.held = by_status.get(DeliveryStatus.held, 0)
    f.suppressed = by_status.get(DeliveryStatus.suppressed, 0)
    f.skipped = by_status.get(DeliveryStatus.skipped, 0)
    f.cancelled = by_status.get(DeliveryStatus.cancelled, 0)
    f.frequency_capped = session.execute(
        select(func.count()).select_from(Delivery)
        .where(Delivery.campaign_id == c.id, Delivery.status == DeliveryStatus.skipped,
               Delivery.reason.like("frequency cap%"))).scalar_one()
    # Deliveries with a hard/soft bounce record (bounces joined by delivery id), or marked bounced.
    bounced_ids = (select(Delivery.id).select_from(Delivery)
                   .outerjoin(Bounce, (Bounce.delivery_id == Delivery.id) & Bounce.kind.in_(("hard", "soft")))
                   .where(Delivery.campaign_id == c.id,
                          or_(Delivery.status == DeliveryStatus.bounced, Bounce.id.is_not(None)))
                   .distinct().subquery())
    bounced_rows = session.execute(select(Delivery.status, func.count()).select_from(bounced_ids)
                                   .join(Delivery, Delivery.id == bounced_ids.c.id)
                                   .group_by(Delivery.status)).all()
    bounced_by_status = dict(bounced_rows)
    f.bounced = sum(bounced_by_status.values())
    f.sent = by_status.get(DeliveryStatus.sent, 0) - bounced_by_status.get(DeliveryStatus.sent, 0)
    f.failed = by_status.get(DeliveryStatus.failed, 0) - bounced_by_status.get(DeliveryStatus.failed, 0)

    def tracked(kind: TrackingKind, what) -> int:
        # ix_tracking_campaign_kind (campaign_id, kind, occurred_at).
        return session.execute(select(what).where(TrackingEvent.campaign_id == c.id, TrackingEvent.kind == kind)
                               ).scalar_one()

    f.unique_opens = tracked(TrackingKind.open, func.count(distinct(TrackingEvent.delivery_id)))
    f.machine_opens = tracked(TrackingKind.machine_open, func.count())
    f.unique_clicks = tracked(TrackingKind.click, func.count(distinct(TrackingEvent.delivery_id)))
    f.unsubscribes = tracked(TrackingKind.unsubscribe, func.count(distinct(TrackingEvent.customer_id)))
    complaint_ids = union(
        select(Bounce.delivery_id).join(Delivery, Delivery.id == Bounce.delivery_id)
        .where(Delivery.campaign_id == c.id, Bounce.kind == "complaint"),
        select(TrackingEvent.delivery_id).where(TrackingEvent.campaign_id == c.id,
                                                TrackingEvent.kind == TrackingKind.complaint)).subquery()
    f.complaints = session.execute(select(func.count()).select_from(complaint_ids)).scalar_one()
    f.rates = {
        "open_rate": _rate(f.unique_opens, f.sent),
        "click_rate": _rate(f.unique_clicks, f.sent),
        "click_to_open": _rate(f.unique_clicks, f.unique_opens),
        "unsubscribe_rate": _rate(f.unsubscribes, f.sent),
        "bounce_rate": _rate(f.bounced, f.sent + f.bounced),
        "complaint_rate": _rate(f.complaints, f.sent),
    }
    return f


# -- over time --------------------------------------------------------------------------------
def _hour_bucket(session: Session):
    if session.get_bind().dialect.name == "postgresql":
        return func.date_trunc("hour", func.timezone("UTC", TrackingEvent.occurred_at))
    return func.strftime("%Y-%m-%d %H:00:00", TrackingEvent.occurred_at)


def _as_utc(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def timeline(session: Session, campaign_id: int) -> list[tuple[datetime, int, int]]:
    """(hour, human opens, clicks) per hour with any activity, in time order; gaps filled with zeros."""
    bucket = _hour_bucket(session).label("bucket")
    # Grouped in the database over ix_tracking_campaign_kind; one row per (hour, kind).
    rows = session.execute(select(bucket, TrackingEvent.kind, func.count())
                           .where(TrackingEvent.campaign_id == campaign_id,
                                  TrackingEvent.kind.in_((TrackingKind.open, TrackingKind.click)))
                           .group_by(literal_column("bucket"), TrackingEvent.kind)).all()
    counts: dict[datetime, list[int]] = {}
    for when, kind, n in rows:
        slot = counts.setdefault(_as_utc(when), [0, 0])
        slot[0 if kind is TrackingKind.open else 1] += n
    if not counts:
        return []
    start, end = min(counts), max(counts)
    out, t = [], start
    while t <= end:
        opens, clicks = counts.get(t, (0, 0))
        out.append((t, opens, clicks))
        t += timedelta(hours=1)
    return out


def top_links(session: Session, campaign_id: int, n: int = TOP_LINKS) -> list[tuple[str, int, int]]:
    """(url, clicks, unique clickers) for the most clicked links."""
    rows = session.execute(select(TrackingEvent.url, func.count(), func.count(distinct(TrackingEvent.delivery_id)))
                           .where(TrackingEvent.campaign_id == campaign_id, TrackingEvent.kind == TrackingKind.click)
                           .group_by(TrackingEvent.url).order_by(func.count().desc(), TrackingEvent.url).limit(n)
                           ).all()
    return [(url or "", clicks, unique) for url, clicks, unique in rows]


# -- HTML report ------------------------------------------------------------------------------
def _daily(points: list[tuple[datetime, int, int]]) -> list[tuple[datetime, int, int]]:
    days: dict[datetime, list[int]] = {}
    for when, o, c in points:
        d = when.replace(hour=0)
        slot = days.setdefault(d, [0, 0])
        slot[0] += o
        slot[1] += c
    return [(d, v[0], v[1]) for d, v in sorted(days.items())]


def svg_chart(points: list[tuple[datetime, int, int]], *, width: int = 720, height: int = 260) -> str:
    """An inline SVG line chart of opens and clicks over time."""
    if not points:
        return '<p class="muted">No opens or clicks recorded yet.</p>'
    daily = len(points) > 72
    if daily:
        points = _daily(points)
    left, right, top, bottom = 48, 16, 16, 40
    w, h = width - left - right, height - top - bottom
    peak = max(max(o, c) for _, o, c in points) or 1
    n = len(points)

    def x(i: int) -> float:
        return left + (w * i / (n - 1) if n > 1 else w / 2)

    def y(v: int) -> float:
        return top + h - h * v / peak

    def line(idx: int) -> str:
        return " ".join(f"{x(i):.1f},{y(p[idx]):.1f}" for i, p in enumerate(points))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
             f'role="img" aria-label="Opens and clicks per {"day" if daily else "hour"}">',
             f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="#fafafa" stroke="#ddd"/>']
    for frac in (0, 0.5, 1):
        v = round(peak * frac)
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end" '
                     f'fill="#555">{v}</text>')
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
    ticks = sorted({0, n - 1, *(round(i * (n - 1) / 4) for i in range(1, 4))}) if n > 1 else [0]
    for i in ticks:
        label = points[i][0].strftime("%m-%d" if daily else "%m-%d %H:00")
        parts.append(f'<text x="{x(i):.1f}" y="{top + h + 16}" font-size="11" text-anchor="middle" '
                     f'fill="#555">{escape(label)}</text>')
    parts.append(f'<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{line(1)}"/>')
    parts.append(f'<polyline fill="none" stroke="#d62728" stroke-width="2" points="{line(2)}"/>')
    if n == 1:
        parts.append(f'<circle cx="{x(0)}" cy="{y(points[0][1]):.1f}" r="3" fill="#1f77b4"/>')
        parts.append(f'<circle cx="{x(0)}" cy="{y(points[0][2]):.1f}" r="3" fill="#d62728"/>')
    parts.append(f'<text x="{left + 8}" y="{top + h + 34}" font-size="12" fill="#1f77b4">&#9632; opens (human)</text>')
    parts.append(f'<text x="{left + 140}" y="{top + h + 34}" font-size="12" fill="#d62728">&#9632; clicks</text>')
    parts.append("</svg>")
    return "".join(parts)


def _pct(v: float) -> str:
    return f"{v * 100:.1f} %"


def html_report(session: Session, campaign_id: int, *, generated_at: datetime | None = None) -> str:
    """A self-contained HTML page: figures, rates, a chart of opens and clicks, top links."""
    f = figures(session, campaign_id)
    c = session.get(Campaign, campaign_id)
    points = timeline(session, campaign_id)
    links = top_links(session, campaign_id)
    rows = [("Recipients (deliveries)", f.total), ("Pending", f.pending), ("Sent", f.sent), ("Failed", f.failed),
            ("Bounced", f.bounced), ("Suppressed", f.suppressed), ("Skipped", f.skipped),
            ("&nbsp;&nbsp;of which frequency cap", f.frequency_capped), ("Cancelled", f.cancelled),
            ("Unique human opens", f.unique_opens), ("Machine opens", f.machine_opens),
            ("Unique clicks", f.unique_clicks), ("Unsubscribes", f.unsubscribes), ("Complaints", f.complaints)]
    rates = [("Open rate", f.rates["open_rate"]), ("Click rate", f.rates["click_rate"]),
             ("Click-to-open", f.rates["click_to_open"]), ("Unsubscribe rate", f.rates["unsubscribe_rate"]),
             ("Bounce rate", f.rates["bounce_rate"]), ("Complaint rate", f.rates["complaint_rate"])]
    fig_html = "".join(f"<tr><th>{k}</th><td>{v:,}</td></tr>" for k, v in rows)
    rate_html = "".join(f"<tr><th>{escape(k)}</th><td>{_pct(v)}</td></tr>" for k, v in rates)
    link_html = "".join(f'<tr><td class="url">{escape(u)}</td><td>{n:,}</td><td>{uq:,}</td></tr>'
                        for u, n, uq in links) or '<tr><td colspan="3" class="muted">No clicks yet.</td></tr>'
    when = (generated_at or utcnow()).strftime("%Y-%m-%d %H:%M UTC")
    meta = (f"Template {escape(c.template)} · segment {escape(c.segment)} · status {escape(f.status)}"
            f"{' · started ' + c.started_at.strftime('%Y-%m-%d %H:%M UTC') if c.started_at else ''}")
    css = ("body{font-family:-apple-system,'Segoe UI',Roboto,Arial,sans-serif;margin:24px;color:#222;"
           "max-width:900px}h1{margin-bottom:4px}.muted{color:#777}table{border-collapse:collapse;margin:12px 0}"
           "th,td{padding:4px 12px;border-bottom:1px solid #eee;text-align:left}td{text-align:right}"
           "td.url{text-align:left;word-break:break-all}.grid{display:flex;gap:32px;flex-wrap:wrap}")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>Campaign {f.campaign_id}: {escape(f.name)}</title>'
            f"<style>{css}</style></head><body><h1>Campaign {f.campaign_id}: {escape(f.name)}</h1>"
            f'<p class="muted">{meta}</p><div class="grid"><table><caption>Figures</caption>{fig_html}</table>'
            f"<table><caption>Rates</caption>{rate_html}</table></div>"
            f"<h2>Opens and clicks over time</h2>{svg_chart(points)}"
            f"<h2>Most clicked links</h2><table><tr><th>Link</th><th>Clicks</th><th>Unique</th></tr>{link_html}"
            f'</table><p class="muted">Generated {when} by mailer. Machine opens (privacy proxies, scanners) '
            f"are left out of unique opens.</p></body></html>")


# -- CSAT -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Csat:
    count: int
    average: float
    #: Share of ratings of 4 or 5 (the usual CSAT score).
    score: float
    distribution: dict[int, int]


def csat(session: Session, *, since: datetime | None = None) -> Csat:
    """CSAT over ratings last changed at or after ``since`` (one rating per order)."""
    q = select(CsatRating.rating, func.count()).group_by(CsatRating.rating)
    if since is not None:
        q = q.where(CsatRating.updated_at >= since)
    dist = {r: 0 for r in range(1, 6)}
    for rating, n in session.execute(q).all():
        dist[int(rating)] = n
    count = sum(dist.values())
    average = round(sum(r * n for r, n in dist.items()) / count, 2) if count else 0.0
    return Csat(count=count, average=average, score=_rate(dist[4] + dist[5], count), distribution=dist)
