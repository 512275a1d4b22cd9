"""The marketer's journey in a real browser (Debian's Chromium through Playwright) against
``mailer serve`` with a real worker on Redis and the aiosmtpd sink: log in, create a campaign
with subjects in two locales and see the fallback warning, preview at 375 and 600 px, send a
test (the sink receives it), send, watch the progress reach completed, read the report.
Every page passes axe-core (no serious or critical violations) and is photographed at 375
and 1280 px (artifacts/console/marketer-*.png)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from mailer.app import App
from tests.campaign_support import add_customer
from tests.conftest import wait_until
from tests.console_support import axe_check, screenshots

pytestmark = pytest.mark.browser

#: Seconds the journey waits for mail to arrive or a campaign to complete (a ceiling, not a measurement).
WAIT_S = 180
CUSTOMERS = (("ann@example.com", "en", "Ann"), ("bob@example.com", "en", "Bob"), ("ola@example.com", "pl", "Ola"),
             ("jan@example.com", "pl", "Jan"), ("minji@example.com", "ko", "Minji"))


def _look(page, name: str) -> None:
    axe_check(page)
    screenshots(page, f"marketer-{name}")


def test_a_marketer_creates_previews_tests_sends_and_reads_a_localized_campaign(browser, live_console):
    live = live_console
    app = App(live.settings)
    with app.session() as s:
        for email, locale, first in CUSTOMERS:
            add_customer(s, live.settings, email, locale=locale, first_name=first)
    app.close()
    password = live.make_user("marketer@example.com", "marketer")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    base = live.base_url

    # Given a marketer who logs in
    page.goto(f"{base}/console/login?next=/console/campaigns")
    page.fill("#email", "marketer@example.com")
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/console/campaigns$"))
    _look(page, "campaigns-empty")

    # When they create a campaign to the newsletter segment with subjects in en and pl
    page.click("text=New campaign")
    page.wait_for_url(re.compile(r".*/console/campaigns/new"))
    page.fill("#f-name", "Spring launch")
    page.check("input[name=template][value='newsletter/product_launch']")
    page.select_option("#f-segment", "newsletter_all")
    page.wait_for_selector("#segment-count")
    assert page.inner_text("#segment-count") == "5"
    page.fill("#f-subject_en", "Spring is here, {{ first_name }}")
    page.fill("#f-subject_pl", "Wiosna już jest, {{ first_name }}")
    # Then the form warns that the Korean customers fall back to another language's subject
    # (the panel follows what is typed: wait until it has caught up with the Polish subject)
    expect(page.locator("#fallback-warning")).not_to_contain_text("pl (", timeout=WAIT_S * 1000)
    warning = page.inner_text("#fallback-warning")
    assert "ko" in warning and "pl (" not in warning and "en (" not in warning
    _look(page, "campaign-new")
    page.click("button:has-text('Create draft')")
    page.wait_for_url(re.compile(r".*/console/campaigns/\d+\?created=1"))
    cid = int(re.search(r"/campaigns/(\d+)", page.url).group(1))
    _look(page, "campaign-draft")

    # When they preview it in Polish
    page.goto(f"{base}/console/campaigns/{cid}/preview?locale=pl")
    assert page.inner_text("#preview-subject").startswith("Wiosna już jest")
    # Then the mail is framed at 375 and 600 px, sandboxed
    for width in (375, 600):
        frame = page.locator(f"iframe.w{width}")
        assert frame.get_attribute("sandbox") == ""
        box = frame.bounding_box()
        assert box and abs(box["width"] - width) <= 4, (width, box)
    page.wait_for_load_state("networkidle")
    _look(page, "campaign-preview")

    # When they send a test to a seed address
    page.goto(f"{base}/console/campaigns/{cid}")
    page.fill("#seeds", "seed@example.com")
    page.select_option("#test-locale", "pl")
    page.click("button:has-text('Send test')")
    page.wait_for_selector("#test-sent")
    # Then the sink receives it, with the Polish subject
    assert wait_until(lambda: any("seed@example.com" in r.rcpt_tos for r in live.sink.received), WAIT_S)
    test_mail = next(r for r in live.sink.received if "seed@example.com" in r.rcpt_tos).message
    assert str(test_mail["Subject"]).startswith("Wiosna już jest")

    # When they send it, after a confirmation stating the count
    page.click("#action-send")
    assert re.search(r"\b5\b", page.inner_text("#confirm-count"))
    _look(page, "campaign-confirm")
    page.click("#confirm")
    page.wait_for_url(re.compile(rf".*/console/campaigns/{cid}\?done=send"))
    # Then the progress, polled by htmx, reaches completed
    expect(page.locator("#campaign-status")).to_have_text("completed", timeout=WAIT_S * 1000)
    assert page.inner_text("#fig-sent") == "5"
    _look(page, "campaign-completed")
    customers = {c[0] for c in CUSTOMERS}
    assert wait_until(lambda: customers <= {a for r in live.sink.received for a in r.rcpt_tos}, WAIT_S)

    # And the report counts the five mails (the test send is not among them), also on a phone
    page.goto(f"{base}/console/campaigns/{cid}/report")
    assert page.inner_text("#report-sent") == "5"
    _look(page, "campaign-report")
    page.set_viewport_size({"width": 375, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 380
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{base}/console/campaigns")
    assert "Spring launch" in page.inner_text("main")
    _look(page, "campaigns")

    # The other marketer pages
    for path, name in (("/console/segments", "segments"), ("/console/segments/newsletter_all", "segment"),
                       ("/console/templates?kind=newsletter/product_launch&locale=pl", "templates"),
                       ("/console/automations", "automations")):
        page.goto(base + path)
        assert page.locator("h1").count() == 1
        _look(page, name)
    page.close()
