"""Test support for the console: users, logged-in clients, the live server, axe-core and screenshots.

* ``make_console_user(app_or_settings, email, role, password=..., totp=False)`` stores a user
  with a password (and a TOTP secret) directly through :mod:`mailer.users.accounts`.
* ``login(client, email, password)`` logs a starlette TestClient in; returns the CSRF token.
* ``console_client(app, role)`` (behind the ``console_as(role)`` fixture of tests/conftest.py).
* :class:`LiveConsole` (the ``live_console`` fixture): ``mailer serve`` and a worker as
  subprocesses on Redis, the aiosmtpd sink and a SQLite file.
* ``axe_check(page)`` fails on serious or critical axe-core violations, naming them.
* ``screenshots(page, name)`` writes artifacts/console/<name>-375.png and -1280.png.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyotp
from fastapi.testclient import TestClient

from mailer import db
from mailer.app import App
from mailer.clock import utcnow
from mailer.models import ConsoleUser
from mailer.settings import PROJECT_ROOT, Settings
from mailer.transport import ratelimit
from mailer.users import accounts
from mailer.web.app import create_app

#: The password make_console_user gives when none is named.
DEFAULT_PASSWORD = "correct horse battery staple"  # a test fixture's password  # nosec B105
#: Where console screenshots go.
ARTIFACTS = PROJECT_ROOT / "artifacts" / "console"
#: Viewport widths of every console screenshot, CSS pixels.
WIDTHS = (375, 1280)
#: Longest wait for the live server or worker to come up, seconds.
START_S = 60.0
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_counter = itertools.count(1)
#: Elements sticking out sideways (the same check as tests/test_browser_templates.py).
OVERFLOW_JS = """() => {
  const w = document.documentElement.clientWidth;
  const bad = [];
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    if (r.right > w + 1 || r.left < -1) bad.push(el.tagName + ' ' + Math.round(r.left) + '..' + Math.round(r.right));
  }
  return {scrollWidth: document.documentElement.scrollWidth, clientWidth: w, bad: bad.slice(0, 5)};
}"""


def _settings_of(app_or_settings) -> Settings:
    if isinstance(app_or_settings, Settings):
        return app_or_settings
    if isinstance(app_or_settings, App):
        return app_or_settings.settings
    return app_or_settings.state.mailer.settings  # a FastAPI app


def make_console_user(app_or_settings, email: str, role: str, password: str = DEFAULT_PASSWORD,
                      totp: bool = False, locale: str = "en") -> ConsoleUser:
    """A console user with a password set (and a confirmed TOTP secret when ``totp``); detached row."""
    settings = _settings_of(app_or_settings)
    with db.session_scope(settings) as s:
        invite = accounts.create(s, settings, email, role, actor="test", locale=locale)
        accounts.set_password_with_token(s, invite.token, password)
        user = s.get(ConsoleUser, invite.user_id)
        if totp:
            user.totp_secret = pyotp.random_base32()
        s.flush()
        s.expunge(user)
    return user


def totp_code(user: ConsoleUser) -> str:
    return pyotp.TOTP(user.totp_secret).now()


def csrf_from(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no csrf_token field in the page"
    return found.group(1)


def login(client: TestClient, email: str, password: str = DEFAULT_PASSWORD, totp: str | None = None) -> str:
    """Log ``client`` in (the real form, with its CSRF token); returns the session's CSRF token."""
    page = client.get("/console/login")
    assert page.status_code == 200, page.text
    data = {"csrf_token": csrf_from(page.text), "email": email, "password": password, "next": "/console/"}
    if totp is not None:
        data["totp"] = totp
    r = client.post("/console/login", data=data, follow_redirects=False)
    assert r.status_code == 303, (r.status_code, r.text[:500])
    home = client.get("/console/account")
    assert home.status_code == 200, home.text[:500]
    return csrf_from(home.text)


def console_client(app: App, role: str, *, email: str | None = None, password: str = DEFAULT_PASSWORD,
                   **user_kwargs) -> TestClient:
    """A TestClient on ``app``'s HTTP app, logged in as a new user of ``role``."""
    ratelimit.reset()  # each test starts with a fresh login budget on the in-memory limiter
    email = email or f"{role}{next(_counter)}@console.example.com"
    make_console_user(app, email, role, password, **user_kwargs)
    client = TestClient(create_app(app=app))
    client.csrf_token = login(client, email, password)
    client.email = email
    return client


