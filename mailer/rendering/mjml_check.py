"""MJML with runtime Jinja inside: masking, structure check and HTML/Jinja balance check.

The curly runtime Jinja (``{{ first_name }}``, ``{% for item in items %}``) is masked as
``QJ<n>Q`` placeholders (:class:`_Token`) so the MJML can be parsed as XML.
:func:`_check_structure` then checks known ``mj-*`` tags, allowed nesting and balanced
HTML inside ``mj-text`` and friends, and wraps Jinja statements that stand between MJML
elements in ``<mj-raw>`` comments so MRML keeps them in place.  :class:`_BalanceChecker`
checks that every Jinja block branch encloses balanced HTML (before and after MRML), and
:func:`_unmask` puts the runtime Jinja back.  Problems are reported through the caller's
``err`` callback, which maps offsets back to source file and line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from xml.parsers import expat

from mailer.errors import TemplateError

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
_ENDING = re.compile(r"<({})(\s[^>]*?)?(?<!/)>(.*?)</\1\s*>".format("|".join(ENDING_TAGS)), re.S)
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
# Masking and unmasking runtime Jinja
# =========================================================================================
def _nearest_token(html: str, end: int) -> int | None:
    """The id of the last Jinja placeholder before ``end`` in the compiled HTML."""
    best = None
    for m in _PH.finditer(html, 0, end + 1):
        best = int(m.group(1))
    return best


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


def _escape_static(text: str) -> str:
    """Make literal ``{{`` / ``{%`` / ``{#`` in static text safe for Jinja."""
    return re.sub(r"\{(?=[{%#])", "{{ '{' }}", text)


# =========================================================================================
# Structure check of the masked MJML
# =========================================================================================
def _check_structure(masked: str, tokens: list[_Token],
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
