"""Compile-time layer: layouts resolved with square-bracket Jinja, every line tracking its source.

Locale files extend a layout in ``templates/_layouts/`` through *compile-time* Jinja
written with square brackets (``[% extends %]``, ``[% block %]``, ``[[ t.unsubscribe ]]``).
:class:`_MarkedLoader` prefixes every loaded line with an origin marker, and
:class:`_LineMap` strips the markers again while remembering, for every line and column
of the resolved MJML, which source file and line it came from, so later errors can name
the file and line a template author actually wrote.
"""

from __future__ import annotations

import re
from pathlib import Path

import jinja2

from mailer.errors import TemplateError
from mailer.rendering.sandbox import SafeEnvironment

#: Folder (under templates/) with layouts and their localized strings; not a kind.
LAYOUTS = "_layouts"
STRINGS_FILE = "strings.toml"


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
    """Compile-time Jinja: square brackets, so the curly runtime Jinja passes through as text.

    Sandboxed like the runtime environments (:class:`~mailer.rendering.sandbox.SafeEnvironment`).
    """
    return SafeEnvironment(loader=loader, block_start_string="[%", block_end_string="%]",
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

