"""ESP webhooks (Amazon SES via SNS, SendGrid, Mailgun, Postmark): verifying each provider's
signature and mapping its bounce and complaint events onto bouncekit's reasons and actions.

Each event becomes a :class:`mailer.bouncekit.Report` and goes through
:func:`mailer.delivery.bounces.apply`, so a webhook bounce does exactly what the same bounce
arriving as mail does.  Events are matched by the original Message-ID or the
``X-Mailer-Delivery`` header (or metadata carrying it) and take effect once: the provider's
event id is recorded in ``webhook_events`` in the same transaction as the effect.

Signatures (a wrong or missing one raises :class:`SignatureError`; the HTTP layer answers 401
and stores nothing):

* SES: the SNS message signature (SignatureVersion 1: SHA1withRSA, 2: SHA256withRSA) over the
  documented fields, checked against ``MAILER_SES_SIGNING_CERT`` or a certificate in
  ``MAILER_SES_CERT_CACHE_DIR`` named like the file of ``SigningCertURL``; only
  ``https://sns.<region>.amazonaws.com/`` URLs are accepted and nothing is ever fetched.
  A ``SubscriptionConfirmation`` is recorded and its SubscribeURL logged for the operator.
* SendGrid: ECDSA (P-256, SHA-256) over timestamp + raw body, key ``MAILER_SENDGRID_PUBLIC_KEY``.
* Mailgun: HMAC-SHA256 of timestamp + token with ``MAILER_MAILGUN_SIGNING_KEY``.
* Postmark: HTTP basic auth equal to ``MAILER_POSTMARK_WEBHOOK_AUTH``.

Timestamps further than ``MAILER_WEBHOOK_MAX_AGE_S`` from now are refused (replays).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_string
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from mailer import bouncekit
from mailer.bouncekit import reasons as bk
from mailer.bouncekit.classify import decide
from mailer.clock import utcnow
from mailer.consent import ledger as consent
from mailer.delivery import bounces
from mailer.errors import ValidationError
from mailer.models import WebhookEvent
from mailer.rendering import TRANSACTIONAL
from mailer.settings import Settings
from mailer.tracking import service as tracking

log = logging.getLogger("mailer.webhooks")

PROVIDERS = ("ses", "sendgrid", "mailgun", "postmark")
#: Most events taken from one request.
MAX_EVENTS_PER_REQUEST = 1000
#: Longest provider event id stored, characters.
MAX_EVENT_ID_CHARS = 200
#: The only signing certificate URLs believed (never fetched: looked up in the cache dir).
SNS_CERT_URL = re.compile(r"^https://sns\.[a-z0-9-]{1,30}\.amazonaws\.com(?:\.cn)?/[A-Za-z0-9._-]{1,200}\.pem$")
#: Fields signed by SNS, per message type, in the documented order.
_SNS_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
#: Postmark bounce TypeCode -> reason (https://postmarkapp.com/developer/api/bounce-api#bounce-types).
#: None: not a bounce (nothing to do).  "feedback:<type>": a complaint.
POSTMARK_TYPE_REASONS: dict[int, str | None] = {
    1: "userunknown",          # HardBounce
    2: None,                   # Transient: delayed, Postmark retries
    16: "feedback:opt-out",    # Unsubscribe
    32: None,                  # Subscribe
    64: "vacation",            # AutoResponder
    128: "hasmoved",           # AddressChange
    256: "networkerror",       # DnsError
    512: "spamdetected",       # SpamNotification
    1024: None,                # OpenRelayTest
    2048: "onhold",            # Unknown
    4096: "mailboxfull",       # SoftBounce
    8192: "virusdetected",     # VirusNotification
    16384: None,               # ChallengeVerification
    100000: "userunknown",     # BadEmailAddress
    100001: "feedback:abuse",  # SpamComplaint
    100002: None,              # ManuallyDeactivated
    100003: None,              # Unconfirmed
    100006: "blocked",         # Blocked
    100007: "syntaxerror",     # SMTPApiError
    100008: None,              # InboundError
    100009: "authfailure",     # DMARCPolicy
    100010: "contenterror",    # TemplateRenderingFailed
}


class SignatureError(Exception):
    """The request is not signed by the provider (answered 401, nothing stored)."""


@dataclass
class Tracking:
    """An open or a click the provider saw (recorded only with ``MAILER_WEBHOOK_TRACKING``)."""

    kind: str  # open | click
    address: str | None
    message_id: str | None
    delivery_id: int | None
    header: str | None = None  # the provider's copy of our X-Mailer-Delivery
    url: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    when: datetime | None = None
    machine: bool = False  # the provider says it was automated (SendGrid's sg_machine_open)


@dataclass
class Event:
    """One provider event: its id and what it says (None: nothing to do, still recorded once)."""

    event_id: str
    report: bouncekit.Report | None
    raw: str
    kind: str = "ignored"
    note: str = ""
    tracking: Tracking | None = None


# -- signatures ----------------------------------------------------------------------------------
def _fresh(settings: Settings, when: datetime) -> None:
    if abs((utcnow() - when).total_seconds()) > settings.webhook_max_age_s:
        raise SignatureError("timestamp too far from now")


def _epoch(value: Any) -> datetime:
    try:
        return datetime.fromtimestamp(int(str(value)), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise SignatureError("bad timestamp") from exc


def verify_mailgun(settings: Settings, body: dict) -> None:
    sig = body.get("signature") if isinstance(body.get("signature"), dict) else {}
    ts, token, given = (str(sig.get(k, "")) for k in ("timestamp", "token", "signature"))
    if not settings.mailgun_signing_key or not (ts and token and given):
        raise SignatureError("no Mailgun signature or no signing key configured")
    want = hmac.new(settings.mailgun_signing_key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, given):
        raise SignatureError("wrong Mailgun signature")
    _fresh(settings, _epoch(ts))


def _sendgrid_key(settings: Settings) -> ec.EllipticCurvePublicKey:
    text = settings.sendgrid_public_key.strip()
    try:
        key = (serialization.load_pem_public_key(text.encode()) if text.startswith("-----")
               else serialization.load_der_public_key(base64.b64decode(text)))
    except (ValueError, binascii.Error) as exc:
        raise SignatureError("MAILER_SENDGRID_PUBLIC_KEY is not a public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureError("MAILER_SENDGRID_PUBLIC_KEY is not an ECDSA key")
    return key


def verify_sendgrid(settings: Settings, signature: str | None, timestamp: str | None, raw: bytes) -> None:
    if not settings.sendgrid_public_key or not signature or not timestamp:
        raise SignatureError("no SendGrid signature or no public key configured")
    try:
        _sendgrid_key(settings).verify(base64.b64decode(signature), timestamp.encode() + raw,
                                       ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, binascii.Error) as exc:
        raise SignatureError("wrong SendGrid signature") from exc
    _fresh(settings, _epoch(timestamp))


def verify_postmark(settings: Settings, authorization: str | None) -> None:
    want = settings.postmark_webhook_auth
    if not want or not authorization or not authorization.lower().startswith("basic "):
        raise SignatureError("no basic auth or none configured")
    try:
        given = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, binascii.Error) as exc:
        raise SignatureError("bad basic auth") from exc
    if not hmac.compare_digest(given.encode(), want.encode()):
        raise SignatureError("wrong basic auth")


def _sns_cert(settings: Settings, url: str) -> x509.Certificate:
    if not SNS_CERT_URL.match(url or ""):
        raise SignatureError("SigningCertURL is not an https://sns.<region>.amazonaws.com/ certificate")
    candidates: list[bytes] = []
    if settings.ses_signing_cert:
        text = settings.ses_signing_cert
        candidates.append(text.encode() if "-----BEGIN" in text else Path(text).read_bytes())
    if settings.ses_cert_cache_dir:
        cached = Path(settings.ses_cert_cache_dir) / url.rsplit("/", 1)[1]
        if cached.is_file():
            candidates.append(cached.read_bytes())
    for pem in candidates:
        try:
            return x509.load_pem_x509_certificate(pem)
        except ValueError:
            continue
    raise SignatureError("no signing certificate configured or cached for " + url)


def verify_sns(settings: Settings, msg: dict) -> None:
    kind = str(msg.get("Type", ""))
    if kind not in _SNS_FIELDS:
        raise SignatureError(f"unknown SNS message type {kind!r}")
    version = str(msg.get("SignatureVersion", "1"))
    algorithm = {"1": hashes.SHA1(), "2": hashes.SHA256()}.get(version)  # nosec B303 - SNS v1 is SHA1 by spec
    if algorithm is None:
        raise SignatureError(f"unknown SignatureVersion {version!r}")
    signed = "".join(f"{name}\n{msg[name]}\n" for name in _SNS_FIELDS[kind] if msg.get(name) is not None)
    cert = _sns_cert(settings, str(msg.get("SigningCertURL", "")))
    try:
        cert.public_key().verify(base64.b64decode(str(msg.get("Signature", ""))), signed.encode(),  # type: ignore[call-arg]
                                 padding.PKCS1v15(), algorithm)  # type: ignore[call-arg]
    except (InvalidSignature, ValueError, binascii.Error, TypeError) as exc:
        raise SignatureError("wrong SNS signature") from exc
    try:
        when = datetime.fromisoformat(str(msg.get("Timestamp", "")).replace("Z", "+00:00"))
    except ValueError as exc:
        raise SignatureError("bad SNS Timestamp") from exc
    _fresh(settings, when)


# -- payloads to reports -------------------------------------------------------------------------
def _delivery_id(value: Any) -> int | None:
    """The delivery id of a metadata value or an ``X-Mailer-Delivery`` header (``<id>`` or ``<id>.<HMAC>``)."""
    text = str(value or "").strip().partition(".")[0]
    return int(text) if text.isdigit() and len(text) <= 18 else None


def _signed(report: bouncekit.Report, header: Any) -> bouncekit.Report:
    """Carry the provider's copy of our X-Mailer-Delivery header, verified by :func:`bounces.find_delivery`."""
    value = str(header or "").strip()
    if value and _delivery_id(value) == report.delivery_id:
        report.delivery_header = value[:90]
    return report


