"""``mailer templates check`` (every kind x locale, every problem) and the preview recipient.

:func:`check_templates` compiles and renders every kind x locale with its sample data
(and with only its required fields) and reports every :class:`Problem` instead of
stopping at the first; :func:`preview_context` is the realistic recipient context that
previews and checks use (``PREVIEW_*`` constants).
"""

from __future__ import annotations

import html as html_lib
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mailer.errors import TemplateError, UnknownKind, ValidationError
from mailer.rendering import i18n
from mailer.rendering.i18n import fallback_chain
from mailer.rendering.kinds import SUPPORTED_LOCALES, KindSpec
from mailer.rendering.layouts import LAYOUTS, STRINGS_FILE
from mailer.rendering.renderer import Renderer
from mailer.settings import Settings

# =========================================================================================
# Checking every template (``mailer templates check``)
# =========================================================================================
#: What previews and checks put in the context (sample recipient per locale).
PREVIEW_NAMES = {"en": "Alex", "zh-TW": "怡君", "zh-CN": "晓明", "pl": "Kasia", "ko": "지우", "fr": "Camille",
                 "ar": "ليلى"}
PREVIEW_UNSUBSCRIBE = "https://example.com/unsubscribe/PREVIEW"
PREVIEW_PREFERENCES = "https://example.com/preferences/PREVIEW"
_TRACK_PREFIX = "https://track.example.com/c?u="


def preview_context(settings: Settings, locale: str, **overrides: Any) -> dict[str, Any]:
    """A realistic recipient context for previews and checks."""
    lang = fallback_chain(locale)[1] if locale not in PREVIEW_NAMES else locale
    ctx = {"first_name": PREVIEW_NAMES.get(lang, PREVIEW_NAMES["en"]), "last_name": "", "email": "preview@example.com",
           "currency": settings.default_currency, "delivery_id": 0, "unsubscribe_url": PREVIEW_UNSUBSCRIBE,
           "preferences_url": PREVIEW_PREFERENCES}
    ctx.update({k: v for k, v in overrides.items() if v is not None})
    return ctx


@dataclass(frozen=True)
class Problem:
    """One thing ``mailer templates check`` found wrong."""

    kind: str
    locale: str | None
    message: str
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = ":".join(str(p) for p in (self.file, self.line) if p)
        return f"{self.kind}{' [' + self.locale + ']' if self.locale else ''}: {self.message}" + \
            (f" ({where})" if where else "")


_HREFS = re.compile(r'<a\b[^>]*?\bhref="([^"]*)"[^>]*>(.*?)</a>', re.S | re.I)


