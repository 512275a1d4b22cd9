"""Rendering: notice kinds and newsletters, MJML compiled once, Jinja per recipient.

A kind is a folder ``templates/<kind>/`` (newsletters: ``templates/newsletter/<name>/``)
holding ``kind.toml`` (schema, lawful basis, subject and preheader per locale),
``sample.json`` and one ``<locale>.mjml`` per locale.  Locale files extend a layout in
``templates/_layouts/`` through *compile-time* Jinja written with square brackets
(``[% extends %]``, ``[% block %]``, ``[[ t.unsubscribe ]]``); the ordinary curly
brackets (``{{ first_name }}``, ``{% for item in items %}``) run per recipient.

Compiling one (kind, locale, cache key) happens once and is cached:

1. resolve the layout (compile-time Jinja; every line remembers its source file and line);
2. check the runtime Jinja syntax and that every variable is declared in ``kind.toml``;
3. mask the runtime Jinja, parse the MJML as XML (known ``mj-*`` tags, allowed nesting,
   balanced HTML inside ``mj-text`` and friends), wrap Jinja statements that stand
   between MJML elements in ``<mj-raw>`` comments so MRML keeps them in place;
4. MRML (mjml-python) compiles to HTML; ``<mj-style inline="inline">`` CSS is inlined
   with css-inline (MRML does not inline);
5. check that the Jinja blocks still enclose balanced HTML, rewrite every http(s) link
   (except unsubscribe / preferences) into ``{{ _track(url) }}`` for click tracking,
   derive the plain-text template, and compile both with Jinja
   (HTML: autoescape; both: ``StrictUndefined``).

Per recipient only the two Jinja templates run (plus subject and preheader).  Every
problem raises :class:`~mailer.errors.TemplateError` naming the file, locale and line,
or :class:`~mailer.errors.MissingField` naming the data field; a mail is rendered
completely or not at all.
"""

from __future__ import annotations

import html as html_lib
import json
import re
import threading
import tomllib
from collections import OrderedDict
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable, Iterable
from xml.parsers import expat

import jinja2
import jinja2.meta
import jinja2.nodes
import mjml

from mailer import i18n
from mailer.i18n import fallback_chain
from mailer.errors import MissingField, TemplateError, UnknownKind, ValidationError
from mailer.settings import Settings

TRANSACTIONAL = "transactional"
#: The locales every kind is written in (``mailer templates check`` reports gaps).
SUPPORTED_LOCALES = ("en", "zh-TW", "zh-CN", "pl", "ko", "fr", "ar")
#: Folder (under templates/) with layouts and their localized strings; not a kind.
LAYOUTS = "_layouts"
STRINGS_FILE = "strings.toml"
#: Compiled (kind, locale, cache key) entries kept per renderer (oldest compiled dropped first).
COMPILE_CACHE_ENTRIES = 512
#: Context keys every template may use besides its declared data fields.
CONTEXT_KEYS = frozenset({
    "first_name", "last_name", "email", "currency", "delivery_id", "unsubscribe_url", "preferences_url",
    "store_name", "store_address", "locale", "format_locale", "dir", "timezone", "subject", "preheader",
    "wrap_link", "kind", "open_pixel_url",
})
#: Links never rewritten for click tracking (the expression of the whole href).
UNTRACKED = frozenset({"unsubscribe_url", "preferences_url"})
#: Field types ``kind.toml`` may declare under ``[fields.<name>] type = ...``.
FIELD_TYPES = frozenset({"text", "url", "number", "date", "datetime", "list", "object", "bool", "any"})


# =========================================================================================
# Kind declarations
# =========================================================================================
@dataclass(frozen=True)
class FieldSpec:
    """One declared data field (``[fields.<name>]`` in kind.toml; all keys optional)."""

    name: str
    type: str = "any"
    description: str = ""
    #: For ``type = "list"`` of objects: keys every item must have / may have.
    item_required: tuple[str, ...] = ()
    item_optional: tuple[str, ...] = ()
    #: Allowed values (e.g. a status code).
    choices: tuple[str, ...] = ()
    #: For lists: exact number of items required (e.g. 5 rating links).
    length: int | None = None
    #: For lists of objects: declared types of item keys (``{price = "number"}``).
    item_types: dict[str, str] = field(default_factory=dict)

    @property
    def item_specs(self) -> dict[str, "FieldSpec"]:
        """``item_types`` as field specs (built once per spec)."""
        cached = self.__dict__.get("_item_specs")
        if cached is None:
            cached = {k: FieldSpec(name=k, type=t) for k, t in self.item_types.items()}
            object.__setattr__(self, "_item_specs", cached)
        return cached


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
    fields: dict[str, FieldSpec] = field(default_factory=dict)

    @property
    def transactional(self) -> bool:
        return self.purpose == TRANSACTIONAL

    @property
    def newsletter(self) -> bool:
        return self.name.startswith("newsletter/")

    @property
    def locales(self) -> list[str]:
        """Locales with a template file (read once per spec; ``Renderer.forget()`` rereads)."""
        cached = self.__dict__.get("_locales")
        if cached is None:
            cached = sorted(p.stem for p in self.path.glob("*.mjml"))
            object.__setattr__(self, "_locales", cached)
        return list(cached)


