"""Deciding what a bounce, complaint or auto-reply says: its type, its failed recipients,
each one's reason and action (from :mod:`mailer.bouncekit.reasons`), and the evidence.

Which evidence wins, per recipient:

1. Sender-side wording anywhere in the recipient's diagnostic (``blocked``, ``spamdetected``,
   ``authfailure``, ...) wins over every status code: a ``Status: 5.1.1`` with diagnostic
   "550 5.7.1 IP address blacklisted" is ``blocked``, so no customer is punished for the
   sender's reputation.
2. Otherwise a specific enhanced status code (the diagnostic's own code before the
   ``Status`` field, as it is the remote host's word) names the reason; a vague one (x.0.0,
   x.7.1 "delivery not authorized") does not.
3. Otherwise the diagnostic's wording, then the human-readable text around the address.
4. Otherwise ``onhold`` (a failure with a code but no readable cause) or ``undefined``.

Pure: stdlib and the ``email`` package only.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses, parseaddr

from mailer.bouncekit import parse, reasons

#: Longest evidence line reported, characters.
MAX_EVIDENCE_CHARS = 300

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP = re.compile(r"(?<![\d.])([245]\d\d)(?:[ -]|$)(?![.\d]*%)")
_DAEMON = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|maildelivery|mail-delivery|"
                     r"mdaemon|mailadmin|bounce|bounces|noreply-dmarc|double-bounce|"
                     r"nobody|mail\.delivery|microsoftexchange\w*)$", re.IGNORECASE)
_BOUNCE_FROM = re.compile(r"mailer[- ]daemon|postmaster|mail delivery|delivery (sub)?system|"
                          r"mail administrator|mail system|internet mail delivery|post_master@|\bmdaemon@|"
                          r"microsoftexchange|mailer_daemon|undeliverable", re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (status notification|failure|failed|notification|problem|"
    r"has failed|report|error)|failure notice|returned mail|mail delivery (failed|failure|system|error)|"
    r"non[- ]?deliver|could not (be )?deliver|delivery to the following|mail (could not|not) "
    r"(be )?(delivered|sent)|message (not|could not be) delivered|bounced?|rejected|"
    r"warning: could not send|mail system error|permanent (error|failure)|"
    r"returned to sender|nicht zustellbar|unzustellbar|non remis|non recapitabile|"
    r"no se puede entregar|failed delivery|delivery notification|delayed mail|"
    r"\bdelay(ed)?\b|undeliverable|error sending|could not send", re.IGNORECASE)
_DELAY_SUBJECT = re.compile(r"\(delay\)|delayed mail|warning: could not send message for past|"
                            r"delivery (status notification )?\(delay\)|still trying|delivery delayed|"
                            r"not yet been delivered|delay notification|is delayed", re.IGNORECASE)
_AUTOREPLY_SUBJECT = re.compile(
    r"out of (the )?office|auto(matic)?[- ]?(reply|response|antwort|r[ée]ponse)|\bautoreply\b|"
    r"vacation|abwesenheit|away from (the |my )?(office|desk)|on leave|holiday|"
    r"automatische antwort|r[ée]ponse automatique|respuesta autom[aá]tica|risposta automatica|"
    r"absence|ausser haus|I am (currently )?(out|away)|not in the office|\bOOO\b|自動", re.IGNORECASE)
#: Senders that are not a mail system by name but send bounces (KDDI's no-reply, Verizon's
#: post_master): a bounce only when the body says so too (:data:`_BOUNCE_BODY`).
_NOREPLY_FROM = re.compile(r"^(no-?reply|post_master|mail-?daemon)$", re.IGNORECASE)
_BOUNCE_BODY = re.compile(r"could not be delivered to|(wasn't|was not|were not) able to deliver|"
                          r"^\s*error: invalid (user|recipient) address|^\s*5\d\d[ -]+requested action not taken",
                          re.IGNORECASE | re.MULTILINE)
_AUTO_HEADERS = ("x-autoreply", "x-autorespond", "x-auto-response-suppress-ignored", "x-autoresponse",
                 "x-vacation", "x-mail-autoreply", "x-cr-autoreply")


@dataclass
class Recipient:
    address: str | None
    status: str = ""
    smtp_code: str = ""
    reason: str = "undefined"
    action: str = reasons.IGNORE
    evidence: str = ""


@dataclass
class Report:
    type: str  # bounce | complaint | delay | auto_reply | not_a_report
    recipients: list[Recipient] = field(default_factory=list)
    feedback_type: str | None = None
    message_id: str | None = None
    delivery_id: int | None = None
    evidence: str = ""
    #: The original's ``X-Mailer-Delivery`` value as found (``<id>.<HMAC>``; older mail: ``<id>``),
    #: for the caller to verify (bouncekit holds no keys); None when the id came from VERP or nowhere.
    delivery_header: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("delivery_header")
        d["recipients"] = [{k: r[k] for k in ("address", "status", "smtp_code", "reason", "action")}
                           for r in d["recipients"]]
        return d


def _hdr(msg: Message | None, name: str) -> str:
    if msg is None:
        return ""
    v = msg.get(name)
    if v is None:
        return ""
    try:
        return " ".join(str(make_header(decode_header(str(v)))).split())
    except (ValueError, LookupError, UnicodeError, TypeError):  # undecodable encoded-word: keep it raw
        return " ".join(str(v).split())


def _clean_addr(value: str, *, dotless: bool = False) -> str | None:
    value = value.strip()
    if ";" in value:  # "rfc822; user@example.com"
        value = value.split(";", 1)[1]
    found = parse.addresses(value)
    if not found and dotless and ":" not in value:  # "user@mailhub0", not a source route "@a:b@c"
        m = re.search(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9-]{1,63}\b", value)
        return m.group(0).lower() if m else None
    return found[0] if found else None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_EVIDENCE_CHARS]


def _status_in(text: str) -> str:
    found = [".".join(m.groups()) for m in _STATUS.finditer(text)]
    failures = [s for s in found if not s.startswith("2.")]  # a transcript's "250 2.1.5 Ok" is no cause
    specific = [s for s in failures if not s.endswith(".0.0")]
    return (specific or failures or found or [""])[0]


def _smtp_in(text: str) -> str:
    m = _SMTP.search(text)
    return m.group(1) if m else ""


#: The code prefix a multi-line SMTP reply repeats on each of its continuation lines ("550-5.7.1 ").
_CONTINUATION = re.compile(r"(?<=\S)\s+[245]\d\d-(?:[245]\.\d{1,3}\.\d{1,3}\s+)?(?=\S)")


#: A transcript's continuation line of the remote reply ("<<< 550-5.7.1 authentication checks").
_TRANSCRIPT_CONTINUATION = re.compile(r"\n[ \t]*<<<[ \t]*[245]\d\d[- ](?:[245]\.\d{1,3}\.\d{1,3}[ \t]*)?")


def unfold_reply(text: str) -> str:
    """A multi-line SMTP reply as one sentence: "550-5.7.1 does not pass 550-5.7.1 authentication"
    becomes "550-5.7.1 does not pass authentication" (the first code is kept), and so do a
    transcript's "<<< 550-5.7.1" continuation lines."""
    text = _TRANSCRIPT_CONTINUATION.sub(" ", text)
    head = re.match(r"\s*([245]\d\d)[- ]([245]\.\d{1,3}\.\d{1,3}\s+)?", text)
    if not head:
        return _CONTINUATION.sub(" ", text)
    # the head's own code, repeated on its last line as "550 5.7.1 " (space, not dash), goes too
    again = re.compile(r"(?<=\S)\s+" + head.group(1) + r"[- ]" + (re.escape(head.group(2).strip()) + r"\s+"
                                                                     if head.group(2) else "") + r"(?=\S)")
    rest = again.sub(" ", _CONTINUATION.sub(" ", text[head.end():]))
    return text[:head.end()] + rest