def check_templates(renderer: Renderer, kinds: Iterable[str] | None = None,
                    locales: Iterable[str] | None = None) -> list[Problem]:
    """Compile and render every kind x locale with its sample data (and with only its
    required fields), and report every problem instead of stopping at the first."""
    problems: list[Problem] = []
    root = renderer.root
    renderer.forget()  # read everything fresh from disk
    wanted_locales = list(locales) if locales else None
    # Layout strings: every locale has every key English has.
    strings_path = root / LAYOUTS / STRINGS_FILE
    try:
        raw = tomllib.loads(strings_path.read_text(encoding="utf-8")) if strings_path.is_file() else {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(Problem("_layouts", None, f"strings.toml is not valid TOML: {exc}", str(strings_path)))
        raw = {}
    for loc in SUPPORTED_LOCALES:
        if wanted_locales and loc not in wanted_locales:
            continue
        missing = sorted(set(raw.get("en", {})) - set(raw.get(loc, {})))
        if missing:
            problems.append(Problem("_layouts", loc, f"strings.toml [{loc}] lacks {', '.join(missing)}",
                                    str(strings_path)))
    for kind in (list(kinds) if kinds else renderer.kinds()):
        try:
            spec = renderer.spec(kind)
            sample = renderer.sample(kind)
        except (TemplateError, UnknownKind) as exc:
            problems.append(Problem(kind, None, str(exc), getattr(exc, "template", None), getattr(exc, "line", None)))
            continue
        try:
            renderer.validate(kind, sample)
        except ValidationError as exc:
            problems.append(Problem(kind, None, f"sample.json: {exc}", str(spec.path / "sample.json")))
            continue
        undeclared = sorted(set(sample) - set(spec.required) - set(spec.optional))
        if undeclared:
            problems.append(Problem(kind, None, f"sample.json has fields kind.toml does not declare: "
                                                f"{', '.join(undeclared)}", str(spec.path / "sample.json")))
        have = spec.locales
        for loc in SUPPORTED_LOCALES:
            if loc not in have and (not wanted_locales or loc in wanted_locales):
                problems.append(Problem(kind, loc, f"no {loc}.mjml: every kind needs {', '.join(SUPPORTED_LOCALES)}",
                                        str(spec.path)))
        minimal = {k: v for k, v in sample.items() if k in spec.required}
        for loc in have:
            if wanted_locales and loc not in wanted_locales:
                continue
            for table, name in ((spec.subjects, "subject"), (spec.preheaders, "preheader")):
                if loc not in table:
                    problems.append(Problem(kind, loc, f"kind.toml [{name}] has no {loc!r} entry",
                                            str(spec.path / "kind.toml")))
            problems.extend(_check_one(renderer, spec, loc, sample, minimal))
    return problems


def _check_one(renderer: Renderer, spec: KindSpec, loc: str, sample: dict, minimal: dict) -> list[Problem]:
    kind = spec.name
    out: list[Problem] = []
    ctx = preview_context(renderer.settings, loc)
    tracked_ctx = ctx | {"wrap_link": lambda url: _TRACK_PREFIX + url}
    try:
        full = renderer.render(kind, loc, sample, context=tracked_ctx)
        renderer.render(kind, loc, minimal, context=ctx)
    except (TemplateError, ValidationError) as exc:
        return [Problem(kind, loc, str(exc).split(": ", 1)[-1] if getattr(exc, "template", None) else str(exc),
                        getattr(exc, "template", None), getattr(exc, "line", None))]
    path = str(spec.path / f"{loc}.mjml")

    def bad(message: str) -> None:
        out.append(Problem(kind, loc, message, path))

    if full.locale != loc:
        bad(f"rendered as {full.locale}, not {loc}")
    if not full.subject.strip():
        bad("empty subject")
    if "{{" in full.subject or "{%" in full.subject:
        bad("subject shows Jinja markup")
    address = renderer.settings.store_address
    if address not in full.html or address not in full.text:
        bad("the store's postal address is missing from the footer")
    links = [(html_lib.unescape(h), lbl) for h, lbl in _HREFS.findall(full.html)]
    hrefs = {h for h, _ in links}
    if spec.transactional:
        if PREVIEW_UNSUBSCRIBE in hrefs:
            bad("transactional mail shows an unsubscribe link (it is not marketing)")
    else:
        for url, what in ((PREVIEW_UNSUBSCRIBE, "unsubscribe"), (PREVIEW_PREFERENCES, "preferences")):
            if url not in hrefs:
                bad(f"marketing mail without a visible {what} link in the HTML")
            if url not in full.text:
                bad(f"marketing mail without the {what} link in the text part")
    for href, label in links:
        if href.startswith(("http://", "https://")) and href not in (PREVIEW_UNSUBSCRIBE, PREVIEW_PREFERENCES) \
                and not href.startswith(_TRACK_PREFIX):
            bad(f"link {href} is not rewritten for click tracking")
        if re.sub(r"<[^>]+>|\s", "", label) and href.startswith("http") and href not in full.text:
            bad(f"link {href} is missing from the text part")
    direction = i18n.text_direction(loc)
    if f'dir="{direction}"' not in full.html[:600]:
        bad(f'the HTML does not declare dir="{direction}"')
    if f'lang="{loc}"' not in full.html[:600]:
        bad(f'the HTML does not declare lang="{loc}"')
    return out