def _bounce(address: str | None, diagnostic: str, context: str, status: str, *, table_reason: str | None = None,
            temporary: bool = False, message_id: str | None, delivery_id: int | None) -> bouncekit.Report:
    r = decide(diagnostic, context, status, action_field="delayed" if temporary else "failed")
    if table_reason and r.reason not in bk.SENDER_SIDE:
        r.reason, r.action = table_reason, bk.action_for(table_reason, temporary=temporary)
    r.address = (address or "").lower() or None
    kind = "delay" if temporary else ("auto_reply" if r.reason == "vacation" else "bounce")
    if temporary and r.action != bk.SENDER:
        r.action = bk.IGNORE
    return bouncekit.Report(type=kind, recipients=[r], message_id=message_id, delivery_id=delivery_id,
                            evidence=r.evidence)


def _complaint(address: str | None, ftype: str, *, message_id: str | None, delivery_id: int | None,
               evidence: str) -> bouncekit.Report:
    return bouncekit.Report(type="complaint", feedback_type=ftype, message_id=message_id, delivery_id=delivery_id,
                            evidence=evidence,
                            recipients=[bouncekit.Recipient(address=(address or "").lower() or None,
                                                            reason="feedback", action=bk.COMPLAINT,
                                                            evidence=evidence)])


