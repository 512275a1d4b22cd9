"""A marketer in headless Chromium reads a campaign's revenue and A/B decision, resumes a braked
campaign by ticking the acknowledgement, and sees the A/B set-up form and the dashboard's sender
health: axe-core on each page, screenshots at 375 and 1280 px. Needs /usr/bin/chromium."""

from __future__ import annotations

import pytest

from mailer.models import Campaign, CampaignStatus
from tests.campaign_support import newsletter_templates
from tests.conftest import installed_app, make_settings
from tests.console_support import axe_check, free_port, make_console_user, screenshots
from tests.test_campaign_e2e import Server
from tests.test_console_attribution import ab_campaign_decided, braked_campaign

pytestmark = pytest.mark.browser

EMAIL = "mia@shop.example.com"
PASSWORD = "correct horse battery staple"  # a test fixture's password  # nosec B105


@pytest.fixture
def served(sqlite_url, tmp_path):
    """The console on a SQLite file, served by uvicorn in a thread, with a marketer."""
    rules = tmp_path / "automations"
    rules.mkdir()
    port = free_port()
    settings = make_settings(database_url=sqlite_url, templates_dir=newsletter_templates(tmp_path),
                             automations_dir=rules, machine_open_window_s=0, quiet_hours="", brake_min_sent=1,
                             base_url=f"http://127.0.0.1:{port}")
    for app in installed_app(settings):
        make_console_user(app, EMAIL, "marketer", PASSWORD)
        from mailer.web.app import create_app

        with Server(create_app(app=app), port):
            yield app, f"http://127.0.0.1:{port}"


def test_marketer_reads_revenue_and_the_ab_decision_and_resumes_a_braked_campaign(browser, served):
    app, base = served
    ab_id = ab_campaign_decided(app)
    braked_id = braked_campaign(app)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(base + "/console/login")
        page.get_by_label("E-mail address").fill(EMAIL)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(base + "/console/")
        # The dashboard's sender health: the complaint rate per sending domain and the latency
        assert page.locator("#domain-rates").is_visible() and page.locator("#unsubscribe-latency").is_visible()
        axe_check(page)
        # Given the A/B campaign's report
        page.goto(f"{base}/console/campaigns/{ab_id}/report")
        # Then the revenue per currency, the plain "no winner" and each variant's revenue are shown
        assert page.locator("#report-orders").inner_text() == "2"
        assert page.locator('#report-revenue dd[data-currency="EUR"]').inner_text() == "120.00"
        assert page.locator("#ab-no-winner").is_visible()
        assert "120.00 EUR" in page.locator("#ab-variant-B").inner_text()
        axe_check(page)
        screenshots(page, "report-attribution")
        # And the A/B set-up on the creation form
        page.goto(base + "/console/campaigns/new")
        assert page.get_by_label("Subject of variant B").is_visible()
        axe_check(page)
        # When she opens the braked campaign's resume confirmation
        page.goto(f"{base}/console/campaigns/{braked_id}/confirm/resume")
        assert "complaint brake" in page.locator("#brake").inner_text()
        axe_check(page)
        screenshots(page, "resume-braked")
        # And resumes it after ticking that she read why
        page.get_by_label("I have read why the brake paused this campaign and want to resume it anyway.").check()
        page.locator("#confirm").click()
        page.wait_for_url(f"{base}/console/campaigns/{braked_id}?done=resume")
        assert page.get_by_text("Resumed.").is_visible()
    finally:
        page.close()
    with app.session() as s:
        assert s.get(Campaign, braked_id).status is CampaignStatus.running
