"""The renderer: MJML compiled once per (kind, locale, cache key), Jinja per recipient.

Compiling one (kind, locale, cache key) happens once and is cached (:class:`Compiled`):

1. resolve the layout (compile-time Jinja; every line remembers its source file and line;
   :mod:`mailer.rendering.layouts`);
2. check the runtime Jinja syntax and that every variable is declared in ``kind.toml``;
3. mask the runtime Jinja and check the MJML structure (:mod:`mailer.rendering.mjml_check`);
4. MRML (mjml-python) compiles to HTML; ``<mj-style inline="inline">`` CSS is inlined
   with css-inline (MRML does not inline);
5. check that the Jinja blocks still enclose balanced HTML, rewrite every http(s) link
   (except unsubscribe / preferences) into ``{{ _track(url) }}`` for click tracking
   (:mod:`mailer.rendering.links`), derive the plain-text template
   (:mod:`mailer.rendering.text`), and compile both with Jinja
   (HTML: autoescape; both: ``StrictUndefined``).

Per recipient :meth:`Renderer.render` runs only the two Jinja templates (plus subject and
preheader) and returns a :class:`Rendered`.  Every problem raises
:class:`~mailer.errors.TemplateError` naming the file, locale and line, or
:class:`~mailer.errors.MissingField` naming the data field; a mail is rendered
completely or not at all.
"""

from __future__ import annotations

import json
import re
import threading
import tomllib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import css_inline
import jinja2
import jinja2.meta
import mjml
from jinja2.exceptions import SecurityError

from mailer import assets
from mailer.errors import FormatError, MissingField, TemplateError, TemplateTextError, UnknownKind, ValidationError
from mailer.rendering import i18n
from mailer.rendering.i18n import fallback_chain
from mailer.rendering.kinds import KindSpec, _check_value, _parse_kind
from mailer.rendering.layouts import LAYOUTS, STRINGS_FILE, _compile_env, _LineMap, _MarkedLoader, _template_frame_line
from mailer.rendering.links import _track, _track_links
from mailer.rendering.mjml_check import (
    _JINJA,
    _PH,
    _PH_COMMENT,
    _BalanceChecker,
    _check_structure,
    _nearest_token,
    _statement_word,
    _Token,
    _unmask,
)
from mailer.rendering.sandbox import SafeEnvironment, check_text, render_text, text_environment
from mailer.rendering.text import _one_line, html_to_text, tidy_text
from mailer.settings import Settings

#: Compiled (kind, locale, cache key) entries kept per renderer (oldest compiled dropped first).
COMPILE_CACHE_ENTRIES = 512
#: Context keys every template may use besides its declared data fields.
CONTEXT_KEYS = frozenset({
    "first_name", "last_name", "email", "currency", "delivery_id", "unsubscribe_url", "preferences_url",
    "store_name", "store_address", "locale", "format_locale", "dir", "timezone", "subject", "preheader",
    "wrap_link", "kind", "open_pixel_url",
})


@dataclass(frozen=True)
class Rendered:
    subject: str
    preheader: str
    html: str
    text: str
    locale: str


# =========================================================================================
# Compiled templates
# =========================================================================================
@dataclass
class Compiled:
    """One (kind, locale) compiled: runtime HTML and text templates plus lookup data."""

    kind: str
    locale: str
    html: jinja2.Template
    text: jinja2.Template
    #: Source file of the locale template (for error messages).
    path: str
    #: Variable name -> (file, line) of its first use, for runtime error messages.
    uses: dict[str, tuple[str | None, int | None]]
    #: Number of links rewritten for click tracking.
    tracked_links: int
    #: Size of the compiled HTML template source in bytes.
    html_bytes: int