def ses_events(msg: dict) -> list[Event]:
    """The events of one verified SNS Notification carrying an SES notification."""
    try:
        data = json.loads(str(msg.get("Message", "")))
    except ValueError:
        data = None
    event_id = str(msg.get("MessageId", ""))[:MAX_EVENT_ID_CHARS]
    if not isinstance(data, dict):
        return [Event(event_id, None, "", note="not an SES notification")]
    raw = json.dumps(data, ensure_ascii=False)
    kind = str(data.get("notificationType") or data.get("eventType") or "")
    mail = data.get("mail") if isinstance(data.get("mail"), dict) else {}
    headers = {str(h.get("name", "")).lower(): str(h.get("value", ""))
               for h in mail.get("headers", []) or [] if isinstance(h, dict)}
    common = mail.get("commonHeaders") if isinstance(mail.get("commonHeaders"), dict) else {}
    mid = headers.get("message-id") or common.get("messageId")
    did = _delivery_id(headers.get("x-mailer-delivery"))
    reports: list[bouncekit.Report] = []
    if kind == "Bounce":
        b = data.get("bounce") if isinstance(data.get("bounce"), dict) else {}
        temporary = str(b.get("bounceType")) == "Transient"
        for r in (b.get("bouncedRecipients") or [])[:MAX_EVENTS_PER_REQUEST]:
            if isinstance(r, dict):
                diag = str(r.get("diagnosticCode", ""))
                diag = diag.split(";", 1)[1].strip() if ";" in diag[:12] else diag
                sub = f"{b.get('bounceType', '')} {b.get('bounceSubType', '')}"
                table = "userunknown" if "Suppressed" in sub or sub.strip() == "Permanent NoEmail" else None
                reports.append(_bounce(r.get("emailAddress"), diag, sub, str(r.get("status", "")),
                                       table_reason=table, temporary=temporary, message_id=mid, delivery_id=did))
    elif kind in ("Open", "Click"):
        detail = data.get(kind.lower()) if isinstance(data.get(kind.lower()), dict) else {}
        rcpt = (mail.get("destination") or [None])[0] if isinstance(mail.get("destination"), list) else None
        return [Event(event_id, None, raw, tracking=Tracking(
            kind.lower(), str(rcpt) if rcpt else None, mid, did, headers.get("x-mailer-delivery"),
            url=_text(detail.get("link")), ip=_text(detail.get("ipAddress")), user_agent=_text(detail.get("userAgent")),
            when=_when(detail.get("timestamp"))))]
    elif kind == "Complaint":
        c = data.get("complaint") if isinstance(data.get("complaint"), dict) else {}
        ftype = str(c.get("complaintFeedbackType") or "abuse")
        for r in (c.get("complainedRecipients") or [])[:MAX_EVENTS_PER_REQUEST]:
            if isinstance(r, dict):
                reports.append(_complaint(r.get("emailAddress"), ftype, message_id=mid, delivery_id=did,
                                          evidence=f"SES Complaint ({ftype})"))
    if not reports:
        return [Event(event_id, None, raw, note=f"SES {kind or 'unknown'}: nothing to do")]
    # One SNS message, one event id: several recipients share it (suffixed so each takes effect once).
    return [Event(event_id if i == 0 else f"{event_id}#{i}", _signed(rep, headers.get("x-mailer-delivery")), raw)
            for i, rep in enumerate(reports)]


