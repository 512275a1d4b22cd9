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

from urllib.parse import urlsplit

from mailer.errors import ConfigurationError
from mailer.transport.base import SendResult, Transport
from mailer.transport.memory import MemoryTransport
from mailer.transport.outbox import OutboxTransport
from mailer.transport.smtp import SMTPTransport

__all__ = ["SendResult", "Transport", "open_transport"]


def open_transport(url: str) -> Transport:
    """Build the transport a URL names (see the module docstring for the schemes)."""
    scheme = urlsplit(url).scheme
    if scheme in ("smtp", "smtps"):
        return SMTPTransport(url)
    if scheme == "outbox":
        return OutboxTransport(url)
    if scheme == "memory":
        return MemoryTransport(url)
    raise ConfigurationError(f"MAILER_SMTP_URL: unknown transport scheme {scheme!r} in {url!r} "
                             "(use smtp://, smtps://, outbox:// or memory://)")