def _runtime_env(autoescape: bool) -> jinja2.Environment:
    """A per-recipient environment: sandboxed (:mod:`mailer.rendering.sandbox`), strict about undefined names."""
    env = SafeEnvironment(autoescape=autoescape, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    i18n.install(env)
    env.globals["_track"] = jinja2.pass_context(_track)
    return env


class Renderer:
    """Loads kinds, validates data and renders mails, caching compiled templates."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = Path(settings.templates_dir)
        self._specs: dict[str, KindSpec] = {}
        #: Compiled templates, oldest first (dropped first when over COMPILE_CACHE_ENTRIES).
        self._compiled: OrderedDict[tuple[str, str, str | None], Compiled] = OrderedDict()
        self._lock = threading.RLock()
        self._strings: dict[str, dict[str, str]] | None = None
        #: Checked subject / preheader templates by (kind, source).
        self._subjects: dict[tuple[str, str], jinja2.Template] = {}
        self._resolved: dict[tuple[str, str | None], str] = {}
        #: Per-recipient environments: HTML (autoescape) and text (no escaping).
        self.env = _runtime_env(True)
        self.text_env = _runtime_env(False)
        #: Subjects and preheaders: the restricted grammar of mailer.rendering.sandbox.check_text.
        self.subject_env = text_environment(i18n.FILTERS)
        self.compiles = 0
        #: Campaign data already validated and normalized, by (kind, cache_key): the data
        #: object itself (compared by identity, and kept alive so its id is never reused),
        #: its spec and its normalized form.  A campaign's data is the same object for every
        #: recipient (mailer.delivery.personalize.render_args), so it is checked once, not per mail.
        self._checked: dict[tuple[str, str], tuple[dict[str, Any], KindSpec, dict[str, Any]]] = {}

    # -- kinds ------------------------------------------------------------------------------
    def kinds(self) -> list[str]:
        """Every kind, newsletters as ``newsletter/<name>``."""
        found = [p.parent.name for p in self.root.glob("*/kind.toml") if not p.parent.name.startswith("_")]
        found += [f"newsletter/{p.parent.name}" for p in self.root.glob("newsletter/*/kind.toml")
                  if not p.parent.name.startswith("_")]
        return sorted(found)

    def spec(self, kind: str) -> KindSpec:
        spec = self._specs.get(kind)
        if spec is not None:
            return spec
        path = self.root / (kind or "")
        if not re.fullmatch(r"[a-z0-9_]+(/[a-z0-9_]+)?", kind or "") or not (path / "kind.toml").is_file():
            raise UnknownKind(f"unknown notice kind {kind!r}; known kinds: {', '.join(self.kinds())}",
                              field="kind")
        spec = _parse_kind(kind, path)
        self._specs[kind] = spec
        return spec

    def sample(self, kind: str) -> dict[str, Any]:
        path = self.spec(kind).path / "sample.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise TemplateError("sample.json is missing", template=str(path)) from exc
        except json.JSONDecodeError as exc:
            raise TemplateError(f"sample.json is not valid JSON: {exc.msg} (column {exc.colno})",
                                template=str(path), line=exc.lineno) from exc
        if not isinstance(data, dict):
            raise TemplateError("sample.json must hold a JSON object", template=str(path))
        try:
            return assets.resolve(data, self.settings)  # "asset:<file>" -> MAILER_ASSET_BASE_URL/<file>
        except ValueError as exc:
            raise TemplateError(f"sample.json: {exc}", template=str(path)) from exc

    def validate(self, kind: str, data: dict[str, Any]) -> KindSpec:
        """Raise :class:`MissingField` naming every absent required field, or
        :class:`ValidationError` naming a field whose value does not fit its declared type.

        When several fields are wrong the error names the first and carries them all in
        ``problems`` ((field, message) pairs), so the API's 422 ``detail[]`` lists each one."""
        spec = self.spec(kind)
        if not isinstance(data, dict):
            raise ValidationError(f"{kind}: data must be an object", field="data")
        errors: list[ValidationError] = [
            MissingField(f"{kind}: required data field {name!r} is missing", field=f"data.{name}")
            for name in spec.required if data.get(name) in (None, "", [])]
        missing_names = {e.field for e in errors}
        for name, fspec in spec.fields.items():
            if name in data and f"data.{name}" not in missing_names:
                try:
                    _check_value(kind, fspec, name, data[name])
                except ValidationError as exc:
                    errors.append(exc)
        if not errors:
            return spec
        first = errors[0]
        if len(errors) > 1:
            missing = [e.field.removeprefix("data.") for e in errors if isinstance(e, MissingField) and e.field]
            names = ", ".join(repr(n) for n in missing)
            first = type(first)(f"{kind}: {len(errors)} problems in data"
                                + (f"; required data fields missing: {names}" if missing else ""),
                                field=first.field)
            first.problems = [(e.field or "data", str(e)) for e in errors]  # type: ignore[attr-defined]
        raise first

    def resolve_locale(self, kind: str, locale: str | None) -> str:
        """The template locale for a recipient's locale (``zh-HK`` -> ``zh-TW``, ``pl-PL`` -> ``pl``)."""
        key = (kind, locale)
        found = self._resolved.get(key)
        if found is not None:
            return found
        available = set(self.spec(kind).locales)
        for loc in i18n.chain(locale, self.settings.default_locale):
            if loc in available:
                if len(self._resolved) < COMPILE_CACHE_ENTRIES * 8:
                    self._resolved[key] = loc
                return loc
        raise TemplateError("no template for any locale in the fallback chain", template=kind, locale=locale)

    def strings(self, locale: str) -> dict[str, str]:
        """Layout strings (``[[ t.key ]]``) for ``locale``, falling back key by key along its chain."""
        if self._strings is None:
            path = self.root / LAYOUTS / STRINGS_FILE
            try:
                self._strings = tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            except tomllib.TOMLDecodeError as exc:
                raise TemplateError(f"not valid TOML: {exc}", template=str(path)) from exc
        merged: dict[str, str] = {}
        for loc in reversed(fallback_chain(locale, self.settings.default_locale)):
            merged.update(self._strings.get(loc, {}))
        return merged

    # -- compile ----------------------------------------------------------------------------
    def compiled(self, kind: str, locale: str, cache_key: str | None = None) -> Compiled:
        """The compiled template for (kind, locale, cache key), compiling it on first use."""
        key = (kind, locale, cache_key)
        c = self._compiled.get(key)  # no lock on the hot path: renders never wait for a compile
        if c is not None:
            return c
        with self._lock:
            c = self._compiled.get(key)
            if c is not None:
                return c
            c = self._compile(kind, locale, fresh=cache_key is not None)
            self._compiled[key] = c
            while len(self._compiled) > COMPILE_CACHE_ENTRIES:
                self._compiled.popitem(last=False)
            return c

    def warm(self, kinds: Iterable[str] | None = None, *, stop: threading.Event | None = None) -> int:
        """Compile (kind, locale) for every notice kind (not newsletters) and every locale it
        has, as :meth:`render` without a cache key would on first use; returns how many
        were compiled now.  A template that does not compile is skipped here (its first
        render raises the error, as before); ``stop`` set ends the loop early.

        Why: one compile costs 50 to 75 ms of CPU (MRML, css-inline, checks), and the first
        notice of each (kind, locale) in a process paid it, under the compile lock, during a
        campaign: those notices were the p99 (bench/notice_latency.py, docs/benchmarks.md).
        """
        compiled = 0
        for kind in (self.kinds() if kinds is None else kinds):
            try:
                spec = self.spec(kind)
            except ValidationError:
                continue
            if spec.newsletter:
                continue
            for locale in spec.locales:
                if stop is not None and stop.is_set():
                    return compiled
                if (kind, locale, None) in self._compiled:
                    continue
                try:
                    self.compiled(kind, locale)
                except TemplateError:
                    continue
                compiled += 1
        return compiled

    def forget(self, cache_key: str | None = None) -> int:
        """Drop compiled entries for ``cache_key`` (None: all); returns how many were dropped."""
        with self._lock:
            keys = [k for k in self._compiled if cache_key is None or k[2] == cache_key]
            for k in keys:
                del self._compiled[k]
            for k in [k for k in list(self._checked) if cache_key is None or k[1] == cache_key]:
                del self._checked[k]
            if cache_key is None:
                self._specs.clear()
                self._strings = None
                self._subjects.clear()
                self._resolved.clear()
            return len(keys)

    def _compile(self, kind: str, locale: str, *, fresh: bool = False) -> Compiled:
        spec = _parse_kind(kind, self.spec(kind).path) if fresh else self.spec(kind)
        rel = f"{kind}/{locale}.mjml"
        path = spec.path / f"{locale}.mjml"
        if not path.is_file():
            raise TemplateError("template file missing", template=str(path), locale=locale)
        self.compiles += 1
        # 1. compile-time layer: layouts, localized layout strings, direction.
        loader = _MarkedLoader(self.root)
        cenv = _compile_env(loader)
        direction = i18n.text_direction(locale)
        cctx = {"locale": locale, "lang": locale.split("-")[0], "dir": direction,
                "align": "right" if direction == "rtl" else "left",
                "start": "right" if direction == "rtl" else "left", "end": "left" if direction == "rtl" else "right",
                "t": self.strings(locale), "kind": kind, "marketing": not spec.transactional,
                "newsletter": spec.newsletter}
        try:
            marked = cenv.get_template(rel).render(cctx)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"layout syntax: {exc.message}", template=exc.filename or str(path), locale=locale,
                                line=exc.lineno) from exc
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(f"layout {exc.name!r} not found under {self.root}", template=str(path),
                                locale=locale) from exc
        except jinja2.UndefinedError as exc:
            fname, line = _template_frame_line(exc)
            raise TemplateError(f"layout: {exc.message}", template=fname or str(path), locale=locale,
                                line=line) from exc
        lm = _LineMap(marked, loader.files)
        source = lm.text

        masked_holder: list[str] = []

        def err(message: str, offset: int | None = None, line: int | None = None, col: int = 0,
                masked_offset: int | None = None) -> TemplateError:
            if masked_offset is not None and masked_holder:
                # Masking keeps every line break where it was: count lines, not characters.
                text = masked_holder[0]
                line = text.count("\n", 0, masked_offset) + 1
                col = masked_offset - (text.rfind("\n", 0, masked_offset) + 1)
                offset = None
            if offset is not None:
                fname, fline = lm.origin_at(offset)
            elif line is not None:
                fname, fline = lm.origin(line, col)
            else:
                fname, fline = str(path), None
            return TemplateError(message, template=fname or str(path), locale=locale, line=fline)

        # 2. runtime Jinja: syntax and declared variables.
        try:
            ast = self.env.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            raise err(f"Jinja syntax: {exc.message}", line=exc.lineno) from exc
        declared = set(spec.required) | set(spec.optional) | CONTEXT_KEYS | set(self.env.globals)
        unknown = sorted(jinja2.meta.find_undeclared_variables(ast) - declared)
        tokens: list[_Token] = []
        for m in _JINJA.finditer(source):
            tok = m.group()
            kind_ = "expr" if tok.startswith("{{") else "stmt" if tok.startswith("{%") else "comment"
            tokens.append(_Token(tok, m.start(), kind_, _statement_word(tok) if kind_ == "stmt" else ""))
        uses: dict[str, tuple[str | None, int | None]] = {}
        for tok in tokens:
            for name in re.findall(r"(?<![.\w'\"])([A-Za-z_]\w*)", tok.source):
                uses.setdefault(name, lm.origin_at(tok.offset))
            for name in re.findall(r"\.([A-Za-z_]\w*)", tok.source):
                uses.setdefault("." + name, lm.origin_at(tok.offset))
        if unknown:
            fname, fline = uses.get(unknown[0], (str(path), None))
            raise TemplateError(f"unknown variable {unknown[0]!r}: declare it in kind.toml (required or optional) "
                                f"or fix the name; template variables: {', '.join(sorted(declared - set(self.env.globals)))}",
                                template=fname or str(path), locale=locale, line=fline, field=unknown[0])
        # 3. mask runtime Jinja and check the MJML structure.
        if "QJ" in source and _PH.search(source):
            raise err("the text QJ<digits>Q is reserved for the template compiler", offset=_PH.search(source).start())
        parts: list[str] = []
        pos = 0
        for i, tok in enumerate(tokens):
            parts.append(source[pos:tok.offset])
            # Comments vanish; every token keeps its newlines so line numbers stay put.
            parts.append(("" if tok.kind == "comment" else f"QJ{i}Q") + "\n" * tok.source.count("\n"))
            pos = tok.offset + len(tok.source)
        parts.append(source[pos:])
        masked = "".join(parts)
        masked_holder.append(masked)
        mjml_doc, inline_css = _check_structure(masked, tokens, err)
        # 4. MRML, then inline the mj-style inline="inline" CSS.
        try:
            html = mjml.mjml2html(mjml_doc, fonts={})
        except Exception as exc:
            raise err(f"MJML does not compile: {exc}") from exc
        if inline_css:
            try:
                # Only the mj-style inline="inline" CSS is inlined; other <style> tags stay as they are.
                # (css-inline 0.24 inlines nothing when keep_at_rules is combined with inline_style_tags=False.)
                html = css_inline.CSSInliner(inline_style_tags=False, keep_style_tags=True, keep_link_tags=True,
                                             load_remote_stylesheets=False, extra_css=inline_css).inline(html)
            except Exception as exc:
                raise err(f"CSS inlining failed: {exc} (does an mj-style inline=\"inline\" rule match an element "
                          f"whose style attribute holds Jinja? Narrow the selector or move the rule to a plain "
                          f"<mj-style>)") from exc
        # 5. Jinja blocks must still enclose balanced HTML; every token must have survived.
        present = {int(m.group(1)) for m in _PH.finditer(html)}
        for i, tok in enumerate(tokens):
            if tok.kind != "comment" and i not in present:
                raise err(f"MJML dropped the Jinja tag {tok.source!r}: put it inside an mj-text/mj-raw element "
                          f"or around whole MJML elements", offset=tok.offset)
        for cond in re.finditer(r"<!--\[if.*?<!\[endif\]-->", html, re.S):
            for ph in _PH.finditer(cond.group()):
                if tokens[int(ph.group(1))].kind == "stmt":
                    raise err(f"MJML put the Jinja tag {tokens[int(ph.group(1))].source!r} inside Outlook-only "
                              f"markup: move it around whole mj-section elements", offset=tokens[int(ph.group(1))].offset)
        body_at = max(0, html.find("<body"))
        problems = _BalanceChecker(tokens).check(html[body_at:])
        if problems:
            message, off, tid = problems[0]
            if tid is None:
                tid = _nearest_token(html, body_at + (off or 0))
            raise err(f"after MJML compilation: {message}; keep Jinja loops and conditions around whole MJML "
                      f"elements (mj-section, mj-column, mj-text) or whole table rows inside <tbody>",
                      offset=tokens[tid].offset if tid is not None else None)
        # Click tracking: every http(s) link becomes {{ _track(<url expression>) }}.
        html, tracked = _track_links(html, tokens)
        text_src = html_to_text(_PH_COMMENT.sub(lambda m: f"QJ{m.group(1)}Q", html))
        html_src = _unmask(html, tokens, comments=True)
        text_src = _unmask(text_src, tokens, comments=False)
        try:
            html_tpl = self.env.from_string(html_src)
            text_tpl = self.text_env.from_string(text_src)
        except jinja2.TemplateSyntaxError as exc:
            raise err(f"Jinja syntax after MJML compilation: {exc.message}") from exc
        return Compiled(kind=kind, locale=locale, html=html_tpl, text=text_tpl, path=str(path), uses=uses,
                        tracked_links=tracked, html_bytes=len(html_src.encode("utf-8")))
    # -- render -----------------------------------------------------------------------------
    def text_variables(self, kind: str) -> set[str]:
        """Names a subject or preheader of ``kind`` may use besides the context ones: its data fields."""
        spec = self.spec(kind)
        return set(spec.required) | set(spec.optional)

    def check_text(self, kind: str, source: str, *, field: str) -> jinja2.Template:
        """Check a subject or preheader for ``kind`` (restricted grammar, sandboxed); the compiled
        template, or :class:`~mailer.errors.TemplateTextError` naming ``field``."""
        key = (kind, source)
        tpl = self._subjects.get(key)
        if tpl is None:
            tpl = check_text(self.subject_env, source, field=field, variables=self.text_variables(kind))
            with self._lock:
                if len(self._subjects) > COMPILE_CACHE_ENTRIES:
                    self._subjects.clear()
                self._subjects[key] = tpl
        return tpl

    def render_text(self, kind: str, source: str, ctx: dict[str, Any], *, field: str) -> str:
        """Check and render one subject or preheader (bounded output), on one line."""
        tpl = self.check_text(kind, source, field=field)
        try:
            return _one_line(render_text(tpl, ctx, field=field))
        except (SecurityError, OverflowError) as exc:
            # A bound of the sandbox (size, Python internals); other errors are the data's (render).
            raise TemplateTextError(f"{field}: {getattr(exc, 'message', None) or exc}", field=field) from exc

    def _format_locale(self, requested: str | None, loc: str) -> str:
        """The recipient's own locale for numbers and dates when it shares the template's language."""
        if requested:
            req = requested.replace("_", "-")
            if req.split("-")[0].lower() == loc.split("-")[0].lower() and i18n.babel_locale(req) is not None:
                return req
        return loc

    def _normalize(self, spec: KindSpec, data: dict[str, Any]) -> dict[str, Any]:
        """Optional fields (and optional keys of list items) default to None."""
        out = {name: None for name in spec.optional}
        out.update(data)
        for name, fspec in spec.fields.items():
            items = out.get(name)
            if fspec.type == "list" and fspec.item_optional and isinstance(items, list):
                keys = fspec.item_required + fspec.item_optional
                out[name] = [({k: None for k in keys} | item) if isinstance(item, dict) else item for item in items]
        return out

    def _checked_data(self, kind: str, data: dict[str, Any],
                      cache_key: str | None) -> tuple[KindSpec, dict[str, Any]]:
        """``validate`` and ``_normalize`` of ``data``; once per (kind, cache_key) for the same data object.

        The normalized dict is shared by every render of that data: the sandbox is immutable
        (mailer.rendering.sandbox), so no template can change it for the next recipient."""
        if cache_key is None:
            spec = self.validate(kind, data)
            return spec, self._normalize(spec, data)
        key = (kind, cache_key)
        hit = self._checked.get(key)
        if hit is not None and hit[0] is data:
            return hit[1], hit[2]
        spec = self.validate(kind, data)
        normalized = self._normalize(spec, data)
        if len(self._checked) >= COMPILE_CACHE_ENTRIES:
            self._checked.clear()
        self._checked[key] = (data, spec, normalized)
        return spec, normalized

    def render(self, kind: str, locale: str | None, data: dict[str, Any], *,
               context: dict[str, Any] | None = None, subject: str | dict[str, str] | None = None,
               preheader: str | dict[str, str] | None = None, cache_key: str | None = None) -> Rendered:
        """Render one mail.

        ``context``: per-recipient values (first_name, email, currency, unsubscribe_url,
        preferences_url, wrap_link...).  ``subject`` / ``preheader``: an override, as one
        string or a dict per locale (fallback chain applies).  ``cache_key``: compile this
        (kind, locale) separately, e.g. once per campaign, fresh from disk.
        """
        spec, normalized = self._checked_data(kind, data, cache_key)
        loc = self.resolve_locale(kind, locale)
        c = self.compiled(kind, loc, cache_key)
        ctx: dict[str, Any] = {"store_name": self.settings.store_name, "store_address": self.settings.store_address,
                               "timezone": self.settings.default_timezone, "currency": self.settings.default_currency,
                               "first_name": "", "last_name": "", "email": "", "delivery_id": None,
                               "unsubscribe_url": "", "preferences_url": "", "open_pixel_url": "", "kind": kind}
        if context:
            ctx.update(context)
        ctx["locale"] = loc
        ctx["dir"] = i18n.text_direction(loc)
        ctx.setdefault("format_locale", self._format_locale(locale, loc))
        ctx.update(normalized)
        chain = i18n.chain(loc)
        path = c.path
        try:
            subj = self._pick(subject, chain) if subject is not None else None
            if subj is None:
                subj = next((spec.subjects[x] for x in chain if x in spec.subjects), None)
            if subj is None:
                raise TemplateError("no subject for this locale in kind.toml [subject]",
                                    template=str(spec.path / "kind.toml"), locale=loc)
            subject_text = self.render_text(kind, subj, ctx, field=f"subject[{loc}]")
            pre = self._pick(preheader, chain) if preheader is not None else None
            if pre is None:
                pre = next((spec.preheaders[x] for x in chain if x in spec.preheaders), "")
            preheader_text = self.render_text(kind, pre, ctx, field=f"preheader[{loc}]") if pre else ""
            ctx["subject"] = subject_text
            ctx["preheader"] = preheader_text
            html = c.html.render(ctx)
            text = tidy_text(c.text.render(ctx))
        except jinja2.UndefinedError as exc:
            raise self._runtime_error(exc, c, loc) from exc
        except FormatError as exc:
            raise TemplateError(f"cannot format a value: {exc}", template=path, locale=loc) from exc
        except (TypeError, ValueError, AttributeError, ArithmeticError) as exc:
            raise TemplateError(f"{type(exc).__name__}: {exc}", template=path, locale=loc) from exc
        except jinja2.TemplateError as exc:
            # The sandbox refused something (SecurityError) or another Jinja runtime error.
            raise TemplateError(f"{type(exc).__name__}: {exc.message or exc}", template=path, locale=loc) from exc
        return Rendered(subject=subject_text, preheader=preheader_text, html=html, text=text, locale=loc)

    @staticmethod
    def _pick(value: str | dict[str, str], chain: Iterable[str]) -> str | None:
        if isinstance(value, dict):
            return next((value[x] for x in chain if x in value), None)
        return value

    @staticmethod
    def _runtime_error(exc: jinja2.UndefinedError, c: Compiled, loc: str) -> TemplateError:
        msg = exc.message or str(exc)
        m = re.search(r"'([^']+)' is undefined", msg)
        a = re.search(r"has no attribute '([^']+)'", msg)
        fname, line, fld = c.path, None, None
        if m:
            fld = m.group(1)
            fname, line = c.uses.get(fld, (c.path, None))
        elif a:
            fld = a.group(1)
            fname, line = c.uses.get("." + fld, (c.path, None))
        return TemplateError(f"undefined variable: {msg}", template=fname or c.path, locale=loc, line=line,
                             field=fld)
