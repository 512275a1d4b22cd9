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
* **attributed orders** / **attributed revenue** (per currency): orders attributed to the
  campaign (last click, else last human open; reversed ones left out);
  **conversion rate** is converted customers / recipients (sent + bounced), **revenue per
  recipient** is revenue / recipients, per currency.

An A/B-tested campaign also has :func:`ab_summary`: each variant's figures (sent, unique
human opens, unique clicks, attributed revenue, and their rates per sent mail), the test's
state and, once decided, the decision (winner or "no winner", the p-value and the interval
of the difference between the best variant and the runner-up); :func:`ab_line` says it in
one line.

The report's chart counts events per minute, 5 minutes, hour or day, chosen from the
span of the data (see :func:`timeline`), with human opens, machine opens and clicks as
separate series and whole-number y ticks.

Tracking figures (unique opens and clicks, machine opens, unsubscribes), the chart's
buckets and the most-clicked links are read from rollups that triggers on
``tracking_events`` keep as events arrive (migration 0021: ``campaign_tracking_totals``,
``campaign_tracking_buckets`` per UTC minute and hour, ``campaign_link_counts``), so a
report reads O(kinds + buckets + links) rows whatever the number of events; only the
chart's span (six index probes) and complaints (few) read events.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import escape

from sqlalchemy import func, select, union
from sqlalchemy.orm import Session

from mailer.campaigns import abtest
from mailer.clock import utcnow
from mailer.customers import attribution
from mailer.delivery import brakes
from mailer.errors import NotFound
from mailer.models import (
    AbTest,
    Attribution,
    Bounce,
    Campaign,
    CampaignLinkCount,
    CampaignTrackingBucket,
    CampaignTrackingTotal,
    CsatRating,
    Delivery,
    DeliveryStatus,
    TrackingEvent,
    TrackingKind,
)

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
    #: Revenue attribution (mailer/customers/attribution.py): orders not reversed, revenue per
    #: currency (decimal strings), converted customers / sent, revenue per currency / sent.
    attributed_orders: int = 0
    attributed_revenue: dict = field(default_factory=dict)
    conversion_rate: float = 0.0
    revenue_per_recipient: dict = field(default_factory=dict)
    #: The brake that paused the campaign and its figures (mailer/delivery/brakes.py), if one did.
    brake: str | None = None
    brake_detail: dict | None = None

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
    # Test sends (purpose transactional, see service.test_send) are left out: ``mine`` keeps the
    # campaign's own deliveries, all of which carry its consent purpose.
    mine = (Delivery.campaign_id == c.id, Delivery.purpose == c.purpose)
    by_status = dict(session.execute(select(Delivery.status, func.count()).where(*mine)
                                     .group_by(Delivery.status)).all())
    f.total = sum(by_status.values())
    f.pending = sum(by_status.get(s, 0) for s in PENDING)
    f.held = by_status.get(DeliveryStatus.held, 0)
    f.suppressed = by_status.get(DeliveryStatus.suppressed, 0)
    f.skipped = by_status.get(DeliveryStatus.skipped, 0)
    f.cancelled = by_status.get(DeliveryStatus.cancelled, 0)
    f.frequency_capped = session.execute(
        select(func.count()).select_from(Delivery)
        .where(*mine, Delivery.status == DeliveryStatus.skipped,
               Delivery.reason.like("frequency cap%"))).scalar_one()
    # Deliveries with a hard/soft bounce record (bounces joined by delivery id), or marked bounced.
    # A UNION of the two small sets (deliveries marked bounced, over the (campaign_id, status)
    # index; bounce rows joined to the campaign's deliveries) rather than an outer join of
    # every delivery of the campaign with its bounces: a 200,000-recipient report stays fast.
    # Test sends (another purpose than the campaign's) are left out, as everywhere here.
    bounced_ids = union(
        select(Delivery.id.label("id")).where(*mine, Delivery.status == DeliveryStatus.bounced),
        select(Bounce.delivery_id.label("id")).join(Delivery, Delivery.id == Bounce.delivery_id)
        .where(*mine, Bounce.kind.in_(("hard", "soft")))).subquery()
    bounced_rows = session.execute(select(Delivery.status, func.count()).select_from(bounced_ids)
                                   .join(Delivery, Delivery.id == bounced_ids.c.id)
                                   .group_by(Delivery.status)).all()
    bounced_by_status = dict(bounced_rows)
    f.bounced = sum(bounced_by_status.values())
    f.sent = by_status.get(DeliveryStatus.sent, 0) - bounced_by_status.get(DeliveryStatus.sent, 0)
    f.failed = by_status.get(DeliveryStatus.failed, 0) - bounced_by_status.get(DeliveryStatus.failed, 0)

    # Unique opens and clicks, machine opens, unsubscribes: the campaign's rows of the
    # campaign_tracking_totals rollup (at most one per kind, primary-key range), kept by
    # triggers as events arrive (migration 0021), instead of count(DISTINCT delivery_id)
    # over every event of the campaign.
    totals = {kind: (events, uniques) for kind, events, uniques in session.execute(
        select(CampaignTrackingTotal.kind, CampaignTrackingTotal.events, CampaignTrackingTotal.uniques)
        .where(CampaignTrackingTotal.campaign_id == c.id)).all()}
    f.unique_opens = totals.get(TrackingKind.open, (0, 0))[1]
    f.machine_opens = totals.get(TrackingKind.machine_open, (0, 0))[0]
    f.unique_clicks = totals.get(TrackingKind.click, (0, 0))[1]
    f.unsubscribes = totals.get(TrackingKind.unsubscribe, (0, 0))[1]
    # Complaints stay counted at read time: a UNION of two tables (bounce records and tracking
    # events) over the campaign's few complaints, both through indexes on the campaign.
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
    money = attribution.campaign_revenue(session, c.id)
    recipients = f.sent + f.bounced
    f.attributed_orders = money.orders
    f.attributed_revenue = {cur: str(v) for cur, v in sorted(money.revenue.items())}
    f.conversion_rate = money.conversion_rate(recipients)
    f.revenue_per_recipient = {cur: str(v) for cur, v in sorted(money.per_recipient(recipients).items())}
    f.brake, f.brake_detail = c.brake, c.brake_detail
    return f


