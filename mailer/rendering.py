"""Rendering: notice kinds, MJML compiled once per (template, locale), Jinja per recipient.

A kind is a folder ``templates/<kind>/`` with ``kind.toml`` (schema, lawful basis,
subjects and preheaders per locale), ``sample.json`` and one ``<locale>.mjml`` per
locale.  MJML goes through mjml-python (MRML) once per (kind, locale) and the HTML
is compiled to a Jinja template (autoescape, StrictUndefined); each recipient costs
one Jinja render for the HTML and one for the text part.
"""

from __future__ import annotations

import html as html_lib
import json
import re
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import mjml

from mailer.errors import MissingField, TemplateError, UnknownKind
from mailer.settings import Settings

TRANSACTIONAL = "transactional"


@dataclass(frozen=True)
class KindSpec:
    """What ``templates/<kind>/kind.toml`` declares."""

    name: str
    path: Path
    #: "transactional" or the consent purpose the mail needs ("newsletter", "loyalty", "restock:{sku}").
    purpose: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    subjects: dict[str, str]
    preheaders: dict[str, str] = field(default_factory=dict)
    description: str = ""

    @property
    def transactional(self) -> bool:
        return self.purpose == TRANSACTIONAL

    @property
    def locales(self) -> list[str]:
        return sorted(p.stem for p in self.path.glob("*.mjml"))


@dataclass(frozen=True)
class Rendered:
    subject: str
    preheader: str
    html: str
    text: str
    locale: str


def fallback_chain(locale: str | None, default: str = "en") -> list[str]:
    """``zh-HK`` -> zh-HK, zh-TW, en; ``pl-PL`` -> pl-PL, pl, en; anything -> ..., en."""
    chain: list[str] = []
    if locale:
        loc = locale.replace("_", "-")
        chain.append(loc)
        lang = loc.split("-")[0].lower()
        if lang == "zh":
            region = loc.split("-")[1].upper() if "-" in loc else ""
            chain.append("zh-CN" if region in ("CN", "SG", "HANS") else "zh-TW")
        else:
            chain.append(lang)
    chain.append(default)
    if "en" not in chain:
        chain.append("en")
    seen: list[str] = []
    for c in chain:
        if c not in seen:
            seen.append(c)
    return seen


_TAG = re.compile(r"<[^>]+>")
_HREF = re.compile(r'<a\s[^>]*href="([^"]+)"[^>]*>(.*?)</a>', re.S | re.I)


def html_to_text(html: str) -> str:
    """A readable plain-text version of the rendered HTML, links as ``text (url)``."""
    body = html.split("<body", 1)[-1].split(">", 1)[-1]
    body = re.sub(r"<(style|head|title)[^>]*>.*?</\1>", "", body, flags=re.S | re.I)
    body = re.sub(r"<!--.*?-->", "", body, flags=re.S)
    body = _HREF.sub(lambda m: f"{_TAG.sub('', m.group(2)).strip()} ({m.group(1)})", body)
    body = re.sub(r"<br\s*/?>", "\n", body, flags=re.I)
    body = re.sub(r"</(p|div|tr|h[1-6]|li|table)>", "\n", body, flags=re.I)
    text = html_lib.unescape(_TAG.sub("", body))
    lines = [re.sub(r"[ \t\u00a0]+", " ", ln).strip() for ln in text.splitlines()]
    out: list[str] = []
    for ln in lines:
        if ln or (out and out[-1]):
            out.append(ln)
    return "\n".join(out).strip() + "\n"


