"""Console accounts: create (with a one-time set-password link), list, disable, passwords, TOTP.

Passwords are hashed with Argon2id (argon2-cffi, its default parameters: RFC 9106's
low-memory profile); a hash made with older parameters is rehashed at the next login.
A new account has no password: ``mailer users create`` prints a link
(``/console/set-password/<token>``) that works once, until ``MAILER_CONSOLE_INVITE_TTL_HOURS``;
only the token's SHA-256 is stored.  TOTP (pyotp, RFC 6238, 30-second steps) is set up
from the console: a pending secret becomes the account's once a code from it is given,
and each accepted code's time step is remembered so a code works once.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mailer import audit
from mailer.addresses import normalize
from mailer.clock import utcnow
from mailer.errors import InvalidState, NotFound, ValidationError
from mailer.models import ConsoleRole, ConsoleSession, ConsoleToken, ConsoleUser
from mailer.settings import Settings

#: Roles, in the order the docs list them.
ROLES = tuple(r.value for r in ConsoleRole)
#: Locales the console's UI is translated into.
LOCALES = ("en", "zh-TW", "zh-CN", "pl", "ko")
#: Shortest and longest password accepted, characters.
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 256
#: Random bytes in a one-time link's token.
TOKEN_BYTES = 32
#: Purpose of the set-password link.
SET_PASSWORD = "set_password"  # a token purpose label, not a secret  # nosec B105
#: Issuer name shown in authenticator apps.
TOTP_ISSUER = "mailer console"
#: Codes one step before or after now are accepted (clock drift), 30-second steps.
TOTP_WINDOW_STEPS = 1
TOTP_STEP_S = 30

_hasher = PasswordHasher()
#: Verified against when the address is unknown, so a wrong address costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class Invite:
    user_id: int
    email: str
    role: str
    token: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def set_password_path(token: str) -> str:
    return f"/console/set-password/{token}"


def check_role(role: str) -> ConsoleRole:
    try:
        return ConsoleRole(role)
    except ValueError:
        raise ValidationError(f"unknown role {role!r}; choose from {', '.join(ROLES)}", field="role") from None


def check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise ValidationError(f"the password needs at least {MIN_PASSWORD_CHARS} characters", field="password")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValidationError(f"the password may have at most {MAX_PASSWORD_CHARS} characters", field="password")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(check_password(password))


def password_matches(user: ConsoleUser | None, password: str) -> bool:
    """True when ``password`` is the user's; costs one Argon2 verification either way."""
    stored = user.password_hash if user is not None and user.password_hash else _DUMMY_HASH
    try:
        ok = _hasher.verify(stored, (password or "")[:MAX_PASSWORD_CHARS])
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    if user is None or not user.password_hash:
        return False
    if ok and _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return ok


def by_email(session: Session, email: str) -> ConsoleUser | None:
    try:
        address = normalize(email)
    except ValidationError:
        return None
    # email is UNIQUE: one indexed lookup.
    return session.execute(select(ConsoleUser).where(ConsoleUser.email == address)).scalar_one_or_none()


def _new_token(session: Session, settings: Settings, user: ConsoleUser, purpose: str) -> str:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    session.add(ConsoleToken(token_hash=token_hash(token), user_id=user.id, purpose=purpose,
                             expires_at=utcnow() + timedelta(hours=settings.console_invite_ttl_hours)))
    return token


def create(session: Session, settings: Settings, email: str, role: str, *, actor: str = "cli",
           locale: str = "en", ip: str | None = None) -> Invite:
    """A new account (no password yet) and its one-time set-password token; audited ``user.create``."""
    address = normalize(email)
    granted = check_role(role)
    if locale not in LOCALES:
        raise ValidationError(f"unknown console locale {locale!r}; choose from {', '.join(LOCALES)}", field="locale")
    if by_email(session, address) is not None:
        raise InvalidState(f"a console user {address!r} exists already")
    user = ConsoleUser(email=address, role=granted, locale=locale)
    session.add(user)
    session.flush()
    token = _new_token(session, settings, user, SET_PASSWORD)
    audit.record(session, actor=actor, action="user.create", target=f"user:{address}",
                 detail={"role": granted.value}, ip=ip)
    return Invite(user.id, address, granted.value, token)


def reset_link(session: Session, settings: Settings, email: str) -> Invite:
    """A fresh one-time set-password token for an existing, enabled account."""
    user = by_email(session, email)
    if user is None or user.disabled_at is not None:
        raise NotFound(f"no enabled console user {email!r}")
    return Invite(user.id, user.email, user.role.value, _new_token(session, settings, user, SET_PASSWORD))