# -- over time --------------------------------------------------------------------------------
#: Bucket sizes for the chart, chosen from the time between the first and the last event:
#: per minute up to this span, then per 5 minutes, per hour, per day.
MINUTE_BUCKETS_MAX_SPAN_S = 3 * 3600
FIVE_MINUTE_BUCKETS_MAX_SPAN_S = 12 * 3600
HOUR_BUCKETS_MAX_SPAN_S = 7 * 86400
BUCKETS = {"minute": timedelta(minutes=1), "5 minutes": timedelta(minutes=5), "hour": timedelta(hours=1),
           "day": timedelta(days=1)}
#: The event kinds on the chart, one series each (machine opens apart from human opens).
SERIES = (TrackingKind.open, TrackingKind.machine_open, TrackingKind.click)


@dataclass(frozen=True)
class Timeline:
    """Events per bucket: ``points`` are (bucket start, human opens, machine opens, clicks)."""

    bucket: str
    points: list[tuple[datetime, int, int, int]]

    @property
    def step(self) -> timedelta:
        return BUCKETS[self.bucket]


def bucket_for_span(span: timedelta) -> str:
    """The chart's bucket size for data spanning ``span`` (first to last event)."""
    seconds = span.total_seconds()
    if seconds <= MINUTE_BUCKETS_MAX_SPAN_S:
        return "minute"
    if seconds <= FIVE_MINUTE_BUCKETS_MAX_SPAN_S:
        return "5 minutes"
    if seconds <= HOUR_BUCKETS_MAX_SPAN_S:
        return "hour"
    return "day"


