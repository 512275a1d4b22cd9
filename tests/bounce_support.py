"""Builders of realistic bounce and complaint reports for the bounce tests (not a test module)."""

from __future__ import annotations


def dsn(*, to: str, message_id: str | None, recipient: str, status: str = "5.1.1", action: str = "failed",
        diagnostic: str | None = "smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
        delivery_header: str | None = None) -> bytes:
    """A Postfix-style RFC 3464 delivery status notification sent to ``to`` (``delivery_header``:
    the original's X-Mailer-Delivery value, when it should carry one)."""
    diag = f"Diagnostic-Code: {diagnostic.format(rcpt=recipient)}\r\n" if diagnostic else ""
    original = (f"Return-Path: <{to}>\r\nFrom: Northwind Shop <shop@example.com>\r\nTo: <{recipient}>\r\n"
                + (f"Message-ID: {message_id}\r\n" if message_id else "")
                + (f"X-Mailer-Delivery: {delivery_header}\r\n" if delivery_header else "") + "Subject: Your order\r\n")
    return (
        "Return-Path: <>\r\n"
        f"Delivered-To: {to}\r\n"
        "From: MAILER-DAEMON@mx.example.org (Mail Delivery System)\r\n"
        f"To: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="=_dsn"\r\n'
        "\r\n"
        "--=_dsn\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        "This is the mail system at host mx.example.org.\r\n\r\n"
        "I'm sorry to have to inform you that your message could not be delivered.\r\n\r\n"
        "--=_dsn\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\n"
        "Arrival-Date: Mon, 23 Nov 2026 09:59:58 +0000\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Original-Recipient: rfc822;{recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        "Remote-MTA: dns; mx2.example.org\r\n"
        f"{diag}\r\n"
        "--=_dsn\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
        f"{original}\r\n"
        "--=_dsn--\r\n"
    ).encode("utf-8")


def arf(*, to: str, message_id: str | None, recipient: str, feedback_type: str = "abuse",
        mail_from: str | None = None, delivery_header: str | None = None) -> bytes:
    """An RFC 5965 abuse report as a mailbox provider's feedback loop sends it."""
    mail_from = mail_from or to
    original = (f"Return-Path: <{mail_from}>\r\nFrom: Northwind Shop <shop@example.com>\r\nTo: <{recipient}>\r\n"
                + (f"Message-ID: {message_id}\r\n" if message_id else "")
                + (f"X-Mailer-Delivery: {delivery_header}\r\n" if delivery_header else "")
                + "Subject: Spring sale\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nHello\r\n")
    return (
        "From: <feedback@fbl.example.net>\r\n"
        f"To: <{to}>\r\n"
        "Subject: FW: Spring sale\r\n"
        "Date: Mon, 23 Nov 2026 11:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="=_arf"\r\n'
        "\r\n"
        "--=_arf\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        "This is an email abuse report for an email message received from IP 192.0.2.10.\r\n\r\n"
        "--=_arf\r\n"
        "Content-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: {feedback_type}\r\n"
        "User-Agent: ExampleFBL/1.0\r\n"
        "Version: 1\r\n"
        f"Original-Mail-From: <{mail_from}>\r\n"
        f"Original-Rcpt-To: <{recipient}>\r\n"
        "Arrival-Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        "Source-IP: 192.0.2.10\r\n\r\n"
        "--=_arf\r\n"
        "Content-Type: message/rfc822\r\n"
        "Content-Disposition: inline\r\n\r\n"
        f"{original}\r\n"
        "--=_arf--\r\n"
    ).encode("utf-8")