def decide(diagnostic: str, context: str, status_field: str, *, smtp_code: str = "",
           action_field: str = "", diagnostic_type: str = "") -> Recipient:
    """Reason and action from one recipient's evidence (see the module docstring for the order)."""
    diag = unfold_reply(diagnostic or "")
    diag_status = _status_in(diag)
    status = status_field if status_field and not status_field.endswith(".0.0") else (diag_status or status_field)
    if diag_status and status_field and diag_status != status_field and not diag_status.endswith(".0.0"):
        status = diag_status  # the remote host's own word is the most specific
    smtp = smtp_code or _smtp_in(diag) or _smtp_in(context[:2000])
    if not status:
        status = _status_in(context[:2000])
    temporary = status.startswith("4") or (not status and smtp.startswith("4"))
    if action_field.lower().startswith("delayed"):
        temporary = True
    text_hit = reasons.match_text(diag) if diag else None
    ctx_hit = reasons.match_text(unfold_reply(context)) if context else None
    status_reason = reasons.match_status(status) if status else None
    vague = not status or ".".join(status.split(".")[1:]) in reasons.VAGUE_STATUS
    reason, evidence = None, ""
    for hit in (text_hit, ctx_hit):
        if hit and hit[0] in reasons.SENDER_SIDE:
            reason, evidence = hit[0], hit[1]
            break
    if reason is None and status_reason and not vague:
        reason, evidence = status_reason, f"Status: {status}"
    if reason is None:
        for hit in (text_hit, ctx_hit):
            if hit:
                reason, evidence = hit[0], hit[1]
                break
    if reason is None and status_reason:
        reason, evidence = status_reason, f"Status: {status}"
    orange = reasons.orange_reason(diag + "\n" + context[:3000])
    if orange:  # the provider's own numbered code (see reasons.ORANGE_REASONS) is its most specific word
        reason, evidence = orange
    if diagnostic_type.lower() == "x-unix" and reason not in _LOCAL_PROGRAM_KEEPS and (
            reason is None or reason not in reasons.SENDER_SIDE or reason == "syntaxerror"):
        # The local delivery program (procmail, a pipe) failed: its exit is the cause, unless its
        # words name a mailbox problem ("Disk quota exceeded", "unknown user").
        reason, evidence = "mailererror", f"Diagnostic-Code: {diagnostic_type}"
    if reason == "mesgtoobig" and status[2:] == "2.3":
        reason = "exceedlimit"  # x.2.3 is the mailbox's own size limit (RFC 3463), not the host's
    if reason is None:
        if action_field.lower().startswith(("delivered", "relayed", "expanded")):
            reason = "delivered"
        elif status or smtp or diag.strip():
            reason = "onhold"  # a failure was reported, with text, but nothing in it says why
        else:
            reason = "undefined"
    stage = _stage(diag + "\n" + context[:3000])
    if (reason == "userunknown" and not orange and not re.match(r"[45]\.1\.(?!2$|6$|7$|8$)\d+$", status or "")
            and (stage == "data" or stage == "" and not reasons.RCPT_TIME_WORDING.search(
                diag + "\n" + context[:3000]))):
        # "User unknown" wording without an x.1.x code, not at RCPT: the mailbox was accepted
        # at RCPT (or nothing says it was refused there), so a filter refused the content.
        reason = "filtered"
    elif stage == "mail" and (reason in ("userunknown", "onhold", "undefined", "hostunknown", "notaccept",
                                         "suspend", "filtered")
                              or reason == "blocked" and evidence.lower() == "access denied"):
        # refused at MAIL FROM: it is our envelope sender, not the recipient ("Access denied" there
        # names no IP or list: the sender address was refused)
        reason = "rejected"
    elif stage == "connect" and reason not in reasons.SENDER_SIDE and reason not in ("networkerror", "expired"):
        # refused before any recipient was named: it is our host, not the mailbox
        reason = "blocked"
    if (action_field.lower().startswith("failed") and temporary
            and (reason in ("onhold", "undefined")
                 or reason == "networkerror" and re.search(r"timed? ?out|not reachable", diag + context[:2000],
                                                           re.IGNORECASE))
            or action_field.lower().startswith("failed") and reason == "networkerror"
            and re.search(r"connection timed? ?out", diag, re.IGNORECASE)):
        # a temporary failure given up on: the queue lifetime ran out.  A connection that timed
        # out says no more than that; a stated network fault (no route, lost connection, DNS)
        # stays networkerror.
        reason = "expired"
    if action_field.lower().startswith("expired") and reason in ("onhold", "undefined", "networkerror", "systemerror"):
        reason = "expired"  # "Action: expired" (SendGrid): the queue lifetime ran out
    if reason == "expired" and reasons.NETWORK_CAUSE.search(diag):
        reason = "networkerror"  # "Message expired, DNS query failed": the stated cause is more specific
    if action_field.lower().startswith("delayed") and reason not in reasons.SENDER_SIDE:
        reason = "expired" if reason in ("expired", "onhold", "undefined") else reason
    for host, wording, rhost_stage, rhost_reason in reasons.RHOST_RULES:
        if (stage == rhost_stage and host.search(diag + "\n" + context[:3000])
                and wording.search(diag + "\n" + context[:3000])):
            reason = rhost_reason
            break
    line = _one_line(diag) if diag else ""
    if evidence and evidence.lower() not in line.lower():
        line = _context_line(context, evidence) or line
    return Recipient(address=None, status=status, smtp_code=smtp, reason=reason,
                     action=reasons.action_for(reason, temporary=temporary), evidence=line or evidence)


