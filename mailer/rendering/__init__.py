"""Rendering: notice kinds and newsletters, MJML compiled once, Jinja per recipient.

The package owns everything between a template folder on disk and a finished
subject / preheader / HTML / text for one recipient.  A kind is a folder
``templates/<kind>/`` (newsletters: ``templates/newsletter/<name>/``) holding
``kind.toml`` (schema, lawful basis, subject and preheader per locale), ``sample.json``
and one ``<locale>.mjml`` per locale.  Locale files extend a layout in
``templates/_layouts/`` through *compile-time* Jinja written with square brackets
(``[% extends %]``, ``[% block %]``, ``[[ t.unsubscribe ]]``); the ordinary curly
brackets (``{{ first_name }}``, ``{% for item in items %}``) run per recipient.
Every problem raises :class:`~mailer.errors.TemplateError` naming the file, locale and
line, or :class:`~mailer.errors.MissingField` naming the data field; a mail is rendered
completely or not at all.

Modules (one concept each; this ``__init__`` re-exports the public names, so
``from mailer.rendering import Renderer`` keeps working):

- :mod:`~mailer.rendering.kinds`: ``kind.toml`` parsed into :class:`KindSpec` /
  :class:`FieldSpec`, data validated against declared fields; ``TRANSACTIONAL``,
  ``SUPPORTED_LOCALES``, ``FIELD_TYPES``.
- :mod:`~mailer.rendering.layouts`: the compile-time layer: layouts resolved with
  square-bracket Jinja, a line map from resolved MJML back to source file and line;
  ``LAYOUTS``, ``STRINGS_FILE``.
- :mod:`~mailer.rendering.mjml_check`: runtime Jinja masked inside MJML, the MJML
  structure check (known ``mj-*`` tags, nesting) and the HTML/Jinja balance check;
  ``ENDING_TAGS``, ``PARENTS``, ``CONTAINERS``.
- :mod:`~mailer.rendering.text`: the plain-text part (:func:`html_to_text`,
  :func:`tidy_text`).
- :mod:`~mailer.rendering.links`: click tracking: http(s) links rewritten into
  ``{{ _track(url) }}`` at compile time, the ``wrap_link`` hook per recipient; ``UNTRACKED``.
- :mod:`~mailer.rendering.renderer`: :class:`Renderer` (compile pipeline, cache,
  per-recipient render), :class:`Compiled`, :class:`Rendered`, the Jinja environments;
  ``COMPILE_CACHE_ENTRIES``, ``CONTEXT_KEYS``.
- :mod:`~mailer.rendering.sandbox`: the sandboxed Jinja environment every template renders
  in (bounded ``*``, ``+``, ``**``, ``%``, ``range``) and the restricted grammar for
  user-supplied subjects and preheaders (:func:`check_text`); ``MAX_*`` limits.
- :mod:`~mailer.rendering.check`: ``mailer templates check`` (:func:`check_templates`,
  :class:`Problem`) and the preview recipient (:func:`preview_context`, ``PREVIEW_*``).
"""

from mailer.rendering.check import (
                                    PREVIEW_NAMES,
                                    PREVIEW_PREFERENCES,
                                    PREVIEW_UNSUBSCRIBE,
                                    Problem,
                                    check_templates,
                                    preview_context,
)
from mailer.rendering.i18n import fallback_chain
from mailer.rendering.kinds import FIELD_TYPES, SUPPORTED_LOCALES, TRANSACTIONAL, FieldSpec, KindSpec

# Private names re-exported for bench/campaign_throughput.py, which resolves a layout by hand
# (``rendering._MarkedLoader`` ...); new code should import them from mailer.rendering.layouts.
from mailer.rendering.layouts import LAYOUTS, STRINGS_FILE, _compile_env, _LineMap, _MarkedLoader  # noqa: F401
from mailer.rendering.links import UNTRACKED
from mailer.rendering.mjml_check import CONTAINERS, ENDING_TAGS, PARENTS
from mailer.rendering.renderer import COMPILE_CACHE_ENTRIES, CONTEXT_KEYS, Compiled, Rendered, Renderer
from mailer.rendering.text import html_to_text, tidy_text

__all__ = [
    # kinds
    "TRANSACTIONAL", "SUPPORTED_LOCALES", "FIELD_TYPES", "FieldSpec", "KindSpec",
    # layouts
    "LAYOUTS", "STRINGS_FILE",
    # mjml_check
    "ENDING_TAGS", "PARENTS", "CONTAINERS",
    # text
    "html_to_text", "tidy_text",
    # links
    "UNTRACKED",
    # renderer
    "COMPILE_CACHE_ENTRIES", "CONTEXT_KEYS", "Compiled", "Rendered", "Renderer",
    # check
    "PREVIEW_NAMES", "PREVIEW_UNSUBSCRIBE", "PREVIEW_PREFERENCES", "Problem", "check_templates", "preview_context",
    # re-exported from mailer.i18n (campaigns, web pages and tests import it from here)
    "fallback_chain",
]
