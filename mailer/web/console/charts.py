"""Server-side SVG charts for the console's campaign report (no JavaScript library).

Two shapes: :func:`timeline_chart` (human opens, machine opens and clicks per bucket,
from :func:`mailer.campaigns.reports.timeline`) and :func:`bar_chart` (one horizontal bar
per row, e.g. opens by locale). Both return :class:`markupsafe.Markup` holding one
``<svg>`` with a ``<title>`` and ``role="img"``; every label is escaped (locale names
and URLs come from outside). Colours are presentation attributes, never ``style=""``,
so the console's CSP (``style-src 'self'``) holds. The drawing scales to its container
(``viewBox``, CSS width 100 %), so it reads on a 375 px phone.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from markupsafe import Markup, escape

from mailer.campaigns.reports import Timeline, y_ticks

#: Drawing size in SVG user units (scaled to the page width by CSS).
WIDTH_UNITS = 480
HEIGHT_UNITS = 260
#: A bar chart's width in SVG user units: narrower than the timeline, so its 14-unit text
#: stays about 12 px on a 375 px phone.
BAR_WIDTH_UNITS = 360
#: Height of one bar of a bar chart, and the gap below it, in SVG user units.
BAR_UNITS = 24
BAR_GAP_UNITS = 8
#: (label, colour) per timeline series: human opens, machine opens, clicks. Contrast on white >= 4.5:1.
SERIES = (("Opens (people)", "#1f5f99"), ("Machine opens", "#5f5f5f"), ("Clicks", "#b3261e"))
#: Dash pattern per series, so they differ without colour too.
DASHES = ("", "6 4", "2 3")
_TIME_FORMAT = {"minute": "%H:%M", "5 minutes": "%H:%M", "hour": "%d %H:00", "day": "%m-%d"}


def _svg_open(label: str, width: int, height: int) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="{escape(label)}"><title>{escape(label)}</title>')


def timeline_chart(tl: Timeline, *, label: str = "Opens and clicks over time (UTC)",
                   series_labels: Sequence[str] | None = None) -> Markup:
    """Lines of human opens, machine opens and clicks per bucket, with axes and a legend."""
    names = list(series_labels or [s[0] for s in SERIES])
    if not tl.points:
        return Markup("")
    left, right, top, bottom = 40, 12, 34, 36
    w, h = WIDTH_UNITS - left - right, HEIGHT_UNITS - top - bottom
    values = [[p[1] for p in tl.points], [p[2] for p in tl.points], [p[3] for p in tl.points]]
    ticks = y_ticks(max(max(v) for v in values))
    peak = ticks[-1] or 1
    n = len(tl.points)

    def x(i: int) -> float:
        return left + (w * i / (n - 1) if n > 1 else w / 2)

    def y(v: float) -> float:
        return top + h - h * v / peak

    parts = [_svg_open(label, WIDTH_UNITS, HEIGHT_UNITS),
             f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="#ffffff" stroke="#cccccc"/>']
    for v in ticks:
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e5e5e5"/>'
                     f'<text x="{left - 5}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="13" '
                     f'fill="#333333">{v}</text>')
    fmt = _TIME_FORMAT.get(tl.bucket, "%H:%M")
    for i in sorted({0, n - 1, (n - 1) // 2}):
        when: datetime = tl.points[i][0]
        anchor = "start" if i == 0 and n > 1 else "end" if i == n - 1 and n > 1 else "middle"
        parts.append(f'<text x="{x(i):.1f}" y="{top + h + 16}" text-anchor="{anchor}" font-size="13" '
                     f'fill="#333333">{escape(when.strftime(fmt))}</text>')
    for k, (vals, (_, colour), dash) in enumerate(zip(values, SERIES, DASHES, strict=True)):
        if k == 1 and not any(vals):
            continue  # no machine opens: no flat line to explain
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(vals))
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<polyline class="series" data-series="{k}" fill="none" stroke="{colour}" '
                     f'stroke-width="2"{dash_attr} points="{pts}"/>')
        for i, v in enumerate(vals):
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}">'
                         f'<title>{escape(names[k])} {escape(tl.points[i][0].strftime(fmt))}: {v}</title></circle>')
    lx = left
    for k, (_, colour) in enumerate(SERIES):
        if k == 1 and not any(values[1]):
            continue
        parts.append(f'<line x1="{lx}" x2="{lx + 18}" y1="14" y2="14" stroke="{colour}" stroke-width="3"'
                     f'{(" stroke-dasharray=" + chr(34) + DASHES[k] + chr(34)) if DASHES[k] else ""}/>'
                     f'<text x="{lx + 22}" y="18" font-size="14" fill="#333333">{escape(names[k])}</text>')
        lx += 30 + 7 * len(names[k])
    parts.append("</svg>")
    return Markup("".join(parts))  # nosec B704 - every interpolated text above is escaped


def bar_chart(rows: Sequence[tuple[str, float, str]], *, label: str, colour: str = "#1f5f99") -> Markup:
    """One horizontal bar per (name, value, value text) row, longest bar = largest value."""
    if not rows:
        return Markup("")
    left, right, top = 64, 64, 4
    w = BAR_WIDTH_UNITS - left - right
    height = top + len(rows) * (BAR_UNITS + BAR_GAP_UNITS)
    peak = max(v for _, v, _ in rows) or 1
    parts = [_svg_open(label, BAR_WIDTH_UNITS, height)]
    for i, (name, value, text) in enumerate(rows):
        y0 = top + i * (BAR_UNITS + BAR_GAP_UNITS)
        bw = max(w * value / peak, 1 if value else 0)
        parts.append(f'<text x="{left - 6}" y="{y0 + BAR_UNITS * 0.72:.1f}" text-anchor="end" font-size="14" '
                     f'fill="#333333">{escape(name)}</text>'
                     f'<rect class="bar" x="{left}" y="{y0}" width="{bw:.1f}" height="{BAR_UNITS}" fill="{colour}"/>'
                     f'<text x="{left + bw + 6:.1f}" y="{y0 + BAR_UNITS * 0.72:.1f}" font-size="14" '
                     f'fill="#333333">{escape(text)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # nosec B704 - every interpolated text above is escaped
