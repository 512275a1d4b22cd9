"""End to end with real parts: Redis broker + Dramatiq worker, aiosmtpd, uvicorn, the mailer CLI.

1. The one-click flow: a campaign mail arrives at the SMTP sink, its List-Unsubscribe
   URL is POSTed (RFC 8058 body) to the real HTTP server, and the next campaign to the
   same segment does not reach that address.  A tampered token and an open-redirect
   attempt against the real server change nothing.
2. A marketer's session from the command line: ``mailer campaign create / preview /
   send / status --watch / report`` against a ``dramatiq`` worker process on Redis that
   delivers to the SMTP sink.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from email import message_from_bytes, policy
from urllib.parse import urlsplit

import dramatiq
import httpx
import pytest
import uvicorn

from mailer.app import App, set_app
from mailer.campaigns import fanout as campaign_actors
from mailer.campaigns import service as campaigns
from mailer.queue.broker import QUEUES
from mailer.settings import PROJECT_ROOT
from mailer.web.app import create_app
from mailer.worker.actors import setup
from tests.campaign_support import add_customer
from tests.conftest import make_settings
from tests.smtp_sink import free_port

pytestmark = [pytest.mark.redis, pytest.mark.smtp, pytest.mark.slow]

#: Upper bound for anything to arrive, seconds (a safety net, not a timing assertion).
WAIT_S = 90


class Server:
    """uvicorn serving the ASGI app on a free port, in a thread of this process."""

    def __init__(self, asgi, port: int):
        self.port = port
        self.server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + WAIT_S
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=WAIT_S)


def _wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def live(db_url, redis_url, smtp_sink):
    """App + Redis broker + in-process Dramatiq worker + uvicorn on a free port."""
    port = free_port()
    settings = make_settings(database_url=db_url, broker_url=redis_url, smtp_url=smtp_sink.url,
                             base_url=f"http://127.0.0.1:{port}")
    app = App(settings)
    previous = set_app(app)
    broker = setup(settings)
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    with Server(create_app(app=app), port):
        app.broker, app.worker, app.server_url = broker, worker, f"http://127.0.0.1:{port}"
        yield app
    worker.stop()
    broker.close()
    app.close()
    set_app(previous)


def _drain(app) -> None:
    for _ in range(3):
        for q in QUEUES:
            app.broker.join(q, timeout=WAIT_S * 1000)
        app.worker.join()


def _run_campaign(app, name: str) -> int:
    renderer = app.renderer
    with app.session() as s:
        cid = campaigns.create(s, app.settings, renderer, name=name, template="newsletter/product_launch",
                               segment="newsletter_all", data=renderer.sample("newsletter/product_launch")).id
        campaigns.send(s, app.settings, cid)
    campaign_actors.start(app, cid)
    _drain(app)
    return cid


def test_one_click_unsubscribe_end_to_end(live, smtp_sink):
    app = live
    with app.session() as s:
        for who in ("ann", "bob", "eve"):
            add_customer(s, app.settings, f"{who}@example.com")
    # Given a campaign delivered through Redis and the worker to the SMTP sink
    _run_campaign(app, "Launch")
    assert sorted(r.rcpt_tos[0] for r in smtp_sink.received) == ["ann@example.com", "bob@example.com",
                                                                  "eve@example.com"]
    mail = next(r for r in smtp_sink.received if r.rcpt_tos == ["bob@example.com"])
    msg = message_from_bytes(mail.raw, policy=policy.strict)
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https_link = re.search(r"<(http[^>]+)>", msg["List-Unsubscribe"]).group(1)
    assert https_link.startswith(app.server_url + "/u/")
    with httpx.Client(follow_redirects=False, timeout=30) as http:
        # A tampered token changes nothing
        token = urlsplit(https_link).path.rsplit("/", 1)[1]
        tampered = f"{app.server_url}/u/{token[:-3]}{'AAA' if token[-3:] != 'AAA' else 'BBB'}"
        bad = http.post(tampered, content=b"List-Unsubscribe=One-Click",
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert bad.status_code in (400, 404)
        # An open-redirect attempt through a click link goes nowhere but the signed URL
        html = msg.get_body(("html",)).get_content()
        click = next(u for u in re.findall(r'href="([^"]+)"', html) if "/t/c/" in u)
        r = http.get(click.replace("&amp;", "&") + "?url=https://evil.example.net/")
        assert r.status_code == 302 and "evil.example.net" not in r.headers["location"]
        # When the recipient's mail provider POSTs the RFC 8058 body to the header's URL
        r = http.post(https_link, content=b"List-Unsubscribe=One-Click",
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 200 and "set-cookie" not in r.headers and "location" not in r.headers
    # Then the next campaign to the same segment does not reach that address
    before = len(smtp_sink.received)
    _run_campaign(app, "Second launch")
    second = [r.rcpt_tos[0] for r in smtp_sink.received[before:]]
    assert sorted(second) == ["ann@example.com", "eve@example.com"]


# -- the marketer's command line ------------------------------------------------------------------
def _cli(env: dict, *args: str, timeout: float = WAIT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailer.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=PROJECT_ROOT)


def test_marketer_creates_previews_sends_watches_and_reports_from_the_cli(db_url, redis_url, smtp_sink, tmp_path):
    env = {**os.environ, "MAILER_DATABASE_URL": db_url, "MAILER_BROKER_URL": redis_url,
           "MAILER_SMTP_URL": smtp_sink.url, "MAILER_SECRET_KEY": "cli-test", "MAILER_FREQUENCY_CAP": "0",
           "MAILER_SWEEP_INTERVAL_S": "1", "MAILER_TEMPLATES_DIR": str(PROJECT_ROOT / "templates"),
           "MAILER_SEGMENTS_DIR": str(PROJECT_ROOT / "segments"), "COLUMNS": "200"}
    settings = make_settings(database_url=db_url)
    app = App(settings)
    with app.session() as s:
        for i in range(12):
            add_customer(s, settings, f"reader{i}@example.com", locale=("pl", "en", "zh-TW")[i % 3])
    app.close()
    worker = subprocess.Popen([sys.executable, "-m", "dramatiq", "mailer.worker.boot", "--processes", "1", "--threads", "2"],
                              env=env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        created = _cli(env, "campaign", "create", "--name", "Autumn launch", "--template", "newsletter/product_launch",
                       "--segment", "newsletter_all", "--subject", "Autumn is here, {{ first_name }}")
        assert created.returncode == 0, created.stderr
        cid = created.stdout.strip()
        assert cid.isdigit()
        preview = _cli(env, "campaign", "preview", cid, "--email", "reader0@example.com", "-o",
                       str(tmp_path / "preview.html"))
        assert preview.returncode == 0, preview.stderr
        assert "Autumn is here, Ann" in preview.stdout
        assert "/u/" in (tmp_path / "preview.html").read_text(encoding="utf-8")
        sent = _cli(env, "campaign", "send", cid)
        assert sent.returncode == 0, sent.stderr
        watch = _cli(env, "campaign", "status", cid, "--watch", timeout=WAIT_S * 2)
        assert watch.returncode == 0, watch.stderr
        assert "completed" in watch.stdout and re.search(r"sent\s+12\b", watch.stdout), watch.stdout
        assert len(smtp_sink.received) == 12
        report = _cli(env, "campaign", "report", cid, "-o", str(tmp_path / "report.html"))
        assert report.returncode == 0, report.stderr
        page = (tmp_path / "report.html").read_text(encoding="utf-8")
        assert "Autumn launch" in page and "Most clicked links" in page and "<script" not in page
        listing = _cli(env, "campaign", "list")
        assert "Autumn launch" in listing.stdout and "completed" in listing.stdout
        # A bad request is refused with a clear error naming what is wrong
        bad = _cli(env, "campaign", "create", "--name", "x", "--template", "newsletter/product_launch",
                   "--segment", "no_such_segment")
        assert bad.returncode == 2 and "no_such_segment" in bad.stderr
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