def sendgrid_events(body: Any) -> list[Event]:
    if not isinstance(body, list):
        raise ValidationError("SendGrid posts a JSON array of events", field="body")
    out = []
    for e in body[:MAX_EVENTS_PER_REQUEST]:
        if not isinstance(e, dict) or not e.get("sg_event_id"):
            continue
        event_id = str(e["sg_event_id"])[:MAX_EVENT_ID_CHARS]
        raw = json.dumps(e, ensure_ascii=False)
        mid = e.get("smtp-id") or None
        did = _delivery_id(e.get("x_mailer_delivery") or e.get("mailer_delivery"))
        header = e.get("x_mailer_delivery") or e.get("mailer_delivery")
        ev = str(e.get("event", ""))
        if ev in ("bounce", "blocked"):
            text = str(e.get("reason", ""))
            rep = _bounce(e.get("email"), text, str(e.get("bounce_classification", "")), str(e.get("status", "")),
                          message_id=mid, delivery_id=did)
            out.append(Event(event_id, _signed(rep, header), raw))
        elif ev == "deferred":
            out.append(Event(event_id, _signed(_bounce(e.get("email"), str(e.get("response", "")), "", "",
                                                       temporary=True, message_id=mid, delivery_id=did), header), raw))
        elif ev in ("open", "click"):
            out.append(Event(event_id, None, raw, tracking=Tracking(
                ev, _text(e.get("email")), mid, did, _text(header), url=_text(e.get("url")), ip=_text(e.get("ip")),
                user_agent=_text(e.get("useragent")), when=_when(e.get("timestamp")),
                machine=e.get("sg_machine_open") is True)))
        elif ev in ("spamreport", "unsubscribe", "group_unsubscribe"):
            ftype = "abuse" if ev == "spamreport" else "opt-out"
            out.append(Event(event_id, _signed(_complaint(e.get("email"), ftype, message_id=mid, delivery_id=did,
                                                          evidence=f"SendGrid {ev}"), header), raw))
        else:
            out.append(Event(event_id, None, raw, note=f"SendGrid {ev or 'unknown'}: nothing to do"))
    return out


