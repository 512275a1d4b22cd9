"""Segment files: loading and validating ``segments/<name>.toml`` / ``.yaml`` / ``.yml``.

Owns the whitelist of fields and operators (:data:`FIELDS`), the :class:`Segment`
record, and turning a condition table into the normalized tree the compiler
(:mod:`mailer.segments.conditions`) and resolution (:mod:`mailer.segments.resolve`) use.

The file format, with an example, is in the package docstring (:mod:`mailer.segments`):
tables over whitelisted fields (:data:`FIELDS`) combined with ``all``, ``any`` and
``not``; there is no way to write SQL in a segment file.

Files are bounded before and while they are parsed: at most
:data:`MAX_SEGMENT_FILE_BYTES`, nesting at most :data:`MAX_FILE_NESTING_DEPTH` tables
and lists deep (:func:`check_shape`, also used for automation files), conditions at
most :data:`MAX_CONDITION_DEPTH` combinators deep and :data:`MAX_CONDITIONS` in all.
YAML anchors and aliases are refused while composing (no "billion laughs"), and so are
NaN, infinities and numbers beyond what the customers columns hold.  A bad file is a
:class:`~mailer.errors.SegmentError` naming the file (and the line where known).
"""

from __future__ import annotations

import math
import re
import reprlib
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from mailer.consent.ledger import purpose_ok
from mailer.customers.records import MAX_ORDERS_COUNT, MAX_TOTAL_SPENT
from mailer.errors import ConsentError, SegmentError
from mailer.models import ChurnRisk, SpendTier
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
    # Prediction figures (`mailer predict score`, docs/predictions.md); NULL for a customer
    # the model cannot score, and then no condition on them holds.
    "predicted_clv": _NUM_OPS,
    "p_alive": _NUM_OPS,
    "churn_risk": ("eq", "in"),
    "expected_next_order_at": ("within_next_days", "overdue_by_days"),
}
#: Largest segment file read, bytes.
MAX_SEGMENT_FILE_BYTES = 64 * 1024
#: Deepest nesting of tables and lists in a segment or automation file (levels).
MAX_FILE_NESTING_DEPTH = 32
#: Deepest nesting of conditions (all / any / not and field tables), levels.
MAX_CONDITION_DEPTH = 12
#: Most conditions (tables and operator tests) in one condition tree.
MAX_CONDITIONS = 500
#: Most YAML nodes (scalars, lists, tables) one segment file may have.
MAX_YAML_NODES = 5000
#: Largest day count in a condition (about 100 years).
MAX_CONDITION_DAYS = 36_600
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
_TIERS = tuple(t.value for t in SpendTier)
_RISKS = tuple(r.value for r in ChurnRisk)


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
    return SegmentError(f"{where}: {key}: {message}", field=key)


def _fields_help() -> str:
    return "; ".join(f"{f} ({', '.join(ops)})" for f, ops in FIELDS.items())


def segment_files(settings: Settings) -> list[Path]:
    root = Path(settings.segments_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.suffix in SUFFIXES and p.is_file())


class BoundedYAMLLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases and bounds nodes and nesting while composing.

    An alias is refused before anything it names is copied, so a "billion laughs" file
    costs a few nodes, not gigabytes.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self.nodes_composed = 0
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(None, None, "anchors and aliases (& and *) are not allowed",
                                              event.start_mark)
        self.nodes_composed += 1
        if self.nodes_composed > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(None, None, f"more than {MAX_YAML_NODES} values", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_FILE_NESTING_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_FILE_NESTING_DEPTH} "
                                                              "levels", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_bounded(path: Path, max_bytes: int) -> tuple[str | None, str]:
    """(text, "") or (None, problem): at most ``max_bytes``, UTF-8, the line of a bad byte."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"
    if len(raw) > max_bytes:
        return None, f"the file is larger than {max_bytes} bytes"
    try:
        return raw.decode("utf-8"), ""
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        return None, f"line {line}: byte 0x{raw[exc.start]:02x} is not valid UTF-8 (save the file as UTF-8)"


def nesting_line(text: str, limit: int = MAX_FILE_NESTING_DEPTH) -> int | None:
    """The first line where brackets nest deeper than ``limit`` (a hint; strings not skipped)."""
    depth = 0
    for number, line in enumerate(text.splitlines(), 1):
        for ch in line:
            depth += 1 if ch in "[{" else -1 if ch in "]}" else 0
            if depth > limit:
                return number
    return None


def load_toml(text: str, where: str, error: type[Exception], *, syntax: str = "") -> Any:
    """``text`` parsed as TOML; ``error("<where>: ...")`` for a syntax error (after ``syntax``) or deep nesting."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{where}: {syntax}{exc}") from exc
    except RecursionError:
        line = nesting_line(text)
        raise error(f"{where}: nested deeper than {MAX_FILE_NESTING_DEPTH} levels"
                    + (f" (line {line})" if line else "")) from None


