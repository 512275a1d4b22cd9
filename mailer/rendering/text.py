"""Plain text: the text part derived from the compiled HTML, and per-recipient tidying.

:func:`html_to_text` turns the compiled HTML (runtime Jinja still masked) into the
plain-text template once per compile; :func:`tidy_text` and :func:`_one_line` clean up
each recipient's rendered text part, subject and preheader.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from mailer.message.mime import LINE_BREAK_CHARS
from mailer.rendering.mjml_check import _PH, _VOID

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


#: Blanks and every kind of line break (the same set as the header rule, :mod:`mailer.mime`).
_LINE_RUNS = re.compile(f"[ \t{LINE_BREAK_CHARS}]+")


def _one_line(text: str) -> str:
    """Subject / preheader on one line; no-break spaces (French « : ») survive.

    Line breaks of every kind (CR, LF, NEL, U+2028...) become one space, as the header
    rule in :mod:`mailer.mime` does, so the subject shown is the subject sent.
    """
    return _LINE_RUNS.sub(" ", text).strip()