# -- the live server ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveConsole:
    """``mailer serve`` + ``mailer worker`` subprocesses on a SQLite file, Redis and the SMTP sink."""

    def __init__(self, tmp_path: Path, redis_url: str, sink):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.sink = sink
        self.db_url = f"sqlite:///{tmp_path / 'console.db'}"
        self.env = {**os.environ, "MAILER_DATABASE_URL": self.db_url, "MAILER_BROKER_URL": redis_url,
                    "MAILER_SMTP_URL": sink.url, "MAILER_SECRET_KEY": "live-console-test",
                    "MAILER_BASE_URL": self.base_url, "MAILER_FREQUENCY_CAP": "0", "MAILER_SWEEP_INTERVAL_S": "1",
                    "MAILER_TEMPLATES_DIR": str(PROJECT_ROOT / "templates"),
                    "MAILER_SEGMENTS_DIR": str(PROJECT_ROOT / "segments"),
                    "MAILER_AUTOMATIONS_DIR": str(PROJECT_ROOT / "automations"),
                    "MAILER_HTTP_PORT": str(self.port), "PYTHONPATH": str(PROJECT_ROOT), "COLUMNS": "200"}
        self.settings = Settings.from_env(self.env)
        self.server: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.log_dir = tmp_path

    def start(self) -> None:
        db.upgrade(self.db_url)
        self.worker = subprocess.Popen([sys.executable, "-m", "dramatiq", "mailer.worker.boot", "--processes", "1",
                                        "--threads", "2"], env=self.env, cwd=PROJECT_ROOT,
                                       stdout=subprocess.DEVNULL, stderr=(self.log_dir / "worker.log").open("wb"))
        self.server = subprocess.Popen([sys.executable, "-m", "mailer.cli", "serve", "--port", str(self.port)],
                                       env=self.env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                                       stderr=(self.log_dir / "serve.log").open("wb"))
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError("mailer serve exited: " + (self.log_dir / "serve.log").read_text()[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"mailer serve did not listen on {self.port} within {START_S} s")

    def make_user(self, email: str, role: str, *, totp: bool = False) -> str:
        """A console user of ``role``; returns the password."""
        make_console_user(self.settings, email, role, DEFAULT_PASSWORD, totp=totp)
        return DEFAULT_PASSWORD

    def stop(self) -> None:
        for proc in (self.server, self.worker):
            if proc is None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        db.dispose_engines()


# -- browser checks ----------------------------------------------------------------------------
def axe_check(page, *, impacts: tuple[str, ...] = ("serious", "critical")) -> None:
    """Run axe-core on the page; fail naming every serious or critical violation."""
    from axe_playwright_python.sync_playwright import Axe  # heavy: loaded by browser tests only

    results = Axe().run(page)
    bad = [v for v in results.response.get("violations", []) if v.get("impact") in impacts]
    assert not bad, "axe-core violations on " + page.url + ":\n" + "\n".join(
        f"- {v['id']} ({v['impact']}): {v['help']}: " + ", ".join(str(n.get("target")) for n in v.get("nodes", [])[:5])
        for v in bad)


def screenshots(page, name: str) -> list[Path]:
    """Full-page screenshots at 375 and 1280 px wide: artifacts/console/<name>-<width>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    original = page.viewport_size or {"width": 1280, "height": 900}
    paths = []
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        path = ARTIFACTS / f"{name}-{width}.png"
        page.screenshot(path=str(path), full_page=True)
        paths.append(path)
    page.set_viewport_size(original)
    return paths


def stamp() -> str:
    return utcnow().strftime("%Y%m%d%H%M%S")


# -- route inventory (the security tests walk every console route) -------------------------------
#: Routes anyone may reach without logging in: (path, method).
PUBLIC_ROUTES = frozenset({("/console/login", "GET"), ("/console/login", "POST"), ("/console/logout", "POST"),
                           ("/console/set-password/{token}", "GET"), ("/console/set-password/{token}", "POST")})


def console_routes(api) -> list[tuple[str, str, object]]:
    """Every (path, method, route) the app serves under /console (static files excluded)."""
    from fastapi.routing import APIRoute, iter_route_contexts

    out = []
    # FastAPI keeps included routers nested; iter_route_contexts flattens them with their full paths.
    for ctx in iter_route_contexts(api.routes):
        if isinstance(ctx.route, APIRoute) and ctx.path.startswith("/console"):
            out.extend((ctx.path, method, ctx.route) for method in sorted(ctx.methods or ()))
    return out


def guard_of(route) -> tuple[str, bool] | None:
    """(area, write) of the ``require()`` dependency a route has, or None."""
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        area = getattr(dep.call, "console_area", None)
        if area is not None:
            return area, dep.call.console_write
        stack.extend(dep.dependencies)
    return None


def concrete(path: str) -> str:
    """A path with every ``{param}`` filled with ``1``."""
    return re.sub(r"\{[^}]+\}", "1", path)
