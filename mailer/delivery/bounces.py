"""Bounces and complaints that arrive after the relay accepted a mail.

``mailer bounces ingest PATH...`` reads reports from files or Maildirs:

* **Delivery status notifications** (RFC 3464, ``multipart/report;
  report-type=delivery-status``): each failed recipient's ``Status`` and
  ``Diagnostic-Code`` go through the same outcome table as live SMTP replies
  (:func:`mailer.smtp_codes.classify_dsn`).  A hard bounce suppresses the address at
  once; a soft bounce is counted and suppresses after ``MAILER_SOFT_BOUNCE_LIMIT``;
  ``block``/``fail`` are recorded without suppressing anybody, and so is every
  sender-side report (about our message, IP, domain, authentication or rate; see
  :mod:`mailer.smtp_codes`), even a ``4.x.x`` the remote MTA gave up on, which also
  warns the operator and counts ``mailer_sender_refusals_total``; ``delayed`` and
  ``delivered`` reports change nothing.  The delivery becomes ``bounced``.
* **Complaint reports** (ARF, RFC 5965, ``report-type=feedback-report``) with feedback
  type ``abuse``, ``fraud`` or ``other``: the address is suppressed (reason
  ``complaint``) and every marketing consent the customer still has is withdrawn in
  the consent ledger (source ``complaint``).  ``not-spam``, ``virus`` and
  ``auth-failure`` reports are noted and change nothing.

Each report is mapped to its delivery by the VERP return path it was sent to
(``bounces+<delivery id>@MAILER_BOUNCE_DOMAIN``) and by the original mail's
Message-ID (which carries an HMAC, so it cannot be guessed).  When both are present
they must agree; a report found only by its return path must name the delivery's
recipient.  Anything that cannot be mapped is reported as ``unmatched`` and changes
nothing: a forged report cannot suppress an arbitrary address.  Ingesting the same
report twice changes nothing the second time (one bounce record per delivery and kind).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from email.parser import HeaderParser
from pathlib import Path
from typing import Iterable, Iterator

from sqlalchemy import select, update

from mailer import metrics
from mailer.addresses import email_hash
from mailer.consent import ledger as consent
from mailer.consent import suppressions
from mailer.delivery.process import record_bounce, sender_refusal
from mailer.errors import ConsentError, ValidationError
from mailer.instance_secrets import address_hash_salt
from mailer.models import (
    Bounce,
    ConsentState,
    Customer,
    Delivery,
    DeliveryStatus,
    SuppressionReason,
    TrackingEvent,
    TrackingKind,
)
from mailer.rendering import TRANSACTIONAL
from mailer.settings import Settings
from mailer.transport.smtp_codes import classify_dsn

log = logging.getLogger("mailer.bounces")

#: ARF feedback types that count as a complaint (RFC 5965 section 7.3).
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "other"})
#: Largest report read, bytes (a DSN may carry the whole original mail).
MAX_REPORT_BYTES = 10 * 1024 * 1024
#: Headers of the report that may carry the VERP address it was delivered to.
_VERP_HEADERS = ("To", "Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "Original-Recipient")


@dataclass(frozen=True)
class Result:
    """What one report did."""

    source: str
    outcome: str            # hard | soft | block | fail | complaint | delayed | ignored | duplicate
                            # | unmatched | not-a-report
    delivery_id: int | None = None
    detail: str = ""

    @property
    def rejected(self) -> bool:
        return self.outcome in ("unmatched", "not-a-report")


@dataclass
class Report:
    """The parts of a DSN or ARF report that matter here."""

    type: str                                   # "dsn" or "arf"
    verp_ids: set[int] = field(default_factory=set)
    message_id: str | None = None
    recipients: list[dict[str, str]] = field(default_factory=list)   # DSN per-recipient fields
    feedback_type: str = ""
    reported_recipient: str | None = None       # ARF Original-Rcpt-To


# -- reading sources ---------------------------------------------------------------------------
def iter_sources(paths: Iterable[str | Path]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every report in the given files and Maildirs (``new/`` then ``cur/``)."""
    for raw_path in paths:
        path = Path(raw_path)
        if path.is_dir():
            if not ((path / "cur").is_dir() and (path / "new").is_dir()):
                raise ValidationError(f"{path}: a directory must be a Maildir (with cur/ and new/)",
                                      field="PATH", where=str(path))
            files = [p for sub in ("new", "cur") for p in sorted((path / sub).iterdir()) if p.is_file()]
        elif path.is_file():
            files = [path]
        else:
            raise ValidationError(f"{path}: no such file or directory", field="PATH", where=str(path))
        for f in files:
            if f.stat().st_size > MAX_REPORT_BYTES:
                yield str(f), b""
                continue
            yield str(f), f.read_bytes()


