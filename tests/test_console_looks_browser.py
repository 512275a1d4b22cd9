"""What a person sees on a phone and on a laptop: the dashboard (Predictions card, per-domain
complaint rate), a campaign report with attribution and an A/B decision, and a scored customer's
profile with the reasons, at 375 and 1280 px wide, in English and in a translated locale: nothing
sticks out sideways, axe-core finds no serious or critical violation, and screenshots are kept in
artifacts/console/. Needs /usr/bin/chromium and the CDNOW sample (../shared/datasets/cdnow)."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from mailer.customers import orders as orders_service
from mailer.customers import predictions
from mailer.models import Customer
from mailer.web.app import create_app
from tests.campaign_support import newsletter_templates
from tests.conftest import installed_app, make_settings
from tests.console_support import OVERFLOW_JS, axe_check, free_port, make_console_user, screenshots
from tests.test_campaign_e2e import Server
from tests.test_console_attribution import ab_campaign_decided
from tests.test_predictions_product import _cdnow_csv

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery staple"  # a test fixture's password  # nosec B105
#: The CDNOW sample's as-of day (the end of its calibration period).
AS_OF = dt.date(1997, 9, 30)
#: Viewport sizes a person uses, CSS pixels: a phone and a laptop.
VIEWPORTS = ({"width": 375, "height": 812}, {"width": 1280, "height": 800})


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """One shop on a SQLite file: a decided A/B campaign with attributed orders, the CDNOW orders
    scored, and console users in English and Polish; served by uvicorn in a thread."""
    tmp_path = tmp_path_factory.mktemp("looks")
    from mailer import db

    url = f"sqlite:///{tmp_path / 'mailer.db'}"
    db.upgrade(url)
    rules = tmp_path / "automations"
    rules.mkdir()
    port = free_port()
    settings = make_settings(database_url=url, templates_dir=newsletter_templates(tmp_path),
                             automations_dir=rules, machine_open_window_s=0, quiet_hours="", brake_min_sent=1,
                             default_currency="USD", from_address="news@mail.shop.example.com",
                             base_url=f"http://127.0.0.1:{port}")
    for app in installed_app(settings):
        campaign_id = ab_campaign_decided(app)
        orders_service.import_orders_file(settings, _cdnow_csv(tmp_path))
        predictions.run(settings, as_of=AS_OF, score=True)
        with app.session() as s:
            customer_id = s.execute(sa.select(Customer.id).where(Customer.email == "c1@cdnow.example")).scalar_one()
            recipient_id = s.execute(sa.select(Customer.id).where(Customer.email == "r0@example.com")).scalar_one()
        for locale in ("en", "pl"):
            make_console_user(app, f"admin-{locale}@shop.example.com", "admin", PASSWORD, locale=locale)
        with Server(create_app(app=app), port):
            yield {"base": f"http://127.0.0.1:{port}", "campaign": campaign_id, "customer": customer_id,
                   "recipient": recipient_id}
    db.dispose_engines()


def _log_in(page, base: str, email: str) -> None:
    page.goto(base + "/console/login")
    page.locator("input[name=email]").fill(email)
    page.locator("input[name=password]").fill(PASSWORD)
    page.locator("form button[type=submit]").click()
    page.wait_for_url(base + "/console/")


#: The pages looked at, by name: {campaign} is the A/B campaign, {customer} the scored CDNOW buyer,
#: {recipient} a customer with mail (the deliveries table).
PAGES = {"dashboard": "/console/", "report": "/console/campaigns/{campaign}/report",
         "profile": "/console/customers/{customer}", "profile-mail": "/console/customers/{recipient}"}
#: Scroll regions on the page wider than their box (a table whose columns hide sideways).
HIDDEN_SIDEWAYS_JS = """() => [...document.querySelectorAll('main .scroll')]
  .filter(el => el.offsetParent !== null && el.scrollWidth > el.clientWidth + 1)
  .map(el => (el.getAttribute('aria-labelledby') || el.id || el.className))"""


@pytest.mark.parametrize("locale", ["en", "pl"])
def test_the_pages_fit_a_phone_and_a_laptop_and_pass_axe(browser, shop, locale):
    # Given an admin whose console language is `locale`
    page = browser.new_page(viewport=VIEWPORTS[0])
    try:
        _log_in(page, shop["base"], f"admin-{locale}@shop.example.com")
        for name, path in PAGES.items():
            # When she opens the page on a phone and on a laptop
            page.goto(shop["base"] + path.format(**shop))
            for viewport in VIEWPORTS:
                page.set_viewport_size(viewport)
                # Then nothing makes the page scroll sideways
                wide = page.evaluate(OVERFLOW_JS)
                assert wide["scrollWidth"] <= viewport["width"], (name, viewport, wide)
                # And no table hides columns in a sideways-scrolling box on a phone (its rows stack)
                if viewport["width"] < 480:
                    assert page.evaluate(HIDDEN_SIDEWAYS_JS) == [], (name, locale)
                # And axe-core finds no serious or critical violation
                axe_check(page)
            screenshots(page, f"looks-{name}-{locale}")
    finally:
        page.close()


def test_charts_have_visible_captions_and_the_clv_ranges_their_currency(browser, shop):
    # Given the scored shop and the A/B campaign's report
    page = browser.new_page(viewport=VIEWPORTS[0])
    try:
        _log_in(page, shop["base"], "admin-en@shop.example.com")
        # When the admin opens the dashboard
        page.goto(shop["base"] + "/console/")
        # Then the CLV chart says what it counts and in which currency
        caption = page.locator("#h-predictions ~ figure figcaption").inner_text()
        assert caption == "Customers by predicted lifetime value (12 months), USD"
        # And the report's two locale charts are told apart by their captions
        page.goto(shop["base"] + PAGES["report"].format(**shop))
        assert page.locator("figure.chart-figure figcaption").all_inner_texts() == [
            "Mails sent by locale", "Open rate by locale"]
    finally:
        page.close()


def test_the_profile_says_why_in_the_users_language(browser, shop):
    # Given an admin who reads the console in Polish
    page = browser.new_page(viewport=VIEWPORTS[0])
    try:
        _log_in(page, shop["base"], "admin-pl@shop.example.com")
        # When she opens the scored buyer's profile
        page.goto(shop["base"] + PAGES["profile"].format(**shop))
        why = page.locator("#h-predictions ~ ul.plain li").all_inner_texts()
        # Then every reason is in Polish, the risk word too, with the figures kept
        assert why[0] == "c1@cdnow.example: złożone zamówienia: 4"
        assert any(line.startswith("Ryzyko odejścia wysokie: P(brak zamówienia w ciągu 90 dni) = ") for line in why)
        assert not any("churn_risk" in line or "p_alive" in line or "Expected orders" in line for line in why)
        # And an empty profile field shows a dash, not a blank
        name = page.locator("dl.facts dt", has_text="Imię i nazwisko").locator("xpath=following-sibling::dd[1]")
        assert name.inner_text() == "—"
    finally:
        page.close()