#: Mailbox reasons a local delivery program's own words may still name (see ``decide``).
_LOCAL_PROGRAM_KEEPS = frozenset({"mailboxfull", "userunknown", "hostunknown", "suspend", "exceedlimit",
                                  "systemfull"})

_STAGE = re.compile(
    r"(?:after|in reply to|in response to|during|while (?:talking|sending))\s+(?:the\s+)?"
    r"(MAIL(?:\s+FROM)?|RCPT(?:\s+TO)?|DATA|end\s+of\s+(?:DATA|message)|initial\s+connection|"
    r"HELO|EHLO|connect|greeting|banner)|^\s*>>>\s*(MAIL|RCPT|DATA)\b|\[(RCPT|MAIL|DATA)_?(?:TO|FROM)?\]|"
    r"(?:did not like our|SMTP:)\s*(RCPT|MAIL|DATA)\b",
    re.IGNORECASE | re.MULTILINE)


def _stage(text: str) -> str:
    """The SMTP stage a failure happened at: mail | rcpt | data | connect | "" (unknown)."""
    m = _STAGE.search(text)
    if not m:
        return ""
    word = next((g for g in m.groups() if g), "").lower()
    if word.startswith("mail"):
        return "mail"
    if word.startswith("rcpt"):
        return "rcpt"
    if word.startswith(("data", "end")):
        return "data"
    return "connect"


