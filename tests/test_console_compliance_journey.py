"""The compliance journey in a real browser (Playwright, Debian's Chromium) against
``mailer serve`` with a real worker on Redis and the aiosmtpd sink (``live_console``):

find a customer; read their consent history with proof; download their access export
and check its contents; erase them; confirm that a later campaign skips them (a
campaign created and sent with the CLI, checked at the sink).  Each page is checked
with axe-core and photographed at 375 and 1280 px (artifacts/console/compliance-*).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from mailer import db
from mailer.models import Delivery, DeliveryStatus
from tests.compliance_support import IP, WORDING, WORDING_SHA, seed_person
from tests.console_support import axe_check, screenshots

pytestmark = [pytest.mark.browser, pytest.mark.redis, pytest.mark.smtp, pytest.mark.slow]

#: Bound on waiting for the campaign's mail, seconds (a bound, not a measurement).
WAIT_S = 90


def _env(settings) -> dict:
    env = dict(os.environ)
    env.update({"MAILER_DATABASE_URL": settings.database_url, "MAILER_BROKER_URL": settings.broker_url,
                "MAILER_SMTP_URL": settings.smtp_url, "MAILER_SECRET_KEY": settings.secret_key,
                "MAILER_BASE_URL": settings.base_url})
    return env


def _mailer(settings, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "mailer.cli", *args], env=_env(settings), capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def _look(page, name: str) -> None:
    axe_check(page)
    screenshots(page, f"compliance-{name}")


def test_compliance_officer_answers_an_access_and_an_erasure_request(live_console, browser, tmp_path):
    settings = live_console.settings
    # Given two newsletter subscribers with full proof, and a compliance officer
    ada = seed_person(settings, "ada@example.com", first_name="Ada", last_name="Lovelace")
    seed_person(settings, "bob@example.com", first_name="Bob", last_name="Builder")
    password = live_console.make_user("officer@example.com", "compliance")
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    base = live_console.base_url

    # When the officer logs in and finds Ada by her last name
    page.goto(f"{base}/console/login?next=/console/customers")
    page.fill("input[name=email]", "officer@example.com")
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/console/customers")
    _look(page, "search")
    page.fill("#q", "Lovel")
    page.click("form.search button[type=submit]")
    page.wait_for_selector(f"a[href='/console/customers/{ada}']")
    _look(page, "search-results")
    page.click(f"a[href='/console/customers/{ada}']")

    # Then her consent history shows the proof: the wording by its hash, IP, user agent, double opt-in
    page.wait_for_selector("#h-consent")
    body = page.inner_text("main") if page.query_selector("main") else page.inner_text("body")
    for expected in (WORDING, WORDING_SHA, IP, "confirmed"):
        assert expected in body, expected
    _look(page, "profile")

    # When she downloads the access export
    with page.expect_download() as info:
        page.click("text=Download the access export (JSON)")
    path = tmp_path / "export.json"
    info.value.save_as(path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    # Then it holds her profile, her consent events with their proof and her mail
    assert doc["format"] == "mailer-subject-access-export"
    assert doc["profiles"][0]["email"] == "ada@example.com"
    grants = [e for e in doc["consent"]["events"] if e["purpose"] == "newsletter"]
    assert grants and grants[0]["evidence"]["ip"] == IP and grants[0]["wording_sha256"] == WORDING_SHA
    assert doc["deliveries"][0]["smtp_reply"].startswith("250")

    # When she erases Ada, typing the address to confirm
    page.fill("#confirm", "ada@example.com")
    page.click("form.danger button[type=submit]")
    page.wait_for_selector("p.notice")
    assert "tombstone" in page.inner_text("p.notice")
    _look(page, "erased")

    # And a newsletter campaign is then sent to every subscriber
    out = _mailer(settings, "campaign", "create", "--name", "After the erasure", "--template",
                  "newsletter/seasonal_sale", "--segment", "newsletter_all", "--subject", "en=Winter sale")
    campaign_id = int(re.search(r"created draft campaign (\d+)", out).group(1))
    _mailer(settings, "campaign", "send", str(campaign_id))
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and not any("bob@example.com" in r.rcpt_tos
                                                  for r in live_console.sink.received):
        time.sleep(0.2)
    # Then Bob gets it and Ada does not: no mail to her address, no delivery row for her
    rcpts = [a for r in live_console.sink.received for a in r.rcpt_tos]
    assert "bob@example.com" in rcpts
    assert "ada@example.com" not in rcpts
    with db.session_scope(settings) as s:
        mine = s.query(Delivery).filter(Delivery.campaign_id == campaign_id, Delivery.customer_id == ada).all()
        assert all(d.status != DeliveryStatus.sent for d in mine)

    # And the consent page verifies the chain (the erasure's withdrawals included) and the audit log shows it all
    page.goto(f"{base}/console/consent")
    _look(page, "consent")
    page.click("text=Verify the chain")
    page.wait_for_selector("#head-hash")
    assert len(page.inner_text("#head-hash").strip()) == 64
    _look(page, "verify")
    page.goto(f"{base}/console/consent/wordings")
    _look(page, "wordings")
    page.goto(f"{base}/console/audit")
    audit_text = page.inner_text("table")
    assert "gdpr.export" in audit_text and "gdpr.erase" in audit_text
    _look(page, "audit")
    page.close()
