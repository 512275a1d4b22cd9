"""Automations: rules read from ``automations/*.toml`` that turn shop events into notices.

One file is one rule; it says which event triggers it, conditions on the event and
the customer, which notice kind to send, after which delays, what it is about (its
*group*), and which events cancel it (see docs/automations.md for every key).  This
module loads and checks the rules and, for each published event
(:func:`handle`, called by :func:`mailer.events.publish` inside its transaction):

1. **cancels** pending sends of every rule that lists the event in ``cancelled_by``:
   one ``UPDATE deliveries SET status='cancelled' WHERE automation=? AND
   cancel_group=? AND status='scheduled'``.  The send path claims a scheduled row only
   while it is still ``scheduled``, so a cancellation that commits first always wins;
2. **triggers** every rule whose ``event`` it is and whose conditions hold: each send
   is a ``deliveries`` row, ``queued`` when due now or ``scheduled`` with
   ``send_after``, so a worker restart loses nothing (the sweeper wakes due rows) and
   a send happens once (the claim is a conditional UPDATE);
3. **deduplicates** (``once``: at most one mail per group ever; ``[repeat]``: nothing
   again within a window unless some fields changed), **merges** (``[merge]``: a second
   event joins a still-pending mail of the same group instead of sending another),
   **throttles** fan-outs in **waves**, claims **reward codes** from a pool
   (:mod:`mailer.codes`), and defers marketing mail out of **quiet hours**.

On PostgreSQL, rows of one group are changed under a transaction-scoped advisory lock
on (rule, group), so two events about the same thing cannot both decide "nothing was
sent yet"; SQLite has one writer at a time anyway.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import string
import threading
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import and_, select, text, update
from sqlalchemy.orm import Session

from mailer import codes as codes_service
from mailer import consent, suppressions
from mailer.addresses import email_hash
from mailer.broker import QUEUE_BULK, QUEUE_TRANSACTIONAL
from mailer.clock import utcnow
from mailer.errors import ConfigurationError, MailerError, PoolExhausted, ValidationError
from mailer.models import ConsentState, Customer, Delivery, DeliveryStatus, LawfulBasis, ShopEvent
from mailer.rendering import TRANSACTIONAL
from mailer.settings import Settings

log = logging.getLogger("mailer.automations")

#: Scheduled sends due within this many seconds also get a Dramatiq message with a
#: matching ``delay`` (a faster wake-up than the sweeper; the database row decides).
FAST_PATH_MAX_DELAY_S = 15 * 60
#: Classid of the two-key PostgreSQL advisory locks taken per (rule, group) (fits int4).
LOCK_CLASS = 0x6175746F  # "auto"
#: Recipients read per query when a rule fans out to restock requests.
AUDIENCE_BATCH = 1000
#: Longest delivery idempotency key (the column is 255 characters).
KEY_MAX_CHARS = 255

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}

#: Event-condition operators (``[event_if]``) and what they test.
EVENT_OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "empty")
#: Who a rule writes to: the event's customer, or everyone with a current
#: ``restock:<sku>`` request for the event's product.
AUDIENCES = ("customer", "restock_requests")

#: Every key a rule file may have, for the error message on a typo.
RULE_KEYS = ("description", "event", "kind", "enabled", "delay", "delays", "group", "cancelled_by", "once",
             "quiet_hours", "require_consent", "audience", "event_if", "customer_if", "became", "repeat",
             "merge", "waves", "reward", "data", "add_data")


def _csat_links(settings: Settings, values: dict) -> dict:
    from mailer import tracking

    return tracking.csat_urls(settings, values["order_number"], values.get("customer_id"))


#: Data a rule can add by name (``add_data = ["csat_links"]``): the event fields each needs,
#: and a function (settings, event values) -> notice fields.
ADD_DATA = {
    "csat_links": (("order_number",), _csat_links),  # rating_urls (5 signed links) and comment_url
}


# -- rules ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Repeat:
    """Send nothing again in the same group within ``window`` unless a field changed."""

    window: timedelta
    unless_changed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Merge:
    """A later event joins a still-pending mail of the group: its item is appended to ``into``."""

    window: timedelta
    into: str
    #: The event field that tells two items apart (a product's ``sku``).
    key: str = "sku"


@dataclass(frozen=True)
class Waves:
    """Fan-out in waves when stock is low: ``max(stock * per_unit, min_size)`` per wave."""

    interval: timedelta
    per_unit: float = 1.0
    min_size: int = 1
    stock_field: str = "stock"


@dataclass(frozen=True)
class Reward:
    pool: str
    #: Notice data field that receives the code (``value`` and ``expires_at`` go beside it).
    field: str = "code"
    #: The code's worth when its row has no value (a pool of identical codes).
    value: float | None = None
    #: Copied to the notice's ``value_type`` (``percent``, ``amount``, ``gift_card``).
    value_type: str | None = None


@dataclass(frozen=True)
class Rule:
    name: str
    path: Path
    event: str
    kind: str
    description: str = ""
    enabled: bool = True
    delays: tuple[timedelta, ...] = (timedelta(0),)
    group: str = "event:{event_id}"
    cancelled_by: tuple[str, ...] = ()
    once: bool = False
    quiet_hours: bool = True
    require_consent: bool = True
    audience: str = "customer"
    event_if: dict = field(default_factory=dict)
    #: Checked segment-condition trees (mailer.segments.validate_condition).
    customer_if: tuple | None = None
    became: tuple | None = None
    repeat: Repeat | None = None
    merge: Merge | None = None
    waves: Waves | None = None
    reward: Reward | None = None
    data: dict = field(default_factory=dict)
    add_data: tuple[str, ...] = ()
    #: Filled in by :func:`load` from the kind's ``kind.toml``.
    purpose: str = TRANSACTIONAL
    fields: tuple[str, ...] = ()

    @property
    def transactional(self) -> bool:
        return self.purpose == TRANSACTIONAL

    def describe_delays(self) -> str:
        """``at once``, or ``after 1h, 24h``."""
        if self.delays == (timedelta(0),):
            return "at once"
        return "after " + ", ".join(format_duration(d) for d in self.delays)


def parse_duration(value: Any, where: str) -> timedelta:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"3d"`` (or ``0``) -> timedelta."""
    if value == 0 or value == "0":
        return timedelta(0)
    m = _DURATION.match(value) if isinstance(value, str) else None
    if not m:
        raise ConfigurationError(f"{where}: {value!r} is not a duration such as \"90s\", \"15m\", \"1h\" or \"3d\"")
    return timedelta(seconds=int(m.group(1)) * _DURATION_UNITS_S[m.group(2)])


