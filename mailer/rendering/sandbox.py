"""Jinja sandboxes: the environment every template renders in, and the rules for user-supplied text.

Every Jinja environment mailer builds is a :class:`SafeEnvironment`: Jinja's
``ImmutableSandboxedEnvironment`` (no ``__class__`` / ``__globals__`` / ``mro``, no
mutating methods, ``str.format`` sandboxed) plus bounds the sandbox does not have by
itself: ``*`` and ``+`` on strings and lists, ``**`` on integers, ``%`` string formatting
and ``range`` are intercepted so one expression cannot build a gigantic value.

Template text that comes from outside the repository (a campaign's ``--subject`` per
locale, subjects and preheaders in general) is data, never code.  :func:`check_text`
accepts only a small grammar: text, ``{{ expression }}``, ``{% if %}`` /
``{% elif %}`` / ``{% else %}``; names from :data:`TEXT_VARIABLES` plus the kind's data
fields; filters from :data:`TEXT_FILTERS`; tests from :data:`TEXT_TESTS`; no calls, loops,
assignments, macros, imports, and no attribute or key starting with ``_``.  The rendered
text is cut off at :data:`MAX_TEXT_OUTPUT_CHARS` (refused, never truncated silently).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mailer.errors import TemplateTextError

#: Longest string or list a ``*`` or ``+`` in a template may build, characters or items.
MAX_SEQUENCE_ITEMS = 100_000
#: Largest integer ``**`` may build, bits.
MAX_POWER_RESULT_BITS = 4_096
#: Longest ``range()`` a template may ask for, items.
MAX_RANGE_ITEMS = 10_000
#: Longest user-supplied template text (one subject or preheader), characters.
MAX_TEXT_SOURCE_CHARS = 1_000
#: Longest rendered subject or preheader, characters.
MAX_TEXT_OUTPUT_CHARS = 2_000

#: Context names a subject or preheader may use (besides the kind's declared data fields).
TEXT_VARIABLES = frozenset({
    "first_name", "last_name", "email", "currency", "store_name", "store_address", "locale", "format_locale",
    "dir", "timezone", "kind", "delivery_id", "unsubscribe_url", "preferences_url",
})
#: Jinja built-in filters allowed in a subject or preheader (plus mailer's i18n filters).
BUILTIN_TEXT_FILTERS = frozenset({
    "default", "d", "length", "count", "upper", "lower", "title", "capitalize", "trim", "first", "last",
    "round", "abs", "int", "truncate", "string",
})
#: Jinja tests allowed in a subject or preheader (``{% if x is defined %}``).
TEXT_TESTS = frozenset({"defined", "undefined", "none", "number", "string", "odd", "even"})

#: Node types of the subject grammar; anything else is refused with its tag named.
_TEXT_NODES = (
    nodes.Template, nodes.Output, nodes.TemplateData, nodes.If, nodes.Name, nodes.Const, nodes.Getattr,
    nodes.Getitem, nodes.Filter, nodes.Test, nodes.CondExpr, nodes.Compare, nodes.Operand, nodes.And, nodes.Or,
    nodes.Not, nodes.Concat, nodes.Add, nodes.Sub, nodes.Mul, nodes.Div, nodes.FloorDiv, nodes.Mod, nodes.Pow,
    nodes.Neg, nodes.Pos, nodes.Keyword,
)
_NODE_WORDS = {
    nodes.For: "{% for %} loops", nodes.Assign: "{% set %}", nodes.AssignBlock: "{% set %}",
    nodes.Macro: "{% macro %}", nodes.CallBlock: "{% call %}", nodes.FilterBlock: "{% filter %}",
    nodes.With: "{% with %}", nodes.Include: "{% include %}", nodes.Import: "{% import %}",
    nodes.FromImport: "{% from %}", nodes.Extends: "{% extends %}", nodes.Block: "{% block %}",
    nodes.Call: "function or method calls", nodes.List: "list literals", nodes.Tuple: "tuple literals",
    nodes.Dict: "dict literals", nodes.Slice: "slices",
}


def _too_long(value: Any) -> bool:
    return isinstance(value, (str, list, tuple)) and len(value) > MAX_SEQUENCE_ITEMS


def _bounded_range(*args: int) -> range:
    """``range()`` of at most MAX_RANGE_ITEMS items."""
    rng = range(*args)
    if len(rng) > MAX_RANGE_ITEMS:
        raise SecurityError(f"range() of {len(rng):,} items is longer than the limit of {MAX_RANGE_ITEMS:,}")
    return rng


class SafeEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with bounded ``*``, ``+``, ``**``, ``%`` and ``range``; ``item.name`` on a dict is a key lookup.

    Jinja's default tries ``getattr`` first (an exception per access on a dict, and
    ``item.items`` would be the dict method); template data is JSON, so keys come first.
    Everything that is not a dict key goes through the sandbox's attribute check.
    """

    intercepted_binops = frozenset({"*", "+", "**", "%"})

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.globals["range"] = _bounded_range

    def getattr(self, obj, attribute):
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (isinstance(seq, (str, list, tuple)) and isinstance(times, int)
                        and len(seq) * max(times, 0) > MAX_SEQUENCE_ITEMS):
                    raise SecurityError(f"'*' would build {len(seq) * times:,} characters or items; "
                                        f"the limit is {MAX_SEQUENCE_ITEMS:,}")
        elif operator == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)) \
                    and len(left) + len(right) > MAX_SEQUENCE_ITEMS:
                raise SecurityError(f"'+' would build more than {MAX_SEQUENCE_ITEMS:,} characters or items")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0 \
                    and right * math.log2(abs(left)) > MAX_POWER_RESULT_BITS:
                raise SecurityError(f"'**' would build a number of more than {MAX_POWER_RESULT_BITS:,} bits")
        elif operator == "%" and isinstance(left, str):
            raise SecurityError("'%' string formatting is not allowed in templates")
        result = super().call_binop(context, operator, left, right)
        if _too_long(result):
            raise SecurityError(f"'{operator}' built more than {MAX_SEQUENCE_ITEMS:,} characters or items")
        return result


