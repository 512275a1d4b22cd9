"""The transport interface: :class:`Transport` and the :class:`SendResult` a relay's acceptance gives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SendResult:
    """What the relay answered when it accepted the message."""

    code: int
    reply: str
    relay: str


class Transport(Protocol):
    """Send one finished message to one recipient."""

    name: str

    def send(self, *, envelope_from: str, recipient: str, message: bytes) -> SendResult: ...

    def supports_smtputf8(self) -> bool: ...

    def close(self) -> None: ...
