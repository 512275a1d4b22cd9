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

Each row also names a **side**: ``sender`` (the refusal is about us: the message's
size or content, our IP or domain reputation, our authentication, relaying, our sender
address, our rate), ``recipient`` (the address or mailbox), or neither.  A sender-side
refusal is never a bounce against the customer: it is never ``hard`` or ``soft``, is
never counted towards ``MAILER_SOFT_BOUNCE_LIMIT`` and never suppresses anybody; the
delivery fails (or, for a 4xx, is retried) with the reason, and the operator is told
(:mod:`mailer.delivery` logs a warning and counts ``mailer_sender_refusals_total``).

Each row of :data:`OUTCOMES` gives an enhanced status code (RFC 3463; a trailing dot
means "this class or subject"), a basic reply-code prefix, and/or a regular expression
on the reply text; a row matches when every criterion it gives matches, and the first
matching row wins, so the enhanced code and the text decide together.  The order is
the precedence:

1. wording that puts the refusal on our side (size, authentication, relaying, sender
   address, rate, spam/content, blocked IP), on 5xx and 4xx replies alike: a reply
   that blames us is never the recipient's fault, whatever its code;
2. exact enhanced codes that name the recipient (5.1.1, 5.2.2...), then those that
   name us (5.1.8, 5.3.4, 5.7.8...);
3. wording of 5xx replies about the recipient (user unknown, mailbox full);
4. vague exact codes (5.1.0, 5.2.0...), enhanced-code classes, then bare reply codes.

Text rules on a 4xx are always ``retry``: a 4xx is never made permanent by its
wording.  No reply at all (connection refused, reset, timeout) is ``retry``.
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
    side: str = ""           # SENDER, RECIPIENT or "" (see below)


#: Sides: whose problem a refusal is.  ``sender`` is ours (the message, our IP, domain,
#: authentication, rate): never a bounce against the customer, always an operator alert.
#: ``recipient`` is the address or mailbox.  ``""``: neither is known.
SENDER = "sender"
RECIPIENT = "recipient"

# Wording that puts a refusal on our side, whatever its code (see the precedence above).
_TOO_LARGE = (r"message (size|length) exceed|message (is )?too (big|large)|\bsize exceeds (the )?(fixed|maximum)|"
              r"exceeds? (the )?(fixed |maximum |allowed )?(message )?size|message size limit")
_CONTENT = (r"\bspam\b|unsolicited|content (was )?(rejected|refused|not accepted)|message content|"
            r"(rejected|refused) (due to|because of|for) (its )?(content|policy reasons)|policy reasons|"
            r"\bvirus\b|malware|phishing|\bbulk mail")
_BLOCKED = (r"\bblocked\b|block ?list|blacklist|deny ?list|\brbl\b|dnsbl|spamhaus|spamcop|barracuda|"
            r"reputation|\bbanned\b|client host|sending ip|your ip|\bip address\b.{0,40}(block|reject|denied|list)")
_AUTH = r"authenticat|\bdmarc\b|\bspf\b|\bdkim\b|credentials|must issue a starttls|tls required"
_RELAY = (r"relay(ing)? (access )?(denied|not permitted|not allowed|prohibited)|unable to relay|"
          r"not permitted to relay|we do not relay")
_SENDER = (r"sender (address |domain )?(rejected|refused|denied|blocked|unknown|invalid)|"
           r"sender.{0,40}(unverified|not verified|verification failed)|sender domain|invalid sender|bad sender|"
           r"from address .{0,30}(rejected|refused|denied|invalid)")
_RATE = (r"rate limit|rate-limit|too many (messages|connections|mails|e-?mails|recipients)|throttl|"
         r"sending (rate|limit|quota)|unusual rate|exceeded .{0,30}(rate|sending)")
#: Only a 4xx: retry later, closing connection (a deferral of us, not of the mailbox).
_DEFERRED = r"try again later|closing connection|temporarily (deferred|rejected)"
_GREYLIST = r"greylist|graylist"