# -- parsing -------------------------------------------------------------------------------------
def _fields(part: Message) -> list[dict[str, str]]:
    """The field blocks of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    blocks = payload if isinstance(payload, list) else [HeaderParser().parsestr(b) for b in
                                                         re.split(r"\r?\n\r?\n", str(payload)) if b.strip()]
    return [{k.lower(): str(v).strip() for k, v in b.items()} for b in blocks]


def _original_headers(msg: Message) -> Message | None:
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "text/rfc822-headers":
            return HeaderParser().parsestr(part.get_payload(decode=True).decode("utf-8", "replace")
                                           if part.get("Content-Transfer-Encoding") else str(part.get_payload()))
        if ctype == "message/rfc822":
            inner = part.get_payload()
            return inner[0] if isinstance(inner, list) and inner else None
    return None


def _addr(value: str | None) -> str | None:
    """``rfc822; bob@example.org`` or ``<bob@example.org>`` -> ``bob@example.org``."""
    if not value:
        return None
    value = value.split(";", 1)[-1].strip().strip("<>").strip()
    return value or None


def parse(raw: bytes, settings: Settings) -> Report | None:
    """The report in a mail, or None when it is neither a DSN nor an ARF report."""
    msg: EmailMessage = message_from_bytes(raw, policy=policy.compat32)  # type: ignore[assignment]
    if msg.get_content_type() != "multipart/report":
        return None
    report_type = (msg.get_param("report-type") or "").lower()
    verp = re.compile(r"bounces\+(\d+)@" + re.escape(settings.bounce_domain), re.I)
    report = Report(type="dsn" if report_type == "delivery-status" else "arf")
    if report_type not in ("delivery-status", "feedback-report"):
        return None
    for name in _VERP_HEADERS:
        for value in msg.get_all(name, []):
            report.verp_ids.update(int(m) for m in verp.findall(str(value)))
    original = _original_headers(msg)
    if original is not None:
        mid = original.get("Message-ID")
        report.message_id = str(mid).strip() if mid else None
        for value in original.get_all("Return-Path", []) or []:
            report.verp_ids.update(int(m) for m in verp.findall(str(value)))
    for part in msg.walk():
        ctype = part.get_content_type()
        if report.type == "dsn" and ctype == "message/delivery-status":
            blocks = _fields(part)
            report.recipients = [b for b in blocks[1:] if "final-recipient" in b or "action" in b]
        elif report.type == "arf" and ctype == "message/feedback-report":
            blocks = _fields(part)
            fields = blocks[0] if blocks else {}
            report.feedback_type = fields.get("feedback-type", "").lower()
            report.reported_recipient = _addr(fields.get("original-rcpt-to"))
            for m in verp.findall(fields.get("original-mail-from", "")):
                report.verp_ids.add(int(m))
    if report.type == "dsn" and not report.recipients:
        return None
    if report.type == "arf" and not report.feedback_type:
        return None
    return report


# -- mapping and applying ------------------------------------------------------------------------
def _find_delivery(s, settings: Settings, report: Report) -> tuple[Delivery | None, str]:
    by_mid = None
    if report.message_id:
        # Unique index on deliveries.message_id.
        by_mid = s.execute(select(Delivery).where(Delivery.message_id == report.message_id)).scalar_one_or_none()
    if len(report.verp_ids) > 1:
        return None, f"names several deliveries by return path: {sorted(report.verp_ids)}"
    by_verp = s.get(Delivery, next(iter(report.verp_ids))) if report.verp_ids else None
    if by_mid is not None and by_verp is not None and by_mid.id != by_verp.id:
        return None, (f"return path names delivery {by_verp.id} but Message-ID {report.message_id} "
                      f"is delivery {by_mid.id}")
    if by_mid is not None:
        return by_mid, ""
    if by_verp is None:
        what = [f"return path bounces+{i}@{settings.bounce_domain}" for i in report.verp_ids]
        if report.message_id:
            what.append(f"Message-ID {report.message_id}")
        return None, ("no delivery for " + " or ".join(what)) if what else "no return path or Message-ID to go by"
    # Found by return path alone (guessable): the report must name the delivery's recipient.
    named = [_addr(r.get("original-recipient")) or _addr(r.get("final-recipient")) for r in report.recipients]
    named += [report.reported_recipient] if report.reported_recipient else []
    named = [n for n in named if n]
    if not named:
        return None, f"found delivery {by_verp.id} by return path only, but the report names no recipient"
    if not any(email_hash(n, address_hash_salt(settings)) == by_verp.to_hash for n in named):
        return None, f"report for {', '.join(named)} does not match the recipient of delivery {by_verp.id}"
    return by_verp, ""


def _already(s, delivery_id: int, kind: str) -> bool:
    # bounces by delivery: at most a handful of rows per delivery.
    return s.execute(select(Bounce.id).where(Bounce.delivery_id == delivery_id, Bounce.kind == kind)
                     .limit(1)).first() is not None


def apply(s, settings: Settings, report: Report, *, source: str, raw: bytes) -> Result:
    """Record one parsed report against its delivery (see the module docstring)."""
    delivery, why = _find_delivery(s, settings, report)
    if delivery is None:
        return Result(source, "unmatched", None, why)
    raw_text = raw[:65536].decode("utf-8", "replace")
    if report.type == "arf":
        return _complaint(s, settings, delivery, report, source, raw_text)
    failed = [r for r in report.recipients if r.get("action", "").lower() == "failed"]
    if not failed:
        actions = sorted({r.get("action", "?").lower() for r in report.recipients})
        return Result(source, "delayed" if "delayed" in actions else "ignored", delivery.id,
                      f"action {', '.join(actions)}: nothing to do")
    rcpt = failed[0]
    status = rcpt.get("status", "")
    diagnostic = rcpt.get("diagnostic-code", "")
    result = classify_dsn(status, diagnostic)
    if result.sender_side:
        # About us (size, content, our IP, authentication, rate), even when the remote MTA
        # gave up retrying: never a bounce against the customer, never a suppression.
        kind = result.outcome if result.outcome in ("block", "fail") else "block"
    else:
        kind = "soft" if result.outcome == "retry" else result.outcome   # the remote MTA gave up: soft
    if _already(s, delivery.id, kind):
        return Result(source, "duplicate", delivery.id, f"{kind} bounce already recorded")
    detail = f"{status} {diagnostic}".strip()
    if kind in ("hard", "soft"):
        suppressed = record_bounce(settings, s, delivery, kind=kind, status_code=status or None,
                                   reason=result.reason, raw=raw_text)
    else:
        s.add(Bounce(delivery_id=delivery.id, email_hash=delivery.to_hash, kind=kind, status_code=status or None,
                     reason=result.reason, raw=raw_text))
        s.add(TrackingEvent(delivery_id=delivery.id, campaign_id=delivery.campaign_id,
                            customer_id=delivery.customer_id, kind=TrackingKind.bounce))
        suppressed = None
        if result.sender_side:
            sender_refusal(delivery, relay=delivery.relay or "dsn", code=result.code, enhanced=result.enhanced,
                           reason=result.reason, reply=detail, effect="bounced later")
    # Delivery row: sent -> bounced (a DSN for a delivery not marked sent keeps its status).
    s.execute(update(Delivery).where(Delivery.id == delivery.id, Delivery.status == DeliveryStatus.sent)
              .values(status=DeliveryStatus.bounced, reason=f"bounced: {detail} ({result.reason})")
              .execution_options(synchronize_session=False))
    log.info("delivery %s bounced (%s): %s", delivery.id, kind, detail, extra={"delivery_id": delivery.id})
    return Result(source, kind, delivery.id, f"{detail} ({result.reason})"
                  + (f"; suppressed ({suppressed})" if suppressed else ""))


def _complaint(s, settings: Settings, delivery: Delivery, report: Report, source: str, raw_text: str) -> Result:
    if report.feedback_type not in COMPLAINT_TYPES:
        return Result(source, "ignored", delivery.id, f"feedback type {report.feedback_type!r} is not a complaint")
    if _already(s, delivery.id, "complaint"):
        return Result(source, "duplicate", delivery.id, "complaint already recorded")
    s.add(Bounce(delivery_id=delivery.id, email_hash=delivery.to_hash, kind="complaint",
                 status_code=report.feedback_type, reason="spam complaint", raw=raw_text))
    s.add(TrackingEvent(delivery_id=delivery.id, campaign_id=delivery.campaign_id, customer_id=delivery.customer_id,
                        kind=TrackingKind.complaint))
    suppressions.suppress(s, address_hash=delivery.to_hash, email=delivery.to_address,
                          reason=SuppressionReason.complaint,
                          detail=f"{report.feedback_type} report about delivery {delivery.id}")
    withdrawn = _withdraw_marketing(s, settings, delivery)
    metrics.count("complained", queue=delivery.queue, kind=delivery.kind)
    log.warning("delivery %s: complaint (%s); suppressed, consent withdrawn for %s", delivery.id,
                report.feedback_type, ", ".join(withdrawn) or "nothing", extra={"delivery_id": delivery.id})
    return Result(source, "complaint", delivery.id,
                  f"{report.feedback_type}; suppressed; consent withdrawn: {', '.join(withdrawn) or 'none held'}")


def _withdraw_marketing(s, settings: Settings, delivery: Delivery) -> list[str]:
    """Withdraw the delivery's purpose and every marketing purpose the customer still has."""
    if delivery.customer_id is None:
        return []
    customer = s.get(Customer, delivery.customer_id)
    if customer is None or customer.email is None:
        return []  # erased: the suppression by address hash is what remains
    # Current grants of this customer (consent_state primary key starts with customer_id).
    granted = set(s.execute(select(ConsentState.purpose).where(ConsentState.customer_id == customer.id,
                                                               ConsentState.granted.is_(True))).scalars())
    if delivery.purpose != TRANSACTIONAL:
        granted.add(delivery.purpose)
    done = []
    for purpose in sorted(granted):
        if not consent.has_consent(s, settings, customer.id, purpose) and purpose != delivery.purpose:
            continue
        try:
            consent.append(s, settings, customer=customer, purpose=purpose, action="withdrawn", source="complaint")
        except ConsentError as exc:
            log.warning("complaint about delivery %s: cannot withdraw %s: %s", delivery.id, purpose, exc)
            continue
        done.append(purpose)
    return done


def ingest(app, paths: Iterable[str | Path]) -> list[Result]:
    """Parse and apply every report found in ``paths``; one transaction per report."""
    results: list[Result] = []
    for source, raw in iter_sources(paths):
        if not raw:
            results.append(Result(source, "not-a-report", None, f"empty or larger than {MAX_REPORT_BYTES} bytes"))
            continue
        report = parse(raw, app.settings)
        if report is None:
            results.append(Result(source, "not-a-report", None,
                                  "not a delivery status notification (RFC 3464) or feedback report (RFC 5965)"))
            continue
        with app.session() as s:
            results.append(apply(s, app.settings, report, source=source, raw=raw))
    return results
