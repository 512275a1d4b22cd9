"""Segment files: loading and validating ``segments/<name>.toml`` / ``.yaml`` / ``.yml``.

Owns the whitelist of fields and operators (:data:`FIELDS`), the :class:`Segment`
record, and turning a condition table into the normalized tree the compiler
(:mod:`mailer.segments.conditions`) and resolution (:mod:`mailer.segments.resolve`) use.

A segment is a file ``segments/<name>.toml`` (or ``.yaml``/``.yml``)::

    description = "VIP customers: tagged VIP or spent over 1000"
    purpose = "newsletter"          # the consent purpose every recipient must have now

    [where]
    any = [
      { tags = { any = ["VIP"] } },
      { total_spent = { gt = 1000 } },
    ]

Conditions are tables over whitelisted fields (see :data:`FIELDS`) combined with
``all``, ``any`` and ``not``; several keys in one table must all hold.  There is no
way to write SQL in a segment file.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterable

import yaml

from mailer.consent.ledger import purpose_ok
from mailer.errors import ConsentError, SegmentError
from mailer.models import SpendTier
from mailer.settings import Settings

#: Segment file suffixes, in lookup order.
SUFFIXES = (".toml", ".yaml", ".yml")
#: Keys allowed at the top of a segment file.
TOP_KEYS = ("name", "description", "purpose", "where")
COMBINATORS = ("all", "any", "not")
_NUM_OPS = ("eq", "gt", "gte", "lt", "lte")
_AGE_OPS = ("within_days", "older_than_days")
#: Whitelisted fields and the operators each allows.
FIELDS: dict[str, tuple[str, ...]] = {
    "tags": ("any", "all", "none"),
    "total_spent": _NUM_OPS,
    "orders_count": _NUM_OPS,
    "predicted_spend_tier": ("eq", "in"),
    "last_order_at": _AGE_OPS,
    "created_at": _AGE_OPS,
    "locale": ("eq", "in", "language"),
    "country": ("eq", "in"),
    "engagement": ("opened_within_days", "clicked_within_days", "within_days"),
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
_TIERS = tuple(t.value for t in SpendTier)


@dataclass(frozen=True)
class Segment:
    name: str
    purpose: str
    path: Path | None
    description: str = ""
    #: The validated condition tree (None: everyone with consent for the purpose).
    where: dict | None = None
    conditions: tuple = field(default=(), repr=False)


# -- loading and validation -------------------------------------------------------------------
def _fail(path: Path | str | None, key: str, message: str) -> SegmentError:
    where = str(path) if path else "segment"
    return SegmentError(f"{where}: {key}: {message}", field=key, where=where)


def _fields_help() -> str:
    return "; ".join(f"{f} ({', '.join(ops)})" for f, ops in FIELDS.items())


def segment_files(settings: Settings) -> list[Path]:
    root = Path(settings.segments_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.suffix in SUFFIXES and p.is_file())


def _read(path: Path) -> dict:
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SegmentError(f"{path}: cannot read: {exc}", where=str(path)) from exc
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(raw)
        except tomllib.TOMLDecodeError as exc:
            raise SegmentError(f"{path}: TOML syntax: {exc}", where=str(path)) from exc
    else:
        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise SegmentError(f"{path}: YAML syntax{at}: {getattr(exc, 'problem', None) or exc}",
                               where=str(path)) from exc
    if not isinstance(data, dict):
        raise SegmentError(f"{path}: the file must be a table of keys ({', '.join(TOP_KEYS)})", where=str(path))
    return data


def parse(data: dict, *, settings: Settings, name: str, path: Path | None = None) -> Segment:
    """Validate a segment definition (as read from its file)."""
    for key in data:
        if key not in TOP_KEYS:
            raise _fail(path, key, f"unknown key; allowed keys: {', '.join(TOP_KEYS)}")
    if "name" in data and data["name"] != name:
        raise _fail(path, "name", f"{data['name']!r} differs from the file name {name!r}")
    purpose = data.get("purpose")
    if not isinstance(purpose, str) or not purpose:
        raise _fail(path, "purpose", f"required: the consent purpose recipients must have "
                                     f"({', '.join(settings.purposes)} or restock:<sku>)")

    try:
        purpose_ok(settings, purpose)
    except ConsentError as exc:
        raise _fail(path, "purpose", str(exc)) from None
    description = data.get("description", "")
    if not isinstance(description, str):
        raise _fail(path, "description", "must be text")
    where = data.get("where")
    tree: tuple = ()
    if where is not None:
        tree = _validate(where, "where", path)
    return Segment(name=name, purpose=purpose, path=path, description=description, where=where, conditions=tree)


def load(settings: Settings, name: str) -> Segment:
    """Load and validate ``segments/<name>.toml`` (or .yaml/.yml)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise SegmentError(f"invalid segment name {name!r}: lower-case letters, digits, _ and -", field="segment")
    root = Path(settings.segments_dir)
    found = [root / f"{name}{s}" for s in SUFFIXES if (root / f"{name}{s}").is_file()]
    if not found:
        known = ", ".join(p.stem for p in segment_files(settings)) or "none"
        raise SegmentError(f"unknown segment {name!r} in {root}; known segments: {known}", field="segment")
    if len(found) > 1:
        raise SegmentError(f"segment {name!r} is defined twice: {', '.join(map(str, found))}; keep one",
                           where=str(found[0]))
    path = found[0]
    return parse(_read(path), settings=settings, name=name, path=path)