OUTCOMES: tuple[Rule, ...] = (
    # -- our side, by wording, first: a reply that blames our message, IP, domain,
    #    authentication or rate is never the recipient's fault, whatever else it says ------
    *(row for pattern, outcome, reason in (
        (_TOO_LARGE, "fail", "message too large"),
        (_AUTH, "block", "sender authentication failed"),
        (_RELAY, "block", "relaying denied"),
        (_SENDER, "block", "our sender refused"),
        (_RATE, "block", "rate limited"),
        (_CONTENT, "block", "content refused as spam / policy"),
        (_BLOCKED, "block", "sending IP or domain blocked"),
    ) for row in (Rule(basic="5", pattern=pattern, outcome=outcome, reason=reason, side=SENDER),
                  Rule(basic="4", pattern=pattern, outcome="retry", reason=reason, side=SENDER))),
    Rule(basic="4", pattern=_GREYLIST, outcome="retry", reason="greylisted", side=SENDER),
    Rule(basic="4", pattern=_DEFERRED, outcome="retry", reason="deferred (rate / reputation)", side=SENDER),
    # -- exact enhanced status codes that name the recipient (RFC 3463) --------------------
    Rule("5.1.1", outcome="hard", reason="user unknown", side=RECIPIENT),
    Rule("5.1.2", outcome="hard", reason="domain does not exist", side=RECIPIENT),
    Rule("5.1.3", outcome="hard", reason="bad destination address syntax", side=RECIPIENT),
    Rule("5.1.6", outcome="hard", reason="mailbox moved, no forwarding address", side=RECIPIENT),
    Rule("5.1.10", outcome="hard", reason="null MX: domain accepts no mail", side=RECIPIENT),
    # 5.2.1 is "mailbox disabled" (RFC 3463), but servers also send it with "User unknown"
    # (bounce corpus: 5 of 11 recipients with 5.2.1 said so): the wording decides, then the code.
    Rule("5.2.1", basic="5", pattern=r"user unknown|unknown user|no such user|does not exist", outcome="hard",
         reason="user unknown", side=RECIPIENT),
    Rule("5.2.1", outcome="soft", reason="mailbox disabled", side=RECIPIENT),
    Rule("5.2.2", outcome="soft", reason="mailbox full", side=RECIPIENT),
    Rule("4.2.2", outcome="retry", reason="mailbox full (temporary)", side=RECIPIENT),
    # -- exact enhanced status codes that name us -----------------------------------------
    Rule("5.1.7", outcome="block", reason="our sender address syntax refused", side=SENDER),
    Rule("5.1.8", outcome="block", reason="our sender domain refused", side=SENDER),
    Rule("5.2.3", outcome="fail", reason="message too large", side=SENDER),
    Rule("5.3.4", outcome="fail", reason="message too large", side=SENDER),
    Rule("5.7.27", outcome="block", reason="our sender domain has a null MX", side=SENDER),
    Rule("5.7.0", outcome="block", reason="sender authentication failed", side=SENDER),
    Rule("5.7.8", outcome="block", reason="sender authentication failed", side=SENDER),
    Rule("5.7.26", outcome="block", reason="sender authentication failed", side=SENDER),
    Rule("5.6.7", outcome="fail", reason="non-ASCII address not supported (SMTPUTF8)"),
    # -- wording of permanent replies about the recipient ----------------------------------
    Rule(basic="5", pattern=r"mailbox (is )?full|over ?quota|quota exceeded|insufficient storage",
         outcome="soft", reason="mailbox full", side=RECIPIENT),
    Rule(basic="5", pattern=r"user unknown|unknown user|no such (user|mailbox|recipient)|"
                            r"does not exist|mailbox unavailable|recipient (address )?rejected|"
                            r"invalid recipient",
         outcome="hard", reason="user unknown", side=RECIPIENT),
    # -- exact codes that say little on their own (the wording above decided first) -------
    Rule("5.1.0", outcome="hard", reason="address rejected", side=RECIPIENT),
    Rule("5.2.0", outcome="soft", reason="mailbox unavailable", side=RECIPIENT),
    Rule("5.3.2", outcome="soft", reason="system not accepting messages", side=RECIPIENT),
    Rule("5.4.1", outcome="hard", reason="recipient address rejected", side=RECIPIENT),
    Rule("5.4.4", outcome="hard", reason="unable to route", side=RECIPIENT),
    # -- enhanced status classes -----------------------------------------------------------
    Rule("5.7.", outcome="block", reason="policy refusal", side=SENDER),
    Rule("5.6.", outcome="fail", reason="message content refused", side=SENDER),
    Rule("5.5.", outcome="fail", reason="protocol or syntax error", side=SENDER),
    Rule("5.1.", outcome="hard", reason="bad destination address", side=RECIPIENT),
    Rule("4.7.", outcome="retry", reason="deferred by policy (rate / reputation)", side=SENDER),
    Rule("4.", outcome="retry", reason="temporary failure"),
    Rule("5.", outcome="fail", reason="permanent failure"),
    # -- bare reply codes (no enhanced code in the reply) ----------------------------------
    Rule(basic="530", outcome="block", reason="sender authentication failed", side=SENDER),
    Rule(basic="534", outcome="block", reason="sender authentication failed", side=SENDER),
    Rule(basic="535", outcome="block", reason="sender authentication failed", side=SENDER),
    Rule(basic="538", outcome="block", reason="sender authentication failed", side=SENDER),
    Rule(basic="550", outcome="hard", reason="mailbox unavailable", side=RECIPIENT),
    Rule(basic="551", outcome="hard", reason="user not local", side=RECIPIENT),
    Rule(basic="552", outcome="soft", reason="exceeded storage allocation", side=RECIPIENT),
    Rule(basic="553", outcome="hard", reason="mailbox name not allowed", side=RECIPIENT),
    Rule(basic="556", outcome="hard", reason="domain does not accept mail", side=RECIPIENT),
    Rule(basic="554", outcome="fail", reason="transaction failed"),
    Rule(basic="4", outcome="retry", reason="temporary failure"),
    Rule(basic="5", outcome="fail", reason="permanent failure"),
)

