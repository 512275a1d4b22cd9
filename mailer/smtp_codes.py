"""SMTP replies (and DSN status codes) to outcomes, as a table: data, not chains of ifs.

Outcomes:

* ``retry``  transient: retry with Dramatiq's exponential backoff and jitter until the
             delivery is ``MAILER_RETRY_MAX_AGE_S`` old; nothing is suppressed.
* ``hard``   permanent: the address does not exist or never accepts mail; suppress it.
* ``soft``   permanent for this message, but the mailbox exists (full, over quota);
             counted, and suppressed after ``MAILER_SOFT_BOUNCE_LIMIT`` of them.
* ``block``  permanent, the receiver refused *us* (policy, reputation, authentication),
             not the address: nothing is suppressed; look at the relay and DNS.
* ``fail``   permanent for this message only (too large, bad syntax); nothing suppressed.

Each row of :data:`OUTCOMES` gives an enhanced status code (RFC 3463; a trailing dot
means "this class or subject"), a basic reply-code prefix, and/or a regular expression
on the reply text; a row matches when every criterion it gives matches, and the first
matching row wins.  The order is the precedence: exact enhanced codes, then text
patterns (only ever on 5xx replies: a 4xx is never made permanent by its wording),
then enhanced-code classes, then bare reply codes.  No reply at all (connection
refused, reset, timeout) is ``retry``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailer.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError


@dataclass(frozen=True)
class Rule:
    enhanced: str = ""       # "5.1.1" exact, or "5.7." class/subject prefix
    basic: str = ""          # reply code prefix: "550", "55", "5"
    pattern: str = ""        # case-insensitive regular expression on the reply text
    outcome: str = "fail"
    reason: str = ""


OUTCOMES: tuple[Rule, ...] = (
    # -- exact enhanced status codes (RFC 3463 and common use) ------------------------------
    Rule("5.1.0", outcome="hard", reason="address rejected"),
    Rule("5.1.1", outcome="hard", reason="user unknown"),
    Rule("5.1.2", outcome="hard", reason="domain does not exist"),
    Rule("5.1.3", outcome="hard", reason="bad destination address syntax"),
    Rule("5.1.6", outcome="hard", reason="mailbox moved, no forwarding address"),
    Rule("5.1.7", outcome="block", reason="our sender address syntax refused"),
    Rule("5.1.8", outcome="block", reason="our sender domain refused"),
    Rule("5.1.10", outcome="hard", reason="null MX: domain accepts no mail"),
    Rule("5.2.1", outcome="hard", reason="mailbox disabled"),
    Rule("5.4.1", outcome="hard", reason="recipient address rejected"),
    Rule("5.4.4", outcome="hard", reason="unable to route"),
    Rule("5.2.0", outcome="soft", reason="mailbox unavailable"),
    Rule("5.2.2", outcome="soft", reason="mailbox full"),
    Rule("5.3.2", outcome="soft", reason="system not accepting messages"),
    Rule("4.2.2", outcome="retry", reason="mailbox full (temporary)"),
    Rule("5.2.3", outcome="fail", reason="message too large"),
    Rule("5.3.4", outcome="fail", reason="message too large for system"),
    Rule("5.5.2", outcome="fail", reason="syntax error"),
    Rule("5.6.7", outcome="fail", reason="non-ASCII address not supported (SMTPUTF8)"),
    Rule("5.7.1", outcome="block", reason="delivery not authorized / policy"),
    Rule("5.7.26", outcome="block", reason="authentication (SPF/DKIM/DMARC) failed"),
    Rule("5.7.27", outcome="hard", reason="sender address has null MX"),
    # -- wording of permanent replies, when the enhanced code says little -----------------
    Rule(basic="5", pattern=r"sender (address )?(rejected|refused|denied)|sender.*(unverified|not verified)",
         outcome="block", reason="our sender refused"),
    Rule(basic="5", pattern=r"mailbox (is )?full|over ?quota|quota exceeded|insufficient storage",
         outcome="soft", reason="mailbox full"),
    Rule(basic="5", pattern=r"user unknown|unknown user|no such (user|mailbox|recipient)|"
                            r"does not exist|mailbox unavailable|recipient (address )?rejected|"
                            r"invalid recipient",
         outcome="hard", reason="user unknown"),
    Rule(basic="5", pattern=r"\bspam\b|blocked|block ?list|blacklist|reputation|\brbl\b|dmarc|"
                            r"\bspf\b|\bdkim\b", outcome="block", reason="refused as spam / policy"),
    # -- enhanced status classes -----------------------------------------------------------
    Rule("5.7.", outcome="block", reason="policy refusal"),
    Rule("5.1.", outcome="hard", reason="bad destination address"),
    Rule("4.", outcome="retry", reason="temporary failure"),
    Rule("5.", outcome="fail", reason="permanent failure"),
    # -- bare reply codes (no enhanced code in the reply) ----------------------------------
    Rule(basic="550", outcome="hard", reason="mailbox unavailable"),
    Rule(basic="551", outcome="hard", reason="user not local"),
    Rule(basic="552", outcome="soft", reason="exceeded storage allocation"),
    Rule(basic="553", outcome="hard", reason="mailbox name not allowed"),
    Rule(basic="556", outcome="hard", reason="domain does not accept mail"),
    Rule(basic="554", outcome="fail", reason="transaction failed"),
    Rule(basic="4", outcome="retry", reason="temporary failure"),
    Rule(basic="5", outcome="fail", reason="permanent failure"),
)

_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_COMPILED = {r.pattern: re.compile(r.pattern, re.I) for r in OUTCOMES if r.pattern}


@dataclass(frozen=True)
class Outcome:
    outcome: str
    reason: str
    code: int | None
    enhanced: str | None


def _matches(rule: Rule, code: int, enhanced: str | None, reply: str) -> bool:
    if rule.enhanced:
        if enhanced is None:
            return False
        if rule.enhanced.endswith("."):
            if not enhanced.startswith(rule.enhanced):
                return False
        elif enhanced != rule.enhanced:
            return False
    if rule.basic and not str(code).startswith(rule.basic):
        return False
    if rule.pattern and not _COMPILED[rule.pattern].search(reply or ""):
        return False
    return True


def enhanced_code(code: int | None, reply: str) -> str | None:
    """The RFC 3463 code in a reply, if its class agrees with the reply code."""
    m = _ENHANCED.search(reply or "")
    if not m or (code is not None and m.group(1) != str(code)[0]):
        return None
    return ".".join(m.groups())


def classify(code: int | None, reply: str = "") -> Outcome:
    """Look a reply up in :data:`OUTCOMES`; no code at all (connection trouble) is ``retry``."""
    if code is None:
        return Outcome("retry", "connection failure", None, None)
    enhanced = enhanced_code(code, reply)
    for rule in OUTCOMES:
        if _matches(rule, code, enhanced, reply):
            return Outcome(rule.outcome, rule.reason, code, enhanced)
    return Outcome("retry" if 400 <= code < 500 else "fail", "unclassified reply", code, enhanced)


_DIAG_CODE = re.compile(r"\b([245]\d\d)\b")


def classify_dsn(status: str, diagnostic: str = "") -> Outcome:
    """A DSN recipient (RFC 3464 ``Status`` and ``Diagnostic-Code``) through the same table.

    The remote reply code comes from the diagnostic (``smtp; 550 5.1.1 ...``) when it
    has one, otherwise from the status class (``5.x.x`` as 550, ``4.x.x`` as 450).
    """
    status = (status or "").strip().split()[0] if status and status.strip() else ""
    text = diagnostic.split(";", 1)[-1].strip() if diagnostic else ""
    m = _DIAG_CODE.search(text)
    if m and m.group(1)[0] == status[:1]:
        code = int(m.group(1))
    else:
        code = {"2": 250, "4": 450, "5": 550}.get(status[:1], 550)
    return classify(code, f"{status} {text}".strip())


def error_for_reply(code: int, reply: str, *, relay: str = "") -> DeliveryError:
    """The exception a transport raises for a refusing reply."""
    result = classify(code, reply)
    cls = TransientDeliveryError if result.outcome == "retry" else PermanentDeliveryError
    err = cls(f"{relay + ': ' if relay else ''}{code} {reply} ({result.reason})", code=code,
              enhanced=result.enhanced, reply=f"{code} {reply}")
    err.outcome = result.outcome  # type: ignore[attr-defined]
    err.reason = result.reason  # type: ignore[attr-defined]
    return err
