"""Every kind in en, ar and zh-TW, in headless Chromium at 375 px and 600 px.

Asserts nothing overflows horizontally on a phone, the footer (postal address, and for
marketing mail the unsubscribe and preferences links) is visible, and Arabic is laid
out right to left.  Screenshots are saved under artifacts/screenshots/ for a person to
look at.  Needs the Debian packages chromium, fonts-noto-core (Arabic), fonts-noto-cjk
(Chinese) and fonts-dejavu-core; without /usr/bin/chromium the tests skip with
"needs-service: chromium" (and fail under MAILER_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mailer.rendering import PREVIEW_PREFERENCES, PREVIEW_UNSUBSCRIBE, Renderer, preview_context
from tests.conftest import make_settings

LOCALES = ("en", "ar", "zh-TW")
CURRENCY = {"en": "USD", "ar": "AED", "zh-TW": "TWD"}
WIDTHS = (375, 600)
#: Stand-in for product photos (the test machine has no internet): a warm placeholder picture.
PLACEHOLDER_SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="1200" height="800" viewBox="0 0 1200 800">'
                   '<rect width="1200" height="800" fill="#d8c6a8"/><circle cx="600" cy="400" r="190" fill="#9c7a52"/>'
                   '<rect x="0" y="640" width="1200" height="160" fill="#0f4c5c" opacity="0.35"/></svg>')

pytestmark = pytest.mark.browser

_RENDERER = Renderer(make_settings())
KINDS = _RENDERER.kinds()


@pytest.fixture
def shots(artifacts_dir) -> Path:
    path = artifacts_dir / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _route(route):
    if route.request.resource_type == "image":
        route.fulfill(status=200, content_type="image/svg+xml", body=PLACEHOLDER_SVG)
    else:
        route.abort()


OVERFLOW_JS = """() => {
  const w = document.documentElement.clientWidth;
  const bad = [];
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    if (r.right > w + 1 || r.left < -1) bad.push(el.tagName + ' ' + Math.round(r.left) + '..' + Math.round(r.right)
                                                + ' ' + (el.textContent || '').trim().slice(0, 40));
  }
  return {scrollWidth: document.documentElement.scrollWidth, clientWidth: w, bad: bad.slice(0, 5)};
}"""


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("kind", KINDS)
def test_kind_renders_right_on_a_phone_and_a_desktop(browser, shots, kind, locale):
    spec = _RENDERER.spec(kind)
    r = _RENDERER.render(kind, locale, _RENDERER.sample(kind),
                         context=preview_context(_RENDERER.settings, locale, currency=CURRENCY[locale]))
    address = _RENDERER.settings.store_address
    for width in WIDTHS:
        page = browser.new_page(viewport={"width": width, "height": 900})
        try:
            page.route("**/*", _route)
            page.set_content(r.html, wait_until="load")
            name = f"{kind.replace('/', '-')}.{locale}.{width}.png"
            page.screenshot(path=str(shots / name), full_page=True)
            # Then nothing sticks out sideways
            layout = page.evaluate(OVERFLOW_JS)
            assert layout["scrollWidth"] <= width, (kind, locale, width, layout)
            assert layout["bad"] == [], (kind, locale, width, layout)
            # And the footer is there: the postal address, and for marketing mail both links
            footer = page.get_by_text(address, exact=False).last
            assert footer.is_visible()
            box = footer.bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= width + 1
            links = page.locator(f'a[href="{PREVIEW_UNSUBSCRIBE}"], a[href="{PREVIEW_PREFERENCES}"]')
            if spec.transactional:
                assert links.count() == 0
            else:
                assert links.count() == 2
                for i in range(2):
                    link = links.nth(i)
                    assert link.is_visible()
                    lb = link.bounding_box()
                    assert lb and lb["width"] > 10 and 0 <= lb["x"] and lb["x"] + lb["width"] <= width + 1
            # And Arabic runs right to left, the others left to right
            headline_dir = page.evaluate("""() => {
                const el = [...document.querySelectorAll('div')].find(d => d.textContent.trim().length > 0
                    && getComputedStyle(d).fontWeight >= 700 && parseFloat(getComputedStyle(d).fontSize) >= 20
                    && d.children.length === 0);
                const s = el ? getComputedStyle(el) : getComputedStyle(document.body);
                return [s.direction, s.textAlign];
            }""")
            if locale == "ar":
                assert headline_dir[0] == "rtl", headline_dir
            else:
                assert headline_dir[0] == "ltr", headline_dir
        finally:
            page.close()