def _as_utc(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def timeline(session: Session, campaign_id: int) -> Timeline:
    """Human opens, machine opens and clicks per bucket, in time order, gaps filled with zeros.

    The bucket (minute, 5 minutes, hour, day) follows the span of the data, so a campaign an
    hour old is drawn per minute and one a month old per day.
    """
    # The span: per kind, the first and the last event by an ORDER BY ... LIMIT 1 on
    # ix_tracking_campaign_kind (campaign_id, kind, occurred_at): six index probes. A plain
    # min()/max() over the IN list lets PostgreSQL walk the occurred_at index instead, filtering
    # every other campaign's events on the way (129 s at 10,000,000 events; bench/attribution.py).
    ends = []
    for kind in SERIES:
        for order in (TrackingEvent.occurred_at.asc(), TrackingEvent.occurred_at.desc()):
            found = session.execute(select(TrackingEvent.occurred_at)
                                    .where(TrackingEvent.campaign_id == campaign_id, TrackingEvent.kind == kind)
                                    .order_by(order).limit(1)).scalar_one_or_none()
            if found is not None:
                ends.append(_as_utc(found))
    if not ends:
        return Timeline("hour", [])
    first, last = min(ends), max(ends)
    name = bucket_for_span(_as_utc(last) - _as_utc(first))
    unit = "minute" if name in ("minute", "5 minutes") else "hour"
    # The campaign_tracking_buckets rollup (kept by triggers, migration 0021): per kind, the
    # campaign's minute rows (spans up to 12 h: at most 721 per kind) or hour rows, a range of
    # its primary key (campaign_id, kind, unit, bucket_start). Buckets a purge emptied are 0.
    rows = session.execute(select(CampaignTrackingBucket.bucket_start, CampaignTrackingBucket.kind,
                                  CampaignTrackingBucket.events)
                           .where(CampaignTrackingBucket.campaign_id == campaign_id,
                                  CampaignTrackingBucket.kind.in_(SERIES), CampaignTrackingBucket.unit == unit,
                                  CampaignTrackingBucket.events > 0)).all()
    counts: dict[datetime, list[int]] = {}
    for when, kind, n in rows:
        t = _as_utc(when)
        if name == "5 minutes":
            t = t.replace(minute=t.minute - t.minute % 5)
        elif name == "day":
            t = t.replace(hour=0)
        counts.setdefault(t, [0, 0, 0])[SERIES.index(kind)] += n
    step = BUCKETS[name]
    start, end = min(counts), max(counts)
    if start == end:  # one bucket: show the empty one before and after, so it reads as a rise and fall
        start, end = start - step, end + step
    out, t = [], start
    while t <= end:
        human, machine, clicks = counts.get(t, (0, 0, 0))
        out.append((t, human, machine, clicks))
        t += step
    return Timeline(name, out)


def top_links(session: Session, campaign_id: int, n: int = TOP_LINKS) -> list[tuple[str, int, int]]:
    """(url, clicks, unique clickers) for the most clicked links."""
    # The campaign_link_counts rollup (kept by triggers, migration 0021): the campaign's links,
    # a primary-key range, sorted by clicks in the database (a campaign has tens of links).
    rows = session.execute(select(CampaignLinkCount.url, CampaignLinkCount.clicks, CampaignLinkCount.unique_clicks)
                           .where(CampaignLinkCount.campaign_id == campaign_id, CampaignLinkCount.clicks > 0)
                           .order_by(CampaignLinkCount.clicks.desc(), CampaignLinkCount.url).limit(n)).all()
    return [(url or "", clicks, unique) for url, clicks, unique in rows]


# -- HTML report ------------------------------------------------------------------------------
#: The chart's drawing size in SVG user units. The SVG scales to the page width, so it is
#: designed narrow: at a 375 px phone it is drawn at about 0.73 scale, and the CSS gives
#: its text 16 units there (about 11.7 px), 12 units on wider screens.
CHART_WIDTH_UNITS = 480
CHART_HEIGHT_UNITS = 270
#: Most y-axis intervals (ticks are whole numbers: 1, 2, 5, 10, 20, 50, ... apart).
Y_INTERVALS_MAX = 5
#: (label, colour, marker) per series, in Timeline order: human opens, machine opens, clicks.
SERIES_STYLE = (("opens (human)", "#1f77b4", "circle"), ("machine opens", "#7f7f7f", "square"),
                ("clicks", "#d62728", "triangle"))
_GLYPH = {"circle": "&#9679;", "square": "&#9632;", "triangle": "&#9650;"}
CHART_CSS = (".chart{display:block;width:100%;max-width:720px;height:auto}.chart text{font-size:12px;fill:#444}"
             ".legend{list-style:none;padding:0;margin:4px 0;display:flex;flex-wrap:wrap;gap:4px 16px}"
             "@media (max-width:520px){.chart text{font-size:16px}}")


def y_ticks(peak: int) -> list[int]:
    """Whole-number ticks from 0 to at least ``peak``: every integer when the peak is small."""
    step, k = 1, 0
    while -(-max(peak, 1) // step) > Y_INTERVALS_MAX:
        k += 1
        step = (1, 2, 5)[k % 3] * 10 ** (k // 3)
    top = -(-max(peak, 1) // step) * step
    return list(range(0, top + 1, step))


def _marker(shape: str, cx: float, cy: float, colour: str, series: str) -> str:
    common = f'class="mark" data-series="{series}" fill="{colour}"'
    if shape == "circle":
        return f'<circle {common} cx="{cx:.1f}" cy="{cy:.1f}" r="3.5"/>'
    if shape == "square":
        return f'<rect {common} x="{cx - 3:.1f}" y="{cy - 3:.1f}" width="6" height="6"/>'
    return (f'<polygon {common} points="{cx:.1f},{cy - 4.5:.1f} {cx + 4:.1f},{cy + 3:.1f} '
            f'{cx - 4:.1f},{cy + 3:.1f}"/>')


def svg_chart(tl: Timeline) -> str:
    """An inline SVG chart of human opens, machine opens (when any) and clicks per bucket, with a legend."""
    points = tl.points
    if not points:
        return '<p class="muted">No opens or clicks recorded yet.</p>'
    width, height = CHART_WIDTH_UNITS, CHART_HEIGHT_UNITS
    left, right, top, bottom = 44, 14, 12, 40
    w, h = width - left - right, height - top - bottom
    shown = [i for i in range(3) if i != 1 or any(p[2] for p in points)]
    ticks = y_ticks(max(p[i + 1] for p in points for i in shown))
    peak = ticks[-1]
    n = len(points)
    slot = w / n
    # Series side by side inside their bucket, so equal values do not hide each other.
    offset = {i: (k - (len(shown) - 1) / 2) * min(slot / (len(shown) + 1), 5) for k, i in enumerate(shown)}

    def x(i: int, series: int) -> float:
        return left + slot * (i + 0.5) + offset[series]

    def y(v: int) -> float:
        return top + h - h * v / peak

    per = tl.bucket
    label = f"Human opens{', machine opens' if 1 in shown else ''} and clicks per {per} (UTC)"
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
             f'role="img" aria-label="{escape(label)}">',
             f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="#fafafa" stroke="#ddd"/>']
    for v in ticks:
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e6e6e6"/>')
        parts.append(f'<text class="ytick" x="{left - 6}" y="{y(v):.1f}" dominant-baseline="middle" '
                     f'text-anchor="end">{v}</text>')
    fmt = {"minute": "%H:%M", "5 minutes": "%H:%M", "hour": "%d %H:00", "day": "%m-%d"}[per]
    xt = sorted({0, n - 1, *(round(i * (n - 1) / 3) for i in (1, 2))})
    for i in xt:
        anchor = "start" if i == 0 and n > 1 else "end" if i == n - 1 and n > 1 else "middle"
        tx = left if anchor == "start" else left + w if anchor == "end" else left + slot * (i + 0.5)
        parts.append(f'<line x1="{left + slot * (i + 0.5):.1f}" x2="{left + slot * (i + 0.5):.1f}" '
                     f'y1="{top + h}" y2="{top + h + 4}" stroke="#999"/>')
        parts.append(f'<text class="xtick" x="{tx:.1f}" y="{top + h + 22}" text-anchor="{anchor}">'
                     f'{escape(points[i][0].strftime(fmt))}</text>')
    for i in shown:
        _name, colour, shape = SERIES_STYLE[i]
        series = ("opens", "machine", "clicks")[i]
        line = " ".join(f"{x(k, i):.1f},{y(p[i + 1]):.1f}" for k, p in enumerate(points))
        dash = ' stroke-dasharray="5 3"' if i == 1 else ""
        parts.append(f'<polyline class="series" data-series="{series}" fill="none" stroke="{colour}" '
                     f'stroke-width="2" stroke-linejoin="round"{dash} points="{line}"/>')
        parts.extend(_marker(shape, x(k, i), y(p[i + 1]), colour, series) for k, p in enumerate(points) if p[i + 1])
    parts.append("</svg>")
    first, last = points[0][0], points[-1][0] + tl.step
    span = (f"{first:%Y-%m-%d %H:%M} to {last:%H:%M}" if first.date() == last.date()
            else f"{first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M}")
    legend = "".join(f'<li><span style="color:{SERIES_STYLE[i][1]}">{_GLYPH[SERIES_STYLE[i][2]]}</span> '
                     f"{SERIES_STYLE[i][0]}</li>" for i in shown)
    return (f'<p class="muted">Per {per}, {span} UTC.</p><ul class="legend">{legend}</ul>' + "".join(parts))


def _pct(v: float) -> str:
    return f"{v * 100:.1f} %"


def html_report(session: Session, campaign_id: int, *, generated_at: datetime | None = None) -> str:
    """A self-contained HTML page: figures, rates, the A/B test, a chart of opens and clicks, top links."""
    f = figures(session, campaign_id)
    c = session.get(Campaign, campaign_id)
    tl = timeline(session, campaign_id)
    links = top_links(session, campaign_id)
    rows = [("Recipients (deliveries)", f.total), ("Pending", f.pending), ("Sent", f.sent), ("Failed", f.failed),
            ("Bounced", f.bounced), ("Suppressed", f.suppressed), ("Skipped", f.skipped),
            ("&nbsp;&nbsp;of which frequency cap", f.frequency_capped), ("Cancelled", f.cancelled),
            ("Unique human opens", f.unique_opens), ("Machine opens", f.machine_opens),
            ("Unique clicks", f.unique_clicks), ("Unsubscribes", f.unsubscribes), ("Complaints", f.complaints)]
    rates = [("Open rate", f.rates["open_rate"]), ("Click rate", f.rates["click_rate"]),
             ("Click-to-open", f.rates["click_to_open"]), ("Unsubscribe rate", f.rates["unsubscribe_rate"]),
             ("Bounce rate", f.rates["bounce_rate"]), ("Complaint rate", f.rates["complaint_rate"])]
    money = [("Attributed orders", f"{f.attributed_orders:,}"), ("Conversion rate", _pct(f.conversion_rate))]
    money += [(f"Revenue ({escape(cur)})", f"{Decimal(v):,.2f}") for cur, v in f.attributed_revenue.items()]
    money += [(f"Revenue per recipient ({escape(cur)})", f"{Decimal(v):,.2f}")
              for cur, v in f.revenue_per_recipient.items()]
    money_html = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in money)
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
           "td.url{text-align:left;word-break:break-all}.grid{display:flex;gap:0 32px;flex-wrap:wrap;"
           "align-items:flex-start}.alert{background:#fdecea;border-left:4px solid #d62728;padding:8px 12px}@media (max-width:520px){body{margin:12px}}" + CHART_CSS)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>Campaign {f.campaign_id}: {escape(f.name)}</title>'
            f"<style>{css}</style></head><body><h1>Campaign {f.campaign_id}: {escape(f.name)}</h1>"
            f'<p class="muted">{meta}</p><div class="grid"><table><caption>Figures</caption>{fig_html}</table>'
            f"<table><caption>Rates</caption>{rate_html}</table>"
            f'<table id="revenue"><caption>Revenue (attributed)</caption>{money_html}</table></div>'
            f"{_brake_html(session, f)}{_ab_html(ab_summary(session, campaign_id))}"
            f"<h2>Opens and clicks over time</h2>{svg_chart(tl)}"
            f"<h2>Most clicked links</h2><table><tr><th>Link</th><th>Clicks</th><th>Unique</th></tr>{link_html}"
            f'</table><p class="muted">Generated {when} by mailer. Machine opens (privacy proxies, scanners) '
            f"are left out of unique opens.</p></body></html>")


# -- A/B tests --------------------------------------------------------------------------------
#: How each winning metric is named in lines and reports.
METRIC_NAMES = {"opens": "human open rate", "clicks": "click rate", "revenue": "revenue per recipient"}


def ab_summary(session: Session, campaign_id: int) -> dict | None:
    """The A/B test of a campaign as plain data (None without a test): settings, state, decision, variants."""
    c = session.get(Campaign, campaign_id)
    test = session.get(AbTest, campaign_id) if c is not None and c.variants else None
    if test is None:
        return None
    labels = [v["label"] for v in c.variants]
    opens = {a.label: a for a in abtest.arms(session, campaign_id, "opens", labels)}
    clicks = {a.label: a for a in abtest.arms(session, campaign_id, "clicks", labels)}
    revenue = abtest.revenue_by_variant(session, campaign_id)
    variants = []
    for v in c.variants:
        label, sent = v["label"], opens[v["label"]].n
        total = revenue.get(label, (0.0, 0.0, 0))[0]
        variants.append({"label": label, "template": v.get("template") or c.template,
                         "subjects": v.get("subjects") or {}, "preheaders": v.get("preheaders") or {},
                         "sent": sent, "unique_opens": opens[label].successes,
                         "open_rate": _rate(opens[label].successes, sent),
                         "unique_clicks": clicks[label].successes, "click_rate": _rate(clicks[label].successes, sent),
                         "revenue": round(total, 2), "revenue_per_recipient": round(total / sent, 4) if sent else 0.0})
    decision = test.decision or {}
    return {"state": test.state, "winner_metric": test.winner_metric, "test_share_percent": test.test_share_percent,
            "wait_s": test.wait_s, "confidence": test.confidence,
            "test_ends_at": test.test_ends_at.isoformat() if test.test_ends_at else None,
            "decided_at": test.decided_at.isoformat() if test.decided_at else None,
            "winner": test.winner, "no_winner": decision.get("no_winner"), "best": decision.get("best"),
            "runner_up": decision.get("runner_up"), "difference": decision.get("difference"),
            "interval": decision.get("interval"), "p_value": decision.get("p_value"), "level": decision.get("level"),
            "decision_figures": decision.get("arms"), "variants": variants}


def variant_revenue(session: Session, campaign_id: int) -> dict[str, dict]:
    """Per A/B variant: attributed orders, revenue per currency, conversion rate and revenue per
    recipient per currency (:meth:`mailer.customers.attribution.Revenue.as_dict`), and its recipients."""
    c = session.get(Campaign, campaign_id)
    if c is None or not c.variants:
        return {}
    # Recipients per variant: the campaign's deliveries that reached a mailbox provider, one
    # GROUP BY over ix_deliveries_campaign_status.
    recipients = dict(session.execute(select(Delivery.variant, func.count())
                                      .where(Delivery.campaign_id == campaign_id, Delivery.variant.is_not(None),
                                             Delivery.status.in_(attribution.RECIPIENT_STATUSES))
                                      .group_by(Delivery.variant)).all())
    out = {}
    for v in c.variants:
        label = v["label"]
        money = attribution.revenue(session, Attribution.campaign_id == campaign_id, Delivery.variant == label,
                                    through_deliveries=True)
        out[label] = {**money.as_dict(recipients.get(label, 0)), "recipients": recipients.get(label, 0)}
    return out


def _amount(metric: str, value: float | None, *, signed: bool = True) -> str:
    if value is None:
        return "?"
    if metric == "revenue":
        return f"{value:+.2f}" if signed else f"{value:.2f}"
    return f"{value * 100:+.1f} pts" if signed else f"{value * 100:.1f} %"


def amount_text(metric: str, value: float | None) -> str:
    """A difference of the winning metric as text: ``+1.2 pts`` (a rate) or ``+3.40`` (revenue per recipient)."""
    return _amount(metric, value)


def ab_line(summary: dict) -> str:
    """One line: ``testing until T``, ``decided: B won (...)`` or ``decided: no winner (...)``."""
    metric = summary["winner_metric"]
    name = METRIC_NAMES.get(metric, metric)
    share = f"{summary['test_share_percent']:g} % test share, {len(summary['variants'])} variants, by {name}"
    if summary["state"] == abtest.TESTING:
        return f"testing ({share}): the test share is being sent"
    if summary["state"] == abtest.WAITING:
        ends = (summary["test_ends_at"] or "?")[:16].replace("T", " ")
        return f"testing until {ends} UTC ({share})"
    low, high = summary["interval"] or (None, None)
    level = summary.get("level") or summary["confidence"]
    interval = (f"{summary['best']} - {summary['runner_up']}: {_amount(metric, summary['difference'])}, "
                f"{level * 100:g} % interval {_amount(metric, low)} to {_amount(metric, high)}, "
                f"p = {summary['p_value']:.3g}")
    if summary["no_winner"]:
        return (f"decided: no winner ({interval}); {summary['winner']}, the default, goes to the rest "
                f"({share})")
    return f"decided: {summary['winner']} won ({interval}); it goes to the rest ({share})"


def _variant_text(v: dict) -> str:
    parts = []
    for what, table in (("subject", v["subjects"]), ("preheader", v["preheaders"])):
        text = table.get("*") or table.get("en") or next(iter(table.values()), None)
        if text:
            parts.append(f"{what}: {text}")
    parts.append(f"template: {v['template']}")
    return "; ".join(parts)


def _ab_html(summary: dict | None) -> str:
    if summary is None:
        return ""
    metric = summary["winner_metric"]
    rows = "".join(
        f"<tr><th>{escape(v['label'])}{' (default)' if i == 0 else ''}"
        f"{' &#9733; winner' if summary['state'] == abtest.DECIDED and summary['winner'] == v['label'] else ''}</th>"
        f'<td class="url">{escape(_variant_text(v))}</td><td>{v["sent"]:,}</td>'
        f"<td>{v['unique_opens']:,} ({_pct(v['open_rate'])})</td><td>{v['unique_clicks']:,} ({_pct(v['click_rate'])})"
        f"</td><td>{v['revenue']:,.2f} ({v['revenue_per_recipient']:.2f})</td></tr>"
        for i, v in enumerate(summary["variants"]))
    decided = ""
    if summary.get("decision_figures"):
        cells = "".join(f"<tr><th>{escape(a['label'])}</th><td>{a['sent']:,}</td>"
                        f"<td>{_amount(metric, a['value'], signed=False)}</td></tr>"
                        for a in summary["decision_figures"])
        decided = (f"<table><caption>At the decision ({escape(METRIC_NAMES.get(metric, metric))})</caption>"
                   f"<tr><th>Variant</th><th>Sent</th><th>Value</th></tr>{cells}</table>")
    return (f'<h2>A/B test</h2><p class="decision">{escape(ab_line(summary))}</p>'
            f"<table><tr><th>Variant</th><th>What differs</th><th>Sent</th><th>Unique opens</th>"
            f"<th>Unique clicks</th><th>Revenue (per recipient)</th></tr>{rows}</table>{decided}")


def _brake_html(session: Session, f: Figures) -> str:
    """The brake that paused the campaign (with its figures), every pause and resume, and the
    unsubscribe latency of the campaign's links against the 2-day limit."""
    parts = []
    if f.brake:
        d = f.brake_detail or {}
        parts.append(f'<p id="brake" class="alert"><strong>Paused by the {escape(f.brake)} brake</strong>: '
                     f"{d.get('complaints', 0):,} complaints and {d.get('hard_bounces', 0):,} hard bounces in "
                     f"{d.get('sent', 0):,} sent (complaint rate {d.get('complaint_rate', 0) * 100:.3f} %, limit "
                     f"{d.get('max_complaint_rate', 0) * 100:.2f} %; hard-bounce rate "
                     f"{d.get('hard_bounce_rate', 0) * 100:.2f} %, limit {d.get('max_hard_bounce_rate', 0) * 100:.1f}"
                     " %). Resume it explicitly with <code>mailer campaign resume</code>.</p>")
    history = brakes.actions(session, f.campaign_id)
    if history:
        rows = "".join(f"<tr><td>{a.occurred_at:%Y-%m-%d %H:%M:%S} UTC</td><td>{escape(a.action)}</td>"
                       f"<td>{escape(a.actor)}</td></tr>" for a in history)
        parts.append(f'<table id="actions"><caption>Pauses and resumes</caption>{rows}</table>')
    latency = brakes.unsubscribe_latency(session, campaign_id=f.campaign_id)
    verdict = "within" if latency.within_limit else "OVER"
    parts.append(f'<p id="unsubscribe-latency" class="muted">Unsubscribe latency: {latency.unsubscribes:,} '
                 f"unsubscribes; {latency.mailed_after:,} still got marketing mail after the click (worst "
                 f"{latency.max_s / 3600:.1f} h); {verdict} the 2-day limit.</p>")
    return "".join(parts)


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
