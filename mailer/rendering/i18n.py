"""Locale-aware formatting for templates: money, numbers, percentages, dates (Babel).

Templates call these as Jinja filters; each reads the recipient's locale, currency and
time zone from the render context, so a template says ``{{ item.price | money }}`` and
a Polish customer paying in złoty reads ``129,00 zł`` while a Korean customer reads
``₩129,000``.  Values may be numbers, numeric strings, ``Decimal``, ISO-8601 strings
(``2026-12-01``, ``2026-12-01T15:30:00Z``), ``date`` or ``datetime``.

Formatting results are memoized per (value, locale, currency, format): campaign data
is the same for thousands of recipients, so the Babel cost is paid once per locale.

Context keys read: ``format_locale`` (set by the renderer to the recipient's own
locale when Babel knows it, e.g. ``pl-PL``, else the template locale), ``locale``,
``currency`` (ISO 4217) and ``timezone`` (IANA name).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime, format_time
from babel.numbers import format_currency, format_decimal, format_percent

from mailer.errors import FormatError

#: Memoized formatting results kept per filter (entries, not bytes).
CACHE_ENTRIES = 8192
#: Right-to-left scripts among the languages we may be asked for.
RTL_LANGUAGES = frozenset({"ar", "he", "fa", "ur"})
#: The one rule for a locale given as input (API ``locale``, CLI ``--locale``, event data, the
#: customer import): ``pl``, ``zh-TW``, ``pt_BR``.
LOCALE_PATTERN = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8}){0,3}$"
#: Longest locale accepted as input, characters (customers.locale is VARCHAR(20)).
MAX_LOCALE_CHARS = 20
_LOCALE_INPUT = re.compile(LOCALE_PATTERN)


def is_valid_locale(value: str) -> bool:
    """Whether ``value`` is a locale mailer accepts as input (:data:`LOCALE_PATTERN`, at most MAX_LOCALE_CHARS)."""
    return isinstance(value, str) and len(value) <= MAX_LOCALE_CHARS and _LOCALE_INPUT.fullmatch(value) is not None


def fallback_chain(locale: str | None, default: str = "en") -> list[str]:
    """See :func:`chain`; a fresh list the caller may change."""
    return list(chain(locale, default))


@functools.lru_cache(maxsize=1024)
def chain(locale: str | None, default: str = "en") -> tuple[str, ...]:
    """``zh-HK`` -> zh-HK, zh-TW, en; ``pl-PL`` -> pl-PL, pl, en; anything -> ..., en.

    Chinese falls back by script: Hong Kong, Macau and Taiwan (and ``zh-Hant``) to
    ``zh-TW``; mainland China, Singapore, Malaysia, ``zh-Hans`` and plain ``zh`` to ``zh-CN``.
    """
    out: list[str] = []
    if locale:
        parts = [p for p in locale.replace("_", "-").split("-") if p]
        lang = parts[0].lower() if parts else ""
        rest = [p.upper() if len(p) == 2 else p.title() for p in parts[1:]]
        if lang:
            out.append("-".join([lang, *rest]))
        if lang == "zh":
            # Plain "zh" is Simplified Chinese (CLDR: zh -> zh_Hans_CN).
            out.append("zh-CN" if not rest or {"CN", "SG", "MY", "Hans"} & set(rest) else "zh-TW")
        elif lang:
            out.append(lang)
    out.append(default)
    out.append("en")
    seen: list[str] = []
    for c in out:
        if c not in seen:
            seen.append(c)
    return tuple(seen)


@functools.lru_cache(maxsize=256)
def babel_locale(locale: str | None) -> Locale | None:
    """The Babel locale for ``zh-TW`` / ``pl_PL`` / ``ar``; ``None`` when Babel does not know it."""
    if not locale:
        return None
    try:
        return Locale.parse(locale.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        return None


def text_direction(locale: str) -> str:
    """``rtl`` for Arabic and other right-to-left languages, else ``ltr``."""
    return "rtl" if locale.replace("_", "-").split("-")[0].lower() in RTL_LANGUAGES else "ltr"


def _loc(ctx) -> str:
    return ctx.get("format_locale") or ctx.get("locale") or "en"


def to_decimal(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool) or value is None:
        raise FormatError(f"expected a number, got {value!r}")
    try:
        return Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise FormatError(f"expected a number, got {value!r}") from exc


def to_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip()[:10])
        except ValueError as exc:
            raise FormatError(f"expected an ISO date like 2026-12-01, got {value!r}") from exc
    raise FormatError(f"expected a date, got {value!r}")


def to_datetime(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise FormatError(f"expected an ISO date-time like 2026-12-01T15:30:00Z, got {value!r}") from exc
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    raise FormatError(f"expected a date-time, got {value!r}")


# -- memoized cores (hashable arguments only) ----------------------------------------------
@functools.lru_cache(maxsize=CACHE_ENTRIES)
def _money(value: str, currency: str, locale: str, fmt: str | None) -> str:
    loc = babel_locale(locale) or babel_locale("en")
    try:
        return format_currency(to_decimal(value), currency.upper(), format=fmt, locale=loc)
    except (ValueError, KeyError) as exc:
        raise FormatError(f"cannot format {value!r} as {currency!r}: {exc}") from exc


@functools.lru_cache(maxsize=CACHE_ENTRIES)
def _number(value: str, locale: str, fmt: str | None) -> str:
    return format_decimal(to_decimal(value), format=fmt, locale=babel_locale(locale) or babel_locale("en"))


@functools.lru_cache(maxsize=CACHE_ENTRIES)
def _percent(value: str, locale: str) -> str:
    return format_percent(to_decimal(value) / 100, locale=babel_locale(locale) or babel_locale("en"),
                          decimal_quantization=False)


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise FormatError(f"unknown time zone {tz!r}") from exc


def _local(value: Any, tz: str) -> dt.datetime | dt.date:
    """A date stays a date; a date-time (or ISO text with a time) moves to the time zone ``tz``."""
    if isinstance(value, dt.datetime) or (isinstance(value, str) and len(value.strip()) > 10):
        return to_datetime(value).astimezone(_zone(tz))
    return to_date(value)


@functools.lru_cache(maxsize=CACHE_ENTRIES)
def _date(value: Any, locale: str, fmt: str, tz: str) -> str:
    local = _local(value, tz)
    day = local.date() if isinstance(local, dt.datetime) else local
    loc = babel_locale(locale) or babel_locale("en")
    return _french_first(format_date(day, format=fmt, locale=loc), day, loc, fmt)


def _french_first(text: str, day: dt.date, loc: Locale, fmt: str | None) -> str:
    """French writes the first of the month as an ordinal: « 1er décembre »."""
    if loc.language == "fr" and day.day == 1 and fmt in ("long", "full", None):
        return re.sub(r"(?<!\d)1(?=[ \u00a0\u202f])", "1er", text, count=1)
    return text


@functools.lru_cache(maxsize=CACHE_ENTRIES)
def _datetime(value: Any, locale: str, fmt: str | None, tz: str) -> str:
    loc = babel_locale(locale) or babel_locale("en")
    when = to_datetime(value)
    zone = _zone(tz)
    if fmt:
        return format_datetime(when, format=fmt, tzinfo=zone, locale=loc)
    # Default: long date and short time, joined the way the locale joins them ("{1}, {0}").
    local = when.astimezone(zone)
    day = _french_first(format_date(local.date(), format="long", locale=loc), local.date(), loc, None)
    clock = format_time(local, format="short", locale=loc)
    return str(loc.datetime_formats["long"]).replace("'", "").replace("{1}", day).replace("{0}", clock)


@functools.lru_cache(maxsize=CACHE_ENTRIES)
def _time(value: Any, locale: str, fmt: str, tz: str) -> str:
    return format_time(to_datetime(value).astimezone(_zone(tz)), format=fmt,
                       locale=babel_locale(locale) or babel_locale("en"))


def _key(value: Any) -> Any:
    """A hashable cache key for ``value`` (numbers and strings as text)."""
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return str(value)
    return value


def _cached(fn, *args):
    """Call the memoized ``fn``; unhashable arguments (a list by mistake) skip the cache."""
    try:
        return fn(*args)
    except TypeError:
        try:
            hash(args)
        except TypeError:
            return fn.__wrapped__(*args)
        raise


# -- the Jinja filters -----------------------------------------------------------------------
@jinja2.pass_context
def money(ctx, value: Any, currency: str | None = None, format: str | None = None) -> str:
    """``{{ price | money }}`` in the recipient's currency, or ``money("USD")`` explicitly."""
    cur = currency or ctx.get("currency") or "EUR"
    return _cached(_money, _key(value), str(cur), _loc(ctx), format)


