"""Segments: declarative recipient selections, compiled to one SQL query, streamed by keyset.

A segment is a file ``segments/<name>.toml`` (or ``.yaml``/``.yml``)::

    description = "VIP customers: tagged VIP or spent over 1000"
    purpose = "newsletter"          # the consent purpose every recipient must have now

    [where]
    any = [
      { tags = { any = ["VIP"] } },
      { total_spent = { gt = 1000 } },
    ]

Conditions are tables over whitelisted fields (see :data:`FIELDS`) combined with
``all``, ``any`` and ``not``; several keys in one table must all hold.  There is no
way to write SQL in a segment file.  Every leaf compiles to a two-valued SQL
expression (NULL-guarded), so ``not`` means the same in SQL as in
:func:`evaluate`, the plain-Python reference the property tests compare against.

Resolution drives from ``consent_state`` (purpose, granted, customer_id index): only
customers with current consent for the segment's purpose are considered, suppressed
addresses (scope ``all``, ``marketing`` or the purpose) are excluded, and recipients
come out in customer-id order, ``batch_size`` at a time, so a caller (campaign
fan-out) can resume from the last id it handled and never holds the segment.

Modules:

* :mod:`mailer.segments.files` - segment files: reading TOML/YAML, validating the
  top-level keys, the whitelist of fields and operators (``FIELDS``), condition trees
  (``validate_condition``), ``Segment``, ``load`` / ``parse`` / ``list_segments`` /
  ``segment_files``.
* :mod:`mailer.segments.conditions` - the condition compiler to SQL
  (``compile_condition``), the plain-Python evaluator (``evaluate``) and ``describe``.
* :mod:`mailer.segments.resolve` - resolution: ``count``, ``locales``, ``stream`` (keyset + id
  windows, consent and suppressions), ``sample``, ``contains``, ``Recipient``,
  ``BATCH_SIZE`` and ``WINDOW_MAX_FACTOR``.

This package re-exports the names in ``__all__``, so ``from mailer.segments import load``
and ``segments.load(...)`` work; import other constants from their module.
``WINDOW_MAX_FACTOR`` is deliberately not re-exported: ``stream`` reads it from
:mod:`mailer.segments.resolve`, so that is where a test must patch it (setting it
here would silently change nothing).
"""

from __future__ import annotations

from mailer.segments.conditions import compile_condition, describe, evaluate
from mailer.segments.files import (
    FIELDS,
    Segment,
    list_segments,
    load,
    parse,
    segment_files,
    validate_condition,
)
from mailer.segments.resolve import Recipient, contains, count, locales, sample, stream

__all__ = ["Segment", "Recipient", "FIELDS", "load", "list_segments", "parse", "validate_condition",
           "compile_condition", "evaluate", "describe", "count", "locales", "stream", "sample", "contains", "segment_files"]