def list_segments(settings: Settings) -> list[Segment]:
    """Every segment, validated; the first invalid file raises SegmentError naming it."""
    return [load(settings, p.stem) for p in segment_files(settings)]


def _number(value: Any, key: str, path, *, integer: bool) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise _fail(path, key, f"must be a {'whole number' if integer else 'number'}, got {value!r}")
    if integer:
        if isinstance(value, float) and not value.is_integer() or isinstance(value, Decimal) and value % 1:
            raise _fail(path, key, f"must be a whole number, got {value!r}")
        return int(value)
    try:
        dec = Decimal(str(value))
    except InvalidOperation:
        raise _fail(path, key, f"must be a number, got {value!r}") from None
    if not dec.is_finite() or dec.as_tuple().exponent < -2:
        raise _fail(path, key, f"must be an amount with at most 2 decimal places, got {value!r}")
    return dec


def _days(value: Any, key: str, path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(path, key, f"must be a whole number of days (0 or more), got {value!r}")
    return value


def _strings(value: Any, key: str, path, *, allowed: Iterable[str] | None = None, upper: bool = False) -> tuple:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v for v in items):
        raise _fail(path, key, f"must be a non-empty text or list of texts, got {value!r}")
    items = [v.upper() if upper else v for v in items]
    if allowed is not None:
        bad = [v for v in items if v not in allowed]
        if bad:
            raise _fail(path, key, f"{bad[0]!r} is not one of {', '.join(allowed)}")
    return tuple(dict.fromkeys(items))


def _leaf(fname: str, op: str, value: Any, key: str, path) -> tuple:
    if fname == "tags":
        return ("tags", op, _strings(value, key, path))
    if fname in ("total_spent", "orders_count"):
        return (fname, op, _number(value, key, path, integer=fname == "orders_count"))
    if fname == "predicted_spend_tier":
        vals = _strings(value, key, path, allowed=_TIERS)
        if op == "eq" and (not isinstance(value, str)):
            raise _fail(path, key, f"eq takes one value ({', '.join(_TIERS)}); use in for a list")
        return (fname, "in", vals)
    if fname in ("last_order_at", "created_at"):
        return (fname, op, _days(value, key, path))
    if fname == "engagement":
        return (fname, op, _days(value, key, path))
    if fname in ("locale", "country"):
        if op in ("eq", "language") and not isinstance(value, str):
            raise _fail(path, key, f"{op} takes one text value, got {value!r}")
        vals = _strings(value, key, path, upper=fname == "country")
        if fname == "country" and any(not re.fullmatch(r"[A-Z]{2}", v) for v in vals):
            raise _fail(path, key, f"country codes are two letters (e.g. PL), got {value!r}")
        if op == "language":
            lang = vals[0].lower()
            if not re.fullmatch(r"[a-z]{2,3}", lang):
                raise _fail(path, key, f"language takes a language code such as pl or zh, got {value!r}")
            return (fname, "language", lang)
        return (fname, "in", vals)
    raise _fail(path, key, f"unknown field {fname!r}")  # pragma: no cover - filtered by caller


def _validate(cond: Any, key: str, path) -> tuple:
    """Check a condition and return its normalized tree: ("all"|"any", [..]), ("not", x), leaves."""
    if not isinstance(cond, dict) or not cond:
        raise _fail(path, key, "a condition must be a non-empty table such as { total_spent = { gt = 100 } }")
    parts: list[tuple] = []
    for k, v in cond.items():
        sub = f"{key}.{k}"
        if k in ("all", "any"):
            if not isinstance(v, list) or not v:
                raise _fail(path, sub, f"{k} takes a non-empty list of conditions")
            parts.append((k, tuple(_validate(item, f"{sub}[{i}]", path) for i, item in enumerate(v))))
        elif k == "not":
            parts.append(("not", _validate(v, sub, path)))
        elif k in FIELDS:
            ops = FIELDS[k]
            if not isinstance(v, dict):
                if "eq" not in ops:
                    raise _fail(path, sub, f"give an operator table, one of: {', '.join(ops)} "
                                           f"(e.g. {{ {ops[0]} = ... }})")
                v = {"eq": v}
            if not v:
                raise _fail(path, sub, f"empty operator table; operators for {k}: {', '.join(ops)}")
            for op, val in v.items():
                if op not in ops:
                    raise _fail(path, f"{sub}.{op}", f"unknown operator {op!r} for {k}; allowed: {', '.join(ops)}")
                parts.append(_leaf(k, op, val, f"{sub}.{op}", path))
        else:
            raise _fail(path, sub, f"unknown field {k!r}; allowed fields: {_fields_help()}; "
                                   f"combinators: {', '.join(COMBINATORS)}")
    return parts[0] if len(parts) == 1 else ("all", tuple(parts))


def validate_condition(cond: dict, *, where: str = "condition", path: str | Path | None = None) -> tuple:
    """Validate a condition given as a dict (segment ``where``, automation filters)."""
    return _validate(cond, where, path)
