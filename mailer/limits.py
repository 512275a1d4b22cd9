"""Bounds on the free-form JSON data services send (notice data, shop event data).

:func:`check` walks a value once and lists *every* problem it finds (up to
:data:`PROBLEMS_MAX_COUNT`), each with the path of the offending field written the way
the HTTP API reports it (``data.items[3].name``).  :func:`ensure` raises
:class:`InvalidData` carrying that list, so a 422 can name all the bad fields at once.

What is refused, whoever calls (``POST /v1/notices``, ``POST /v1/events``, the CLI
``--data`` JSON, Python callers of :func:`mailer.notices.create` and
:func:`mailer.events.publish`):

* NaN and ±Infinity (Python's ``json`` module accepts those literals; mailer does not);
* integers outside a signed 64-bit column (what PostgreSQL ``BIGINT`` holds);
* strings, keys, lists and objects longer than the limits below, nesting deeper than
  :data:`DATA_DEPTH_MAX_LEVELS`, and data whose compact JSON is larger than
  :data:`DATA_TOTAL_MAX_BYTES`.

The limits are module constants; docs/http-api.md says how to change them.
"""

from __future__ import annotations

import json
import math
from typing import Any

from mailer.errors import InvalidData

#: Longest string value in data, characters.
DATA_STRING_MAX_CHARS = 10_000
#: Longest object key in data, characters.
DATA_KEY_MAX_CHARS = 100
#: Most entries in one list in data.
DATA_LIST_MAX_ITEMS = 500
#: Most keys in one object in data.
DATA_OBJECT_MAX_KEYS = 200
#: Deepest nesting of objects and lists inside data, levels (``data`` itself is level 1).
DATA_DEPTH_MAX_LEVELS = 8
#: Largest data as compact UTF-8 JSON, bytes.
DATA_TOTAL_MAX_BYTES = 65_536
#: Smallest and largest integer accepted (a signed 64-bit database column).
DATA_INT_MIN = -(2**63)
DATA_INT_MAX = 2**63 - 1
#: Most problems listed in one error (the rest are summarised in one more line).
PROBLEMS_MAX_COUNT = 50


def _child(where: str, key: Any) -> str:
    return f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}"


def check(value: Any, where: str = "data") -> list[tuple[str, str]]:
    """Every limit ``value`` breaks, as (field path, message) pairs; empty when it is fine."""
    problems: list[tuple[str, str]] = []
    overflow = False

    def add(field: str, msg: str) -> None:
        nonlocal overflow
        if len(problems) < PROBLEMS_MAX_COUNT:
            problems.append((field, msg))
        else:
            overflow = True

    # An explicit stack, not recursion: depth is what we are bounding.
    stack: list[tuple[Any, str, int]] = [(value, where, 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, int):
            if not DATA_INT_MIN <= item <= DATA_INT_MAX:
                add(path, f"{path} is outside the 64-bit integer range")
        elif isinstance(item, float):
            if not math.isfinite(item):
                add(path, f"{path} must be a finite number (NaN and Infinity are refused)")
        elif isinstance(item, str):
            if len(item) > DATA_STRING_MAX_CHARS:
                add(path, f"{path} is longer than {DATA_STRING_MAX_CHARS} characters")
        elif isinstance(item, (dict, list, tuple)):
            if depth > DATA_DEPTH_MAX_LEVELS:
                add(path, f"{path} nests deeper than {DATA_DEPTH_MAX_LEVELS} levels")
                continue
            if isinstance(item, dict):
                if len(item) > DATA_OBJECT_MAX_KEYS:
                    add(path, f"{path} has more than {DATA_OBJECT_MAX_KEYS} keys")
                    continue
                children = []
                for key, child in item.items():
                    if not isinstance(key, str):
                        add(path, f"{path} has a key that is not a string")
                        continue
                    if len(key) > DATA_KEY_MAX_CHARS:
                        add(path, f"{path} has a key longer than {DATA_KEY_MAX_CHARS} characters")
                        continue
                    children.append((child, _child(path, key), depth + 1))
            else:
                if len(item) > DATA_LIST_MAX_ITEMS:
                    add(path, f"{path} has more than {DATA_LIST_MAX_ITEMS} items")
                    continue
                children = [(child, _child(path, i), depth + 1) for i, child in enumerate(item)]
            stack.extend(reversed(children))  # report in document order
        else:
            add(path, f"{path} has a value of type {type(item).__name__}, which is not JSON")
    if not problems:
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        if size > DATA_TOTAL_MAX_BYTES:
            add(where, f"{where} is {size} bytes as JSON, more than {DATA_TOTAL_MAX_BYTES}")
    if overflow:
        problems.append((where, f"more than {PROBLEMS_MAX_COUNT} problems in {where}; the rest are not listed"))
    return problems


def ensure(value: Any, where: str = "data") -> None:
    """Raise :class:`InvalidData` listing every limit ``value`` breaks."""
    problems = check(value, where)
    if problems:
        raise InvalidData.listing(problems)


def reject_constant(name: str) -> float:
    """``json.loads(..., parse_constant=reject_constant)``: refuse ``NaN`` / ``Infinity`` literals."""
    raise ValueError(f"{name} is not a number mailer accepts (NaN and Infinity are refused)")
