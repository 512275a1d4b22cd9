"""A real browser signs up on the hosted form in Polish, gets the confirmation at a real SMTP server and confirms.

The app is served by uvicorn in a thread on 127.0.0.1; mail goes through the in-process
worker to the aiosmtpd sink.  Needs Debian's /usr/bin/chromium (skips with
"needs-service: chromium" otherwise, as tests/test_browser_templates.py).  A screenshot
of the form and of the confirmation are saved under artifacts/screenshots/.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from click.testing import CliRunner
from sqlalchemy import select

from mailer.app import App, set_app
from mailer.cli import main
from mailer.consent import wordings
from mailer.models import ConsentEvent, ConsentRequest
from mailer.settings import PROJECT_ROOT
from mailer.transport import ratelimit
from mailer.web.app import create_app
from tests.conftest import _run_stub_worker, make_settings
from tests.smtp_sink import free_port

CHROMIUM = Path(os.environ.get("MAILER_TEST_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
#: How long to wait for the server to start or a mail to arrive, seconds (a bound, not a measurement).
WAIT_S = 30
PL_TEXT = ("Tak, chcę otrzymywać newsletter Northwind Shop z ofertami i nowościami. "
           "Mogę zrezygnować w każdej chwili.")
USER_AGENT = "mailer-journey/1.0 (Playwright; Chromium)"

pytestmark = pytest.mark.browser


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        msg = (f"needs-service: chromium ({CHROMIUM} missing; apt-get install chromium chromium-driver "
               "fonts-noto-core fonts-noto-cjk fonts-dejavu-core)")
        if os.environ.get("MAILER_REQUIRE_SERVICES") == "1":
            pytest.fail(msg + " (MAILER_REQUIRE_SERVICES=1)")
        pytest.skip(msg)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def served(db_url, smtp_sink, tmp_path):
    """The app on uvicorn in a thread, mailing the aiosmtpd sink through the in-process worker."""
    ratelimit.reset()
    port = free_port()
    for name in ("forms", "wordings"):
        shutil.copytree(PROJECT_ROOT / name, tmp_path / name)
    app = App(make_settings(database_url=db_url, smtp_url=smtp_sink.url, base_url=f"http://127.0.0.1:{port}",
                            forms_dir=tmp_path / "forms", wordings_dir=tmp_path / "wordings"))
    previous = set_app(app)
    worker = _run_stub_worker(app)
    broker = next(worker)
    server = uvicorn.Server(uvicorn.Config(create_app(app=app), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield app, broker, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(WAIT_S)
    next(worker, None)
    app.close()
    set_app(previous)


def test_a_visitor_signs_up_in_polish_and_confirms_from_the_mail(browser, served, smtp_sink, artifacts_dir, db_url):
    app, broker, base = served
    shots = artifacts_dir / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(user_agent=USER_AGENT)
    # Given the hosted form opened for pl
    page.goto(f"{base}/f/newsletter?locale=pl")
    assert page.locator("html").get_attribute("lang") == "pl"
    assert PL_TEXT in page.content()
    # When the visitor types an address and submits
    page.get_by_label("Adres e-mail").fill("ola@example.com")
    page.screenshot(path=str(shots / "signup-form-pl.png"), full_page=True)
    page.get_by_role("button", name="Zapisz się").click()
    page.wait_for_load_state()
    assert "Sprawdź skrzynkę" in page.content()
    # Then the confirmation arrives at the SMTP server, in Polish, and nothing is granted yet
    broker.drain()
    deadline = time.monotonic() + WAIT_S
    while not smtp_sink.received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r.rcpt_tos for r in smtp_sink.received] == [["ola@example.com"]]
    msg = smtp_sink.received[0].message
    html = msg.get_body(("html",)).get_content()
    assert msg["Content-Language"] in (None, "pl") and "Potwierd" in (html + str(msg["Subject"]))
    with app.session() as s:
        assert s.execute(select(ConsentEvent)).first() is None
    link = re.search(r'href="(http://127\.0\.0\.1:\d+/confirm/[^"]+)"', html).group(1)
    # When they open the link in the browser and confirm
    page.goto(link.replace("&amp;", "&"))
    page.get_by_role("button").click()
    page.wait_for_load_state()
    page.screenshot(path=str(shots / "signup-confirmed-pl.png"), full_page=True)
    assert "Subskrypcja potwierdzona" in page.content()
    # Then the ledger holds a grant with the wording's hash, the IP, the user agent and the confirmation
    with app.session() as s:
        ev = s.execute(select(ConsentEvent)).scalar_one()
        req = s.execute(select(ConsentRequest)).scalar_one()
    assert ev.purpose == "newsletter" and ev.wording_sha256 == wordings.sha256(PL_TEXT)
    assert ev.confirmed_at is not None and ev.form_id == "newsletter"
    assert ev.ip_digest is not None and ev.user_agent_digest is not None  # the grant's own proof, salted
    assert req.proof["ip"] == "127.0.0.1" and req.proof["user_agent"] == USER_AGENT
    assert req.proof["confirm_user_agent"] == USER_AGENT
    # And `mailer consent verify` passes
    result = CliRunner().invoke(main, ["consent", "verify"], env={"MAILER_DATABASE_URL": db_url})
    assert result.exit_code == 0, result.output


class _ShopSite:
    """A storefront on another origin (its own port): one page with the pasted embed snippet."""

    def __init__(self, html: str):
        import http.server

        body = html.encode("utf-8")

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # the stdlib names it
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _shop_page(snippet: str) -> str:
    return ('<!doctype html><html lang="pl"><head><meta charset="utf-8"><title>Sklep</title></head>'
            f"<body><h1>Sklep Northwind</h1>{snippet}</body></html>")


def test_the_embed_snippet_works_from_an_allowed_origin_and_is_refused_from_another(browser, served, smtp_sink,
                                                                                     artifacts_dir):
    app, broker, base = served
    import httpx

    # Given the snippet a shop pastes, served from two storefronts on other origins, one of them allowed
    snippet = httpx.get(f"{base}/f/newsletter/embed?locale=pl").text
    allowed, other = _ShopSite(_shop_page(snippet)), _ShopSite(_shop_page(snippet))
    try:
        form_file = app.settings.forms_dir / "newsletter.toml"
        form_file.write_text(form_file.read_text().replace(
            'allowed_origins = ["https://shop.example.com"]',
            f'allowed_origins = ["https://shop.example.com", "{allowed.origin}"]'))
        page = browser.new_page(user_agent=USER_AGENT)
        # When a visitor signs up on the allowed storefront (the script posts with fetch, across origins)
        page.goto(f"{allowed.origin}/")
        page.get_by_label("Adres e-mail").fill("ewa@example.com")
        page.get_by_role("button", name="Zapisz się").click()
        status = page.locator("[data-mailer-status]")
        status.filter(has_text="Dziękujemy").wait_for(timeout=WAIT_S * 1000)
        page.screenshot(path=str(artifacts_dir / "screenshots" / "signup-embed-allowed.png"), full_page=True)
        # Then the page stays on the shop, and the confirmation mail goes to the address
        assert page.url.startswith(allowed.origin)
        broker.drain()
        deadline = time.monotonic() + WAIT_S
        while not smtp_sink.received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [r.rcpt_tos for r in smtp_sink.received] == [["ewa@example.com"]]
        # When the same snippet is used on a storefront that is not allowed
        page2 = browser.new_page(user_agent=USER_AGENT)
        page2.goto(f"{other.origin}/")
        page2.get_by_label("Adres e-mail").fill("eve@example.com")
        page2.get_by_role("button", name="Zapisz się").click()
        page2.locator("[data-mailer-status]").filter(has_text="Sorry").wait_for(timeout=WAIT_S * 1000)
        # Then nothing is stored for that address and no mail is sent to it
        broker.drain()
        with app.session() as s:
            proofs = [r.proof.get("form_id") for r in s.execute(select(ConsentRequest)).scalars()]
        assert len(proofs) == 1
        assert [r.rcpt_tos for r in smtp_sink.received] == [["ewa@example.com"]]
    finally:
        allowed.close()
        other.close()