def mailgun_events(body: dict) -> list[Event]:
    data = body.get("event-data") if isinstance(body.get("event-data"), dict) else None
    if data is None or not data.get("id"):
        raise ValidationError("Mailgun posts {signature, event-data} with an event id", field="event-data")
    event_id = str(data["id"])[:MAX_EVENT_ID_CHARS]
    raw = json.dumps(data, ensure_ascii=False)
    message = data.get("message") if isinstance(data.get("message"), dict) else {}
    headers = {str(k).lower(): v for k, v in (message.get("headers") or {}).items()} \
        if isinstance(message.get("headers"), dict) else {}
    mid = str(headers["message-id"]) if headers.get("message-id") else None
    uv = data.get("user-variables") if isinstance(data.get("user-variables"), dict) else {}
    did = _delivery_id(uv.get("x-mailer-delivery") or uv.get("delivery_id") or headers.get("x-mailer-delivery"))
    header = uv.get("x-mailer-delivery") or (None if uv.get("delivery_id") else headers.get("x-mailer-delivery"))
    ev = str(data.get("event", ""))
    if ev == "failed":
        ds = data.get("delivery-status") if isinstance(data.get("delivery-status"), dict) else {}
        text = " ".join(str(ds.get(k, "")) for k in ("code", "message", "description") if ds.get(k))
        rep = _bounce(data.get("recipient"), text, str(data.get("reason", "")), str(ds.get("enhanced-code", "")),
                      temporary=str(data.get("severity")) == "temporary", message_id=mid, delivery_id=did)
        return [Event(event_id, _signed(rep, header), raw)]
    if ev in ("opened", "clicked"):
        client = data.get("client-info") if isinstance(data.get("client-info"), dict) else {}
        return [Event(event_id, None, raw, tracking=Tracking(
            "open" if ev == "opened" else "click", _text(data.get("recipient")), mid, did, _text(header),
            url=_text(data.get("url")), ip=_text(data.get("ip")), user_agent=_text(client.get("user-agent")),
            when=_when(data.get("timestamp"))))]
    if ev in ("complained", "unsubscribed"):
        ftype = "abuse" if ev == "complained" else "opt-out"
        return [Event(event_id, _signed(_complaint(data.get("recipient"), ftype, message_id=mid, delivery_id=did,
                                                   evidence=f"Mailgun {ev}"), header), raw)]
    return [Event(event_id, None, raw, note=f"Mailgun {ev or 'unknown'}: nothing to do")]


def _postmark_ids(body: dict) -> tuple[str | None, int | None, str | None]:
    meta = body.get("Metadata") if isinstance(body.get("Metadata"), dict) else {}
    header = meta.get("X-Mailer-Delivery") or meta.get("x-mailer-delivery")
    did = _delivery_id(header or meta.get("delivery_id"))
    mid = None
    content = body.get("Content")
    if isinstance(content, str) and content:
        head = message_from_string(content[:65536])
        mid = head.get("Message-ID")
        if did is None:
            header = head.get("X-Mailer-Delivery")
            did = _delivery_id(header)
    return (str(mid).strip() if mid else None), did, (str(header) if header else None)


def postmark_events(body: dict) -> list[Event]:
    record = str(body.get("RecordType", ""))
    if body.get("ID") is None:
        raise ValidationError("Postmark posts an event with an ID", field="ID")
    event_id = f"{record}:{body['ID']}"[:MAX_EVENT_ID_CHARS]
    raw = json.dumps(body, ensure_ascii=False)
    mid, did, header = _postmark_ids(body)
    if record == "SpamComplaint":
        return [Event(event_id, _signed(_complaint(body.get("Email"), "abuse", message_id=mid, delivery_id=did,
                                                   evidence="Postmark SpamComplaint"), header), raw)]
    if record in ("Open", "Click"):
        geo = body.get("Geo") if isinstance(body.get("Geo"), dict) else {}
        return [Event(event_id, None, raw, tracking=Tracking(
            record.lower(), _text(body.get("Recipient")), mid, did, header, url=_text(body.get("OriginalLink")),
            ip=_text(geo.get("IP")), user_agent=_text(body.get("UserAgent")), when=_when(body.get("ReceivedAt"))))]
    if record != "Bounce":
        return [Event(event_id, None, raw, note=f"Postmark {record or 'unknown'}: nothing to do")]
    try:
        code = int(body.get("TypeCode", 0))
    except (TypeError, ValueError):
        code = 0
    table = POSTMARK_TYPE_REASONS.get(code, "onhold")
    if table is None:
        return [Event(event_id, None, raw, note=f"Postmark {body.get('Type', code)}: nothing to do")]
    if table.startswith("feedback:"):
        return [Event(event_id, _signed(_complaint(body.get("Email"), table.split(":", 1)[1], message_id=mid,
                                                   delivery_id=did, evidence=f"Postmark {body.get('Type', code)}"),
                                        header), raw)]
    rep = _bounce(body.get("Email"), str(body.get("Details", "")), str(body.get("Description", "")), "",
                  table_reason=table, message_id=mid, delivery_id=did)
    return [Event(event_id, _signed(rep, header), raw)]


