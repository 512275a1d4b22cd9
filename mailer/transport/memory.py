"""In-memory transport for tests: every accepted message is appended to an outbox list.

``memory://name?smtputf8=0`` behaves like a relay without SMTPUTF8: it refuses a
message whose envelope or headers are not ASCII, as the SMTP transport would.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from urllib.parse import parse_qs, urlsplit

from mailer.errors import SMTPUTF8Unsupported
from mailer.transport.base import SendResult

_boxes: dict[str, list[Sent]] = {}
_lock = threading.Lock()


@dataclass
class Sent:
    envelope_from: str
    recipient: str
    raw: bytes
    _parsed: EmailMessage | None = field(default=None, repr=False)

    @property
    def message(self) -> EmailMessage:
        if self._parsed is None:
            self._parsed = message_from_bytes(self.raw, policy=policy.default)
        return self._parsed


def outbox(name: str = "default") -> list[Sent]:
    """The list of messages the ``memory://name`` transport accepted."""
    with _lock:
        return _boxes.setdefault(name, [])


def clear(name: str | None = None) -> None:
    with _lock:
        if name is None:
            _boxes.clear()
        else:
            _boxes.pop(name, None)


class MemoryTransport:
    """``memory://name``: keeps messages in :func:`outbox` ``(name)``."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.box = (parts.netloc + parts.path).strip("/") or "default"
        self.name = f"memory://{self.box}"
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.smtputf8 = query.get("smtputf8", "1").lower() not in ("0", "false", "no")

    def supports_smtputf8(self) -> bool:
        return self.smtputf8

    def send(self, *, envelope_from: str, recipient: str, message: bytes) -> SendResult:
        if not self.smtputf8 and not (envelope_from.isascii() and recipient.isascii() and message.isascii()):
            raise SMTPUTF8Unsupported(f"{self.name} does not offer SMTPUTF8, which the internationalized "
                                      f"address {recipient!r} needs; nothing was sent",
                                      reply="SMTPUTF8 not offered")
        outbox(self.box).append(Sent(envelope_from, recipient, message))
        return SendResult(250, "2.0.0 Ok: kept in memory", self.name)

    def close(self) -> None:
        pass
