"""The console's UI text in the users' locales: catalogs per area in ``i18n/<area>.toml``.

Each file has one table per locale (``[zh-TW]``, ``[zh-CN]``, ``[pl]``, ``[ko]``) mapping the
English text, exactly as written in the template's or module's call of ``_``, to its
translation.  English needs no catalog.  A text with no entry falls back to English
(the completeness test in tests/test_console_i18n.py fails the build first).  Keyword
values given to ``_`` fill ``{name}`` places after translating.  Texts that reach ``_`` as
values (roles, statuses, service messages) are listed in :data:`DYNAMIC_TEXTS` so the
test checks them too.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from mailer.customers.predictions import REASON_TEXTS

#: Where the catalogs live.
CATALOG_DIR = Path(__file__).parent / "i18n"
#: The console's locales: English first (the source), then the seeds' languages.
LOCALES = ("en", "zh-TW", "zh-CN", "pl", "ko")
#: Names shown in the locale picker, each in its own language.
LOCALE_NAMES = {"en": "English", "zh-TW": "繁體中文", "zh-CN": "简体中文", "pl": "Polski", "ko": "한국어"}


#: Texts translated from a variable (``_(user.role)``, ``_(error)``): the completeness test checks these.
DYNAMIC_TEXTS = (
    # roles
    "admin", "marketer", "compliance", "viewer",
    # delivery and campaign statuses
    "scheduled", "queued", "sending", "sent", "failed", "bounced", "suppressed", "skipped", "cancelled", "held",
    "draft", "running", "paused", "completed",
    # dashboard rates
    "complaints", "bounces", "unsubscribes",
    # A/B winning metrics (mailer.campaigns.reports.METRIC_NAMES) and test states
    "human open rate", "click rate", "revenue per recipient", "testing", "decided",
    # churn risk and spend tier values (customer profile)
    "low", "medium", "high",
    # messages of mailer.users and the console's own forms
    "wrong e-mail address, password or code",
    "too many login attempts from your network; wait a minute and try again",
    "too many login attempts for this account; wait 15 minutes and try again",
    "enter the 6-digit code from your authenticator app",
    "the password needs at least 12 characters", "the password may have at most 256 characters",
    "The two passwords differ.", "You cannot disable your own account.",
    "That code did not match; try the next one.",
    "Logging in is not possible right now; try again in a minute.",
    # consent events in the customer profile's history
    "granted", "withdrawn",
    # a missing spend tier or churn risk in the profile's "Why" lines
    "none", "unknown",
    # the profile's "Why" lines (mailer.customers.predictions.explain_reasons)
    *REASON_TEXTS,
)


@lru_cache(maxsize=1)
def catalogs() -> dict[str, dict[str, str]]:
    """Every locale's merged catalog (all area files)."""
    merged: dict[str, dict[str, str]] = {loc: {} for loc in LOCALES if loc != "en"}
    for path in sorted(CATALOG_DIR.glob("*.toml")):
        with path.open("rb") as f:
            data = tomllib.load(f)
        for locale, table in data.items():
            if locale not in merged:
                raise ValueError(f"{path.name}: unknown locale table [{locale}]; use one of {', '.join(merged)}")
            merged[locale].update({str(k): str(v) for k, v in table.items()})
    return merged


def translator(locale: str) -> Callable[..., str]:
    """``_`` for ``locale``: the translation of an English text (else the text), then ``str.format``."""
    table = catalogs().get(locale, {})

    def _(text: str, **values: object) -> str:
        out = table.get(text, text)
        return out.format(**values) if values else out

    return _
