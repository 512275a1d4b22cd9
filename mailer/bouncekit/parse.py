"""Reading bounce mail as it really arrives: walk any MIME nesting and collect the evidence.

Collects, from one raw message: RFC 3464 delivery-status fields (in any nesting, any field
order, one block or many), RFC 5965 feedback-report fields, the original message's headers
(``message/rfc822``, ``text/rfc822-headers`` or inlined in the text), and the human-readable
text that non-standard bounces (qmail, Exim, Sendmail, Postfix without DSN, Exchange, ...)
carry their reason in.  Also reads files, Maildirs and mbox files into raw messages.

Pure: stdlib and the ``email`` package only; nothing here touches a database.
"""

from __future__ import annotations

import mailbox
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32
from pathlib import Path

#: Largest message read, bytes (a DSN may carry the whole original mail).
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
#: Human-readable text kept per message, characters.
MAX_TEXT_CHARS = 64 * 1024
#: Deepest MIME nesting walked.
MAX_DEPTH = 12
#: Parts walked per message.
MAX_PARTS = 500

_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
_FEEDBACK_TYPES = ("message/feedback-report",)
_MESSAGE_TYPES = ("message/rfc822", "message/global", "message/partial")
_HEADER_TYPES = ("text/rfc822-headers", "message/rfc822-headers", "text/global-headers",
                 "message/global-headers")
_RECIPIENT_FIELDS = frozenset({"final-recipient", "original-recipient", "action", "status",
                               "remote-mta", "diagnostic-code", "last-attempt-date", "will-retry-until",
                               "x-actual-recipient", "x-display-name", "final-log-id"})

#: Where the copy of the original message starts in a plain-text bounce.
ORIGINAL_MARKER = re.compile(
    r"^[ \t>|]*(?:[-=_*]{2,}.{0,6})?\s*(?:"
    r"original message|(?:below this line is )?a copy of (?:the |your )?(?:original )?message|"
    r"this is a copy of the message|the (?:original )?message (?:headers? )?(?:was|follows|is below)|"
    r"undelivered message|returned message|unsent message|original message (?:header|text)s? follow|"
    r"(?:message|original) headers? follows?|headers of (?:the )?(?:original|returned) message|"
    r"the header of the original message|text of the original|received: from|return-path: "
    r"|forwarded message|begin (?:returned|original) message|your message (?:reads|follows))",
    re.IGNORECASE | re.MULTILINE)

_ADDR = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_FIELD_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)[ \t]*:[ \t]*(.*)$")


@dataclass
class Evidence:
    """What one message contains, before any decision."""

    headers: Message
    #: One dict per recipient of every delivery-status part: per-message fields merged in.
    dsn: list[dict[str, str]] = field(default_factory=list)
    #: Fields of the first feedback-report part (lower-case names; repeated fields joined by "\n").
    arf: dict[str, str] | None = None
    original: Message | None = None
    #: Human-readable text before the copy of the original message.
    text: str = ""
    #: The copy of the original message, as text (when it came inline).
    original_text: str = ""


def load(raw: bytes) -> Message:
    """Parse ``raw`` leniently; never raises on malformed mail."""
    return message_from_bytes(raw[:MAX_MESSAGE_BYTES], policy=compat32)


def _decode(part: Message) -> str:
    try:
        payload = part.get_payload(decode=True)
    except (ValueError, TypeError, UnicodeError, AssertionError):  # malformed transfer encoding: take it raw
        payload = None
    if payload is None:
        p = part.get_payload()
        return p if isinstance(p, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("utf-8", errors="replace")


def parse_fields(text: str) -> list[tuple[str, str]]:
    """Header-style ``Name: value`` lines of ``text``, unfolded, in order (names lower-cased)."""
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())
            continue
        m = _FIELD_LINE.match(line.strip())
        if m:
            out.append((m.group(1).lower(), m.group(2).strip()))
    return out


