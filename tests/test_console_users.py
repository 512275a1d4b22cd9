"""Console users: `mailer users create/list/disable`, one-time set-password links, Argon2, TOTP,
required 2FA, idle timeout, log out everywhere, disabled accounts, and the audit entries they leave."""

from __future__ import annotations

from datetime import timedelta

import pyotp
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from mailer import audit
from mailer.cli import main
from mailer.clock import utcnow
from mailer.errors import InvalidState, LoginFailed, SecondFactorRequired, ValidationError
from mailer.models import AuditEntry, ConsoleSession, ConsoleToken, ConsoleUser
from mailer.transport import ratelimit
from mailer.users import accounts, sessions
from mailer.web.app import create_app
from mailer.web.console import csrf
from tests.conftest import installed_app, make_settings
from tests.console_support import DEFAULT_PASSWORD, csrf_from, login, make_console_user, totp_code


def _env(settings) -> dict:
    return {"MAILER_DATABASE_URL": settings.database_url, "MAILER_BROKER_URL": "stub://",
            "MAILER_SECRET_KEY": settings.secret_key, "MAILER_BASE_URL": "https://mail.example.com", "COLUMNS": "200"}


def _actions(app) -> list[str]:
    with app.session() as s:
        return [e.action for e in s.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars()]


@pytest.fixture
def web(app):
    ratelimit.reset()
    with TestClient(create_app(app=app)) as client:
        yield client


