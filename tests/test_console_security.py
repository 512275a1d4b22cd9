"""Console security: every route refused without login and without the role, CSRF, session rotation,
throttled logins, security headers, and escaping of text that comes from outside.

The route tests enumerate ``app.routes`` under /console, so a route another area adds later
is covered without touching this file; a route with neither ``require()`` nor a place in
``PUBLIC_ROUTES`` fails the inventory test.
"""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from mailer.models import Campaign, CampaignStatus
from mailer.transport import ratelimit
from mailer.users import sessions
from mailer.web.app import create_app
from mailer.web.console import csrf, headers, roles
from tests.conftest import installed_app, make_settings
from tests.console_support import (
    DEFAULT_PASSWORD,
    PUBLIC_ROUTES,
    concrete,
    console_routes,
    csrf_from,
    guard_of,
    login,
    make_console_user,
)

ROLES = ("admin", "marketer", "compliance", "viewer")
XSS = "<script>alert(1)</script>"


@pytest.fixture
def web(app):
    ratelimit.reset()
    with TestClient(create_app(app=app)) as client:
        yield client


def _routes(client):
    return console_routes(client.app)


def test_every_console_route_is_guarded_or_listed_as_public(web):
    # Given every route the app serves under /console
    routes = _routes(web)
    assert len(routes) >= 10
    # Then each has a require() guard, or is one of the few public ones (login, logout, set-password)
    unguarded = [(p, m) for p, m, r in routes if guard_of(r) is None and (p, m) not in PUBLIC_ROUTES]
    assert unguarded == []
    # And every guard names a known area
    assert {guard_of(r)[0] for _, _, r in routes if guard_of(r)} <= roles.AREAS


def test_without_login_every_guarded_route_redirects_to_the_login_page(web):
    # Given a browser that never logged in, holding a valid pre-login CSRF token (so CSRF is not what stops it)
    token = csrf_from(web.get("/console/login").text)
    checked = 0
    for path, method, route in _routes(web):
        if guard_of(route) is None:
            continue
        # When it requests the route
        r = web.request(method, concrete(path), headers={csrf.HEADER: token}, follow_redirects=False)
        # Then it is sent to the login page, coming back here afterwards
        assert r.status_code == 303, (method, path, r.status_code, r.text[:200])
        assert r.headers["location"].startswith("/console/login?next=%2Fconsole"), (method, path)
        checked += 1
    assert checked >= 8


def test_a_role_without_the_area_gets_403_on_every_route(app, console_as):
    clients = {role: console_as(role) for role in ("marketer", "compliance", "viewer")}
    checked = 0
    for path, method, route in _routes(clients["viewer"]):
        guard = guard_of(route)
        if guard is None:
            continue
        area, write = guard
        for role, client in clients.items():
            if roles.allowed(role, area, write=write):
                continue
            # When a user whose role lacks the area calls it (with a valid CSRF token)
            r = client.request(method, concrete(path), headers={csrf.HEADER: client.csrf_token},
                               follow_redirects=False)
            # Then the server refuses with the 403 page
            assert r.status_code == 403, (role, method, path, r.status_code)
            assert "Not allowed" in r.text
            checked += 1
    assert checked >= 10


def test_the_roles_table():
    assert roles.allowed("admin", "users", write=True) and roles.allowed("admin", "customers", write=True)
    assert roles.allowed("marketer", "campaigns", write=True) and not roles.allowed("marketer", "customers")
    assert roles.allowed("compliance", "audit") and not roles.allowed("compliance", "campaigns")
    assert roles.allowed("viewer", "campaigns") and not roles.allowed("viewer", "campaigns", write=True)
    assert not roles.allowed("viewer", "customers") and not roles.allowed("marketer", "settings")
    assert all(roles.allowed(r, "dashboard") for r in ROLES)
    with pytest.raises(ValueError):
        roles.allowed("admin", "nonsense")


