"""What a new user sees after ``mailer demo``, in headless Chromium at 375 px and 600 px.

Runs the demo into a temporary folder, then opens what a person opens: the outbox
index, the HTML copies of the delayed-order notice in pl, zh-TW and ar and of the
newsletter, and the campaign report. Every picture loads (``naturalWidth > 0``: the
sample images travel with the outbox), nothing sticks out sideways at 375 px, and the
screenshots go to artifacts/screenshots/demo-*.png for a person to look at. Needs
/usr/bin/chromium (skips with "needs-service: chromium", fails under
MAILER_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mailer.settings import PROJECT_ROOT
from tests.test_browser_templates import OVERFLOW_JS, WIDTHS, shots  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: (screenshot name, kind, locale) of the mails whose HTML copies are opened.
MAILS = (("notice-pl", "order_delayed", "pl"), ("notice-zh-TW", "order_delayed", "zh-TW"),
         ("notice-ar", "order_delayed", "ar"), ("newsletter-en", "newsletter/seasonal_sale", "en"))

IMAGES_JS = """() => [...document.images].map(i => ({src: i.getAttribute('src'), w: i.naturalWidth,
                                                   complete: i.complete}))"""


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """A folder after ``mailer demo`` and ``mailer campaign report 1``."""
    folder = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    for args in (["demo"], ["campaign", "report", "1", "-o", "report.html"]):
        res = subprocess.run([sys.executable, "-m", "mailer.cli", *args], cwd=folder, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr + res.stdout
    return folder


def _html_copy(index: str, kind: str, locale: str) -> str:
    """The HTML copy the index links for the mail of ``kind`` in ``locale``."""
    for row in re.findall(r"<tr>(.*?)</tr>", index, re.S):
        if f'class="kind">{kind}<' in row and f'data-label="Locale">{locale}<' in row:
            return re.search(r'href="([^"]+\.html)"', row).group(1)
    raise AssertionError(f"no {kind} mail in {locale} in the outbox index")


def _pages(demo_dir: Path) -> list[tuple[str, Path]]:
    outbox = demo_dir / "outbox"
    index = (outbox / "index.html").read_text(encoding="utf-8")
    return ([("outbox-index", outbox / "index.html")]
            + [(name, outbox / _html_copy(index, kind, locale)) for name, kind, locale in MAILS]
            + [("campaign-report", demo_dir / "report.html")])


def test_demo_pages_show_real_images_and_fit_a_phone(browser, shots, demo_dir):  # noqa: F811
    # Given the demo's outbox, its mails' HTML copies and the campaign report
    pages = _pages(demo_dir)
    for name, path in pages:
        for width in WIDTHS:
            page = browser.new_page(viewport={"width": width, "height": 900})
            try:
                # When a person opens the page from disk (no network beyond the folder)
                page.route(re.compile(r"^https?://"), lambda route: route.abort())
                page.goto(path.as_uri(), wait_until="load")
                page.screenshot(path=str(shots / f"demo-{name}.{width}.png"), full_page=True)
                # Then every picture has loaded
                images = page.evaluate(IMAGES_JS)
                # (the 1x1 open pixel is served by `mailer serve`, not by the folder: not a picture)
                broken = [i for i in images if not (i["complete"] and i["w"] > 0) and "/t/o/" not in i["src"]]
                assert broken == [], (name, width, broken)
                if name.startswith(("notice", "newsletter")):
                    assert images, (name, "no pictures at all")
                # And nothing sticks out sideways on a phone
                if width == 375:
                    layout = page.evaluate(OVERFLOW_JS)
                    assert layout["scrollWidth"] <= width, (name, width, layout)
            finally:
                page.close()
