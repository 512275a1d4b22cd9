"""Rule files: ``automations/*.toml`` read, checked and cached as :class:`Rule` objects.

One file is one rule (see docs/automations.md for every key).  This module owns the
rule's shape (:class:`Rule` and its ``[repeat]``, ``[merge]``, ``[waves]`` and
``[reward]`` tables), the checks that turn a bad file into an error naming the file,
the key and what is allowed (:func:`parse_rule`), durations (``"15m"``, ``"3d"``), and
the per-file-state cache of the rules folder (:func:`load`, :func:`get`).

A rule file is read bounded: at most :data:`MAX_RULE_FILE_BYTES`, UTF-8, nested at most
:data:`mailer.segments.files.MAX_FILE_NESTING_DEPTH` levels, no NaN or infinite numbers,
durations at most :data:`MAX_DURATION_S`; a file that breaks one is a
ConfigurationError naming it, never a crash.  :func:`load_each` checks every file on
its own (``mailer automations list`` shows the bad ones and the good ones).
"""

from __future__ import annotations

import dataclasses
import re
import string
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from mailer import segments
from mailer.automations import codes as codes_service
from mailer.errors import ConfigurationError, MailerError, ValidationError
from mailer.events.schemas import SCHEMAS
from mailer.rendering import TRANSACTIONAL, Renderer
from mailer.segments.files import _show, check_shape, load_toml, read_bounded
from mailer.settings import Settings
from mailer.tracking import service as tracking

_DURATION = re.compile(r"^\s*(\d{1,9})\s*(s|m|h|d)\s*$")
_DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Longest delay or window a rule may give, seconds (about 10 years).
MAX_DURATION_S = 3660 * 86400
#: Largest rule file read, bytes.
MAX_RULE_FILE_BYTES = 64 * 1024

#: Event-condition operators (``[event_if]``) and what they test.
EVENT_OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "empty")
#: Who a rule writes to: the event's customer, or everyone with a current
#: ``restock:<sku>`` request for the event's product.
AUDIENCES = ("customer", "restock_requests")

#: Every key a rule file may have, for the error message on a typo.
RULE_KEYS = ("description", "event", "kind", "enabled", "delay", "delays", "group", "cancelled_by", "once",
             "quiet_hours", "require_consent", "audience", "event_if", "customer_if", "became", "repeat",
             "merge", "waves", "reward", "data", "add_data", "holdout_percent", "before")
#: Largest holdout share of a rule, percent of its eligible sends.
MAX_HOLDOUT_PERCENT = 50


def _csat_links(settings: Settings, values: dict) -> dict:
    return tracking.csat_urls(settings, values["order_number"], values.get("customer_id"))


#: Data a rule can add by name (``add_data = ["csat_links"]``): the event fields each needs,
#: and a function (settings, event values) -> notice fields.
ADD_DATA = {
    "csat_links": (("order_number",), _csat_links),  # rating_urls (5 signed links) and comment_url
}


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
    #: Share of eligible customers deliberately not mailed (recorded as ``holdout`` sends),
    #: percent; the incremental revenue of the rule is measured against them.
    holdout_percent: float = 0.0
    #: (``expected_order_due`` only) send this long before the event's ``expected_next_order_at``.
    before: timedelta | None = None
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
    m = _DURATION.match(value) if isinstance(value, str) and len(value) <= 40 else None
    if not m:
        raise ConfigurationError(f"{where}: {_show(value)} is not a duration such as \"90s\", \"15m\", \"1h\" or \"3d\"")
    seconds = int(m.group(1)) * _DURATION_UNITS_S[m.group(2)]
    if seconds > MAX_DURATION_S:
        raise ConfigurationError(f"{where}: {value!r} is longer than {MAX_DURATION_S // 86400} days")
    return timedelta(seconds=seconds)


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
    if not isinstance(cond, dict):
        raise ConfigurationError(f"{where} must be a table (a segment condition such as "
                                 "{ tags = { any = [\"VIP\"] } })")
    try:
        return segments.validate_condition(cond, where=where.rpartition(": ")[2], path=path)
    except MailerError as exc:
        raise ConfigurationError(str(exc)) from exc