def test_a_state_changing_request_without_the_csrf_token_gets_403(app, console_as):
    # Given an admin (who may do everything) logged in
    admin = console_as("admin")
    unsafe = [(p, m) for p, m, _ in _routes(admin) if m in ("POST", "PUT", "PATCH", "DELETE")]
    assert unsafe
    for path, method in unsafe:
        # When a request changes something without the token, or with a wrong one
        for extra in ({}, {"data": {"csrf_token": "forged"}}, {"headers": {csrf.HEADER: "forged"}}):
            r = admin.request(method, concrete(path), follow_redirects=False, **extra)
            # Then it is refused before the handler runs
            assert r.status_code == 403, (method, path, extra, r.status_code)
    # And with the token the same kind of request works
    r = admin.post("/console/settings/users", data={"csrf_token": admin.csrf_token, "email": "new@example.com",
                                                    "role": "viewer"})
    assert r.status_code == 200 and "new@example.com" in r.text


def test_the_login_form_itself_needs_its_csrf_token(app, web):
    make_console_user(app, "ann@example.com", "admin")
    r = web.post("/console/login", data={"email": "ann@example.com", "password": DEFAULT_PASSWORD},
                 follow_redirects=False)
    assert r.status_code == 403
    assert csrf.SESSION_COOKIE not in r.cookies


def test_the_session_id_is_rotated_at_login(app, web):
    # Given a user, and a browser carrying a session id planted before login (fixation)
    make_console_user(app, "ann@example.com", "admin")
    web.cookies.set(csrf.SESSION_COOKIE, "planted-by-an-attacker-0123456789abcdef", domain="testserver.local",
                    path="/console")
    # When the user logs in
    login(web, "ann@example.com")
    first = web.cookies.get(csrf.SESSION_COOKIE)
    # Then the session id is a new one
    assert first and first != "planted-by-an-attacker-0123456789abcdef"
    # And logging in again gives yet another id, and the old one no longer works
    login(web, "ann@example.com")
    second = web.cookies.get(csrf.SESSION_COOKIE)
    assert second != first
    with TestClient(web.app) as other:
        other.cookies.set(csrf.SESSION_COOKIE, first, domain="testserver.local", path="/console")
        assert other.get("/console/", follow_redirects=False).status_code == 303
        other.cookies.clear()
        other.cookies.set(csrf.SESSION_COOKIE, second, domain="testserver.local", path="/console")
        assert other.get("/console/", follow_redirects=False).status_code == 200


def test_the_session_cookie_is_httponly_samesite_lax_and_secure_behind_https(db_url):
    for base_url, secure in (("http://127.0.0.1:8000", False), ("https://mail.example.com", True)):
        settings = make_settings(database_url=db_url, base_url=base_url)
        for application in installed_app(settings):
            ratelimit.reset()
            email = f"c{int(secure)}@example.com"
            make_console_user(application, email, "viewer")
            with TestClient(create_app(app=application), base_url="https://testserver") as client:
                token = csrf_from(client.get("/console/login").text)
                r = client.post("/console/login", data={"csrf_token": token, "email": email,
                                                        "password": DEFAULT_PASSWORD}, follow_redirects=False)
            cookie = next(v for k, v in r.headers.multi_items()
                          if k == "set-cookie" and v.startswith(csrf.SESSION_COOKIE + "="))
            assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/console" in cookie
            # the request itself was HTTPS here, so Secure is always set; over plain HTTP it follows MAILER_BASE_URL
            assert "Secure" in cookie
            with TestClient(create_app(app=application)) as plain:
                from starlette.requests import Request

                scope = {"type": "http", "scheme": "http", "path": "/", "headers": [], "server": ("x", 80)}
                assert csrf.secure(Request(scope), settings) is secure
                assert plain.get("/console/login").status_code == 200


def _bucket(window_ms: int) -> int:
    return int(time.time() * 1000) // window_ms


def test_logins_are_throttled_per_ip(db_url):
    # Given at most 2 login attempts per IP per minute
    settings = make_settings(database_url=db_url, console_login_ip_per_minute=2, console_login_account_per_15min=0)
    for application in installed_app(settings):
        ratelimit.reset()
        make_console_user(application, "ann@example.com", "admin")
        with TestClient(create_app(app=application)) as client:
            token = csrf_from(client.get("/console/login").text)
            codes = []
            # When five wrong passwords come in a row from one IP (at most two minute buckets: one holds 3+)
            for _ in range(5):
                before = _bucket(sessions.IP_WINDOW_MS)
                r = client.post("/console/login", data={"csrf_token": token, "email": "ann@example.com",
                                                        "password": "wrong password!!"}, follow_redirects=False)
                codes.append(r.status_code)
            # Then some are refused as throttled (429), with no session
            assert 429 in codes and set(codes) <= {401, 429}, codes
            # And right after a refusal even the right password is refused in the same window
            r = client.post("/console/login", data={"csrf_token": token, "email": "ann@example.com",
                                                    "password": DEFAULT_PASSWORD}, follow_redirects=False)
            if _bucket(sessions.IP_WINDOW_MS) == before and codes[-1] == 429:
                assert r.status_code == 429
                assert csrf.SESSION_COOKIE not in r.cookies
                assert "too many login attempts" in r.text