#: Lines of a human-readable bounce that quote the remote host's reply.
_REPLY_LINE = re.compile(r"^\s*(?:<<<.*|.*\(reason: .*|.*\bsaid: .*|.*Remote Server returned .*)$", re.IGNORECASE | re.MULTILINE)


def _context_line(context: str, wording: str) -> str:
    for ln in context.splitlines():
        if wording.lower() in ln.lower():
            return _one_line(ln)
    idx = context.lower().find(wording.lower())
    return _one_line(context[max(0, idx - 80): idx + 160]) if idx >= 0 else ""


_DELIVERY_HEADER = re.compile(r"(\d{1,18})(?:\.[0-9A-Fa-f]{8,64})?")


def _ids(ev: parse.Evidence, verp_prefix: str) -> tuple[str | None, int | None, str | None]:
    orig = ev.original
    mid = _hdr(orig, "Message-ID") or None
    if mid is None and ev.original_text:
        m = re.search(r"^\s*message-id:\s*(<[^>\s]{1,500}>)", ev.original_text, re.IGNORECASE | re.MULTILINE)
        mid = m.group(1) if m else None
    if mid is None and ev.arf:
        mid = None
    delivery = header = None
    x = _hdr(orig, "X-Mailer-Delivery").strip()
    if not x and ev.original_text:
        m = re.search(r"^\s*x-mailer-delivery:\s*(\S{1,90})\s*$", ev.original_text, re.IGNORECASE | re.MULTILINE)
        x = m.group(1) if m else ""
    m = _DELIVERY_HEADER.fullmatch(x)
    if m:
        delivery, header = int(m.group(1)), x
    else:
        # bounces+<id>.<HMAC>@ (signed, see mailer.delivery.compose.return_path) or the older,
        # guessable bounces+<id>@; the signed form is checked like a signed X-Mailer-Delivery.
        verp = re.compile(re.escape(verp_prefix) + r"\+(\d{1,18})(\.[0-9A-Fa-f]{16})?@", re.IGNORECASE)
        places = [_hdr(orig, "Return-Path"), _hdr(orig, "Sender")]
        places += [_hdr(ev.headers, h) for h in ("To", "Delivered-To", "X-Original-To", "Envelope-To")]
        if ev.arf:
            places.append(ev.arf.get("original-mail-from", ""))
        for p in places:
            m = verp.search(p)
            if m:
                delivery = int(m.group(1))
                if m.group(2):
                    header = m.group(1) + m.group(2)
                break
    return mid, delivery, header