def token_user(session: Session, token: str, purpose: str = SET_PASSWORD) -> ConsoleUser | None:
    """The enabled user a live, unused one-time token belongs to, else None."""
    if not token or len(token) > 200:
        return None
    # token_hash is UNIQUE: one indexed lookup.
    row = session.execute(select(ConsoleToken).where(ConsoleToken.token_hash == token_hash(token))).scalar_one_or_none()
    if row is None or row.purpose != purpose or row.used_at is not None or row.expires_at <= utcnow():
        return None
    user = session.get(ConsoleUser, row.user_id)
    return None if user is None or user.disabled_at is not None else user


def set_password_with_token(session: Session, token: str, password: str, *, ip: str | None = None) -> ConsoleUser:
    """Use a one-time link: set the password, burn the token, end the user's sessions."""
    user = token_user(session, token)
    if user is None:
        raise NotFound("this link is unknown, used or expired; ask an admin for a new one")
    user.password_hash = hash_password(password)
    user.password_set_at = utcnow()
    # Burn this token (and any other open ones of the user): a link works once.
    session.execute(update(ConsoleToken).where(ConsoleToken.user_id == user.id, ConsoleToken.used_at.is_(None))
                    .values(used_at=utcnow()))
    _revoke_sessions(session, user.id)
    audit.record(session, actor=user.email, action="user.password_set", target=f"user:{user.email}", ip=ip)
    return user


def list_users(session: Session) -> list[ConsoleUser]:
    return list(session.execute(select(ConsoleUser).order_by(ConsoleUser.email)).scalars())


def _revoke_sessions(session: Session, user_id: int) -> int:
    # Every live session of the user at once (index on user_id, revoked_at).
    result = session.execute(update(ConsoleSession)
                             .where(ConsoleSession.user_id == user_id, ConsoleSession.revoked_at.is_(None))
                             .values(revoked_at=utcnow()))
    return result.rowcount or 0


def disable(session: Session, email: str, *, actor: str = "cli", ip: str | None = None) -> ConsoleUser:
    """Disable an account: it cannot log in, its sessions end now; audited ``user.disable``."""
    user = by_email(session, email)
    if user is None:
        raise NotFound(f"no console user {email!r}")
    if user.disabled_at is None:
        user.disabled_at = utcnow()
        ended = _revoke_sessions(session, user.id)
        audit.record(session, actor=actor, action="user.disable", target=f"user:{user.email}",
                     detail={"sessions_ended": ended}, ip=ip)
    return user


def set_locale(session: Session, user_id: int, locale: str) -> None:
    if locale not in LOCALES:
        raise ValidationError(f"unknown console locale {locale!r}; choose from {', '.join(LOCALES)}", field="locale")
    user = session.get(ConsoleUser, user_id)
    if user is None:
        raise NotFound("no such console user")
    user.locale = locale


# -- TOTP ----------------------------------------------------------------------------------------
def needs_second_factor(user: ConsoleUser, settings: Settings) -> bool:
    """True when policy demands TOTP (MAILER_CONSOLE_REQUIRE_2FA for admin and compliance)."""
    return settings.console_require_2fa and user.role in (ConsoleRole.admin, ConsoleRole.compliance)


def start_totp(session: Session, user_id: int) -> tuple[str, str]:
    """The pending secret (a new one the first time) and its otpauth:// URI (for an authenticator app)."""
    user = session.get(ConsoleUser, user_id)
    if user is None:
        raise NotFound("no such console user")
    secret = user.totp_pending or pyotp.random_base32()
    user.totp_pending = secret
    return secret, pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=TOTP_ISSUER)


def _accepted_step(secret: str, code: str, last_step: int | None, now: datetime) -> int | None:
    code = (code or "").strip().replace(" ", "")
    if not code.isdigit() or len(code) != 6:
        return None
    totp = pyotp.TOTP(secret)
    step_now = int(now.timestamp()) // TOTP_STEP_S
    for step in range(step_now - TOTP_WINDOW_STEPS, step_now + TOTP_WINDOW_STEPS + 1):
        if secrets.compare_digest(totp.at(step * TOTP_STEP_S), code):
            return None if last_step is not None and step <= last_step else step
    return None


def confirm_totp(session: Session, user_id: int, code: str, *, ip: str | None = None) -> bool:
    """Make the pending secret the account's when ``code`` comes from it."""
    user = session.get(ConsoleUser, user_id)
    if user is None or not user.totp_pending:
        return False
    step = _accepted_step(user.totp_pending, code, None, utcnow())
    if step is None:
        return False
    user.totp_secret, user.totp_pending, user.totp_last_step = user.totp_pending, None, step
    audit.record(session, actor=user.email, action="user.totp_enable", target=f"user:{user.email}", ip=ip)
    return True


def totp_ok(user: ConsoleUser, code: str) -> bool:
    """Check a login code against the account's secret; an accepted code cannot be used again."""
    if not user.totp_secret:
        return False
    step = _accepted_step(user.totp_secret, code, user.totp_last_step, utcnow())
    if step is None:
        return False
    user.totp_last_step = step
    return True