def format_duration(d: timedelta) -> str:
    seconds = int(d.total_seconds())
    if seconds == 0:
        return "at once"
    if seconds % 86400 == 0 and seconds >= 2 * 86400:
        return f"{seconds // 86400}d"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _placeholders(template: str, where: str) -> list[str]:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ConfigurationError(f"{where}: {template!r}: {exc}") from None
    for name in names:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ConfigurationError(f"{where}: placeholder {{{name}}} must be a plain field name")
    return names


def _table(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigurationError(f"{where} must be a table")
    return value


def _check_keys(table: dict, allowed: Iterable[str], where: str) -> None:
    allowed = tuple(allowed)
    for key in table:
        if key not in allowed:
            raise ConfigurationError(f"{where}: unknown key {key!r}; allowed: {', '.join(allowed)}")


def _check_event_if(cond: dict, event: str, where: str) -> dict:
    from mailer.events import SCHEMAS

    fields = SCHEMAS[event]
    for name, test in cond.items():
        if name not in fields:
            raise ConfigurationError(f"{where}.{name}: {event} events have no field {name!r} "
                                     f"(fields: {', '.join(fields)})")
        if not isinstance(test, dict) or not test:
            raise ConfigurationError(f"{where}.{name} must be a table of operators, e.g. {{ gt = 0 }}; "
                                     f"operators: {', '.join(EVENT_OPS)}")
        _check_keys(test, EVENT_OPS, f"{where}.{name}")
        for op in ("in", "not_in"):
            if op in test and not isinstance(test[op], list):
                raise ConfigurationError(f"{where}.{name}.{op} must be a list")
        if "empty" in test and not isinstance(test["empty"], bool):
            raise ConfigurationError(f"{where}.{name}.empty must be true or false")
    return cond


def _check_segment_condition(cond: Any, where: str, path: Path) -> tuple:
    """Customer conditions are segment conditions (mailer.segments); returns the checked tree."""
    from mailer import segments

    if not isinstance(cond, dict):
        raise ConfigurationError(f"{where} must be a table (a segment condition such as "
                                 "{ tags = { any = [\"VIP\"] } })")
    try:
        return segments.validate_condition(cond, where=where.rpartition(": ")[2], path=path)
    except MailerError as exc:
        raise ConfigurationError(str(exc)) from exc


def parse_rule(path: Path, settings: Settings, renderer=None) -> Rule:
    """Read and check one rule file; errors name the file, the key and what is allowed."""
    from mailer.events import SCHEMAS

    where = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{where}: {exc}") from exc
    except OSError as exc:
        raise ConfigurationError(f"{where}: cannot read: {exc.strerror}") from exc
    _check_keys(raw, RULE_KEYS, where)
    name = path.stem
    event = raw.get("event")
    if event not in SCHEMAS:
        raise ConfigurationError(f"{where}: event {event!r} is not an event type; types: {', '.join(SCHEMAS)}")
    kind = raw.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ConfigurationError(f"{where}: kind (the notice kind to send) is missing")
    if "delay" in raw and "delays" in raw:
        raise ConfigurationError(f"{where}: give delay or delays, not both")
    if "delays" in raw:
        if not isinstance(raw["delays"], list) or not raw["delays"]:
            raise ConfigurationError(f"{where}: delays must be a non-empty list such as [\"1h\", \"24h\"]")
        delays = tuple(parse_duration(d, f"{where}: delays[{i}]") for i, d in enumerate(raw["delays"]))
    else:
        delays = (parse_duration(raw.get("delay", 0), f"{where}: delay"),)
    audience = raw.get("audience", "customer")
    if audience not in AUDIENCES:
        raise ConfigurationError(f"{where}: audience {audience!r}; allowed: {', '.join(AUDIENCES)}")
    if audience == "restock_requests" and event != "product_restocked":
        raise ConfigurationError(f"{where}: audience = \"restock_requests\" needs event = \"product_restocked\"")
    if audience == "customer" and "email" not in SCHEMAS[event]:
        raise ConfigurationError(f"{where}: {event} events name no customer; use audience = \"restock_requests\"")
    available = {n for n, f in SCHEMAS[event].items() if f.required} | {"customer_id", "event_id"}
    group = raw.get("group", "event:{event_id}")
    if not isinstance(group, str) or not group:
        raise ConfigurationError(f"{where}: group must be a text such as \"order:{{order_number}}\"")
    for ph in _placeholders(group, f"{where}: group"):
        if ph not in available:
            raise ConfigurationError(f"{where}: group uses {{{ph}}}, which a {event} event does not always have "
                                     f"(use one of: {', '.join(sorted(available))})")
    cancelled_by = raw.get("cancelled_by", [])
    if not isinstance(cancelled_by, list):
        raise ConfigurationError(f"{where}: cancelled_by must be a list of event types")
    for i, ev in enumerate(cancelled_by):
        if ev not in SCHEMAS:
            raise ConfigurationError(f"{where}: cancelled_by[{i}] {ev!r} is not an event type; "
                                     f"types: {', '.join(SCHEMAS)}")
        has = {n for n, f in SCHEMAS[ev].items() if f.required} | {"customer_id"}
        for ph in _placeholders(group, f"{where}: group"):
            if ph not in has:
                raise ConfigurationError(f"{where}: cancelled_by[{i}] {ev!r}: its events have no {{{ph}}} "
                                         f"to find the group {group!r} with")
    repeat = merge = waves = reward = None
    if "repeat" in raw:
        t = _table(raw["repeat"], f"{where}: [repeat]")
        _check_keys(t, ("window", "unless_changed"), f"{where}: [repeat]")
        changed = t.get("unless_changed", [])
        if not isinstance(changed, list) or any(c not in SCHEMAS[event] for c in changed):
            raise ConfigurationError(f"{where}: [repeat] unless_changed must list fields of {event} events "
                                     f"({', '.join(SCHEMAS[event])})")
        repeat = Repeat(parse_duration(t.get("window"), f"{where}: [repeat] window"), tuple(changed))
    if "merge" in raw:
        t = _table(raw["merge"], f"{where}: [merge]")
        _check_keys(t, ("window", "into", "key"), f"{where}: [merge]")
        if not isinstance(t.get("into"), str):
            raise ConfigurationError(f"{where}: [merge] into must name the notice's list field (e.g. \"products\")")
        merge = Merge(parse_duration(t.get("window"), f"{where}: [merge] window"), t["into"], t.get("key", "sku"))
        if merge.key not in SCHEMAS[event]:
            raise ConfigurationError(f"{where}: [merge] key {merge.key!r} is not a field of {event} events")
    if "waves" in raw:
        t = _table(raw["waves"], f"{where}: [waves]")
        _check_keys(t, ("interval", "per_unit", "min_size", "stock_field"), f"{where}: [waves]")
        per_unit, min_size = t.get("per_unit", 1), t.get("min_size", 1)
        if not isinstance(per_unit, (int, float)) or per_unit <= 0:
            raise ConfigurationError(f"{where}: [waves] per_unit must be a number above 0")
        if not isinstance(min_size, int) or min_size < 1:
            raise ConfigurationError(f"{where}: [waves] min_size must be a whole number of at least 1")
        stock_field = t.get("stock_field", "stock")
        if stock_field not in SCHEMAS[event]:
            raise ConfigurationError(f"{where}: [waves] stock_field {stock_field!r} is not a field of {event} events")
        waves = Waves(parse_duration(t.get("interval"), f"{where}: [waves] interval"), float(per_unit), min_size,
                      stock_field)
    if "reward" in raw:
        t = _table(raw["reward"], f"{where}: [reward]")
        _check_keys(t, ("pool", "field", "value", "value_type"), f"{where}: [reward]")
        try:
            codes_service.check_pool(t.get("pool", ""))
        except ValidationError as exc:
            raise ConfigurationError(f"{where}: [reward] {exc}") from None
        value = t.get("value")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ConfigurationError(f"{where}: [reward] value must be a number (used when a code has none)")
        reward = Reward(t["pool"], t.get("field", "code"), value, t.get("value_type"))
    event_if = _check_event_if(_table(raw.get("event_if", {}), f"{where}: [event_if]"), event, f"{where}: event_if")
    customer_if = became = None
    if "customer_if" in raw:
        customer_if = _check_segment_condition(raw["customer_if"], f"{where}: customer_if", path)
    if "became" in raw:
        if event != "customer_updated":
            raise ConfigurationError(f"{where}: became (false before, true after) needs event = \"customer_updated\"")
        became = _check_segment_condition(raw["became"], f"{where}: became", path)
    data = _table(raw.get("data", {}), f"{where}: [data]")
    for key, source in data.items():
        if isinstance(source, str):
            _placeholders(source, f"{where}: [data] {key}")
        elif isinstance(source, (dict, datetime)) or source is None:
            raise ConfigurationError(f"{where}: [data] {key} must be \"{{field}}\" to copy an event field, a "
                                     "template such as \"Order {{order_number}}\", or a literal text, number, "
                                     "true/false or list")
    add_data = raw.get("add_data", [])
    if not isinstance(add_data, list) or any(a not in ADD_DATA for a in add_data):
        raise ConfigurationError(f"{where}: add_data must be a list of: {', '.join(ADD_DATA)}")
    for extra in add_data:
        missing = [f for f in ADD_DATA[extra][0] if f not in available]
        if missing:
            raise ConfigurationError(f"{where}: add_data {extra!r} needs {', '.join(missing)}, "
                                     f"which {event} events do not always have")
    for flag in ("enabled", "once", "quiet_hours", "require_consent"):
        if flag in raw and not isinstance(raw[flag], bool):
            raise ConfigurationError(f"{where}: {flag} must be true or false")
    rule = Rule(name=name, path=path, event=event, kind=kind, description=str(raw.get("description", "")),
                enabled=raw.get("enabled", True), delays=delays, group=group, cancelled_by=tuple(cancelled_by),
                once=raw.get("once", False), quiet_hours=raw.get("quiet_hours", True),
                require_consent=raw.get("require_consent", True), audience=audience, event_if=event_if,
                customer_if=customer_if, became=became, repeat=repeat, merge=merge, waves=waves, reward=reward,
                data=data, add_data=tuple(add_data))
    if renderer is not None:
        try:
            spec = renderer.spec(kind)
        except MailerError as exc:
            raise ConfigurationError(f"{where}: kind {kind!r}: {exc}") from None
        fields = tuple(spec.required) + tuple(spec.optional)
        rule = _replace(rule, purpose=spec.purpose, fields=fields)
        if rule.transactional and raw.get("quiet_hours") is True:
            raise ConfigurationError(f"{where}: quiet_hours = true, but {kind} is transactional and "
                                     "transactional mail is never deferred")
        if repeat is not None and fields and any(f not in fields for f in repeat.unless_changed):
            raise ConfigurationError(f"{where}: [repeat] unless_changed names a field kind {kind} does not carry "
                                     f"({', '.join(fields)}); the comparison is with the last mail's data")
        if merge is not None and fields and merge.into not in fields:
            raise ConfigurationError(f"{where}: [merge] into {merge.into!r} is not a data field of kind {kind} "
                                     f"({', '.join(fields)})")
        if reward is not None and fields and reward.field not in fields:
            raise ConfigurationError(f"{where}: [reward] field {reward.field!r} is not a data field of kind {kind} "
                                     f"({', '.join(fields)})")
    return rule


def _replace(rule: Rule, **changes) -> Rule:
    import dataclasses

    return dataclasses.replace(rule, **changes)


_cache: dict[tuple, list[Rule]] = {}
_cache_lock = threading.Lock()


def load(settings: Settings, renderer=None) -> list[Rule]:
    """Every rule in ``settings.automations_dir`` (``*.toml``, by name), checked; cached per file state."""
    from mailer.rendering import Renderer

    directory = Path(settings.automations_dir)
    if not directory.is_dir():
        return []
    files = sorted(directory.glob("*.toml"))
    templates = Path(settings.templates_dir)
    state = (str(directory), str(templates), tuple((str(p), p.stat().st_mtime_ns) for p in files),
             tuple(sorted((p.parent.name, p.stat().st_mtime_ns) for p in templates.glob("*/kind.toml"))))
    with _cache_lock:
        cached = _cache.get(state)
    if cached is not None:
        return cached
    renderer = renderer or Renderer(settings)
    rules = [parse_rule(p, settings, renderer) for p in files]
    with _cache_lock:
        _cache.clear()
        _cache[state] = rules
    return rules


def get(settings: Settings, name: str) -> Rule:
    for rule in load(settings):
        if rule.name == name:
            return rule
    raise ConfigurationError(f"no automation named {name!r} in {settings.automations_dir}")


# -- conditions ------------------------------------------------------------------------------------
def _number(value: Any):
    from decimal import Decimal, InvalidOperation

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
    from mailer import segments
    from mailer.events import Snapshot

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
    return datetime.combine(end_date, end, tzinfo=zone).astimezone(timezone.utc)


# -- handling an event -------------------------------------------------------------------------------
@dataclass
class _Context:
    session: Session
    app: Any
    event: ShopEvent
    data: dict
    now: datetime
    probed: set = field(default_factory=set)


def _lock(ctx: _Context, rule: Rule, group: str) -> None:
    """Serialize changes to one (rule, group) on PostgreSQL until the transaction ends."""
    if ctx.session.get_bind().dialect.name != "postgresql":
        return
    digest = hashlib.sha256(f"{rule.name}\x00{group}".encode()).digest()
    key = int.from_bytes(digest[:4], "big", signed=True)
    ctx.session.execute(text("SELECT pg_advisory_xact_lock(:c, :k)"), {"c": LOCK_CLASS, "k": key})


def _format(template: str, values: dict) -> str:
    return template.format_map({k: v for k, v in values.items()})


def _ikey(rule: Rule, group: str, tail: str) -> str:
    key = f"auto:{rule.name}:{group}:{tail}"
    if len(key) > KEY_MAX_CHARS:
        key = f"auto:{rule.name}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"
    return key


def cancel_group(session: Session, rule: str, group: str, *, reason: str) -> int:
    """Cancel the rule's pending sends in ``group``; how many were cancelled."""
    # Only rows still ``scheduled`` change: a row already claimed by a worker is past
    # cancelling, and the claim never takes a cancelled row (ix_deliveries_cancel_group).
    res = session.execute(update(Delivery)
                          .where(Delivery.cancel_group == group, Delivery.automation == rule,
                                 Delivery.status == DeliveryStatus.scheduled)
                          .values(status=DeliveryStatus.cancelled, reason=reason, updated_at=utcnow())
                          .execution_options(synchronize_session=False))
    return res.rowcount or 0


def handle(session: Session, app, rules: list[Rule], event: ShopEvent, customer: Customer | None, before,
           now: datetime) -> list:
    """Run every rule for one stored event inside the caller's transaction; return the actions."""
    from mailer.events import Action, event_data

    ctx = _Context(session, app, event, event_data(event), now)
    actions: list[Action] = []
    base = {**ctx.data, "event_id": event.id, "customer_id": customer.id if customer else None}
    # 1. Cancellations first, so "a newer cart event cancels pending reminders" and then
    #    schedules its own.
    if customer is not None:
        for rule in rules:
            if rule.enabled and event.type in rule.cancelled_by:
                group = _format(rule.group, base)
                _lock(ctx, rule, group)
                n = cancel_group(session, rule.name, group, reason=f"cancelled by {event.type} event {event.id}")
                if n:
                    actions.append(Action(rule.name, rule.kind, "cancelled", customer.id,
                                          detail=f"{n} pending in {group}"))
    # 2. Triggers.
    for rule in rules:
        if not rule.enabled or rule.event != event.type:
            continue
        if not event_matches(rule.event_if, ctx.data):
            continue
        if rule.audience == "restock_requests":
            actions.extend(_fan_out_restock(ctx, rule))
            continue
        if customer is None:
            continue
        if rule.became is not None:
            was = customer_matches(rule.became, before, now, ctx.session) if before is not None else False
            if was or not customer_matches(rule.became, customer, now, ctx.session):
                continue
        if rule.customer_if is not None and not customer_matches(rule.customer_if, customer, now, ctx.session):
            continue
        actions.extend(_trigger(ctx, rule, customer, base))
    return actions


def _notice_data(rule: Rule, values: dict, settings: Settings) -> dict:
    """The notice's data: the kind's declared fields taken from the event, then ``[data]``
    and ``add_data``.

    A ``[data]`` text is a template: ``"{field}"`` alone copies that value as it is (a
    list stays a list), ``"Order {order_number}"`` formats text, and text without braces
    is a literal (``status = "in_transit"``); numbers, booleans and lists are literals.
    """
    out = {f: values[f] for f in rule.fields if f in values} if rule.fields else dict(values)
    for key, source in rule.data.items():
        if not isinstance(source, str):
            out[key] = source
            continue
        whole = re.fullmatch(r"\{([a-z_][a-z0-9_]*)\}", source)
        if whole:
            if whole.group(1) in values:
                out[key] = values[whole.group(1)]
        elif "{" in source:
            try:
                out[key] = _format(source, values)
            except KeyError:
                continue
        else:
            out[key] = source
    for name in rule.add_data:
        out.update(ADD_DATA[name][1](settings, values))
    return {k: v for k, v in out.items() if not k.startswith("_") and k not in ("event_id", "customer_id")}


def _trigger(ctx: _Context, rule: Rule, customer: Customer, base: dict) -> list:
    from mailer.events import Action

    s = ctx.session
    group = _format(rule.group, base)
    _lock(ctx, rule, group)
    values = {**base, "first_name": customer.first_name or "", "last_name": customer.last_name or ""}
    data = _notice_data(rule, values, ctx.app.settings)
    if rule.once:
        # ``once``: the group's keys are fixed, so a second mail can never be stored.
        taken = s.execute(select(Delivery.id).where(Delivery.idempotency_key == _ikey(rule, group, "once:0"))
                          ).scalar_one_or_none()
        if taken is not None:
            return [Action(rule.name, rule.kind, "deduplicated", customer.id, taken,
                           detail=f"once per {group}: delivery {taken} exists")]
    if rule.repeat is not None:
        # The rule's latest (not cancelled) mail in this group (ix_deliveries_cancel_group).
        last = s.execute(select(Delivery.id, Delivery.created_at, Delivery.data)
                         .where(Delivery.cancel_group == group, Delivery.automation == rule.name,
                                Delivery.status != DeliveryStatus.cancelled,
                                Delivery.idempotency_key.not_like(f"auto:{rule.name}:%:failed:%"))
                         .order_by(Delivery.created_at.desc(), Delivery.id.desc()).limit(1)).first()
        if last is not None and last.created_at > ctx.now - rule.repeat.window:
            previous = last.data or {}
            if all(str(previous.get(f)) == str(data.get(f, values.get(f))) for f in rule.repeat.unless_changed):
                return [Action(rule.name, rule.kind, "deduplicated", customer.id, last.id,
                               detail=f"same {', '.join(rule.repeat.unless_changed) or 'event'} as delivery "
                                      f"{last.id} within {format_duration(rule.repeat.window)}")]
    actions = []
    for step, delay in enumerate(rule.delays):
        tail = f"once:{step}" if rule.once else f"e{ctx.event.id}:{step}"
        actions.append(_schedule(ctx, rule, customer, dict(data), group=group, key=_ikey(rule, group, tail),
                                 send_after=ctx.now + delay))
    return actions


def _blocked(ctx: _Context, rule: Rule, customer: Customer, purpose: str) -> str | None:
    """Why a marketing mail should not even be scheduled now (the send gate re-checks later)."""
    s, settings = ctx.session, ctx.app.settings
    if customer.email is None:
        return "customer was erased"
    hit = suppressions.suppression_for(s, email_hash(customer.email, settings.effective_hash_salt), purpose)
    if hit is not None:
        return f"suppressed: {hit.reason.value} ({hit.scope})"
    if purpose != TRANSACTIONAL and rule.require_consent and not consent.has_consent(s, settings, customer.id,
                                                                                      purpose):
        return f"no current consent for {purpose}"
    return None


def _probe(ctx: _Context, rule: Rule, customer: Customer, locale: str, data: dict) -> None:
    """Render once per (kind, locale) per event, so a broken template fails the event, not the worker."""
    if (rule.kind, locale) in ctx.probed:
        return
    from mailer.compose import render_context

    probe = Delivery(id=0, kind=rule.kind, to_address=customer.email, locale=locale, data=data,
                     purpose=rule.purpose)
    ctx.app.renderer.render(rule.kind, locale, data, context=render_context(ctx.app.settings, probe, customer) | {
        "unsubscribe_url": "#", "preferences_url": "#"})
    ctx.probed.add((rule.kind, locale))


def _schedule(ctx: _Context, rule: Rule, customer: Customer, data: dict, *, group: str, key: str,
              send_after: datetime):
    """Store one send for ``customer``: queued when due, scheduled otherwise; or say why not."""
    from mailer.events import Action
    from mailer.notices import purpose_for

    s, app, settings = ctx.session, ctx.app, ctx.app.settings
    existing = s.execute(select(Delivery.id).where(Delivery.idempotency_key == key)).scalar_one_or_none()
    if existing is not None:
        return Action(rule.name, rule.kind, "deduplicated", customer.id, existing, detail=f"key {key} exists")
    spec = app.renderer.spec(rule.kind)
    purpose = purpose_for(spec.purpose, {**ctx.data, **data})
    why_not = _blocked(ctx, rule, customer, purpose)
    if why_not:
        return Action(rule.name, rule.kind, "skipped", customer.id, detail=why_not)
    if not spec.transactional and rule.quiet_hours:
        send_after = out_of_quiet_hours(send_after, customer.timezone, settings,
                                        (customer.attributes or {}).get("quiet_hours"))
    claimed = None
    if rule.reward is not None:
        try:
            claimed = codes_service.claim(s, rule.reward.pool, customer_id=customer.id, now=ctx.now)
        except PoolExhausted as exc:
            return _record_failure(ctx, rule, customer, data, group, purpose, str(exc))
        data[rule.reward.field] = claimed.code
        value = _number_or_none(claimed.value)
        if value is None:
            value = rule.reward.value
        if value is not None:
            data["value"] = value
        if rule.reward.value_type:
            data["value_type"] = rule.reward.value_type
        if claimed.expires_at:
            data["expires_at"] = claimed.expires_at.date().isoformat()
    app.renderer.validate(rule.kind, data)
    locale = customer.locale or settings.default_locale
    _probe(ctx, rule, customer, locale, data)
    due = send_after <= ctx.now
    delivery = Delivery(idempotency_key=key, kind=rule.kind, customer_id=customer.id, to_address=customer.email,
                        to_hash=email_hash(customer.email, settings.effective_hash_salt), locale=locale, data=data,
                        purpose=purpose, queue=QUEUE_TRANSACTIONAL if spec.transactional else QUEUE_BULK,
                        status=DeliveryStatus.queued if due else DeliveryStatus.scheduled,
                        send_after=None if due else send_after, cancel_group=group, automation=rule.name,
                        created_at=ctx.now)  # decision time: [repeat] windows compare against it
    s.add(delivery)
    s.flush()
    if claimed is not None:
        codes_service.attach(s, claimed.id, delivery.id)
    return Action(rule.name, rule.kind, "queued" if due else "scheduled", customer.id, delivery.id,
                  send_after=None if due else send_after,
                  detail=f"code from pool {rule.reward.pool}" if claimed else "")


def _number_or_none(text_value: str | None) -> int | float | None:
    num = _number(text_value) if text_value is not None else None
    if num is None:
        return None
    return int(num) if num == num.to_integral_value() else float(num)


def _record_failure(ctx: _Context, rule: Rule, customer: Customer, data: dict, group: str, purpose: str,
                    reason: str):
    """A send the rule could not make (no reward code): a ``failed`` row that keeps the reason."""
    from mailer.events import Action

    settings = ctx.app.settings
    delivery = Delivery(idempotency_key=_ikey(rule, group, f"failed:e{ctx.event.id}"), kind=rule.kind,
                        customer_id=customer.id, to_address=customer.email,
                        to_hash=email_hash(customer.email, settings.effective_hash_salt),
                        locale=customer.locale or settings.default_locale, data=data, purpose=purpose,
                        queue=QUEUE_BULK, status=DeliveryStatus.failed, reason=reason, cancel_group=group,
                        automation=rule.name, created_at=ctx.now, updated_at=utcnow())
    ctx.session.add(delivery)
    ctx.session.flush()
    return Action(rule.name, rule.kind, "failed", customer.id, delivery.id, detail=reason)


# -- restock fan-out ---------------------------------------------------------------------------------
def _restock_audience(ctx: _Context, sku: str) -> list[int]:
    """Customers with a current ``restock:<sku>`` request, earliest request first."""
    settings = ctx.app.settings
    purpose = f"restock:{sku}"
    bases = [LawfulBasis.consent] + ([LawfulBasis.soft_opt_in] if settings.soft_opt_in else [])
    ids: list[int] = []
    last: tuple | None = None
    while True:
        # Keyset pages over ix_consent_state_purpose (purpose, granted, customer_id),
        # ordered by when the request was made so the first to ask are the first told.
        q = (select(ConsentState.customer_id, ConsentState.updated_at)
             .join(Customer, Customer.id == ConsentState.customer_id)
             .where(ConsentState.purpose == purpose, ConsentState.granted.is_(True),
                    ConsentState.basis.in_(bases), Customer.email.is_not(None))
             .order_by(ConsentState.updated_at, ConsentState.customer_id).limit(AUDIENCE_BATCH))
        if last is not None:
            q = q.where((ConsentState.updated_at > last[0])
                        | and_(ConsentState.updated_at == last[0], ConsentState.customer_id > last[1]))
        rows = ctx.session.execute(q).all()
        ids.extend(r.customer_id for r in rows)
        if len(rows) < AUDIENCE_BATCH:
            return ids
        last = (rows[-1].updated_at, rows[-1].customer_id)


def wave_plan(n: int, stock: int | None, waves: Waves | None) -> list[int]:
    """How many recipients go in each wave: all at once unless stock is low."""
    if n == 0:
        return []
    if waves is None or stock is None:
        return [n]
    size = max(math.ceil(stock * waves.per_unit), waves.min_size)
    if size >= n:
        return [n]
    return [min(size, n - i) for i in range(0, n, size)]


def _fan_out_restock(ctx: _Context, rule: Rule) -> list:
    from mailer.events import Action

    s = ctx.session
    sku = ctx.data["sku"]
    audience = _restock_audience(ctx, sku)
    stock = ctx.data.get(rule.waves.stock_field) if rule.waves else None
    plan = wave_plan(len(audience), stock, rule.waves)
    actions: list[Action] = []
    item_fields = ("sku", "name", "variant", "price", "url", "image_url")
    item = {k: ctx.data[k] for k in item_fields if k in ctx.data}
    position = 0
    for wave, size in enumerate(plan):
        offset = (rule.waves.interval * wave) if rule.waves else timedelta(0)
        for customer_id in audience[position:position + size]:
            customer = s.get(Customer, customer_id)
            base = {**ctx.data, "event_id": ctx.event.id, "customer_id": customer_id}
            if rule.customer_if is not None and not customer_matches(rule.customer_if, customer, ctx.now, s):
                continue
            actions.append(_restock_one(ctx, rule, customer, base, item, offset, wave))
        position += size
    if not audience:
        actions.append(Action(rule.name, rule.kind, "skipped", None, detail=f"nobody asked for restock:{sku}"))
    return actions


def _restock_one(ctx: _Context, rule: Rule, customer: Customer, base: dict, item: dict, offset: timedelta,
                 wave: int):
    from mailer.events import Action

    s = ctx.session
    group = _format(rule.group, base)
    _lock(ctx, rule, group)
    if rule.merge is not None:
        pending = s.execute(select(Delivery)
                            .where(Delivery.cancel_group == group, Delivery.automation == rule.name,
                                   Delivery.status == DeliveryStatus.scheduled)
                            .order_by(Delivery.id).limit(1)).scalar_one_or_none()
        if pending is not None:
            items = list((pending.data or {}).get(rule.merge.into) or [])
            if any(i.get(rule.merge.key) == item.get(rule.merge.key) for i in items):
                return Action(rule.name, rule.kind, "deduplicated", customer.id, pending.id,
                              detail=f"{item.get(rule.merge.key)} already in pending delivery {pending.id}")
            merged = {**(pending.data or {}), rule.merge.into: items + [item]}
            # Append only while the mail is still pending: if a worker claimed it meanwhile
            # the UPDATE matches nothing and this product gets a mail of its own.
            res = s.execute(update(Delivery)
                            .where(Delivery.id == pending.id, Delivery.status == DeliveryStatus.scheduled)
                            .values(data=merged, updated_at=utcnow())
                            .execution_options(synchronize_session=False))
            if res.rowcount == 1:
                s.expire(pending)
                return Action(rule.name, rule.kind, "merged", customer.id, pending.id, send_after=pending.send_after,
                              detail=f"{item.get(rule.merge.key)} added to pending delivery {pending.id}")
    data = _notice_data(rule, base, ctx.app.settings)
    if rule.merge is not None:
        data[rule.merge.into] = [item]
    wait = (rule.merge.window if rule.merge else timedelta(0)) + max(rule.delays) + offset
    return _schedule(ctx, rule, customer, data, group=group, key=_ikey(rule, group, f"e{ctx.event.id}"),
                     send_after=ctx.now + wait)


# -- after the commit --------------------------------------------------------------------------------
def wake(app, actions: Iterable, *, now: datetime | None = None) -> None:
    """Enqueue sends that are due; give soon-due scheduled ones a delayed Dramatiq message."""
    from mailer import actors
    from mailer.notices import enqueue

    now = now or utcnow()
    for action in actions:
        if action.delivery_id is None:
            continue
        if action.outcome == "queued":
            enqueue(action.delivery_id, queue=_queue_of(app, action.delivery_id))
        elif action.outcome == "scheduled" and action.send_after is not None:
            delay_s = (action.send_after - utcnow()).total_seconds()
            if 0 < delay_s <= FAST_PATH_MAX_DELAY_S:
                queue = _queue_of(app, action.delivery_id)
                actor = actors.send_notice if queue == QUEUE_TRANSACTIONAL else actors.send_one_bulk
                try:
                    actor.send_with_options(args=(action.delivery_id,), delay=int(delay_s * 1000) + 1)
                except Exception as exc:  # noqa: BLE001 - the sweeper wakes it anyway
                    log.warning("delivery %s: no delayed message (%s); the sweeper will wake it",
                                action.delivery_id, exc, extra={"delivery_id": action.delivery_id})


def _queue_of(app, delivery_id: int) -> str:
    with app.session() as s:
        return s.execute(select(Delivery.queue).where(Delivery.id == delivery_id)).scalar_one()


# -- views -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pending:
    delivery_id: int
    automation: str
    kind: str
    email: str | None
    customer_id: int | None
    send_after: datetime | None
    group: str | None
    data: dict


def pending(session: Session, *, email: str | None = None, limit: int = 1000) -> list[Pending]:
    """Scheduled automation sends, soonest first (optionally one customer's)."""
    from mailer.addresses import normalize

    # ix_deliveries_status_send_after: scheduled rows in time order.
    q = (select(Delivery).where(Delivery.status == DeliveryStatus.scheduled, Delivery.automation.is_not(None))
         .order_by(Delivery.send_after, Delivery.id).limit(limit))
    if email is not None:
        q = q.where(Delivery.to_address == normalize(email))
    return [Pending(d.id, d.automation, d.kind, d.to_address, d.customer_id, d.send_after, d.cancel_group,
                    dict(d.data or {})) for d in session.execute(q).scalars()]


#: The sweeper hook returns unsent reward codes to their pools at most this often, seconds.
RELEASE_INTERVAL_S = 300
_last_release = {"at": 0.0}


def release_codes_hook(app) -> None:
    """Sweeper hook: codes whose mail ended unsent (cancelled, skipped, suppressed) go back to their pool."""
    import time as _time

    now = _time.monotonic()
    if _last_release["at"] and now - _last_release["at"] < RELEASE_INTERVAL_S:
        return
    _last_release["at"] = now
    with app.session() as s:
        codes_service.release_unsent(s)


def _register_hook() -> None:
    from mailer import sweeper

    if release_codes_hook not in sweeper.HOOKS:
        sweeper.HOOKS.append(release_codes_hook)


_register_hook()