def _is_auto_reply(h: Message, subject: str, sender: str) -> bool:
    auto = _hdr(h, "Auto-Submitted").lower()
    if auto.startswith("auto-replied"):
        return True
    if any(h.get(n) is not None for n in _AUTO_HEADERS):
        return True
    if _hdr(h, "Precedence").lower() in ("auto_reply", "auto-reply"):
        return True
    if _DAEMON.match(sender.split("@")[0]):
        return False
    return bool(_AUTOREPLY_SUBJECT.search(subject))


def _text_recipients(ev: parse.Evidence, exclude: set[str]) -> list[str]:
    out = []
    for line in ev.text.splitlines():
        if re.search(r"message-?id|in-reply-to|references|^\s*(from|reply-to|sender)\s*:|"
                     r"(contact|write to|e-?mail) (the |your )?(postmaster|administrator|support)",
                     line, re.IGNORECASE):
            continue
        for a in parse.addresses(line):
            local = a.split("@")[0]
            if a in exclude or _DAEMON.match(local) or a in out:
                continue
            out.append(a)
    return out


def _block_for(text: str, address: str, others: list[str]) -> str:
    """The text from ``address``'s first mention to the next other recipient's (bounded)."""
    lines = text.splitlines()
    low = [ln.lower() for ln in lines]
    start = next((i for i, ln in enumerate(low) if address in ln), None)
    if start is None:
        return ""
    end = min(len(lines), start + 15)
    for j in range(start + 1, end):
        if any(o != address and o in low[j] for o in others):
            end = j
            break
    return "\n".join(lines[start:end])


def _dsn_address(f: dict[str, str]) -> str | None:
    # a Final-Recipient without a dot in its domain ("user@sims-ms-daemon") is the receiving
    # host's internal name; the Original-Recipient is then the address we sent to
    return (_clean_addr(f.get("final-recipient", "")) or _clean_addr(f.get("original-recipient", ""))
            or _clean_addr(f.get("final-recipient", ""), dotless=True) or _clean_addr(f.get("x-actual-recipient", "")))


def classify(raw: bytes, *, verp_prefix: str = "bounces") -> Report:
    """Read one raw message and say what it is (see the module docstring)."""
    msg = parse.load(raw)
    ev = parse.collect(msg)
    h = ev.headers
    subject = _hdr(h, "Subject")
    sender = (parseaddr(_hdr(h, "From"))[1] or "").lower()
    mid, delivery, header = _ids(ev, verp_prefix)
    rep = _classify(ev, h, subject, sender, mid, delivery)
    rep.delivery_header = header
    return rep


