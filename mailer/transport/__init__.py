"""Transports: how a finished message leaves the process.

One small interface, :class:`Transport`, and three implementations:

* ``smtp://`` / ``smtps://`` (:mod:`mailer.transport.smtp`): a real relay, one reused
  connection per worker thread.
* ``outbox://path`` (:mod:`mailer.transport.outbox`): one ``.eml`` per mail plus an
  ``index.html`` a person can open; the embedded default.
* ``memory://name`` (:mod:`mailer.transport.memory`): a list in memory, for tests.

Relays are combined (weights, failover, rate limits) by :mod:`mailer.transport.pool`.
``send`` returns a :class:`SendResult` on acceptance and raises
:class:`~mailer.errors.TransientDeliveryError` (retry) or
:class:`~mailer.errors.PermanentDeliveryError` (do not retry) otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from mailer.errors import ConfigurationError


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


def open_transport(url: str) -> Transport:
    """Build the transport a URL names (see the module docstring for the schemes)."""
    scheme = urlsplit(url).scheme
    if scheme in ("smtp", "smtps"):
        from mailer.transport.smtp import SMTPTransport

        return SMTPTransport(url)
    if scheme == "outbox":
        from mailer.transport.outbox import OutboxTransport

        return OutboxTransport(url)
    if scheme == "memory":
        from mailer.transport.memory import MemoryTransport

        return MemoryTransport(url)
    raise ConfigurationError(f"MAILER_SMTP_URL: unknown transport scheme {scheme!r} in {url!r} "
                             "(use smtp://, smtps://, outbox:// or memory://)")
