"""The campaign report's chart in headless Chromium at 375 px and 600 px.

A campaign an hour old (fixed times) is drawn per minute with both series visible,
whole-number y ticks and text of at least 11 px on a phone. Screenshots go to
artifacts/screenshots/report-*.png for a person to look at. Needs /usr/bin/chromium
(skips with "needs-service: chromium", fails under MAILER_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailer.app import App, set_app
from mailer.campaigns import reports
from mailer.worker.actors import setup
from mailer.tracking import service as tracking
from mailer.transport import memory
from tests.campaign_support import campaign_marked_sent, newsletter_templates
from tests.conftest import make_settings
from tests.test_browser_templates import OVERFLOW_JS, shots  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

SENT_AT = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
HUMAN_UA = "Mozilla/5.0 (Windows NT 10.0) Thunderbird/128.0"
PROXY_UA = "Mozilla/5.0 (via ggpht.com GoogleImageProxy)"
#: Minutes after sending: human opens, and clicks (the same minute and count as an open at 12).
OPEN_MINUTES = (3, 3, 5, 12, 20, 41)
CLICK_MINUTES = (12, 22, 22, 47)
MACHINE_MINUTES = (1, 2)

CHART_JS = """() => {
  const svg = document.querySelector('svg.chart');
  const texts = [...svg.querySelectorAll('text')].map(t => ({
    text: t.textContent, cls: t.getAttribute('class'),
    size: parseFloat(getComputedStyle(t).fontSize) * svg.getScreenCTM().a,
    height: t.getBoundingClientRect().height}));
  const marks = {};
  for (const m of svg.querySelectorAll('.mark')) {
    const r = m.getBoundingClientRect();
    (marks[m.dataset.series] ||= []).push([r.left, r.top, r.right, r.bottom]);
  }
  const series = {};
  for (const p of svg.querySelectorAll('polyline.series')) series[p.dataset.series] = p.points.numberOfItems;
  const box = (sel) => { const r = document.querySelector(sel).getBoundingClientRect(); return r.height; };
  return {texts, marks, series, figures: box('.grid table:first-child'), rates: box('.grid table:last-child')};
}"""


@pytest.fixture
def young_campaign(sqlite_url, tmp_path):
    """Given a campaign sent at 09:00 with opens, machine opens and clicks within its first hour."""
    memory.clear()
    settings = make_settings(database_url=sqlite_url, templates_dir=newsletter_templates(tmp_path))
    app = App(settings)
    previous = set_app(app)
    setup(settings)
    cid, ids = campaign_marked_sent(app, name="Young", sent_at=SENT_AT)
    with app.session() as s:
        for i, m in enumerate(OPEN_MINUTES):
            tracking.record_open(s, settings, tracking.Link(ids[i]), ip="198.51.100.7", user_agent=HUMAN_UA,
                                 now=SENT_AT + timedelta(minutes=m))
        for i, m in enumerate(MACHINE_MINUTES):
            tracking.record_open(s, settings, tracking.Link(ids[7 + i]), ip="203.0.113.9", user_agent=PROXY_UA,
                                 now=SENT_AT + timedelta(minutes=m))
        for i, m in enumerate(CLICK_MINUTES):
            tracking.record_click(s, settings, tracking.Link(ids[i], url="https://shop.example.com/a"), ip=None,
                                  user_agent=HUMAN_UA, now=SENT_AT + timedelta(minutes=m))
        page = reports.html_report(s, cid, generated_at=SENT_AT + timedelta(hours=1))
    yield page
    app.close()
    set_app(previous)


@pytest.mark.parametrize("width", (375, 600))
def test_report_chart_is_honest_and_readable_on_a_phone_and_a_desktop(browser, shots, young_campaign,  # noqa: F811
                                                                      width):
    # When the report is opened at this width
    page = browser.new_page(viewport={"width": width, "height": 900})
    try:
        page.route("**/*", lambda route: route.abort())
        page.set_content(young_campaign, wait_until="load")
        page.screenshot(path=str(shots / f"report-{width}.png"), full_page=True)
        layout = page.evaluate(OVERFLOW_JS)
        chart = page.evaluate(CHART_JS)
    finally:
        page.close()
    # Then nothing sticks out sideways
    assert layout["scrollWidth"] <= width and layout["bad"] == [], layout
    # And every text of the chart is drawn at 11 px or more
    small = [t for t in chart["texts"] if t["size"] < 11 or t["height"] < 11]
    assert chart["texts"] and small == [], small
    # And each series has more than one point: the hour is drawn per minute
    assert set(chart["series"]) == {"opens", "machine", "clicks"}
    assert all(n > 1 for n in chart["series"].values()), chart["series"]
    assert len(chart["marks"]["opens"]) == len(set(OPEN_MINUTES))
    assert len(chart["marks"]["clicks"]) == len(set(CLICK_MINUTES))
    # And where opens and clicks have the same value in the same minute, both marks can be seen
    opens = {tuple(round(v) for v in m) for m in chart["marks"]["opens"]}
    clicks = {tuple(round(v) for v in m) for m in chart["marks"]["clicks"]}
    for o in opens:
        for c in clicks:
            contained = c[0] <= o[0] and c[1] <= o[1] and c[2] >= o[2] and c[3] >= o[3]
            covers = o[0] <= c[0] and o[1] <= c[1] and o[2] >= c[2] and o[3] >= c[3]
            assert not (contained or covers), (o, c)
    # And the y axis counts in whole, consecutive numbers up to the small peak (2 opens in minute 3)
    yticks = [t["text"] for t in chart["texts"] if t["cls"] == "ytick"]
    assert yticks == ["0", "1", "2"], yticks
    # And the rates table is as tall as its rows, not stretched to the figures table
    assert chart["rates"] < chart["figures"] * 0.7, (chart["rates"], chart["figures"])