#: Each reply reason above -> its name in bouncekit's reason taxonomy
#: (:data:`mailer.bouncekit.reasons.REASONS`), so live SMTP replies and later bounces use one
#: vocabulary (checked by tests/test_bounce_taxonomy.py: sender-side rows map to sender-side reasons).
TAXONOMY: dict[str, str] = {
    "message too large": "mesgtoobig", "sender authentication failed": "authfailure",
    "relaying denied": "norelaying", "our sender refused": "rejected", "rate limited": "ratelimited",
    "content refused as spam / policy": "spamdetected", "sending IP or domain blocked": "blocked",
    "greylisted": "speeding", "deferred (rate / reputation)": "badreputation",
    "user unknown": "userunknown", "domain does not exist": "hostunknown",
    "bad destination address syntax": "userunknown", "mailbox moved, no forwarding address": "hasmoved",
    "null MX: domain accepts no mail": "notaccept", "mailbox disabled": "suspend", "mailbox full": "mailboxfull",
    "mailbox full (temporary)": "mailboxfull", "our sender address syntax refused": "rejected",
    "our sender domain refused": "rejected", "our sender domain has a null MX": "rejected",
    "non-ASCII address not supported (SMTPUTF8)": "contenterror", "address rejected": "userunknown",
    "mailbox unavailable": "userunknown", "system not accepting messages": "systemfull",
    "recipient address rejected": "userunknown", "unable to route": "hostunknown",
    "policy refusal": "policyviolation", "message content refused": "contenterror",
    "protocol or syntax error": "syntaxerror", "bad destination address": "userunknown",
    "deferred by policy (rate / reputation)": "badreputation", "temporary failure": "onhold",
    "permanent failure": "onhold", "user not local": "userunknown", "exceeded storage allocation": "mailboxfull",
    "mailbox name not allowed": "userunknown", "domain does not accept mail": "notaccept",
    "transaction failed": "onhold", "connection failure": "networkerror", "unclassified reply": "undefined",
}

_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_COMPILED = {r.pattern: re.compile(r.pattern, re.I) for r in OUTCOMES if r.pattern}


@dataclass(frozen=True)
class Outcome:
    outcome: str
    reason: str
    code: int | None
    enhanced: str | None
    side: str = ""

    @property
    def taxonomy(self) -> str:
        """This reason's name in bouncekit's taxonomy (:data:`TAXONOMY`)."""
        return TAXONOMY.get(self.reason, "undefined")

    @property
    def sender_side(self) -> bool:
        """Our fault (message, IP, domain, authentication, rate): never counted against the recipient."""
        return self.side == SENDER


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
    return not (rule.pattern and not _COMPILED[rule.pattern].search(reply or ""))


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
            return Outcome(rule.outcome, rule.reason, code, enhanced, rule.side)
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
    code = int(m.group(1)) if m and m.group(1)[0] == status[:1] else {"2": 250, "4": 450, "5": 550}.get(status[:1], 550)
    return classify(code, f"{status} {text}".strip())


def error_for_reply(code: int, reply: str, *, relay: str = "", permanent_side: str | None = None) -> DeliveryError:
    """The exception a transport raises for a refusing reply.

    ``permanent_side`` overrides the table's side when the refusal is permanent (a failed
    login is about our credentials, whatever the reply says).
    """
    result = classify(code, reply)
    transient = result.outcome == "retry"
    cls = TransientDeliveryError if transient else PermanentDeliveryError
    side = result.side if transient or permanent_side is None else permanent_side
    return cls(f"{relay + ': ' if relay else ''}{code} {reply} ({result.reason})", code=code,
               enhanced=result.enhanced, reply=f"{code} {reply}", outcome=result.outcome,
               reason=result.reason, side=side, relay=relay)
