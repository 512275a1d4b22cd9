"""The campaign report's tracking figures counted at read time: the queries
``mailer/campaigns/reports.py`` ran before the rollups of migration 0021, kept as the
oracle the rollups are checked against (tests/test_report_rollups.py, bench/attribution.py
``--report-only``).  They read every event of the campaign, which is why they are gone
from the product."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import distinct, func, literal_column, select
from sqlalchemy.orm import Session

from mailer.campaigns.reports import BUCKETS, SERIES, Timeline, _as_utc, bucket_for_span
from mailer.models import TrackingEvent, TrackingKind


def figures(session: Session, campaign_id: int) -> dict[str, int]:
    """Unique human opens, machine opens, unique clicks and unsubscribes, by count(DISTINCT)."""

    def tracked(kind: TrackingKind, what) -> int:
        # ix_tracking_campaign_kind_delivery: every event of the campaign of that kind.
        return session.execute(select(what).where(TrackingEvent.campaign_id == campaign_id,
                                                  TrackingEvent.kind == kind)).scalar_one()

    return {"unique_opens": tracked(TrackingKind.open, func.count(distinct(TrackingEvent.delivery_id))),
            "machine_opens": tracked(TrackingKind.machine_open, func.count()),
            "unique_clicks": tracked(TrackingKind.click, func.count(distinct(TrackingEvent.delivery_id))),
            "unsubscribes": tracked(TrackingKind.unsubscribe, func.count(distinct(TrackingEvent.customer_id)))}


def _truncate(session: Session, unit: str):
    """SQL truncating occurred_at (UTC) to the minute, hour or day."""
    if session.get_bind().dialect.name == "postgresql":
        return func.date_trunc(unit, func.timezone("UTC", TrackingEvent.occurred_at))
    fmt = {"minute": "%Y-%m-%d %H:%M:00", "hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d 00:00:00"}[unit]
    return func.strftime(fmt, TrackingEvent.occurred_at)


def timeline(session: Session, campaign_id: int) -> Timeline:
    """The chart's buckets grouped from the events (the span by the same six probes)."""
    scope = (TrackingEvent.campaign_id == campaign_id, TrackingEvent.kind.in_(SERIES))
    ends = []
    for kind in SERIES:
        for order in (TrackingEvent.occurred_at.asc(), TrackingEvent.occurred_at.desc()):
            # ix_tracking_campaign_kind: one probe per kind and end.
            found = session.execute(select(TrackingEvent.occurred_at)
                                    .where(TrackingEvent.campaign_id == campaign_id, TrackingEvent.kind == kind)
                                    .order_by(order).limit(1)).scalar_one_or_none()
            if found is not None:
                ends.append(_as_utc(found))
    if not ends:
        return Timeline("hour", [])
    name = bucket_for_span(max(ends) - min(ends))
    unit = "minute" if name == "5 minutes" else name
    bucket = _truncate(session, unit).label("bucket")
    # Every event of the campaign on the chart, grouped per (bucket, kind).
    rows = session.execute(select(bucket, TrackingEvent.kind, func.count()).where(*scope)
                           .group_by(literal_column("bucket"), TrackingEvent.kind)).all()
    counts: dict[datetime, list[int]] = {}
    for when, kind, n in rows:
        t = _as_utc(when)
        if name == "5 minutes":
            t = t.replace(minute=t.minute - t.minute % 5)
        counts.setdefault(t, [0, 0, 0])[SERIES.index(kind)] += n
    step = BUCKETS[name]
    start, end = min(counts), max(counts)
    if start == end:
        start, end = start - step, end + step
    out, t = [], start
    while t <= end:
        human, machine, clicks = counts.get(t, (0, 0, 0))
        out.append((t, human, machine, clicks))
        t += step
    return Timeline(name, out)


def top_links(session: Session, campaign_id: int, n: int = 10) -> list[tuple[str, int, int]]:
    """(url, clicks, unique clickers), grouped from every click of the campaign."""
    rows = session.execute(select(TrackingEvent.url, func.count(), func.count(distinct(TrackingEvent.delivery_id)))
                           .where(TrackingEvent.campaign_id == campaign_id, TrackingEvent.kind == TrackingKind.click)
                           .group_by(TrackingEvent.url).order_by(func.count().desc(), TrackingEvent.url).limit(n)
                           ).all()
    return [(url or "", clicks, unique) for url, clicks, unique in rows]