def parse_rule(path: Path, settings: Settings, renderer=None) -> Rule:
    """Read and check one rule file; errors name the file, the key and what is allowed."""
    where = str(path)
    text, problem = read_bounded(path, MAX_RULE_FILE_BYTES)
    if text is None:
        raise ConfigurationError(f"{where}: {problem}")
    raw = load_toml(text, where, ConfigurationError)
    bad = check_shape(raw)
    if bad:
        raise ConfigurationError(f"{where}: {bad[0]}: {bad[1]}")
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
        if isinstance(per_unit, bool) or not isinstance(per_unit, (int, float)) or not 0 < per_unit <= 1e6:
            raise ConfigurationError(f"{where}: [waves] per_unit must be a number above 0 (at most 1000000)")
        if isinstance(min_size, bool) or not isinstance(min_size, int) or not 1 <= min_size <= 10**9:
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
    holdout = raw.get("holdout_percent", 0)
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout <= MAX_HOLDOUT_PERCENT:
        raise ConfigurationError(f"{where}: holdout_percent must be a number from 0 to {MAX_HOLDOUT_PERCENT} "
                                 f"(percent of the rule's customers not mailed on purpose)")
    before = None
    if "before" in raw:
        if event != "expected_order_due":
            raise ConfigurationError(f"{where}: before (send N days before the expected next order) needs "
                                     "event = \"expected_order_due\"")
        before = parse_duration(raw["before"], f"{where}: before")
    for flag in ("enabled", "once", "quiet_hours", "require_consent"):
        if flag in raw and not isinstance(raw[flag], bool):
            raise ConfigurationError(f"{where}: {flag} must be true or false")
    rule = Rule(name=name, path=path, event=event, kind=kind, description=str(raw.get("description", "")),
                enabled=raw.get("enabled", True), delays=delays, group=group, cancelled_by=tuple(cancelled_by),
                once=raw.get("once", False), quiet_hours=raw.get("quiet_hours", True),
                require_consent=raw.get("require_consent", True), audience=audience, event_if=event_if,
                customer_if=customer_if, became=became, repeat=repeat, merge=merge, waves=waves, reward=reward,
                data=data, add_data=tuple(add_data), holdout_percent=float(holdout), before=before)
    if renderer is not None:
        try:
            spec = renderer.spec(kind)
        except MailerError as exc:
            raise ConfigurationError(f"{where}: kind {kind!r}: {exc}") from None
        fields = tuple(spec.required) + tuple(spec.optional)
        rule = _replace(rule, purpose=spec.purpose, fields=fields)
        if rule.transactional and rule.holdout_percent:
            raise ConfigurationError(f"{where}: holdout_percent, but {kind} is transactional: a notice the "
                                     "customer needs is never held back")
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
    return dataclasses.replace(rule, **changes)


_cache: dict[tuple, list[Rule]] = {}
_cache_lock = threading.Lock()


def load(settings: Settings, renderer=None) -> list[Rule]:
    """Every rule in ``settings.automations_dir`` (``*.toml``, by name), checked; cached per file state."""
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


def load_each(settings: Settings, renderer=None) -> list[tuple[Path, Rule | ConfigurationError]]:
    """Every rule file with its Rule, or the error that makes it invalid; one bad file spoils no other."""
    directory = Path(settings.automations_dir)
    if not directory.is_dir():
        return []
    renderer = renderer or Renderer(settings)
    out: list[tuple[Path, Rule | ConfigurationError]] = []
    for path in sorted(directory.glob("*.toml")):
        try:
            out.append((path, parse_rule(path, settings, renderer)))
        except ConfigurationError as exc:
            out.append((path, exc))
    return out


def get(settings: Settings, name: str) -> Rule:
    for rule in load(settings):
        if rule.name == name:
            return rule
    raise ConfigurationError(f"no automation named {name!r} in {settings.automations_dir}")


def describe(r: Rule) -> list[str]:
    """A rule in words, a few lines (``mailer automations list`` and the console's automations page)."""
    lines: list[str] = []
    if r.description:
        lines.append(r.description)
    audience = " to everyone with a restock request" if r.audience == "restock_requests" else ""
    lines.append(f"on {r.event} -> send {r.kind}{audience} ({'transactional' if r.transactional else 'marketing: ' + r.purpose}) "
                 f"{r.describe_delays()}")
    lines.append(f"group {r.group}; cancelled by {', '.join(r.cancelled_by) or 'nothing'}")
    extras = []
    if r.once:
        extras.append("at most once per group")
    if r.repeat:
        changed = f" unless {', '.join(r.repeat.unless_changed)} changed" if r.repeat.unless_changed else ""
        extras.append(f"nothing again within {format_duration(r.repeat.window)}{changed}")
    if r.merge:
        extras.append(f"merges into {r.merge.into} within {format_duration(r.merge.window)}")
    if r.waves:
        extras.append(f"waves of max(stock x {r.waves.per_unit:g}, {r.waves.min_size}) "
                      f"every {format_duration(r.waves.interval)}")
    if r.reward:
        extras.append(f"code from pool {r.reward.pool}")
    if r.holdout_percent:
        extras.append(f"holdout {r.holdout_percent:g} % (not mailed, for incremental revenue)")
    if r.event_if or r.customer_if or r.became:
        extras.append("conditions: " + ", ".join(n for n, c in (("event_if", r.event_if),
                                                                ("customer_if", r.customer_if),
                                                                ("became", r.became)) if c))
    if not r.transactional:
        extras.append("quiet hours" if r.quiet_hours else "ignores quiet hours")
    if extras:
        lines.append("; ".join(extras))
    return lines