@dataclass(frozen=True)
class Rendered:
    subject: str
    preheader: str
    html: str
    text: str
    locale: str


def _parse_kind(name: str, path: Path) -> KindSpec:
    toml_path = path / "kind.toml"
    try:
        meta = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        raise TemplateError(f"kind.toml is not valid TOML: {exc}", template=str(toml_path),
                            line=int(line.group(1)) if line else None) from exc
    default_purpose = "newsletter" if name.startswith("newsletter/") else TRANSACTIONAL
    fields: dict[str, FieldSpec] = {}
    for fname, fmeta in (meta.get("fields") or {}).items():
        if not isinstance(fmeta, dict):
            raise TemplateError(f"[fields.{fname}] must be a table", template=str(toml_path), field=fname)
        ftype = fmeta.get("type", "any")
        if ftype not in FIELD_TYPES:
            raise TemplateError(f"[fields.{fname}] type {ftype!r} is not one of {', '.join(sorted(FIELD_TYPES))}",
                                template=str(toml_path), field=fname)
        fields[fname] = FieldSpec(name=fname, type=ftype, description=fmeta.get("description", ""),
                                  item_required=tuple(fmeta.get("item_required", ())),
                                  item_optional=tuple(fmeta.get("item_optional", ())),
                                  choices=tuple(fmeta.get("choices", ())), length=fmeta.get("length"),
                                  item_types=dict(fmeta.get("item_types", {})))
        for key, ktype in fields[fname].item_types.items():
            if ktype not in FIELD_TYPES:
                raise TemplateError(f"[fields.{fname}] item_types.{key} {ktype!r} is not one of "
                                    f"{', '.join(sorted(FIELD_TYPES))}", template=str(toml_path), field=fname)
    required = tuple(meta.get("required", ()))
    optional = tuple(meta.get("optional", ()))
    undeclared = sorted(set(fields) - set(required) - set(optional))
    if undeclared:
        raise TemplateError(f"[fields] describes {', '.join(undeclared)} which is in neither required nor optional",
                            template=str(toml_path), field=undeclared[0])
    return KindSpec(name=name, path=path, purpose=meta.get("purpose", default_purpose), required=required,
                    optional=optional, subjects=dict(meta.get("subject", {})),
                    preheaders=dict(meta.get("preheader", {})), description=meta.get("description", ""),
                    fields=fields)


_URL = re.compile(r"https?://\S+$")


def _type_problem(t: str, value: Any) -> str | None:
    """Why ``value`` is not of field type ``t`` (None when it is); lists are checked by the caller."""
    if t == "text":
        return None if isinstance(value, (str, int, float, dict)) else f"must be text, got {type(value).__name__}"
    if t == "number":
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else \
            f"must be a number (not text), got {value!r}"
    if t == "url":
        return None if isinstance(value, str) and _URL.match(value) else f"must be an http(s) URL, got {value!r}"
    if t == "object":
        return None if isinstance(value, dict) else f"must be an object, got {type(value).__name__}"
    if t == "bool":
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if t == "date":
        try:
            i18n.to_date(value)
        except i18n.FormatError:
            return f"must be an ISO date like 2026-12-01, got {value!r}"
    elif t == "datetime":
        try:
            i18n.to_datetime(value)
        except i18n.FormatError:
            return f"must be an ISO date-time like 2026-12-01T15:30:00Z, got {value!r}"
    return None


def _check_value(kind: str, fspec: FieldSpec | None, name: str, value: Any) -> None:
    """Raise ValidationError (MissingField for absent item keys) when ``value`` does not fit its field."""
    if fspec is None or value is None:
        return
    t = fspec.type
    if t == "list":
        if not isinstance(value, list):
            problem = f"must be a list, got {type(value).__name__}"
        elif fspec.length is not None and len(value) != fspec.length:
            problem = f"must have exactly {fspec.length} items, got {len(value)}"
        else:
            problem = None
            required, specs = fspec.item_required, fspec.item_specs
            for i, item in enumerate(value):
                if not isinstance(item, dict):
                    if required or specs:
                        problem = f"item {i} must be an object with {', '.join(required or specs)}"
                        break
                    continue
                for key in required:
                    if item.get(key) in (None, ""):
                        raise MissingField(f"{kind}: {name}[{i}] has no {key!r}", field=f"data.{name}[{i}].{key}")
                for key, kspec in specs.items():
                    v = item.get(key)
                    if v is not None and _type_problem(kspec.type, v) is not None:
                        raise ValidationError(f"{kind}: data field '{name}[{i}].{key}' "
                                              f"{_type_problem(kspec.type, v)}", field=f"data.{name}[{i}].{key}")
    elif t == "any":
        problem = None
    else:
        problem = _type_problem(t, value)
    if problem is None and fspec.choices and value not in fspec.choices:
        problem = f"must be one of {', '.join(fspec.choices)}, got {value!r}"
    if problem is not None:
        raise ValidationError(f"{kind}: data field {name!r} {problem}", field=f"data.{name}")


