"""SMTP transport: one reused connection per worker thread.

URL form: ``smtp://user:pass@host:587?starttls=1&timeout=30`` or ``smtps://host:465``.
Replies are turned into :class:`SendResult` or a Transient/Permanent delivery error by
:func:`mailer.smtp_codes.classify`; connection trouble is transient.

A message whose envelope or headers are not ASCII (an internationalized address) is
sent with ``MAIL FROM:<...> SMTPUTF8`` when the relay offers the extension, and is
refused with :class:`~mailer.errors.SMTPUTF8Unsupported` (permanent, nothing sent)
when it does not.  A connection that breaks after the message data went out is
reported with ``maybe_sent`` set: the relay may have accepted it.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import ssl
import threading
from urllib.parse import parse_qs, unquote, urlsplit

from mailer.errors import (
    ConfigurationError,
    SMTPUTF8Unsupported,
    TransientDeliveryError,
)
from mailer.transport.base import SendResult
from mailer.transport.senders import notice_lane
from mailer.transport.smtp_codes import SENDER, error_for_reply

#: Seconds to wait on the relay before calling the attempt failed.
DEFAULT_TIMEOUT_S = 30.0


class SMTPTransport:
    """Sends over SMTP, keeping one open connection per thread and reconnecting when it drops."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        if not parts.hostname:
            raise ConfigurationError(f"MAILER_SMTP_URL: no host in {url!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.ssl = parts.scheme == "smtps"
        self.host = parts.hostname
        self.port = parts.port or (465 if self.ssl else 25)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.starttls = query.get("starttls", "0").lower() in ("1", "true", "yes")
        self.timeout = float(query.get("timeout", DEFAULT_TIMEOUT_S))
        self.local_hostname = query.get("helo") or None
        self.name = f"{parts.scheme}://{self.host}:{self.port}"
        self._local = threading.local()

    # -- connection -------------------------------------------------------------------------
    def _connect(self) -> smtplib.SMTP:
        try:
            if self.ssl:
                conn = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                        local_hostname=self.local_hostname,
                                        context=ssl.create_default_context())
            else:
                conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout, local_hostname=self.local_hostname)
            conn.ehlo()
            if self.starttls:
                conn.starttls(context=ssl.create_default_context())
                conn.ehlo()
            if self.username:
                conn.login(self.username, self.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            # Through the reply table like any refusal: sender side (our credentials), never
            # the recipient's fault.
            raise error_for_reply(exc.smtp_code, "authentication failed: " + _text(exc.smtp_error),
                                  relay=self.name, permanent_side=SENDER) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise TransientDeliveryError(f"{self.name}: cannot connect: {exc}") from exc
        return conn

    def _conn(self) -> smtplib.SMTP:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # -- sending ----------------------------------------------------------------------------
    def supports_smtputf8(self) -> bool:
        """Does the relay announce SMTPUTF8 in its EHLO reply (connecting if needed)?"""
        return bool(self._conn().has_extn("smtputf8"))

    def send(self, *, envelope_from: str, recipient: str, message: bytes) -> SendResult:
        # A notice's wait for the relay does not hold campaign work back (senders.NoticeFirst).
        with notice_lane.relay_wait():
            return self._send(envelope_from=envelope_from, recipient=recipient, message=message)

    def _send(self, *, envelope_from: str, recipient: str, message: bytes) -> SendResult:
        needs_utf8 = not (envelope_from.isascii() and recipient.isascii() and message.isascii())
        for attempt in (1, 2):
            conn = self._conn()
            mail_options: list[str] = []
            if needs_utf8:
                if not conn.has_extn("smtputf8"):
                    raise SMTPUTF8Unsupported(
                        f"{self.name} does not offer SMTPUTF8, which the internationalized address "
                        f"{recipient!r} needs; nothing was sent", code=None, reply="SMTPUTF8 not offered")
                mail_options = ["SMTPUTF8", "BODY=8BITMIME"]
            stage = "mail"
            try:
                if conn.has_extn("pipelining"):
                    progress = ["mail"]
                    try:
                        return self._send_pipelined(conn, envelope_from, recipient, message, mail_options,
                                                    progress)
                    finally:
                        stage = progress[0]
                # mail/rcpt/data by hand (not sendmail) so the DATA reply text is kept.
                code, reply = conn.mail(envelope_from, mail_options)
                if code != 250:
                    self._reset(conn)
                    raise error_for_reply(code, _text(reply), relay=self.name)
                stage = "rcpt"
                code, reply = conn.rcpt(recipient)
                if code not in (250, 251):
                    self._reset(conn)
                    raise error_for_reply(code, _text(reply), relay=self.name)
                stage = "data"
                code, reply = conn.data(message)
                if code != 250:
                    self._reset(conn)
                    raise error_for_reply(code, _text(reply), relay=self.name)
                return SendResult(code, f"{code} {_text(reply)}", self.name)
            except smtplib.SMTPServerDisconnected as exc:
                self._drop()
                if attempt == 1 and stage == "mail":
                    continue  # a pooled connection the relay had closed: reconnect once, nothing was sent
                raise _transient(f"{self.name}: disconnected: {exc}", stage) from exc
            except smtplib.SMTPResponseException as exc:
                self._reset(conn)
                raise error_for_reply(exc.smtp_code, _text(exc.smtp_error), relay=self.name) from exc
            except (OSError, smtplib.SMTPException) as exc:
                self._drop()
                raise _transient(f"{self.name}: {exc}", stage) from exc
        raise TransientDeliveryError(f"{self.name}: could not send")  # pragma: no cover

    def _send_pipelined(self, conn: smtplib.SMTP, envelope_from: str, recipient: str, message: bytes,
                        mail_options: list[str], progress: list[str]) -> SendResult:
        """MAIL, RCPT and DATA in one write, their three replies read in order (RFC 2920),
        then the message: two round trips per message instead of four.  ``progress[0]``
        says how far it got ("mail" until the MAIL reply came, "data" once the message
        data is being written), for the caller's error handling."""
        encoding = "utf-8" if mail_options else "ascii"
        options = (" " + " ".join(mail_options)) if mail_options else ""
        conn.send(f"MAIL FROM:{smtplib.quoteaddr(envelope_from)}{options}\r\n"
                  f"RCPT TO:{smtplib.quoteaddr(recipient)}\r\nDATA\r\n".encode(encoding))
        mail = conn.getreply()  # a disconnect up to here: nothing was handed over (stage "mail")
        progress[0] = "rcpt"
        rcpt = conn.getreply()
        data = conn.getreply()
        refused = (mail if mail[0] != 250 else rcpt if rcpt[0] not in (250, 251) else
                   data if data[0] != 354 else None)
        if refused is not None:
            if data[0] == 354:  # a relay that took DATA after all: end the (empty) message
                conn.send(b".\r\n")
                conn.getreply()
            self._reset(conn)
            raise error_for_reply(refused[0], _text(refused[1]), relay=self.name)
        body = _DOT_LINE.sub(b"..", message)
        progress[0] = "data"
        conn.send(body + (b".\r\n" if body.endswith(b"\r\n") else b"\r\n.\r\n"))
        code, reply = conn.getreply()
        if code != 250:
            self._reset(conn)
            raise error_for_reply(code, _text(reply), relay=self.name)
        return SendResult(code, f"{code} {_text(reply)}", self.name)

    def _reset(self, conn: smtplib.SMTP) -> None:
        try:
            conn.rset()
        except Exception:
            self._drop()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.quit()


#: A line starting with a dot, which the data section doubles (RFC 5321 4.5.2).
_DOT_LINE = re.compile(rb"(?m)^\.")


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)



def _transient(message: str, stage: str) -> TransientDeliveryError:
    """A connection-level failure; ``maybe_sent`` when it struck during DATA (the relay may
    have accepted the message before the connection broke)."""
    return TransientDeliveryError(message, maybe_sent=stage == "data")