def group_recipients(fields: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Split delivery-status fields into one dict per recipient, whatever the block layout.

    A recipient field seen twice starts the next recipient, so fields in one block (no blank
    lines) and fields in any order both work.  Per-message fields are copied into each.
    """
    per_message: dict[str, str] = {}
    recipients: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for name, value in fields:
        if name in _RECIPIENT_FIELDS:
            if name in current:
                recipients.append(current)
                current = {}
            current[name] = value
        else:
            per_message.setdefault(name, value)
    if current:
        recipients.append(current)
    return [{**per_message, **r} for r in recipients
            if r.get("final-recipient") or r.get("original-recipient") or r.get("status")]


def _fields_of(part: Message) -> list[tuple[str, str]]:
    payload = part.get_payload()
    if isinstance(payload, list):  # compat32 parses delivery-status into one Message per block
        out: list[tuple[str, str]] = []
        for block in payload:
            if isinstance(block, Message):
                out.extend((k.lower(), " ".join(str(v).split())) for k, v in block.items())
                body = block.get_payload()
                if isinstance(body, str) and body.strip():  # fields after a stray blank line
                    out.extend(parse_fields(body))
        return out
    return parse_fields(_decode(part))


def _looks_like_dsn(text: str) -> bool:
    return bool(re.search(r"^(final|original)-recipient\s*:", text, re.IGNORECASE | re.MULTILINE)
                and re.search(r"^(status|action)\s*:", text, re.IGNORECASE | re.MULTILINE))


def _looks_like_arf(text: str) -> bool:
    return bool(re.search(r"^feedback-type\s*:", text, re.IGNORECASE | re.MULTILINE))


def _is_report(msg: Message, depth: int = 0) -> bool:
    if depth > MAX_DEPTH:
        return False
    ctype = msg.get_content_type()
    if ctype in _STATUS_TYPES or ctype in _FEEDBACK_TYPES:
        return True
    if msg.is_multipart():
        payload = msg.get_payload()
        return isinstance(payload, list) and any(_is_report(p, depth + 1) for p in payload)
    return False


def _html_to_text(html: str) -> str:
    html = re.sub(r"(?is)<(script|style).*?</\1>", " ", html)
    html = re.sub(r"(?i)<br\s*/?>|</p>|</div>|</tr>|</li>|</h\d>", "\n", html)
    text = re.sub(r"<[^>]{0,2000}>", " ", html)
    for a, b in (("&nbsp;", " "), ("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&"), ("&quot;", '"')):
        text = text.replace(a, b)
    return text


def collect(msg: Message) -> Evidence:
    """Walk ``msg`` (any nesting) and collect its :class:`Evidence`."""
    ev = Evidence(headers=msg)
    texts: list[str] = []
    htmls: list[str] = []
    count = [0]

    def walk(part: Message, depth: int) -> None:
        count[0] += 1
        if depth > MAX_DEPTH or count[0] > MAX_PARTS:
            return
        ctype = part.get_content_type()
        if ctype in _STATUS_TYPES:
            ev.dsn.extend(group_recipients(_fields_of(part)))
            return
        if ctype in _FEEDBACK_TYPES:
            if ev.arf is None:
                ev.arf = {}
                for k, v in _fields_of(part):
                    ev.arf[k] = ev.arf[k] + "\n" + v if k in ev.arf else v
            return
        if ctype in _MESSAGE_TYPES:
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, Message):
                if _is_report(inner) and not (ev.dsn or ev.arf):
                    walk(inner, depth + 1)
                elif ev.original is None:
                    ev.original = inner
            return
        if ctype in _HEADER_TYPES:
            if ev.original is None:
                ev.original = HeaderParser(policy=compat32).parsestr(_decode(part).lstrip())
            return
        if part.is_multipart():
            payload = part.get_payload()
            for sub in payload if isinstance(payload, list) else []:
                if isinstance(sub, Message):
                    walk(sub, depth + 1)
            return
        if (part.get_content_maintype() in ("text", "multipart")  # multipart here: its boundary never came
                or ctype == "application/octet-stream" and depth == 0):
            text = _decode(part)
            if ctype == "text/html":
                htmls.append(_html_to_text(text))
            elif _looks_like_dsn(text) and not ev.dsn:
                ev.dsn.extend(group_recipients(parse_fields(text)))
                texts.append(text)
            elif _looks_like_arf(text) and ev.arf is None:
                ev.arf = dict(parse_fields(text))
            else:
                texts.append(text)

    walk(msg, 0)
    body = "\n".join(texts) if texts else "\n".join(htmls)
    body = body.replace("\r\n", "\n")[:MAX_TEXT_CHARS]
    m = ORIGINAL_MARKER.search(body)
    if m and m.start() > 0:
        ev.text, ev.original_text = body[:m.start()], body[m.start():]
        if ev.original is None:
            inline = re.search(r"^(?:[A-Za-z-]+:[^\n]*\n(?:[ \t][^\n]*\n)*){2,}", ev.original_text, re.MULTILINE)
            if inline:
                ev.original = HeaderParser(policy=compat32).parsestr(inline.group(0))
    else:
        ev.text = body
    return ev


def addresses(text: str) -> list[str]:
    """E-mail addresses in ``text``, in order of appearance, without duplicates (lower-cased)."""
    seen: dict[str, None] = {}
    for m in _ADDR.finditer(text):
        a = m.group(0).strip(".-'").lower()
        if a.startswith(("mailto:", "rfc822;")):
            a = a.split(":", 1)[-1].split(";", 1)[-1]
        if a.startswith(("smtp=", "smtp:")):  # Exchange's "smtp=user@example.com"
            a = a[5:]
        seen.setdefault(a, None)
    return list(seen)


def read_sources(path: str | Path) -> Iterator[tuple[str, int | None, bytes]]:
    """(file, index within the file or None, raw bytes) of every message under ``path``.

    ``path`` is a message file, an mbox file (starts with ``From ``) or a Maildir (its
    ``new/`` and ``cur/``); a plain directory is read file by file.
    """
    p = Path(path)
    if p.is_dir():
        subdirs = [p / "new", p / "cur"] if (p / "new").is_dir() or (p / "cur").is_dir() else [p]
        for d in subdirs:
            if not d.is_dir():
                continue
            for f in sorted(d.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    yield from read_sources(f)
        return
    with p.open("rb") as fh:
        head = fh.read(5)
    if head == b"From ":
        box = mailbox.mbox(str(p), create=False)
        try:
            for i, key in enumerate(box.iterkeys()):
                yield str(p), i, box.get_bytes(key)[:MAX_MESSAGE_BYTES]
        finally:
            box.close()
        return
    with p.open("rb") as fh:
        yield str(p), None, fh.read(MAX_MESSAGE_BYTES)
