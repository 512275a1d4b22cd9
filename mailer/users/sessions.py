"""Console sessions: login (throttled, Argon2, TOTP), the session behind a cookie, logout, log out everywhere.

A session is a row in ``console_sessions``; the browser's cookie holds a random
32-byte id and only its SHA-256 is stored, so a database dump logs nobody in.  Every
login makes a new id (the one a browser brought is revoked: no session fixation).  A
session ends when unused for ``MAILER_CONSOLE_IDLE_MINUTES``, after
``MAILER_CONSOLE_SESSION_MAX_HOURS``, at logout, at "log out everywhere", when its user
is disabled or sets a new password.

Login attempts are budgeted per client IP (``MAILER_CONSOLE_LOGIN_IP_PER_MINUTE``) and
per account (``MAILER_CONSOLE_LOGIN_ACCOUNT_PER_15MIN``) on the shared rate limiter
(:func:`mailer.transport.ratelimit.limiter_for`: Redis, so the budget holds across
processes; in memory on the embedded ``stub://`` broker).  Every attempt counts, so a
guesser learns nothing from which attempts were throttled.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mailer import audit
from mailer.clock import utcnow
from mailer.errors import LoginFailed, LoginThrottled, SecondFactorRequired
from mailer.models import ConsoleSession, ConsoleUser
from mailer.settings import Settings
from mailer.transport.ratelimit import limiter_for
from mailer.users import accounts

#: Random bytes in a session id (the cookie).
SESSION_BYTES = 32
#: last_seen_at is rewritten only when older than this many seconds (a page view is not a write).
TOUCH_RESOLUTION_S = 60
#: Window of the per-IP login budget, milliseconds.
IP_WINDOW_MS = 60_000
#: Window of the per-account login budget, milliseconds.
ACCOUNT_WINDOW_MS = 15 * 60_000
#: Longest user agent kept with a session, characters.
MAX_USER_AGENT_CHARS = 300
#: What every refused login says (never which part was wrong).
LOGIN_REFUSED = "wrong e-mail address, password or code"


@dataclass(frozen=True)
class Opened:
    """A new session: the cookie value (shown once) and its CSRF token."""

    token: str
    csrf_token: str
    user_id: int


@dataclass(frozen=True)
class Current:
    """The live session behind a cookie and its user (detached copies of the fields)."""

    session_row_id: int
    user_id: int
    email: str
    role: str
    locale: str
    csrf_token: str
    has_totp: bool
    needs_totp_setup: bool


def session_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def throttle(settings: Settings, email: str, ip: str | None) -> None:
    """Take one login attempt from the IP's and the account's budgets, or raise LoginThrottled."""
    limiter = limiter_for(settings)
    if not limiter.try_acquire(f"console:login:ip:{ip or 'unknown'}", settings.console_login_ip_per_minute,
                               bucket_ms=IP_WINDOW_MS):
        raise LoginThrottled("too many login attempts from your network; wait a minute and try again")
    account = hashlib.sha256((email or "").strip().lower().encode("utf-8")).hexdigest()[:32]
    if not limiter.try_acquire(f"console:login:account:{account}", settings.console_login_account_per_15min,
                               bucket_ms=ACCOUNT_WINDOW_MS):
        raise LoginThrottled("too many login attempts for this account; wait 15 minutes and try again")


def login(session: Session, settings: Settings, *, email: str, password: str, totp: str | None = None,
          ip: str | None = None, user_agent: str | None = None, previous_token: str | None = None) -> Opened:
    """Check the attempt budget, the password (Argon2) and the code; open a new session (audited ``user.login``)."""
    throttle(settings, email, ip)
    user = accounts.by_email(session, email)
    if not accounts.password_matches(user, password) or user is None or user.disabled_at is not None:
        raise LoginFailed(LOGIN_REFUSED)
    if user.totp_secret:
        if not totp:
            raise SecondFactorRequired("enter the 6-digit code from your authenticator app")
        if not accounts.totp_ok(user, totp):
            raise SecondFactorRequired(LOGIN_REFUSED)
    if previous_token:
        logout(session, previous_token)
    token, csrf = secrets.token_urlsafe(SESSION_BYTES), secrets.token_urlsafe(SESSION_BYTES)
    now = utcnow()
    session.add(ConsoleSession(token_hash=session_hash(token), user_id=user.id, csrf_token=csrf, created_at=now,
                               last_seen_at=now, ip=ip, user_agent=(user_agent or "")[:MAX_USER_AGENT_CHARS] or None))
    user.last_login_at = now
    audit.record(session, actor=user.email, action="user.login", target=f"user:{user.email}",
                 detail={"second_factor": bool(user.totp_secret)}, ip=ip)
    session.flush()
    return Opened(token, csrf, user.id)


def current(session: Session, settings: Settings, token: str | None) -> Current | None:
    """The live session for a cookie value, or None (unknown, revoked, idle, too old, user disabled)."""
    if not token or len(token) > 200:
        return None
    # token_hash is UNIQUE: one indexed lookup, joined to its user by primary key.
    row = session.execute(select(ConsoleSession, ConsoleUser).join(ConsoleUser, ConsoleUser.id == ConsoleSession.user_id)
                          .where(ConsoleSession.token_hash == session_hash(token))).first()
    if row is None:
        return None
    s, user = row
    now = utcnow()
    if (s.revoked_at is not None or user.disabled_at is not None
            or now - s.last_seen_at > timedelta(minutes=settings.console_idle_minutes)
            or now - s.created_at > timedelta(hours=settings.console_session_max_hours)):
        if s.revoked_at is None:
            s.revoked_at = now
        return None
    if now - s.last_seen_at >= timedelta(seconds=TOUCH_RESOLUTION_S):
        s.last_seen_at = now
    return Current(s.id, user.id, user.email, user.role.value, user.locale, s.csrf_token, bool(user.totp_secret),
                   accounts.needs_second_factor(user, settings) and not user.totp_secret)


def logout(session: Session, token: str) -> None:
    """End the session behind this cookie (nothing happens for an unknown one)."""
    # token_hash is UNIQUE: a single-row conditional UPDATE.
    session.execute(update(ConsoleSession).where(ConsoleSession.token_hash == session_hash(token),
                                                 ConsoleSession.revoked_at.is_(None)).values(revoked_at=utcnow()))


def logout_everywhere(session: Session, user_id: int, *, ip: str | None = None) -> int:
    """End every session of the user (this one too); audited ``user.logout_everywhere``."""
    user = session.get(ConsoleUser, user_id)
    ended = accounts._revoke_sessions(session, user_id)
    if user is not None:
        audit.record(session, actor=user.email, action="user.logout_everywhere", target=f"user:{user.email}",
                     detail={"sessions_ended": ended}, ip=ip)
    return ended