def _classify(ev: parse.Evidence, h: Message, subject: str, sender: str, mid: str | None,
              delivery: int | None) -> Report:

    if ev.arf is not None:
        return _complaint(ev, mid, delivery)
    nonarf = _non_arf_complaint(ev, sender, mid, delivery)
    if nonarf is not None:
        return nonarf

    if ev.dsn:
        rep = Report(type="bounce", message_id=mid, delivery_id=delivery)
        addresses = [_dsn_address(f) for f in ev.dsn]
        for f, address in zip(ev.dsn, addresses, strict=True):
            diag = f.get("diagnostic-code", "")
            dtype = ""
            if ";" in diag[:12]:
                dtype, diag = (x.strip() for x in diag.split(";", 1))
            if not dtype and re.match(r"\s*x-unix\s*;", f.get("x-actual-recipient", ""), re.IGNORECASE):
                dtype = "x-unix"
            context = _block_for(ev.text, address, [a for a in addresses if a]) if address else ""
            if not context and len(ev.dsn) == 1:
                context = ev.text
            context += "\n" + "\n".join(_REPLY_LINE.findall(ev.text))
            context = reasons.MTA_SUMMARY_LINE.sub("", context)
            status = _status_in(f.get("status", ""))
            comment = re.search(r"\((.{1,200})\)", f.get("status", ""))
            if comment:  # "Status: 4.0.0 (cat.example.net: host name lookup failure)": the MTA's own words
                context = comment.group(1) + "\n" + context
            r = decide(diag, context, status, action_field=f.get("action", ""), diagnostic_type=dtype)
            r.address = address
            rep.recipients.append(r)
        actions = [f.get("action", "").lower() for f in ev.dsn]
        if actions and all(a.startswith("delayed") for a in actions):
            rep.type = "delay"
            for r in rep.recipients:
                if r.reason not in reasons.SENDER_SIDE:
                    r.action = reasons.IGNORE
        elif actions and all(a.startswith(("delivered", "relayed", "expanded")) for a in actions):
            rep.type = "not_a_report"
        rep.evidence = rep.recipients[0].evidence if rep.recipients else ""
        return rep

    is_bounce = bool(_BOUNCE_FROM.search(_hdr(h, "From")) or _BOUNCE_SUBJECT.search(subject)
                     or h.get("X-Failed-Recipients")
                     or h.get_content_type() == "multipart/report"
                     and (h.get_param("report-type") or "").lower() == "delivery-status"
                     or _NOREPLY_FROM.match(sender.split("@")[0]) and _BOUNCE_BODY.search(ev.text[:4000]))
    if not is_bounce and _is_auto_reply(h, subject, sender):
        return Report(type="auto_reply", message_id=mid, delivery_id=delivery,
                      recipients=[Recipient(address=sender or None, reason="vacation", action=reasons.IGNORE,
                                            evidence=_one_line(subject))],
                      evidence=_one_line(f"Subject: {subject}"))
    if not is_bounce:
        return _ses_json(ev, mid, delivery) or Report(type="not_a_report", message_id=mid, delivery_id=delivery,
                                                      evidence="no report, no bounce wording")
    ses = _ses_json(ev, mid, delivery)
    if ses is not None:
        return ses

    exclude = {sender, *(a.lower() for _, a in getaddresses(h.get_all("To", []) or []))}
    if ev.original is not None:
        for name in ("From", "Return-Path", "Sender", "Reply-To"):
            exclude.update(a.lower() for _, a in getaddresses([_hdr(ev.original, name)]) if a)
    failed = [a for _, a in getaddresses(h.get_all("X-Failed-Recipients", []) or []) if a]
    addrs = [a.lower() for a in failed] or _text_recipients(ev, exclude)
    for m in reasons.QMAIL_RECIPIENT.finditer(ev.text):  # qmail's "<address>:" line names the failed one
        a = m.group(1).lower()
        if a not in addrs:
            addrs.append(a)
    for m in reasons.FAILED_LIST.finditer(ev.text):  # the bounce's own list of failed addresses wins
        for a in parse.addresses(m.group(1)):
            if a not in addrs:
                addrs.append(a)
    if not addrs and ev.original is not None:
        addrs = [a.lower() for _, a in getaddresses(ev.original.get_all("To", []) or []) if a]
    delay = bool(_DELAY_SUBJECT.search(subject))
    provider = next((reason for pattern, reason in reasons.PROVIDER_SIGNATURES if pattern.search(ev.text)), None)
    rep = Report(type="delay" if delay else "bounce", message_id=mid, delivery_id=delivery)
    for a in addrs or [None]:
        block = _block_for(ev.text, a, addrs) if a else ""
        r = decide(block, ev.text if len(addrs) <= 1 else block, "",
                   action_field="delayed" if delay else "failed")
        r.address = a
        if provider and r.reason in ("onhold", "undefined"):
            r.reason, r.action = provider, reasons.action_for(provider)
        if delay and r.reason not in reasons.SENDER_SIDE:
            r.action = reasons.IGNORE
        rep.recipients.append(r)
    rep.evidence = rep.recipients[0].evidence if rep.recipients else ""
    return rep


def _non_arf_complaint(ev: parse.Evidence, sender: str, mid: str | None,
                       delivery: int | None) -> Report | None:
    """Complaints that do not come as ARF: a header that says so (:data:`reasons.COMPLAINT_HEADERS`)."""
    for place, name, value_re, ftype, who in reasons.COMPLAINT_HEADERS:
        msg = ev.headers if place == "message" else ev.original
        value = _hdr(msg, name)
        if not value or not re.fullmatch(value_re, value, re.IGNORECASE):
            continue
        addr = sender if who == "from" else _clean_addr(value)
        evidence = _one_line(f"{name}: {value}")
        return Report(type="complaint", feedback_type=ftype, message_id=mid, delivery_id=delivery,
                      evidence=evidence,
                      recipients=[Recipient(address=addr or None, reason="feedback", action=reasons.COMPLAINT,
                                            evidence=evidence)])
    return None


