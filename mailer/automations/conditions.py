"""Conditions and quiet hours: does a rule apply to this event and customer; when may marketing go out.

:func:`event_matches` tests an event's fields against a rule's ``[event_if]``;
:func:`customer_matches` evaluates a segment condition (``customer_if``, ``became``) on a
customer or on a before-the-event snapshot; :func:`out_of_quiet_hours` moves a send out
of the quiet hours in the customer's time zone (``MAILER_QUIET_HOURS`` or the customer's
own setting).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.orm import Session

from mailer import segments
from mailer.errors import ConfigurationError
from mailer.events.schemas import Snapshot
from mailer.settings import Settings

log = logging.getLogger("mailer.automations")


def _number(value: Any):
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return Decimal(str(value))
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def event_matches(cond: dict, data: dict) -> bool:
    """Do the event's fields pass ``[event_if]``?  An absent field fails every test but ``empty``."""
    for name, tests in cond.items():
        value = data.get(name)
        for op, expected in tests.items():
            if op == "empty":
                is_empty = value in (None, "", [], {})
                if is_empty != expected:
                    return False
                continue
            if value is None:
                return False
            if op in ("in", "not_in"):
                inside = value in expected
                if inside != (op == "in"):
                    return False
                continue
            a, b = _number(value), _number(expected)
            if a is None or b is None:
                a, b = str(value), str(expected)
            ok = {"eq": a == b, "ne": a != b, "gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]
            if not ok:
                return False
    return True


def customer_matches(cond: tuple, customer, now: datetime, session: Session | None = None) -> bool:
    """A segment condition on a customer, or on a before-the-event snapshot (mailer.segments)."""

    if isinstance(customer, Snapshot):
        customer = {**customer.__dict__, "tags": list(customer.tag_names)}
    return bool(segments.evaluate(cond, customer, now=now, session=session))


# -- quiet hours -------------------------------------------------------------------------------------
def parse_quiet_hours(value: str) -> tuple[time, time] | None:
    """``"21:00-08:00"`` -> (21:00, 08:00); empty or ``off`` -> None."""
    if not value or value.strip().lower() in ("off", "none", "0"):
        return None
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", value)
    if not m or int(m.group(1)) > 23 or int(m.group(3)) > 23 or int(m.group(2)) > 59 or int(m.group(4)) > 59:
        raise ConfigurationError(f"MAILER_QUIET_HOURS {value!r} must look like 21:00-08:00 (local time), or off")
    return time(int(m.group(1)), int(m.group(2))), time(int(m.group(3)), int(m.group(4)))


def _zone(name: str | None, default: str) -> ZoneInfo:
    for candidate in (name, default, "UTC"):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def out_of_quiet_hours(when: datetime, tz_name: str | None, settings: Settings,
                       own: str | None = None) -> datetime:
    """``when`` if it is outside the quiet hours in that zone, else the end of those quiet hours.

    ``own`` is the customer's own setting (``customers.attributes["quiet_hours"]``, e.g.
    ``"22:30-07:00"`` or ``"off"``); when absent or unreadable the deployment's
    ``MAILER_QUIET_HOURS`` applies.
    """
    window = parse_quiet_hours(settings.quiet_hours)
    if own is not None:
        try:
            window = parse_quiet_hours(str(own))
        except ConfigurationError:
            log.warning("customer quiet_hours %r is not like 21:00-08:00; using %s", own, settings.quiet_hours)
    if window is None:
        return when
    start, end = window
    zone = _zone(tz_name, settings.default_timezone)
    local = when.astimezone(zone)
    t = local.time()
    if start == end:
        return when
    if start < end:
        quiet = start <= t < end
        end_date = local.date()
    else:  # wraps midnight, e.g. 21:00-08:00
        quiet = t >= start or t < end
        end_date = local.date() + timedelta(days=1) if t >= start else local.date()
    if not quiet:
        return when
    return datetime.combine(end_date, end, tzinfo=zone).astimezone(UTC)
