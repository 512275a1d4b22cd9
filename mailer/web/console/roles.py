"""Who may open what in the console: areas per role (checked on the server by :func:`auth.require`)."""

from __future__ import annotations

#: The marketers' areas (viewers may read them).
MARKETER_AREAS = frozenset({"campaigns", "segments", "templates", "automations", "reports"})
#: The compliance staff's areas.
COMPLIANCE_AREAS = frozenset({"customers", "consent", "gdpr", "suppressions", "audit"})
#: Only admins.
ADMIN_AREAS = frozenset({"users", "apikeys", "settings"})
#: Everyone logged in: the dashboard and their own account (password, 2FA, log out everywhere).
EVERYONE_AREAS = frozenset({"dashboard", "account"})
#: Every area there is.
AREAS = MARKETER_AREAS | COMPLIANCE_AREAS | ADMIN_AREAS | EVERYONE_AREAS


def allowed(role: str, area: str, *, write: bool = False) -> bool:
    """True when ``role`` may open ``area`` (``write``: change something there)."""
    if area not in AREAS:
        raise ValueError(f"unknown console area {area!r}")
    if area in EVERYONE_AREAS or role == "admin":
        return True
    if role == "marketer":
        return area in MARKETER_AREAS
    if role == "compliance":
        return area in COMPLIANCE_AREAS
    if role == "viewer":
        return area in MARKETER_AREAS and not write
    return False