def _complaint(ev: parse.Evidence, mid: str | None, delivery: int | None) -> Report:
    arf = ev.arf or {}
    ftype = (arf.get("feedback-type", "").split() or ["other"])[0].lower()
    addrs: list[str] = []
    for name in ("original-rcpt-to", "removal-recipient"):
        for v in arf.get(name, "").split("\n"):
            a = _clean_addr(v)
            if a and a not in addrs:
                addrs.append(a)
    if not addrs and ev.original is not None:
        addrs = [a.lower() for _, a in getaddresses(ev.original.get_all("To", []) or []) if a]
    rep = Report(type="complaint", feedback_type=ftype, message_id=mid, delivery_id=delivery,
                 evidence=f"Feedback-Type: {ftype}")
    for a in addrs or [None]:
        rep.recipients.append(Recipient(address=a, reason="feedback", action=reasons.COMPLAINT,
                                        evidence=f"Feedback-Type: {ftype}"))
    return rep


def _ses_json(ev: parse.Evidence, mid: str | None, delivery: int | None) -> Report | None:
    """An Amazon SES bounce or complaint notification that arrived as mail (JSON body)."""
    text = ev.text.strip()
    if "notificationType" not in text and '"eventType"' not in text:  # escaped inside an SNS "Message"
        return None
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else None
    except ValueError:
        try:
            # SNS wraps long lines inside JSON strings: allow control characters there
            data = json.JSONDecoder(strict=False).raw_decode(text[start:])[0]
        except ValueError:
            return None
    if isinstance(data, dict) and data.get("Type") == "Notification" and isinstance(data.get("Message"), str):
        # an SNS e-mail subscription: the SES notification is the JSON string in "Message"
        try:
            data = json.JSONDecoder(strict=False).decode(data["Message"])
        except ValueError:
            return None
    if not isinstance(data, dict):
        return None
    kind = str(data.get("notificationType") or data.get("eventType") or "")
    mail = data.get("mail") if isinstance(data.get("mail"), dict) else {}
    headers = {str(x.get("name", "")).lower(): str(x.get("value", ""))
               for x in mail.get("headers", []) if isinstance(x, dict)}
    mid = headers.get("message-id") or mid
    if kind == "Complaint":
        c = data.get("complaint") if isinstance(data.get("complaint"), dict) else {}
        ftype = str(c.get("complaintFeedbackType") or "abuse")
        rep = Report(type="complaint", feedback_type=ftype, message_id=mid, delivery_id=delivery,
                     evidence=f"notificationType: Complaint ({ftype})")
        for r in c.get("complainedRecipients", []) or []:
            if isinstance(r, dict):
                rep.recipients.append(Recipient(address=str(r.get("emailAddress", "")).lower() or None,
                                                reason="feedback", action=reasons.COMPLAINT, evidence=rep.evidence))
        return rep
    if kind == "Bounce":
        b = data.get("bounce") if isinstance(data.get("bounce"), dict) else {}
        rep = Report(type="bounce", message_id=mid, delivery_id=delivery)
        for r in b.get("bouncedRecipients", []) or []:
            if not isinstance(r, dict):
                continue
            diag = str(r.get("diagnosticCode", ""))
            if ";" in diag[:12]:
                diag = diag.split(";", 1)[1].strip()
            sub = f"{b.get('bounceType', '')} {b.get('bounceSubType', '')}"
            one = decide(diag, sub, _status_in(str(r.get("status", ""))))
            if one.reason in ("onhold", "undefined") and "Suppressed" in sub:
                one.reason, one.action = "userunknown", reasons.SUPPRESS
            one.address = str(r.get("emailAddress", "")).lower() or None
            rep.recipients.append(one)
        rep.evidence = rep.recipients[0].evidence if rep.recipients else ""
        return rep
    if kind == "Delivery":
        d = data.get("delivery") if isinstance(data.get("delivery"), dict) else {}
        return Report(type="not_a_report", message_id=mid, delivery_id=delivery, evidence="SES Delivery notification",
                      recipients=[Recipient(address=str(a).lower(), status="2.0.0", reason="delivered",
                                            action=reasons.IGNORE, evidence="SES Delivery notification")
                                  for a in d.get("recipients", []) or [] if isinstance(a, str)])
    return None
