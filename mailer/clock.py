"""Time: every timestamp mailer stores is timezone-aware UTC, taken from here."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)