def check_shape(data: Any, max_depth: int = MAX_FILE_NESTING_DEPTH) -> tuple[str, str] | None:
    """(key path, problem) for nesting deeper than ``max_depth`` or a NaN/infinite number; else None.

    Iterative, so any parsed document can be checked without recursion.
    """
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, key, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth >= max_depth:
                return key or "(top)", f"nested deeper than {max_depth} levels"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                sub = f"{key}[{k}]" if isinstance(value, list) else (f"{key}.{k}" if key else str(k))
                stack.append((v, sub, depth + 1))
        elif isinstance(value, float) and not math.isfinite(value):
            return key or "(top)", f"{value!r} is not a finite number"
        elif isinstance(value, Decimal) and not value.is_finite():
            return key or "(top)", f"{value} is not a finite number"
    return None


def _read(path: Path) -> dict:
    raw, problem = read_bounded(path, MAX_SEGMENT_FILE_BYTES)
    if raw is None:
        raise SegmentError(f"{path}: {problem}")
    if path.suffix == ".toml":
        data = load_toml(raw, str(path), SegmentError, syntax="TOML syntax: ")
    else:
        try:
            data = yaml.load(raw, Loader=BoundedYAMLLoader)  # nosec B506 - a SafeLoader subclass, aliases refused
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise SegmentError(f"{path}: YAML syntax{at}: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(data, dict):
        raise SegmentError(f"{path}: the file must be a table of keys ({', '.join(TOP_KEYS)})")
    bad = check_shape(data)
    if bad:
        raise _fail(path, *bad)
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
        tree = validate_condition(where, where="where", path=path)
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
        raise SegmentError(f"segment {name!r} is defined twice: {', '.join(map(str, found))}; keep one")
    path = found[0]
    return parse(_read(path), settings=settings, name=name, path=path)


def list_segments(settings: Settings) -> list[Segment]:
    """Every segment, validated; the first invalid file raises SegmentError naming it."""
    return [load(settings, p.stem) for p in segment_files(settings)]


def _show(value: Any) -> str:
    """A value for an error message, bounded in length and depth."""
    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlist, r.maxdict = 3, 60, 60, 6, 6
    return r.repr(value)


def _number(value: Any, key: str, path, *, integer: bool) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise _fail(path, key, f"must be a {'whole number' if integer else 'number'}, got {_show(value)}")
    if isinstance(value, float) and not math.isfinite(value) or isinstance(value, Decimal) and not value.is_finite():
        raise _fail(path, key, f"must be a finite number, got {value!r}")
    limit = MAX_ORDERS_COUNT if integer else MAX_TOTAL_SPENT
    if abs(value) > limit:
        raise _fail(path, key, f"{_show(value)} is beyond what the {'orders_count' if integer else 'total_spent'} "
                               f"column holds (at most {limit})")
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
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CONDITION_DAYS:
        raise _fail(path, key, f"must be a whole number of days (0 to {MAX_CONDITION_DAYS}), got {_show(value)}")
    return value


def _strings(value: Any, key: str, path, *, allowed: Iterable[str] | None = None, upper: bool = False) -> tuple:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v for v in items):
        raise _fail(path, key, f"must be a non-empty text or list of texts, got {_show(value)}")
    items = [v.upper() if upper else v for v in items]
    if allowed is not None:
        bad = [v for v in items if v not in allowed]
        if bad:
            raise _fail(path, key, f"{_show(bad[0])} is not one of {', '.join(allowed)}")
    return tuple(dict.fromkeys(items))