def test_logins_are_throttled_per_account_across_processes_through_redis(db_url, redis_url):
    # Given the Redis limiter and at most 2 attempts per account per 15 minutes (no per-IP limit)
    settings = make_settings(database_url=db_url, broker_url=redis_url, console_login_ip_per_minute=0,
                             console_login_account_per_15min=2)
    for application in installed_app(settings):
        make_console_user(application, "bob@example.com", "marketer")
        statuses = []
        before = _bucket(sessions.ACCOUNT_WINDOW_MS)
        for _attempt in range(3):
            # When each attempt comes through a fresh limiter (as from another process) on the same Redis
            ratelimit.reset()
            with TestClient(create_app(app=application)) as client:
                token = csrf_from(client.get("/console/login").text)
                r = client.post("/console/login", data={"csrf_token": token, "email": "BOB@example.com",
                                                        "password": "not the password"}, follow_redirects=False)
                statuses.append(r.status_code)
        # Then the third attempt on the account is throttled: the budget is shared
        if _bucket(sessions.ACCOUNT_WINDOW_MS) == before:
            assert statuses == [401, 401, 429]
        else:
            assert 401 in statuses


def test_console_responses_carry_the_strict_csp(web):
    for path in ("/console/login", "/console/static/console.css", "/console/static/htmx.min.js"):
        r = web.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-security-policy"] == headers.CSP
        assert r.headers["x-content-type-options"] == "nosniff"
    assert "unsafe-inline" not in headers.CSP and "script-src 'self'" in headers.CSP
    assert web.get("/console/login").headers["cache-control"] == "no-store"
    # the rest of the app is not affected
    assert "content-security-policy" not in web.get("/healthz").headers


def test_no_console_template_has_inline_script_style_or_event_handlers():
    import re

    from mailer.web.console.render import TEMPLATE_DIR

    for path in TEMPLATE_DIR.rglob("*.html"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), path
        assert not re.search(r"\sstyle\s*=", text), path
        assert not re.search(r"\son[a-z]+\s*=", text, re.I), path
        assert "<style" not in text, path


def test_text_from_outside_is_shown_as_text(app, console_as):
    # Given a running campaign whose name is a script, and mail of a kind named like one
    with app.session() as s:
        s.add(Campaign(name=XSS, template="newsletter/product_launch", segment="all", purpose="newsletter",
                       status=CampaignStatus.running))
    admin = console_as("admin")
    # When the dashboard shows it
    page = admin.get("/console/").text
    # Then it is escaped text, never markup
    assert XSS not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # And a login form echoing a typed address escapes it too
    with TestClient(admin.app) as anon:
        token = csrf_from(anon.get("/console/login").text)
        r = anon.post("/console/login", data={"csrf_token": token, "email": f'"><{XSS}', "password": "x"})
        assert XSS not in r.text and "&lt;script&gt;" in r.text


def test_next_after_login_stays_on_the_console(app, web):
    make_console_user(app, "ann@example.com", "admin")
    token = csrf_from(web.get("/console/login").text)
    for bad in ("https://evil.example.com/", "//evil.example.com/console", "/elsewhere", "/console\\@evil"):
        r = web.post("/console/login", data={"csrf_token": token, "email": "ann@example.com",
                                             "password": DEFAULT_PASSWORD, "next": bad}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/console/", bad
        token = csrf_from(web.get("/console/account").text)
        web.post("/console/logout", data={"csrf_token": token})
        token = csrf_from(web.get("/console/login").text)


def test_set_password_tokens_are_kept_out_of_logs():
    from mailer.web.security import redact

    assert redact('"GET /console/set-password/s3cr3tTOKEN HTTP/1.1" 200') == \
        '"GET /console/set-password/[redacted] HTTP/1.1" 200'
