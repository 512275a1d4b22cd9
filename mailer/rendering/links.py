"""Click tracking: http(s) links rewritten into ``{{ _track(url) }}`` when compiling, and the hook.

At compile time :func:`_track_links` rewrites every http(s) ``href`` of the compiled
HTML (except the :data:`UNTRACKED` unsubscribe / preferences links) into a
``{{ _track(<url expression>) }}`` token; per recipient :func:`_track` calls the
context's ``wrap_link(url)`` (no ``wrap_link``: the URL is left as it is).
"""

from __future__ import annotations

import html as html_lib
import re
from typing import Any

from mailer.rendering.mjml_check import _PH, _Token

#: Links never rewritten for click tracking (the expression of the whole href).
UNTRACKED = frozenset({"unsubscribe_url", "preferences_url"})


def _track(ctx, url: Any) -> Any:
    """The click-tracking hook: ``wrap_link(url)`` from the context for http(s) URLs."""
    wrap = ctx.get("wrap_link")
    if wrap is None or not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return url
    return wrap(url)


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
