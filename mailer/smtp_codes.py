"""SMTP replies to outcomes, as a table (data, not chains of ifs).

Each row maps a reply code prefix and/or an enhanced status code (RFC 3463) to an
outcome:

* ``retry``       transient: retry with backoff (Dramatiq Retries), nothing suppressed.
* ``hard``        permanent: the address does not exist; suppress it.
* ``soft``        permanent for this attempt but the mailbox exists (full, over quota);
                  counted, and suppressed after ``MAILER_SOFT_BOUNCE_LIMIT``.
* ``block``       permanent, the relay/policy refused the message (not the address).
* ``fail``        permanent for this message, nothing suppressed.

The most specific row wins: an enhanced code match beats a basic code match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailer.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError

#: (enhanced status code or "" , basic code prefix or "", outcome, reason)
OUTCOMES: tuple[tuple[str, str, str, str], ...] = (
    # enhanced codes (RFC 3463), most specific first
    ("5.1.1", "", "hard", "user unknown"),
    ("5.1.2", "", "hard", "domain does not exist"),
    ("5.1.3", "", "hard", "bad destination address syntax"),
    ("5.1.6", "", "hard", "mailbox moved"),
    ("5.1.10", "", "hard", "null MX: domain accepts no mail"),
    ("5.2.1", "", "hard", "mailbox disabled"),
    ("5.2.2", "", "soft", "mailbox full"),
    ("4.2.2", "", "retry", "mailbox full (temporary)"),
    ("5.2.3", "", "fail", "message too large"),
    ("5.3.4", "", "fail", "message too large for system"),
    ("5.4.4", "", "hard", "unable to route"),
    ("5.6.7", "", "fail", "non-ASCII address not supported (SMTPUTF8)"),
    ("5.7.1", "", "block", "delivery not authorized / policy"),
    ("5.7.26", "", "block", "authentication (SPF/DKIM/DMARC) failed"),
    ("5.7.", "", "block", "policy refusal"),
    ("4.", "", "retry", "temporary failure"),
    ("5.", "", "fail", "permanent failure"),
    # basic reply codes when no enhanced code is given
    ("", "550", "hard", "mailbox unavailable"),
    ("", "551", "hard", "user not local"),
    ("", "552", "soft", "exceeded storage allocation"),
    ("", "553", "hard", "mailbox name not allowed"),
    ("", "554", "fail", "transaction failed"),
    ("", "4", "retry", "temporary failure"),
    ("", "5", "fail", "permanent failure"),
)

_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class Outcome:
    outcome: str
    reason: str
    code: int | None
    enhanced: str | None


def classify(code: int | None, reply: str = "") -> Outcome:
    """Look a reply up in :data:`OUTCOMES`; no code at all (connection trouble) is ``retry``."""
    if code is None:
        return Outcome("retry", "connection failure", None, None)
    m = _ENHANCED.search(reply or "")
    enhanced = ".".join(m.groups()) if m and m.group(1) == str(code)[0] else None
    if enhanced:
        for enh, _basic, outcome, reason in OUTCOMES:
            if enh and (enhanced == enh or (enh.endswith(".") and enhanced.startswith(enh))):
                return Outcome(outcome, reason, code, enhanced)
    for enh, basic, outcome, reason in OUTCOMES:
        if not enh and str(code).startswith(basic):
            return Outcome(outcome, reason, code, enhanced)
    return Outcome("retry" if 400 <= code < 500 else "fail", "unclassified reply", code, enhanced)


def error_for_reply(code: int, reply: str, *, relay: str = "") -> DeliveryError:
    """The exception a transport raises for a refusing reply."""
    result = classify(code, reply)
    cls = TransientDeliveryError if result.outcome == "retry" else PermanentDeliveryError
    err = cls(f"{relay + ': ' if relay else ''}{code} {reply} ({result.reason})", code=code,
              enhanced=result.enhanced, reply=f"{code} {reply}")
    err.outcome = result.outcome  # type: ignore[attr-defined]
    err.reason = result.reason  # type: ignore[attr-defined]
    return err
