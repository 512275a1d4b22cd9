"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, recording what it receives.

Failures can be injected per recipient or at random (``rcpt_replies``,
``data_replies``, ``flaky``) so delivery code meets real SMTP replies over a real
socket, never a mock that cannot fail.
"""

from __future__ import annotations

import random
import socket
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage

from aiosmtpd.controller import Controller


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    smtputf8: bool

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.raw, policy=policy.default)


@dataclass
class SinkHandler:
    received: list[Received] = field(default_factory=list)
    #: address -> reply for RCPT TO (e.g. "550 5.1.1 user unknown").
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    #: address -> reply for DATA.
    data_replies: dict[str, str] = field(default_factory=dict)
    #: probability of "451 4.3.0 try again later" at RCPT or DATA.
    flaky: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(1234))
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        if self.flaky and self.rng.random() < self.flaky:
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        for rcpt in envelope.rcpt_tos:
            if rcpt in self.data_replies:
                return self.data_replies[rcpt]
        if self.flaky and self.rng.random() < self.flaky:
            return "451 4.3.0 try again later"
        raw = envelope.original_content or envelope.content
        with self.lock:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), raw, envelope.smtp_utf8))
        return f"250 2.0.0 Ok: queued as {len(self.received)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SMTPSink:
    """Starts aiosmtpd on a free port; ``url`` is the MAILER_SMTP_URL to reach it."""

    def __init__(self, *, smtputf8: bool = True):
        self.handler = SinkHandler()
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                                     enable_SMTPUTF8=smtputf8, decode_data=False,
                                     data_size_limit=10 * 1024 * 1024)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def start(self) -> "SMTPSink":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
