"""The admin's journey in a real browser against `mailer serve` (live_console): log in, create a user and a
scoped API key, use the key on the HTTP API; axe-core on each page, screenshots at 375 and 1280 px.

Needs Chromium (Debian's /usr/bin/chromium), Redis and the aiosmtpd sink (the live_console fixture)."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from mailer import audit, db
from mailer.models import ApiKey
from tests.console_support import OVERFLOW_JS, axe_check, screenshots

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.redis, pytest.mark.smtp]


def _fits(page, width: int) -> None:
    page.set_viewport_size({"width": width, "height": 900})
    layout = page.evaluate(OVERFLOW_JS)
    assert layout["scrollWidth"] <= width, (page.url, layout)


def test_admin_logs_in_creates_a_user_and_a_scoped_api_key(browser, live_console):
    password = live_console.make_user("admin@shop.example.com", "admin")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    base = live_console.base_url
    try:
        # Given the login page
        page.goto(base + "/console/settings")
        assert page.url.startswith(base + "/console/login?next=")
        axe_check(page)
        screenshots(page, "login")
        # When the admin logs in
        page.get_by_label("E-mail address").fill("admin@shop.example.com")
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        # Then she lands where she wanted to go: the settings
        page.wait_for_url(base + "/console/settings")
        assert page.get_by_role("heading", name="Settings", level=1).is_visible()
        axe_check(page)
        screenshots(page, "settings")
        _fits(page, 375)
        page.set_viewport_size({"width": 1280, "height": 900})

        # When she creates a marketer
        page.get_by_label("E-mail address").fill("mia@shop.example.com")
        page.get_by_label("Role").select_option("marketer")
        page.get_by_role("button", name="Create user").click()
        # Then the page shows the one-time link, and the user is listed
        link = page.locator("#invite-link").inner_text()
        assert link.startswith(base + "/console/set-password/")
        assert page.get_by_role("cell", name="mia@shop.example.com", exact=True).is_visible()

        # When she creates an API key with the notices and customers scopes
        page.get_by_label("Name (letters, digits, '.', '_' or '-')").fill("warehouse")
        page.get_by_label("notices").check()
        page.get_by_label("customers").check()
        page.get_by_role("button", name="Create API key").click()
        key = page.locator("#new-key").inner_text().strip()
        assert key.startswith("mk_")
        axe_check(page)
        screenshots(page, "settings-created")
        # Then the key works on the HTTP API within its scopes only
        r = httpx.get(base + "/v1/customers/nobody@example.com", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 404, r.text  # allowed (customers scope), the customer does not exist
        r = httpx.post(base + "/v1/events", headers={"Authorization": f"Bearer {key}"},
                       json={"type": "order_placed", "data": {}})
        assert r.status_code == 403 and "events" in r.text

        # And the new marketer can set a password from the link and log in
        marketer = browser.new_page(viewport={"width": 375, "height": 800})
        marketer.goto(link)
        axe_check(marketer)
        screenshots(marketer, "set-password")
        marketer.get_by_label("New password (at least 12 characters)").fill("a long enough password")
        marketer.get_by_label("The same password again").fill("a long enough password")
        marketer.get_by_role("button", name="Set password").click()
        marketer.wait_for_url(base + "/console/login?password_set=1")
        marketer.get_by_label("E-mail address").fill("mia@shop.example.com")
        marketer.get_by_label("Password").fill("a long enough password")
        marketer.get_by_role("button", name="Log in").click()
        marketer.wait_for_url(base + "/console/")
        axe_check(marketer)
        screenshots(marketer, "dashboard")
        _fits(marketer, 375)
        # but the settings are not hers
        assert marketer.goto(base + "/console/settings").status == 403
        marketer.goto(base + "/console/account")
        axe_check(marketer)
        screenshots(marketer, "account")
        marketer.close()

        # The admin's own pages
        page.goto(base + "/console/")
        axe_check(page)
        page.goto(base + "/console/account/2fa")
        axe_check(page)
        screenshots(page, "totp-setup")
    finally:
        page.close()
    # And the audit log recorded each action with its actor
    with db.session_scope(live_console.settings) as s:
        entries = [(e.actor, e.action, e.target) for e in audit.entries(s, limit=None)]
        assert s.execute(select(ApiKey.scopes).where(ApiKey.name == "warehouse")).scalar_one() == "notices,customers"
        assert audit.verify(s).ok
    assert ("admin@shop.example.com", "user.create", "user:mia@shop.example.com") in entries
    assert ("admin@shop.example.com", "apikey.create", "apikey:warehouse") in entries
    assert ("admin@shop.example.com", "user.login", "user:admin@shop.example.com") in entries
    assert ("mia@shop.example.com", "user.login", "user:mia@shop.example.com") in entries