@jinja2.pass_context
def number(ctx, value: Any, format: str | None = None) -> str:
    """``{{ 12500 | number }}`` -> ``12,500`` / ``12 500`` / ``12.500``."""
    return _cached(_number, _key(value), _loc(ctx), format)


@jinja2.pass_context
def percent(ctx, value: Any) -> str:
    """``{{ 15 | percent }}`` -> ``15%`` / ``15 %``; the value is in percentage points."""
    return _cached(_percent, _key(value), _loc(ctx))


@jinja2.pass_context
def date(ctx, value: Any, format: str = "long") -> str:
    """``{{ eta | date }}``: ``short``, ``medium``, ``long``, ``full`` or a CLDR pattern.

    A date-time is first moved to the recipient's time zone (context ``timezone``).
    """
    return _cached(_date, value, _loc(ctx), format, str(ctx.get("timezone") or "UTC"))


@jinja2.pass_context
def datetime(ctx, value: Any, format: str | None = None) -> str:
    """``{{ ends_at | datetime }}``: long date and short time in the recipient's time zone,
    or a Babel format (``short``, ``medium``, ``long``, ``full``, a CLDR pattern)."""
    return _cached(_datetime, value, _loc(ctx), format, str(ctx.get("timezone") or "UTC"))


@jinja2.pass_context
def time(ctx, value: Any, format: str = "short") -> str:
    """``{{ pickup_at | time }}`` in the recipient's time zone."""
    return _cached(_time, value, _loc(ctx), format, str(ctx.get("timezone") or "UTC"))


@jinja2.pass_context
def tr(ctx, value: Any) -> Any:
    """Pick the recipient's language from a per-locale dict (``{"en": "Shirt", "pl": "Koszula"}``).

    Follows the fallback chain of the template locale; plain strings pass through.
    """
    if not isinstance(value, dict):
        return value
    for loc in chain(ctx.get("locale")):
        if loc in value:
            return value[loc]
    return next(iter(value.values()), "")


FILTERS = {"tr": tr, "money": money, "number": number, "percent": percent, "date": date, "datetime": datetime,
           "time": time}


def install(env: jinja2.Environment) -> jinja2.Environment:
    """Add the formatting filters to a Jinja environment."""
    env.filters.update(FILTERS)
    return env