def test_users_create_prints_a_one_time_link_that_sets_an_argon2_password(app, web):
    # Given `mailer users create` for a new admin
    res = CliRunner().invoke(main, ["users", "create", "Ann@Example.com", "--role", "admin"], env=_env(app.settings))
    assert res.exit_code == 0, res.output
    link = res.stdout.strip()
    assert link.startswith("https://mail.example.com/console/set-password/")
    path = link.removeprefix("https://mail.example.com")
    # Then the account exists without a password, and only the token's hash is stored
    with app.session() as s:
        user = s.execute(select(ConsoleUser)).scalar_one()
        assert (user.email, user.role.value, user.password_hash) == ("ann@example.com", "admin", None)
        token = path.rsplit("/", 1)[1]
        assert s.execute(select(ConsoleToken.token_hash)).scalar_one() == accounts.token_hash(token) != token
    # When the person opens the link and sets a password
    page = web.get(path)
    assert page.status_code == 200 and "ann@example.com" in page.text
    too_short = web.post(path, data={"csrf_token": csrf_from(page.text), "password": "short", "confirm": "short"})
    assert too_short.status_code == 422 and "12 characters" in too_short.text
    r = web.post(path, data={"csrf_token": csrf_from(page.text), "password": DEFAULT_PASSWORD,
                             "confirm": DEFAULT_PASSWORD}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
    # Then the password is stored as an Argon2id hash, and the link is dead
    with app.session() as s:
        assert s.execute(select(ConsoleUser.password_hash)).scalar_one().startswith("$argon2id$")
    assert web.get(path).status_code == 404
    again = web.post(path, data={"csrf_token": csrf_from(page.text), "password": "another password 123",
                                 "confirm": "another password 123"})
    assert again.status_code == 404
    # And the person can log in with it
    login(web, "ann@example.com", DEFAULT_PASSWORD)
    assert web.get("/console/").status_code == 200
    assert _actions(app) == ["user.create", "user.password_set", "user.login"]


def test_an_expired_link_does_not_work(app, web):
    with app.session() as s:
        invite = accounts.create(s, app.settings, "bob@example.com", "viewer")
    with app.session() as s:
        s.execute(update(ConsoleToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert web.get(accounts.set_password_path(invite.token)).status_code == 404


def test_users_list_and_disable(app, web):
    env = _env(app.settings)
    make_console_user(app, "ann@example.com", "marketer")
    login(web, "ann@example.com")
    assert CliRunner().invoke(main, ["users", "create", "bob@example.com", "--role", "viewer"], env=env).exit_code == 0
    listing = CliRunner().invoke(main, ["users", "list"], env=env)
    assert listing.exit_code == 0
    assert "ann@example.com" in listing.stdout and "marketer" in listing.stdout and "password not set" in listing.stdout
    # When ann is disabled
    res = CliRunner().invoke(main, ["users", "disable", "ann@example.com"], env=env)
    assert res.exit_code == 0, res.output
    # Then her open session ends at once and she cannot log in again
    assert web.get("/console/", follow_redirects=False).status_code == 303
    token = csrf_from(web.get("/console/login").text)
    r = web.post("/console/login", data={"csrf_token": token, "email": "ann@example.com", "password": DEFAULT_PASSWORD})
    assert r.status_code == 401
    assert "disabled" in CliRunner().invoke(main, ["users", "list"], env=env).stdout
    # And bad input is a clear error
    bad = CliRunner().invoke(main, ["users", "create", "x@example.com", "--role", "owner"], env=env)
    assert bad.exit_code == 2 and "owner" in bad.output
    missing = CliRunner().invoke(main, ["users", "disable", "nobody@example.com"], env=env)
    assert missing.exit_code == 2 and "nobody@example.com" in missing.output
    assert _actions(app)[-1] == "user.disable"


def test_account_rules(app):
    with app.session() as s:
        accounts.create(s, app.settings, "ann@example.com", "admin")
    with app.session() as s, pytest.raises(InvalidState):
        accounts.create(s, app.settings, "ANN@example.com", "viewer")
    with app.session() as s, pytest.raises(ValidationError) as exc:
        accounts.create(s, app.settings, "not an address", "viewer")
    with app.session() as s, pytest.raises(ValidationError) as exc:
        accounts.create(s, app.settings, "c@example.com", "root")
    assert exc.value.field == "role"
    with pytest.raises(ValidationError):
        accounts.hash_password("x" * (accounts.MAX_PASSWORD_CHARS + 1))


def test_wrong_passwords_and_unknown_addresses_get_the_same_answer(app):
    make_console_user(app, "ann@example.com", "admin")
    messages = set()
    for email, password in (("ann@example.com", "wrong password 1"), ("nobody@example.com", DEFAULT_PASSWORD)):
        with app.session() as s, pytest.raises(LoginFailed) as exc:
            sessions.login(s, app.settings, email=email, password=password)
        messages.add(str(exc.value))
    assert messages == {sessions.LOGIN_REFUSED}


def test_totp_is_asked_for_and_each_code_works_once(app, web):
    # Given a user with a second factor
    user = make_console_user(app, "ann@example.com", "compliance", totp=True)
    token = csrf_from(web.get("/console/login").text)
    # When the password is right but no code is given
    r = web.post("/console/login", data={"csrf_token": token, "email": "ann@example.com", "password": DEFAULT_PASSWORD})
    # Then the form asks for the code, and no session is made
    assert r.status_code == 200 and 'name="totp"' in r.text and csrf.SESSION_COOKIE not in web.cookies
    # And a wrong code is refused
    r = web.post("/console/login", data={"csrf_token": token, "email": "ann@example.com",
                                         "password": DEFAULT_PASSWORD, "totp": "000000"})
    assert r.status_code == 401
    # When the right code is given, the user is in
    code = totp_code(user)
    login(web, "ann@example.com", totp=code)
    # And the same code cannot be used again (replay)
    with app.session() as s, pytest.raises(SecondFactorRequired):
        sessions.login(s, app.settings, email="ann@example.com", password=DEFAULT_PASSWORD, totp=code)


def test_required_2fa_sends_admins_to_set_it_up_first(db_url):
    settings = make_settings(database_url=db_url, console_require_2fa=True)
    for application in installed_app(settings):
        ratelimit.reset()
        make_console_user(application, "ann@example.com", "admin")
        make_console_user(application, "vic@example.com", "viewer")
        with TestClient(create_app(app=application)) as client:
            # Given an admin without TOTP under MAILER_CONSOLE_REQUIRE_2FA=1
            login(client, "ann@example.com")
            # When she opens any page, she is sent to the set-up page
            r = client.get("/console/settings", follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"] == "/console/account/2fa"
            page = client.get("/console/account/2fa")
            secret = page.text.split('<code class="secret">', 1)[1].split("</code>", 1)[0]
            # When she confirms a code from the secret shown
            r = client.post("/console/account/2fa", data={"csrf_token": csrf_from(page.text),
                                                          "code": pyotp.TOTP(secret).now()}, follow_redirects=False)
            assert r.status_code == 303
            # Then the pages open, and her next login needs a code
            assert client.get("/console/settings").status_code == 200
            with application.session() as s:
                assert s.execute(select(ConsoleUser.totp_secret).where(ConsoleUser.email == "ann@example.com")
                                 ).scalar_one() == secret
        with TestClient(create_app(app=application)) as viewer:
            # And a viewer is not required to have one
            login(viewer, "vic@example.com")
            assert viewer.get("/console/", follow_redirects=False).status_code == 200
        assert "user.totp_enable" in _actions(application)


def test_an_idle_session_ends(app, web):
    make_console_user(app, "ann@example.com", "admin")
    login(web, "ann@example.com")
    assert web.get("/console/", follow_redirects=False).status_code == 200
    # When the session has been unused for longer than MAILER_CONSOLE_IDLE_MINUTES
    with app.session() as s:
        s.execute(update(ConsoleSession).values(
            last_seen_at=utcnow() - timedelta(minutes=app.settings.console_idle_minutes + 1)))
    # Then the next request goes to the login page, and the session is revoked
    r = web.get("/console/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
    with app.session() as s:
        assert s.execute(select(ConsoleSession.revoked_at)).scalar_one() is not None


def test_log_out_and_log_out_everywhere(app):
    make_console_user(app, "ann@example.com", "admin")
    ratelimit.reset()
    laptop, phone = TestClient(create_app(app=app)), TestClient(create_app(app=app))
    laptop_token, phone_token = login(laptop, "ann@example.com"), login(phone, "ann@example.com")
    # Logging out ends only that browser's session
    laptop.post("/console/logout", data={"csrf_token": laptop_token})
    assert laptop.get("/console/", follow_redirects=False).status_code == 303
    assert phone.get("/console/", follow_redirects=False).status_code == 200
    laptop_token = login(laptop, "ann@example.com")
    # When she logs out everywhere from the phone
    r = phone.post("/console/account/logout-everywhere", data={"csrf_token": phone_token}, follow_redirects=False)
    assert r.status_code == 303
    # Then both browsers are logged out, and it is audited
    assert phone.get("/console/", follow_redirects=False).status_code == 303
    assert laptop.get("/console/", follow_redirects=False).status_code == 303
    with app.session() as s:
        assert s.execute(select(func.count()).where(ConsoleSession.revoked_at.is_(None))).scalar_one() == 0
    assert _actions(app)[-1] == "user.logout_everywhere"
    laptop.close()
    phone.close()


def test_the_locale_is_chosen_per_user(app, console_as):
    client = console_as("viewer")
    r = client.post("/console/account/locale", data={"csrf_token": client.csrf_token, "locale": "pl"})
    assert r.status_code == 200 and 'lang="pl"' in r.text and "Wyloguj wszędzie" in r.text
    client.post("/console/account/locale", data={"csrf_token": client.csrf_token, "locale": "ko"})
    assert "대시보드" in client.get("/console/").text
    bad = client.post("/console/account/locale", data={"csrf_token": client.csrf_token, "locale": "xx"})
    assert bad.status_code == 422


def test_the_audit_log_names_who_did_what_from_where(app):
    make_console_user(app, "ann@example.com", "admin")
    with app.session() as s:
        entries = list(audit.entries(s))
    assert [e.action for e in entries] == ["user.password_set", "user.create"]
    assert entries[1].target == "user:ann@example.com" and entries[1].actor == "test"