class Renderer:
    """Loads kinds, validates data and renders mails, caching compiled templates."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = Path(settings.templates_dir)
        self._specs: dict[str, KindSpec] = {}
        self._compiled: dict[tuple[str, str], jinja2.Template] = {}
        self._lock = threading.Lock()
        self.env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)

    # -- kinds ------------------------------------------------------------------------------
    def kinds(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob("*/kind.toml"))

    def spec(self, kind: str) -> KindSpec:
        spec = self._specs.get(kind)
        if spec is not None:
            return spec
        path = self.root / kind
        if not re.fullmatch(r"[a-z0-9_]+(/[a-z0-9_]+)?", kind or "") or not (path / "kind.toml").is_file():
            raise UnknownKind(f"unknown notice kind {kind!r}; known kinds: {', '.join(self.kinds())}",
                              field="kind")
        try:
            meta = tomllib.loads((path / "kind.toml").read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise TemplateError(str(exc), template=str(path / "kind.toml")) from exc
        spec = KindSpec(name=kind, path=path, purpose=meta.get("purpose", TRANSACTIONAL),
                        required=tuple(meta.get("required", ())), optional=tuple(meta.get("optional", ())),
                        subjects=dict(meta.get("subject", {})), preheaders=dict(meta.get("preheader", {})),
                        description=meta.get("description", ""))
        self._specs[kind] = spec
        return spec

    def sample(self, kind: str) -> dict[str, Any]:
        return json.loads((self.spec(kind).path / "sample.json").read_text(encoding="utf-8"))

    def validate(self, kind: str, data: dict[str, Any]) -> KindSpec:
        """Raise :class:`MissingField` naming the first absent required field."""
        spec = self.spec(kind)
        for name in spec.required:
            if data.get(name) in (None, ""):
                raise MissingField(f"{kind}: required data field {name!r} is missing", field=f"data.{name}")
        return spec

    def resolve_locale(self, kind: str, locale: str | None) -> str:
        available = set(self.spec(kind).locales)
        for loc in fallback_chain(locale, self.settings.default_locale):
            if loc in available:
                return loc
        raise TemplateError("no template for any locale in the fallback chain", template=kind, locale=locale)

    # -- compile ----------------------------------------------------------------------------
    def compiled(self, kind: str, locale: str) -> jinja2.Template:
        key = (kind, locale)
        tpl = self._compiled.get(key)
        if tpl is None:
            with self._lock:
                tpl = self._compiled.get(key)
                if tpl is None:
                    tpl = self._compiled[key] = self._compile(kind, locale)
        return tpl

    def _compile(self, kind: str, locale: str) -> jinja2.Template:
        path = self.spec(kind).path / f"{locale}.mjml"
        try:
            source = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise TemplateError("template file missing", template=str(path), locale=locale) from exc
        try:
            html = mjml.mjml2html(source)
        except Exception as exc:  # noqa: BLE001 - MRML raises its own error types
            raise TemplateError(f"MJML does not compile: {exc}", template=str(path), locale=locale) from exc
        try:
            return self.env.from_string(html)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"Jinja syntax: {exc.message}", template=str(path), locale=locale,
                                line=exc.lineno) from exc

    # -- render -----------------------------------------------------------------------------
    def render(self, kind: str, locale: str | None, data: dict[str, Any], *,
               context: dict[str, Any] | None = None) -> Rendered:
        spec = self.validate(kind, data)
        loc = self.resolve_locale(kind, locale)
        ctx = {"store_name": self.settings.store_name, "store_address": self.settings.store_address,
               "locale": loc, **(context or {}), **data}
        path = str(spec.path / f"{loc}.mjml")
        try:
            html = self.compiled(kind, loc).render(ctx)
            subject_src = next((spec.subjects[c] for c in fallback_chain(loc) if c in spec.subjects), kind)
            subject = self.env.from_string(subject_src).render(ctx)
            pre_src = next((spec.preheaders[c] for c in fallback_chain(loc) if c in spec.preheaders), "")
            preheader = self.env.from_string(pre_src).render(ctx) if pre_src else ""
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"undefined variable: {exc.message}", template=path, locale=loc) from exc
        return Rendered(subject=html_lib.unescape(subject), preheader=preheader, html=html,
                        text=html_to_text(html), locale=loc)
