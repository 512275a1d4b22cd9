"""In-memory transport for tests: every accepted message is appended to an outbox list."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage

from mailer.transport import SendResult

_boxes: dict[str, list["Sent"]] = {}
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
        self.box = url.split("://", 1)[1].strip("/") or "default"
        self.name = f"memory://{self.box}"

    def send(self, *, envelope_from: str, recipient: str, message: bytes) -> SendResult:
        outbox(self.box).append(Sent(envelope_from, recipient, message))
        return SendResult(250, "2.0.0 Ok: kept in memory", self.name)

    def close(self) -> None:
        pass