# =========================================================================================
# Compile-time layer: layouts with line tracking
# =========================================================================================
_MARK = re.compile(r"\x02(\d+):(\d+)\x03")


class _MarkedLoader(jinja2.BaseLoader):
    """Loads template files with an origin marker ``\\x02<file id>:<line>\\x03`` on every line."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.files: list[Path] = []

    def file_id(self, path: Path) -> int:
        if path not in self.files:
            self.files.append(path)
        return self.files.index(path)

    def get_source(self, environment, template):
        path = (self.root / template).resolve()
        if self.root not in path.parents or not path.is_file():
            raise jinja2.TemplateNotFound(template)
        text = path.read_text(encoding="utf-8")
        if "\x02" in text or "\x03" in text:
            raise TemplateError("control characters \\x02/\\x03 are not allowed in templates", template=str(path))
        fid = self.file_id(path)
        marked = "".join(f"\x02{fid}:{n}\x03{line}"
                         for n, line in enumerate(text.splitlines(keepends=True), 1))
        return marked, str(path), lambda: False


class _LineMap:
    """Maps (line, column) of the resolved MJML back to (source file, source line)."""

    def __init__(self, marked: str, files: list[Path]):
        self.files = files
        self.segments: list[list[tuple[int, Path, int]]] = []  # per line: (column, file, line)
        clean_lines: list[str] = []
        last: tuple[Path, int] | None = None
        for raw in marked.split("\n"):
            segs: list[tuple[int, Path, int]] = []
            out = []
            pos = 0
            col = 0
            for m in _MARK.finditer(raw):
                out.append(raw[pos:m.start()])
                col += m.start() - pos
                pos = m.end()
                segs.append((col, files[int(m.group(1))], int(m.group(2))))
            out.append(raw[pos:])
            if not segs:
                segs = [(0, last[0], last[1] + 1)] if last else []
            if segs:
                last = (segs[-1][1], segs[-1][2])
            self.segments.append(segs)
            clean_lines.append("".join(out))
        self.text = "\n".join(clean_lines)
        self._line_starts = [0]
        for ln in clean_lines[:-1]:
            self._line_starts.append(self._line_starts[-1] + len(ln) + 1)

    def origin(self, line: int, col: int = 0) -> tuple[str | None, int | None]:
        """Source file and line of resolved ``line`` (1-based) and ``col`` (0-based)."""
        if not 1 <= line <= len(self.segments) or not self.segments[line - 1]:
            return None, None
        best = self.segments[line - 1][0]
        for seg in self.segments[line - 1]:
            if seg[0] <= col:
                best = seg
        return str(best[1]), best[2]

    def origin_at(self, offset: int) -> tuple[str | None, int | None]:
        """Source file and line of a character offset in the resolved text."""
        lo, hi = 0, len(self._line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._line_starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return self.origin(lo + 1, offset - self._line_starts[lo])


def _compile_env(loader: jinja2.BaseLoader) -> jinja2.Environment:
    """Compile-time Jinja: square brackets, so the curly runtime Jinja passes through as text."""
    return jinja2.Environment(loader=loader, block_start_string="[%", block_end_string="%]",
                              variable_start_string="[[", variable_end_string="]]",
                              comment_start_string="[#", comment_end_string="#]",
                              autoescape=False, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def _template_frame_line(exc: BaseException, suffix: str = ".mjml") -> tuple[str | None, int | None]:
    """The deepest template file and line in a Jinja traceback."""
    found: tuple[str | None, int | None] = (None, None)
    tb = exc.__traceback__
    while tb is not None:
        fname = tb.tb_frame.f_code.co_filename
        if fname.endswith(suffix):
            found = (fname, tb.tb_lineno)
        tb = tb.tb_next
    return found


# =========================================================================================
# MJML structure
# =========================================================================================
#: MJML elements whose content is HTML / text, not MJML elements.
ENDING_TAGS = ("mj-text", "mj-button", "mj-raw", "mj-table", "mj-navbar-link", "mj-social-element",
               "mj-accordion-title", "mj-accordion-text", "mj-title", "mj-preview", "mj-style")
_CONTENT = ("mj-text", "mj-button", "mj-image", "mj-divider", "mj-spacer", "mj-table", "mj-social",
            "mj-navbar", "mj-accordion", "mj-carousel", "mj-raw")
#: Element -> the elements it may sit in.
PARENTS: dict[str, tuple[str, ...]] = {
    "mjml": ("",),
    "mj-head": ("mjml",), "mj-body": ("mjml",),
    "mj-attributes": ("mj-head",), "mj-breakpoint": ("mj-head",), "mj-font": ("mj-head",),
    "mj-html-attributes": ("mj-head",), "mj-preview": ("mj-head",), "mj-style": ("mj-head",),
    "mj-title": ("mj-head",),
    "mj-html-attribute": ("mj-selector",), "mj-selector": ("mj-html-attributes",),
    "mj-wrapper": ("mj-body",), "mj-section": ("mj-body", "mj-wrapper"), "mj-hero": ("mj-body", "mj-wrapper"),
    "mj-group": ("mj-section",), "mj-column": ("mj-section", "mj-group"),
    **{c: ("mj-column", "mj-hero") for c in _CONTENT},
    "mj-raw": ("mj-head", "mj-body", "mj-wrapper", "mj-section", "mj-column", "mj-hero", "mj-group"),
    "mj-social-element": ("mj-social",), "mj-navbar-link": ("mj-navbar",),
    "mj-accordion-element": ("mj-accordion",), "mj-accordion-title": ("mj-accordion-element",),
    "mj-accordion-text": ("mj-accordion-element",), "mj-carousel-image": ("mj-carousel",),
    "mj-all": ("mj-attributes",), "mj-class": ("mj-attributes",),
}
#: Elements whose children are MJML elements (text here is a mistake, Jinja statements get wrapped).
CONTAINERS = frozenset({"mjml", "mj-head", "mj-body", "mj-wrapper", "mj-section", "mj-group", "mj-column",
                        "mj-hero", "mj-social", "mj-navbar", "mj-accordion", "mj-accordion-element",
                        "mj-carousel", "mj-attributes", "mj-html-attributes", "mj-selector"})
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
                   "source", "track", "wbr"})
#: HTML elements whose end tag may be left out.
_OPTIONAL_END = frozenset({"p", "li", "td", "th", "tr", "tbody", "thead", "tfoot", "option", "dt", "dd"})

_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_PH = re.compile(r"QJ(\d+)Q")
_PH_COMMENT = re.compile(r"<!--QJ(\d+)Q-->")
_ENDING = re.compile(r"<(%s)(\s[^>]*?)?(?<!/)>(.*?)</\1\s*>" % "|".join(ENDING_TAGS), re.S)
_STMT = re.compile(r"\{%-?\s*(\w+)")
_OPENERS = {"if": "endif", "for": "endfor", "macro": "endmacro", "call": "endcall", "filter": "endfilter",
            "with": "endwith", "autoescape": "endautoescape", "raw": "endraw"}
_MIDDLES = {"else", "elif"}


@dataclass
class _Token:
    """One masked runtime Jinja token."""

    source: str
    offset: int  # in the resolved MJML
    kind: str  # "expr", "stmt" or "comment"
    word: str = ""  # first word of a statement (if, for, endif, set...)


def _statement_word(tok: str) -> str:
    m = _STMT.match(tok)
    return m.group(1) if m else ""


class _BalanceChecker(HTMLParser):
    """Checks that HTML tags balance inside every Jinja block branch.

    Jinja statements appear as ``<!--QJ<n>Q-->`` comments.  Problems come back as
    ``(message, html_offset, token_id)``: an offset in the fed text, or the id of the
    Jinja token the problem is about.
    """

    def __init__(self, tokens: list[_Token]):
        super().__init__(convert_charrefs=False)
        self.tokens = tokens
        self.stack: list[tuple[str, int]] = []  # (tag, offset)
        self.blocks: list[tuple[str, int, int]] = []  # (word, stack depth, token id)
        self.problems: list[tuple[str, int | None, int | None]] = []
        self._line_starts: list[int] = []

    def check(self, text: str) -> list[tuple[str, int | None, int | None]]:
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.feed(text)
        self.close()
        for tag, off in reversed(self.stack):
            if tag not in _OPTIONAL_END:
                self.problems.append((f"<{tag}> is never closed", off, None))
                break
        for word, _depth, tid in self.blocks:
            self.problems.append((f"{{% {word} %}} is never closed", None, tid))
        return self.problems

    def _offset(self) -> int:
        line, col = self.getpos()
        return self._line_starts[line - 1] + col

    def handle_starttag(self, tag, attrs):
        if tag not in _VOID and tag not in ("html", "body", "head"):
            self.stack.append((tag, self._offset()))

    def handle_startendtag(self, tag, attrs):
        return

    def handle_endtag(self, tag):
        if tag in _VOID or tag in ("html", "body", "head"):
            return
        floor = self.blocks[-1][1] if self.blocks else 0
        for i in range(len(self.stack) - 1, floor - 1, -1):
            if self.stack[i][0] == tag:
                skipped = [t for t, _ in self.stack[i + 1:] if t not in _OPTIONAL_END]
                if skipped:
                    self.problems.append((f"closing tag </{tag}> does not match <{skipped[-1]}>",
                                          self._offset(), None))
                del self.stack[i:]
                return
        if self.blocks and any(t == tag for t, _ in self.stack[:floor]):
            word = self.blocks[-1][0]
            self.problems.append((f"</{tag}> closes a tag opened outside the enclosing {{% {word} %}} "
                                  f"(HTML opened before a Jinja block must be closed after it)", self._offset(), None))
        elif len(self.stack) > floor:
            self.problems.append((f"closing tag </{tag}> does not match <{self.stack[-1][0]}>", self._offset(), None))
        else:
            self.problems.append((f"closing tag </{tag}> has no matching opening tag", self._offset(), None))

    def handle_comment(self, data):
        m = re.fullmatch(r"QJ(\d+)Q", data)
        if not m or int(m.group(1)) >= len(self.tokens):
            return
        tid = int(m.group(1))
        word = self.tokens[tid].word
        if word in _OPENERS or (word == "set" and "=" not in self.tokens[tid].source):
            self.blocks.append((word, len(self.stack), tid))
        elif word in _MIDDLES or word.startswith("end"):
            if not self.blocks:
                self.problems.append((f"{{% {word} %}} without an opening block", None, tid))
                return
            opener, depth, _ = self.blocks[-1]
            open_tags = [(t, o) for t, o in self.stack[depth:] if t not in _OPTIONAL_END]
            if open_tags:
                tag, off = open_tags[0]
                self.problems.append((f"<{tag}> opened inside {{% {opener} %}} is not closed before "
                                      f"{{% {word} %}}", off, None))
            del self.stack[depth:]
            if word.startswith("end"):
                self.blocks.pop()


# =========================================================================================
# Plain text
# =========================================================================================
#: Elements that start and end a line of text.
_BLOCK = frozenset({"p", "div", "table", "tbody", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6",
                    "blockquote", "section", "article", "header", "footer", "center", "hr"})
_SKIP = frozenset({"head", "style", "script", "title"})


class _TextConverter(HTMLParser):
    """HTML -> readable text: blocks become lines, links ``label (url)``.

    Skipped: <head>, <style>, hidden elements (``display:none``, the preheader) and
    anything inside an element with the class ``no-text`` (decoration such as a
    progress bar that says nothing in plain text).
    """

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip_stack: list[str] = []  # tags of open skipped elements (only when skipping)
        self.links: list[tuple[str, int]] = []  # (href, position in out)

    def _skipping(self) -> bool:
        return bool(self.skip_stack)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self.skip_stack:
            if tag not in _VOID:
                self.skip_stack.append(tag)
            return
        style = (a.get("style") or "").replace(" ", "").lower()
        if tag in _SKIP or "display:none" in style or "no-text" in (a.get("class") or "").split():
            if tag not in _VOID:
                self.skip_stack.append(tag)
            return
        if tag == "br":
            self.out.append("\n")
        elif tag == "li":
            self.out.append("\n- ")
        elif tag in _BLOCK or tag == "tr" or "display:block" in style:  # rows and items: a new line each
            self.out.append("\n")
        elif tag in ("td", "th"):
            self.out.append(" ")
        if tag == "a":
            self.links.append((a.get("href") or "", len(self.out)))

    def handle_startendtag(self, tag, attrs):
        if tag == "br" and not self.skip_stack:
            self.out.append("\n")

    def handle_endtag(self, tag):
        if self.skip_stack:
            if tag in _VOID:
                return
            while self.skip_stack:
                if self.skip_stack.pop() == tag:
                    break
            return
        if tag in _BLOCK:
            self.out.append("\n")
        elif tag in ("td", "th"):
            self.out.append(" ")
        elif tag == "a" and self.links:
            href, at = self.links.pop()
            label = re.sub(r"\s+", " ", "".join(self.out[at:])).strip()
            del self.out[at:]
            if not label:
                return  # an image link: the text part has no image to click
            if href.startswith(("http://", "https://")) or _PH.match(href):
                self.out.append(f" {href} " if label == href else f"{label} ({href})")
            else:
                self.out.append(label)

    def handle_data(self, data):
        if not self.skip_stack:
            self.out.append(re.sub(r"[ \t\r\n\u00a0]+", " ", data))

    def text(self) -> str:
        lines = [ln.strip() for ln in "".join(self.out).split("\n")]
        result: list[str] = []
        for ln in lines:
            if ln or (result and result[-1]):
                result.append(re.sub(r" {2,}", " ", ln))
        return "\n".join(result).strip() + "\n"


def html_to_text(html: str) -> str:
    """A readable plain-text version of HTML, links as ``text (url)`` (see :class:`_TextConverter`)."""
    html = re.sub(r"<!--.*?-->", "", html, flags=re.S)
    conv = _TextConverter()
    conv.feed(html)
    conv.close()
    return conv.text()


_BLANK_RUNS = re.compile(r"\n{3,}")


def tidy_text(text: str) -> str:
    """Per-recipient cleanup of the text part: lines trimmed, at most one empty line in a row."""
    text = "\n".join([ln.strip() for ln in text.split("\n")])
    return _BLANK_RUNS.sub("\n\n", text).strip() + "\n"


def _one_line(text: str) -> str:
    """Subject / preheader on one line; no-break spaces (French « : ») survive."""
    return re.sub(r"[ \t\r\n]+", " ", text).strip()


def _escape_static(text: str) -> str:
    """Make literal ``{{`` / ``{%`` / ``{#`` in static text safe for Jinja."""
    return re.sub(r"\{(?=[{%#])", "{{ '{' }}", text)


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


def _track(ctx, url: Any) -> Any:
    """The click-tracking hook: ``wrap_link(url)`` from the context for http(s) URLs."""
    wrap = ctx.get("wrap_link")
    if wrap is None or not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return url
    return wrap(url)


class _DataEnvironment(jinja2.Environment):
    """Jinja environment where ``item.name`` on a dict is a plain key lookup.

    Jinja's default tries ``getattr`` first (an exception per access on a dict, and
    ``item.items`` would be the dict method); template data is JSON, so keys come first.
    """

    def getattr(self, obj, attribute):
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


def _runtime_env(autoescape: bool) -> jinja2.Environment:
    env = _DataEnvironment(autoescape=autoescape, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
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
        self._subjects: dict[str, jinja2.Template] = {}
        self._resolved: dict[tuple[str, str | None], str] = {}
        #: Per-recipient environments: HTML (autoescape) and text (no escaping).
        self.env = _runtime_env(True)
        self.text_env = _runtime_env(False)
        self.compiles = 0

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
        return data

    def validate(self, kind: str, data: dict[str, Any]) -> KindSpec:
        """Raise :class:`MissingField` naming the first absent required field, or
        :class:`ValidationError` naming a field whose value does not fit its declared type."""
        spec = self.spec(kind)
        if not isinstance(data, dict):
            raise ValidationError(f"{kind}: data must be an object", field="data")
        for name in spec.required:
            if data.get(name) in (None, "", []):
                raise MissingField(f"{kind}: required data field {name!r} is missing", field=f"data.{name}")
        for name, fspec in spec.fields.items():
            if name in data:
                _check_value(kind, fspec, name, data[name])
        return spec

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

    def forget(self, cache_key: str | None = None) -> int:
        """Drop compiled entries for ``cache_key`` (None: all); returns how many were dropped."""
        with self._lock:
            keys = [k for k in self._compiled if cache_key is None or k[2] == cache_key]
            for k in keys:
                del self._compiled[k]
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
        mjml_doc, inline_css = self._structure(masked, tokens, lm, err)
        # 4. MRML, then inline the mj-style inline="inline" CSS.
        try:
            html = mjml.mjml2html(mjml_doc, fonts={})
        except Exception as exc:  # noqa: BLE001 - MRML raises plain ValueErrors
            raise err(f"MJML does not compile: {exc}") from exc
        if inline_css:
            import css_inline

            try:
                # Only the mj-style inline="inline" CSS is inlined; other <style> tags stay as they are.
                # (css-inline 0.24 inlines nothing when keep_at_rules is combined with inline_style_tags=False.)
                html = css_inline.CSSInliner(inline_style_tags=False, keep_style_tags=True, keep_link_tags=True,
                                             load_remote_stylesheets=False, extra_css=inline_css).inline(html)
            except Exception as exc:  # noqa: BLE001 - css_inline.InlineError and CSS parse errors
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
                tid = self._nearest_token(html, body_at + (off or 0))
            raise err(f"after MJML compilation: {message}; keep Jinja loops and conditions around whole MJML "
                      f"elements (mj-section, mj-column, mj-text) or whole table rows inside <tbody>",
                      offset=tokens[tid].offset if tid is not None else None)
        # Click tracking: every http(s) link becomes {{ _track(<url expression>) }}.
        html, tracked = self._track_links(html, tokens)
        text_src = html_to_text(_PH_COMMENT.sub(lambda m: f"QJ{m.group(1)}Q", html))
        html_src = self._unmask(html, tokens, comments=True)
        text_src = self._unmask(text_src, tokens, comments=False)
        try:
            html_tpl = self.env.from_string(html_src)
            text_tpl = self.text_env.from_string(text_src)
        except jinja2.TemplateSyntaxError as exc:
            raise err(f"Jinja syntax after MJML compilation: {exc.message}") from exc
        return Compiled(kind=kind, locale=locale, html=html_tpl, text=text_tpl, path=str(path), uses=uses,
                        tracked_links=tracked, html_bytes=len(html_src.encode("utf-8")))

    @staticmethod
    def _nearest_token(html: str, end: int) -> int | None:
        """The id of the last Jinja placeholder before ``end`` in the compiled HTML."""
        best = None
        for m in _PH.finditer(html, 0, end + 1):
            best = int(m.group(1))
        return best

    def _structure(self, masked: str, tokens: list[_Token], lm: _LineMap,
                   err: Callable[..., TemplateError]) -> tuple[str, str]:
        """Validate the masked MJML; return the MJML for MRML and the CSS to inline."""
        contents: list[tuple[str, str, int]] = []  # (tag, content, offset)

        def hold(m: re.Match) -> str:
            contents.append((m.group(1), m.group(3), m.start(3)))
            return (f"<{m.group(1)}{m.group(2) or ''}>QC{len(contents) - 1}Q" + "\n" * m.group(3).count("\n")
                    + f"</{m.group(1)}>")

        skeleton = _ENDING.sub(hold, masked)
        wrap: set[int] = set()
        stack: list[str] = []
        parser = expat.ParserCreate()
        problems: list[TemplateError] = []

        def where() -> tuple[int, int]:
            return parser.CurrentLineNumber, parser.CurrentColumnNumber

        # Offsets in ``skeleton`` differ from ``masked`` after held contents; line numbers do not.
        def start(name, attrs):
            line, col = where()
            parent = stack[-1] if stack else ""
            if not name.startswith("mj") or (name not in PARENTS and parent != "mj-attributes"):
                problems.append(err(f"unknown MJML element <{name}>", line=line, col=col))
            elif parent == "mj-attributes":
                pass
            elif parent not in PARENTS[name]:
                allowed = " or ".join(f"<{p}>" for p in PARENTS[name] if p) or "the top level"
                problems.append(err(f"<{name}> cannot be inside <{parent or 'nothing'}>; it belongs in {allowed}",
                                    line=line, col=col))
            for value in attrs.values():
                for ph in _PH.finditer(value):
                    if tokens[int(ph.group(1))].kind == "stmt" and parent == "mj-attributes":
                        problems.append(err("Jinja is not allowed in mj-attributes", line=line, col=col))
            stack.append(name)

        def end(name):
            stack.pop()

        def chars(data):
            if not stack or stack[-1] not in CONTAINERS:
                return
            for piece in re.split(r"(QJ\d+Q|QC\d+Q)", data):
                if not piece.strip():
                    continue
                ph = _PH.fullmatch(piece)
                line, col = where()
                if ph and tokens[int(ph.group(1))].kind == "stmt":
                    if stack[-1] in ("mj-attributes", "mj-html-attributes", "mj-selector"):
                        problems.append(err(f"Jinja is not allowed inside <{stack[-1]}>", line=line, col=col))
                    elif stack[-1] == "mj-wrapper":
                        # MRML renders raw children of a wrapper inside Outlook-only conditional comments.
                        problems.append(err(f"{tokens[int(ph.group(1))].source} directly inside <mj-wrapper> is not "
                                            f"supported: put it around the whole mj-wrapper, or use mj-sections "
                                            f"without a wrapper", line=line, col=col))
                    wrap.add(int(ph.group(1)))
                elif ph:
                    problems.append(err(f"{tokens[int(ph.group(1))].source} stands directly in <{stack[-1]}>: "
                                        f"put text in an <mj-text>", line=line, col=col))
                else:
                    problems.append(err(f"text {piece.strip()[:40]!r} stands directly in <{stack[-1]}>: put text "
                                        f"in an <mj-text>", line=line, col=col))

        parser.StartElementHandler = start
        parser.EndElementHandler = end
        parser.CharacterDataHandler = chars
        try:
            parser.Parse(skeleton, True)
        except expat.ExpatError as exc:
            msg = expat.ErrorString(exc.code)
            if "mismatched tag" in msg and stack:
                msg = f"mismatched tag: expected </{stack[-1]}>"
            raise err(f"MJML is not well formed: {msg}", line=exc.lineno, col=exc.offset) from exc
        if problems:
            raise problems[0]
        if not skeleton.lstrip().startswith("<mjml"):
            raise err("the template must start with <mjml>", line=1)
        # HTML inside ending tags: balanced within every Jinja branch.
        for tag, content, offset in contents:
            if tag in ("mj-style", "mj-title", "mj-preview"):
                continue
            issues = _check_content(tokens, content, offset)
            if issues:
                message, off, is_token = issues[0]
                if is_token:
                    raise err(f"inside <{tag}>: {message}", offset=off)
                raise err(f"inside <{tag}>: {message}", masked_offset=off)
        # Reassemble: statements in content become comments (tables keep them in place),
        # statements between elements are wrapped in <mj-raw>.
        inline_css: list[str] = []

        def restore(m: re.Match) -> str:
            tag, content, offset = contents[int(m.group(1))]
            if tag in ("mj-title", "mj-preview", "mj-style"):
                return content
            return _PH.sub(lambda p: f"<!--QJ{p.group(1)}Q-->" if tokens[int(p.group(1))].kind == "stmt"
                           else p.group(), content)

        doc = re.sub(r"QC(\d+)Q\n*", lambda m: restore(m), skeleton)
        doc = _PH.sub(lambda m: f"<mj-raw><!--QJ{m.group(1)}Q--></mj-raw>" if int(m.group(1)) in wrap
                      else m.group(), doc)

        def take_css(m: re.Match) -> str:
            css = m.group(2)
            if _PH.search(css):
                raise err("Jinja is not allowed in <mj-style inline=\"inline\">",
                          offset=tokens[int(_PH.search(css).group(1))].offset)
            if "@" in re.sub(r"/\*.*?\*/", "", css, flags=re.S):
                raise err("@media and other at-rules cannot be inlined: put them in an <mj-style> without "
                          "inline=\"inline\"", offset=None)
            inline_css.append(css)
            return ""

        doc = re.sub(r'<mj-style\b([^>]*\binline="inline"[^>]*)>(.*?)</mj-style>', take_css, doc, flags=re.S)
        return doc, "\n".join(inline_css)

    @staticmethod
    def _unmask(text: str, tokens: list[_Token], *, comments: bool) -> str:
        """Put the runtime Jinja back (comment placeholders lose their comment wrapper)."""
        out: list[str] = []
        pos = 0
        pattern = re.compile(r"<!--QJ(\d+)Q-->|QJ(\d+)Q") if comments else _PH
        for m in pattern.finditer(text):
            out.append(_escape_static(text[pos:m.start()]))
            tid = int(m.group(1) or m.group(2)) if comments else int(m.group(1))
            out.append(tokens[tid].source)
            pos = m.end()
        out.append(_escape_static(text[pos:]))
        return "".join(out)

    @staticmethod
    def _track_links(html: str, tokens: list[_Token]) -> tuple[str, int]:
        """Rewrite http(s) hrefs into ``{{ _track(expr) }}`` tokens; returns (html, count)."""
        count = 0

        def rewrite(m: re.Match) -> str:
            nonlocal count
            value = m.group(2)
            pieces = re.split(r"(QJ\d+Q)", value)
            exprs: list[str] = []
            for piece in pieces:
                if not piece:
                    continue
                ph = _PH.fullmatch(piece)
                if ph:
                    tok = tokens[int(ph.group(1))]
                    if tok.kind != "expr":
                        return m.group()
                    exprs.append("(" + tok.source[2:-2].strip().strip("-").strip() + ")")
                else:
                    lit = html_lib.unescape(piece)
                    exprs.append("'" + lit.replace("\\", "\\\\").replace("'", "\\'") + "'")
            if not exprs:
                return m.group()
            first = pieces[0] if pieces[0] else (pieces[1] if len(pieces) > 1 else "")
            if not _PH.fullmatch(first) and not first.lower().startswith(("http://", "https://")):
                return m.group()
            if len(exprs) == 1 and exprs[0].strip("()") in UNTRACKED:
                return m.group()
            tokens.append(_Token("{{ _track(" + " ~ ".join(exprs) + ") }}", tokens[0].offset if tokens else 0,
                                 "expr"))
            count += 1
            return f"{m.group(1)}QJ{len(tokens) - 1}Q{m.group(3)}"

        html = re.sub(r'(<a\b[^>]*?\bhref=")([^"]*)(")', rewrite, html, flags=re.I)
        return html, count

    # -- render -----------------------------------------------------------------------------
    def _subject_template(self, source: str) -> jinja2.Template:
        tpl = self._subjects.get(source)
        if tpl is None:
            tpl = self.text_env.from_string(source)
            with self._lock:
                if len(self._subjects) > COMPILE_CACHE_ENTRIES:
                    self._subjects.clear()
                self._subjects[source] = tpl
        return tpl

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

    def render(self, kind: str, locale: str | None, data: dict[str, Any], *,
               context: dict[str, Any] | None = None, subject: str | dict[str, str] | None = None,
               preheader: str | dict[str, str] | None = None, cache_key: str | None = None) -> Rendered:
        """Render one mail.

        ``context``: per-recipient values (first_name, email, currency, unsubscribe_url,
        preferences_url, wrap_link...).  ``subject`` / ``preheader``: an override, as one
        string or a dict per locale (fallback chain applies).  ``cache_key``: compile this
        (kind, locale) separately, e.g. once per campaign, fresh from disk.
        """
        spec = self.validate(kind, data)
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
        ctx.update(self._normalize(spec, data))
        chain = i18n.chain(loc)
        path = c.path
        try:
            subj = self._pick(subject, chain) if subject is not None else None
            if subj is None:
                subj = next((spec.subjects[x] for x in chain if x in spec.subjects), None)
            if subj is None:
                raise TemplateError("no subject for this locale in kind.toml [subject]",
                                    template=str(spec.path / "kind.toml"), locale=loc)
            subject_text = _one_line(self._subject_template(subj).render(ctx))
            pre = self._pick(preheader, chain) if preheader is not None else None
            if pre is None:
                pre = next((spec.preheaders[x] for x in chain if x in spec.preheaders), "")
            preheader_text = _one_line(self._subject_template(pre).render(ctx)) if pre else ""
            ctx["subject"] = subject_text
            ctx["preheader"] = preheader_text
            html = c.html.render(ctx)
            text = tidy_text(c.text.render(ctx))
        except jinja2.UndefinedError as exc:
            raise self._runtime_error(exc, c, loc) from exc
        except i18n.FormatError as exc:
            raise TemplateError(f"cannot format a value: {exc}", template=path, locale=loc) from exc
        except (TypeError, ValueError, AttributeError) as exc:
            raise TemplateError(f"{type(exc).__name__}: {exc}", template=path, locale=loc) from exc
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

def _check_content(tokens: list[_Token], content: str, offset: int) -> list[tuple[str, int, bool]]:
    """Balance check of the HTML inside one ending tag.

    Returns (message, offset, is_token): a source offset of a Jinja token, or an offset
    in the masked MJML (``offset`` is where ``content`` starts there).
    """
    check_text = _PH.sub(lambda m: f"<!--QJ{m.group(1)}Q-->" if tokens[int(m.group(1))].kind == "stmt"
                         else m.group(), content)
    out: list[tuple[str, int, bool]] = []
    for message, off, tid in _BalanceChecker(tokens).check(check_text):
        if tid is not None:
            out.append((message, tokens[tid].offset, True))
            continue
        # Comments add 7 characters per statement placeholder before the offset.
        shift = 7 * len(re.findall(r"<!--QJ\d+Q-->", check_text[:off]))
        out.append((message, offset + max(0, off - shift), False))
    return out


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
    settings = renderer.settings
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