def text_environment(filters: dict[str, Any]) -> SafeEnvironment:
    """The environment for user-supplied text: no globals, only the documented filters and tests."""
    env = SafeEnvironment(autoescape=False, undefined=jinja2.StrictUndefined)
    env.globals.clear()
    env.filters = {name: fn for name, fn in env.filters.items() if name in BUILTIN_TEXT_FILTERS}
    env.filters.update(filters)
    env.tests = {name: fn for name, fn in env.tests.items() if name in TEXT_TESTS}
    return env


def check_text(env: jinja2.Environment, source: str, *, field: str, variables: Iterable[str]) -> jinja2.Template:
    """Parse ``source`` against the subject grammar; the compiled template, or :class:`TemplateTextError`.

    ``field`` names the input in the message (``subject[pl]``); ``variables``: the
    names allowed besides :data:`TEXT_VARIABLES` (the kind's data fields).
    """
    if not isinstance(source, str):
        raise TemplateTextError(f"{field}: must be text, not {type(source).__name__}", field=field)
    if len(source) > MAX_TEXT_SOURCE_CHARS:
        raise TemplateTextError(f"{field}: {len(source):,} characters is longer than the limit of "
                                f"{MAX_TEXT_SOURCE_CHARS:,}", field=field)
    try:
        ast = env.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateTextError(f"{field}: Jinja syntax error: {exc.message}", field=field) from exc
    allowed = TEXT_VARIABLES | set(variables)
    for node in ast.find_all(nodes.Node):
        if not isinstance(node, _TEXT_NODES):
            what = next((w for t, w in _NODE_WORDS.items() if isinstance(node, t)), type(node).__name__)
            raise TemplateTextError(f"{field}: {what} are not allowed in subjects and preheaders (only "
                                    f"{{{{ expressions }}}} and {{% if %}})", field=field)
        if isinstance(node, nodes.Name) and (node.ctx != "load" or node.name not in allowed):
            raise TemplateTextError(f"{field}: unknown variable {node.name!r}; allowed: "
                                    f"{', '.join(sorted(allowed))}", field=field)
        if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            raise TemplateTextError(f"{field}: attribute {node.attr!r} is refused (names starting with _ "
                                    f"reach Python internals)", field=field)
        if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) \
                and isinstance(node.arg.value, str) and node.arg.value.startswith("_"):
            raise TemplateTextError(f"{field}: key {node.arg.value!r} is refused (names starting with _ "
                                    f"reach Python internals)", field=field)
        if isinstance(node, nodes.Filter) and node.name not in env.filters:
            raise TemplateTextError(f"{field}: unknown filter {node.name!r}; allowed: "
                                    f"{', '.join(sorted(env.filters))}", field=field)
        if isinstance(node, nodes.Test) and node.name not in env.tests:
            raise TemplateTextError(f"{field}: unknown test {node.name!r}; allowed: "
                                    f"{', '.join(sorted(env.tests))}", field=field)
        if isinstance(node, (nodes.Filter, nodes.Test)) and (node.dyn_args is not None or node.dyn_kwargs is not None):
            raise TemplateTextError(f"{field}: *args / **kwargs are not allowed", field=field)
    try:
        return env.from_string(ast)
    except jinja2.TemplateError as exc:
        raise TemplateTextError(f"{field}: {exc}", field=field) from exc


def render_text(template: jinja2.Template, context: dict[str, Any], *, field: str) -> str:
    """Render checked text, refusing output longer than MAX_TEXT_OUTPUT_CHARS."""
    parts: list[str] = []
    size = 0
    for chunk in template.generate(context):
        size += len(chunk)
        if size > MAX_TEXT_OUTPUT_CHARS:
            raise TemplateTextError(f"{field}: renders to more than {MAX_TEXT_OUTPUT_CHARS:,} characters",
                                    field=field)
        parts.append(chunk)
    return "".join(parts)