# -- taking events into account ------------------------------------------------------------------
def receive(app, provider: str, events: list[Event]) -> list[bounces.Result]:
    """Apply each event once (one transaction per event, its id recorded with its effect)."""
    results = []
    for e in events:
        source = f"{provider}:{e.event_id}"
        try:
            with app.session() as s:
                seen = s.execute(select(WebhookEvent.id).where(WebhookEvent.provider == provider,
                                                               WebhookEvent.event_id == e.event_id)).first()
                if seen is not None:
                    results.append(bounces.Result(source, "duplicate", None, "event already taken into account"))
                    continue
                if e.tracking is not None:
                    result = _track(s, app.settings, source, provider, e.tracking)
                elif e.report is None:
                    result = bounces.Result(source, "ignored", None, e.note)
                else:
                    result = bounces.apply(s, app.settings, e.report, source=source, raw=e.raw,
                                           source_kind=provider, trusted=True)
                s.add(WebhookEvent(provider=provider, event_id=e.event_id, kind=result.outcome[:20],
                                   detail=f"{result.reason} {result.detail}".strip()[:1000]))
                s.flush()
        except IntegrityError:
            result = bounces.Result(source, "duplicate", None, "event already taken into account")
        results.append(result)
    return results


def _text(value: Any, limit: int = 2000) -> str | None:
    return str(value)[:limit] if value not in (None, "") else None


def _when(value: Any) -> datetime | None:
    """A provider's event time: epoch seconds (SendGrid, Mailgun) or ISO 8601 (SES, Postmark)."""
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(float(value), UTC)
        if isinstance(value, str) and value:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _track(s, settings: Settings, source: str, provider: str, t: Tracking) -> bounces.Result:
    """Record one open or click from a provider, matched like a bounce (Message-ID or signed header)."""
    if not settings.webhook_tracking:
        return bounces.Result(source, "ignored", None, f"{provider} {t.kind}: MAILER_WEBHOOK_TRACKING is off")
    report = bouncekit.Report(type="tracking", message_id=t.message_id, delivery_id=t.delivery_id,
                              recipients=[bouncekit.Recipient(address=t.address.lower())] if t.address else [])
    report.delivery_header = t.header if t.header and _delivery_id(t.header) == t.delivery_id else None
    delivery, why = bounces.find_delivery(s, settings, report, trusted=True)
    if delivery is None:
        return bounces.Result(source, "unmatched", None, why)
    if delivery.purpose == TRANSACTIONAL:
        return bounces.Result(source, "ignored", delivery.id, f"{provider} {t.kind}: transactional mail is not tracked")
    if settings.tracking_requires_consent and (
            delivery.customer_id is None or not consent.has_consent(s, settings, delivery.customer_id, "tracking")):
        return bounces.Result(source, "ignored", delivery.id,
                              f"{provider} {t.kind}: the customer has not consented to tracking")
    kind = tracking.record_reported(s, settings, delivery, t.kind, url=t.url, ip=t.ip, user_agent=t.user_agent,
                                    when=t.when, machine=t.machine)
    return bounces.Result(source, kind.value, delivery.id, f"{provider} {t.kind} recorded as {kind.value}")


def subscription(app, msg: dict) -> bounces.Result:
    """A verified SNS (Un)SubscriptionConfirmation: recorded and logged, never fetched."""
    event_id = str(msg.get("MessageId", ""))[:MAX_EVENT_ID_CHARS]
    url = str(msg.get("SubscribeURL", ""))[:2000]
    topic = str(msg.get("TopicArn", ""))[:300]
    try:
        with app.session() as s:
            if s.execute(select(WebhookEvent.id).where(WebhookEvent.provider == "ses",
                                                       WebhookEvent.event_id == event_id)).first() is None:
                s.add(WebhookEvent(provider="ses", event_id=event_id, kind="subscription",
                                   detail=f"{msg.get('Type')} for {topic}; confirm by visiting {url}"))
                s.flush()
    except IntegrityError:
        pass
    log.warning("SNS %s for topic %s: an operator must confirm it by visiting %s (mailer never fetches it)",
                msg.get("Type"), topic, url)
    return bounces.Result(f"ses:{event_id}", "subscription", None, f"recorded; confirm at {url}")