def _leaf(fname: str, op: str, value: Any, key: str, path) -> tuple:
    if fname == "tags":
        return ("tags", op, _strings(value, key, path))
    if fname in ("total_spent", "orders_count"):
        return (fname, op, _number(value, key, path, integer=fname == "orders_count"))
    if fname in ("predicted_spend_tier", "churn_risk"):
        allowed = _TIERS if fname == "predicted_spend_tier" else _RISKS
        vals = _strings(value, key, path, allowed=allowed)
        if op == "eq" and (not isinstance(value, str)):
            raise _fail(path, key, f"eq takes one value ({', '.join(allowed)}); use in for a list")
        return (fname, "in", vals)
    if fname in ("predicted_clv", "p_alive"):
        number = _number(value, key, path, integer=False)
        if fname == "p_alive" and not 0 <= number <= 1:
            raise _fail(path, key, f"p_alive is a probability from 0 to 1, got {_show(value)}")
        return (fname, op, number)
    if fname == "expected_next_order_at":
        return (fname, op, _days(value, key, path))
    if fname in ("last_order_at", "created_at"):
        return (fname, op, _days(value, key, path))
    if fname == "engagement":
        return (fname, op, _days(value, key, path))
    if fname in ("locale", "country"):
        if op in ("eq", "language") and not isinstance(value, str):
            raise _fail(path, key, f"{op} takes one text value, got {_show(value)}")
        vals = _strings(value, key, path, upper=fname == "country")
        if fname == "country" and any(not re.fullmatch(r"[A-Z]{2}", v) for v in vals):
            raise _fail(path, key, f"country codes are two letters (e.g. PL), got {_show(value)}")
        if op == "language":
            lang = vals[0].lower()
            if not re.fullmatch(r"[a-z]{2,3}", lang):
                raise _fail(path, key, f"language takes a language code such as pl or zh, got {_show(value)}")
            return (fname, "language", lang)
        return (fname, "in", vals)
    raise _fail(path, key, f"unknown field {fname!r}")  # pragma: no cover - filtered by caller


def _validate(cond: Any, key: str, path, depth: int = 0, budget: list[int] | None = None) -> tuple:
    """Check a condition and return its normalized tree: ("all"|"any", [..]), ("not", x), leaves.

    ``depth`` counts nested conditions (at most MAX_CONDITION_DEPTH) and ``budget`` the
    conditions seen so far (at most MAX_CONDITIONS), so the recursion is bounded.
    """
    budget = budget if budget is not None else [0]
    if depth >= MAX_CONDITION_DEPTH:
        raise _fail(path, key, f"conditions nest deeper than {MAX_CONDITION_DEPTH} levels")
    if not isinstance(cond, dict) or not cond:
        raise _fail(path, key, "a condition must be a non-empty table such as { total_spent = { gt = 100 } }")
    budget[0] += len(cond)
    if budget[0] > MAX_CONDITIONS:
        raise _fail(path, key, f"more than {MAX_CONDITIONS} conditions")
    parts: list[tuple] = []
    for k, v in cond.items():
        sub = f"{key}.{k}"
        if k in ("all", "any"):
            if not isinstance(v, list) or not v:
                raise _fail(path, sub, f"{k} takes a non-empty list of conditions")
            parts.append((k, tuple(_validate(item, f"{sub}[{i}]", path, depth + 1, budget)
                                   for i, item in enumerate(v))))
        elif k == "not":
            parts.append(("not", _validate(v, sub, path, depth + 1, budget)))
        elif k in FIELDS:
            ops = FIELDS[k]
            if not isinstance(v, dict):
                if "eq" not in ops:
                    raise _fail(path, sub, f"give an operator table, one of: {', '.join(ops)} "
                                           f"(e.g. {{ {ops[0]} = ... }})")
                v = {"eq": v}
            if not v:
                raise _fail(path, sub, f"empty operator table; operators for {k}: {', '.join(ops)}")
            budget[0] += len(v)
            if budget[0] > MAX_CONDITIONS:
                raise _fail(path, sub, f"more than {MAX_CONDITIONS} conditions")
            for op, val in v.items():
                if op not in ops:
                    raise _fail(path, f"{sub}.{op}", f"unknown operator {op!r} for {k}; allowed: {', '.join(ops)}")
                parts.append(_leaf(k, op, val, f"{sub}.{op}", path))
        else:
            raise _fail(path, sub, f"unknown field {_show(k)}; allowed fields: {_fields_help()}; "
                                   f"combinators: {', '.join(COMBINATORS)}")
    return parts[0] if len(parts) == 1 else ("all", tuple(parts))


def validate_condition(cond: dict, *, where: str = "condition", path: str | Path | None = None) -> tuple:
    """Validate a condition given as a dict (segment ``where``, automation filters).

    Checks the shape first (nesting, NaN/infinity) without recursion, so any dict is
    refused with a SegmentError rather than a RecursionError.
    """
    bad = check_shape(cond)
    if bad:
        raise _fail(path, f"{where}.{bad[0]}" if bad[0] != "(top)" else where, bad[1])
    return _validate(cond, where, path)
