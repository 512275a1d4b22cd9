"""Bounces and complaints that arrive after the relay accepted a mail, and the bounce policy.

This module owns what a bounce or complaint *changes*: reading is :mod:`mailer.bouncekit`'s
(``mailer bounces explain`` shows its reading), and ESP webhooks (:mod:`mailer.delivery.webhooks`)
hand their events here as the same :class:`mailer.bouncekit.Report`.

Each recipient's **action** (from bouncekit's reason table) decides:

* ``suppress`` (``userunknown``, ``hostunknown``, ``hasmoved``, permanent ``notaccept``): a hard
  bounce; the address is suppressed at once (:func:`record_bounce`).
* ``soft`` (full mailbox, disabled for now, remote system trouble, expired): counted; the
  address is suppressed once it has ``MAILER_SOFT_BOUNCE_LIMIT`` soft bounces.
* ``sender`` (our reputation, authentication, content, policy, rate, size): never counts
  against the customer; the operator is warned and ``mailer_sender_refusals_total{relay,reason}``
  counts it (:func:`sender_refusal`).  In a delay report it only alerts (the remote MTA retries).
* ``ignore``: delays, auto-replies, delivered reports change nothing; a failure whose cause
  cannot be decided (``onhold``, ``undefined``) is recorded and penalises nobody.
* ``complaint``: every complaint (ARF feedback types in :data:`COMPLAINT_TYPES`, unknown ones
  too, and non-ARF complaints) suppresses the address and withdraws every marketing consent.
  ``not-spam`` changes nothing; ``auth-failure`` and ``virus`` reports are about our mail, so
  they are sender-side alerts.

A report is mapped to its delivery by the original's Message-ID (it carries an HMAC, so it
cannot be guessed), by a signed delivery id (``X-Mailer-Delivery: <id>.<HMAC>`` or the VERP
return path ``bounces+<id>.<HMAC>@``, as good as the Message-ID), or by a bare delivery id (an
unsigned header or an older ``bounces+<id>@``, both guessable): found by delivery id alone, the report must name the
delivery's recipient, except a complaint whose recipient the feedback loop redacted.  When both
are present they must agree.  Anything else is ``unmatched`` and changes nothing.  The same
report twice changes nothing the second time (one bounce record per delivery and kind).

Stored: a compact detail without the address (suppressions, bounces) and the raw report in
``bounce_reports`` for ``MAILER_BOUNCE_RETENTION_DAYS`` (purged by ``mailer gdpr purge``,
removed at once by ``mailer gdpr erase``).

Maildirs are ingested so that cron can run it forever: only ``new/`` (and ``cur/`` entries
without the Seen flag) are read; each processed message moves to ``cur/`` with the info suffix
``:2,S``; unmatched ones and non-reports move to a Maildir of their own (``--unmatched-dir``,
``MAILER_BOUNCE_UNMATCHED_DIR``, default ``.Unmatched`` inside the Maildir); the result (and
the CLI's exit code) is about this run only.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, func, select, update

from mailer import bouncekit, metrics
from mailer.addresses import email_hash
from mailer.bouncekit import reasons as bk
from mailer.clock import utcnow
from mailer.consent import ledger as consent
from mailer.consent import suppressions
from mailer.delivery import brakes
from mailer.delivery.compose import verified_delivery_id
from mailer.errors import ConsentError, ValidationError
from mailer.instance_secrets import address_hash_salt
from mailer.models import (
    Bounce,
    BounceReport,
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

log = logging.getLogger("mailer.bounces")

#: ARF feedback types (RFC 5965 section 7.3, plus the registered ``opt-out``) that are the
#: recipient's complaint; an unknown type is treated as a complaint too (consent is law).
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "opt-out", "other"})
#: Feedback types that are not the recipient's complaint: ``not-spam`` is the opposite.
NOT_COMPLAINT_TYPES = frozenset({"not-spam"})
#: Feedback types about our mail itself -> the sender-side reason they raise.
SENDER_FEEDBACK_REASONS = {"auth-failure": "authfailure", "virus": "virusdetected"}
#: Largest report read, bytes (a DSN may carry the whole original mail).
MAX_REPORT_BYTES = 10 * 1024 * 1024
#: Largest raw copy kept in bounce_reports, characters.
MAX_RAW_CHARS = 256 * 1024
#: Rows deleted per statement by :func:`purge_reports`.
PURGE_BATCH_ROWS = 1000
#: Default Maildir (inside the ingested one, Maildir++ style) for unmatched reports.
DEFAULT_UNMATCHED_FOLDER = ".Unmatched"
#: Recipient local parts that a feedback loop uses for a redacted address.
_REDACTED = re.compile(r"^(x+|\*+|#+|redacted|removed|anonymi[sz]ed|hidden|\[redacted\])$|redacted", re.I)
#: Reasons that do not name the mailbox (an x.7.x security/policy status then makes it sender-side).
_VAGUE_REASONS = frozenset({"expired", "onhold", "undefined", "systemfull", "systemerror", "networkerror"})
#: Placeholder for the address in stored evidence.
ADDRESS_PLACEHOLDER = "[recipient]"


@dataclass(frozen=True)
class Result:
    """What one report did."""

    source: str
    outcome: str            # hard | soft | sender | complaint | onhold | delayed | ignored | duplicate
                            # | unmatched | not-a-report
    delivery_id: int | None = None
    detail: str = ""
    reason: str = ""

    @property
    def rejected(self) -> bool:
        return self.outcome in ("unmatched", "not-a-report")


# -- the bounce policy (shared with live SMTP replies in mailer.delivery.process) ---------------
def sender_refusal(delivery: Delivery, *, relay: str, code: int | None, enhanced: str | None, reason: str,
                   reply: str | None, effect: str) -> None:
    """Tell the operator about a refusal that is about us, not the recipient (log and metric)."""
    metrics.count_sender_refusal(relay=relay, reason=reason)
    log.warning("delivery %s %s: sender-side refusal, not the recipient's fault: relay %s, code %s, "
                "enhanced %s, reason %s; reply: %s", delivery.id, effect, relay or "unknown", code,
                enhanced or "none", reason, reply,
                extra={"delivery_id": delivery.id, "relay": relay or "unknown", "smtp_code": code,
                       "enhanced": enhanced, "refusal_reason": reason})


def record_bounce(settings, s, delivery: Delivery, *, kind: str, status_code: str | None, reason: str,
                  raw: str | None) -> str | None:
    """Store a hard or soft bounce and apply the suppression rules; return the suppression made.

    Hard: the address is suppressed at once.  Soft: counted, and suppressed once the
    address has ``MAILER_SOFT_BOUNCE_LIMIT`` soft bounces.  The suppression's detail is
    compact and never holds the address (``raw`` stays on the bounce row, which erasure clears).
    """
    s.add(Bounce(delivery_id=delivery.id, email_hash=delivery.to_hash, kind=kind, status_code=status_code,
                 reason=reason, raw=raw))
    s.add(TrackingEvent(delivery_id=delivery.id, campaign_id=delivery.campaign_id,
                        customer_id=delivery.customer_id, kind=TrackingKind.bounce))
    s.flush()
    what = f"{status_code or '-'} {reason}, delivery {delivery.id}"
    if kind == "hard":
        suppressions.suppress(s, address_hash=delivery.to_hash, email=delivery.to_address,
                              reason=SuppressionReason.hard_bounce, detail=f"hard bounce: {what}")
        metrics.count("bounced", queue=delivery.queue, kind=delivery.kind)
        # A stale list: the hard-bounce brake may pause the campaign (mailer/delivery/brakes.py).
        brakes.check(s, settings, delivery.campaign_id)
        return SuppressionReason.hard_bounce.value
    metrics.count("soft_bounced", queue=delivery.queue, kind=delivery.kind)
    # Soft bounces of this address so far (bounces.email_hash is indexed).
    soft = s.execute(select(func.count()).select_from(Bounce)
                     .where(Bounce.email_hash == delivery.to_hash, Bounce.kind == "soft")).scalar_one()
    if soft >= settings.soft_bounce_limit:
        suppressions.suppress(s, address_hash=delivery.to_hash, email=delivery.to_address,
                              reason=SuppressionReason.soft_bounce, detail=f"{soft} soft bounces; last: {what}")
        return SuppressionReason.soft_bounce.value
    return None


# -- mapping a report to its delivery ------------------------------------------------------------
def _norm_mid(mid: str | None) -> str | None:
    mid = (mid or "").strip()
    if not mid or len(mid) > 500:
        return None
    return mid if mid.startswith("<") else f"<{mid.strip('<>')}>"


def _redacted(address: str | None) -> bool:
    return address is None or bool(_REDACTED.search(address.split("@")[0]))


def find_delivery(s, settings: Settings, report: bouncekit.Report, *,
                  trusted: bool = False) -> tuple[Delivery | None, str]:
    """The delivery a report is about, or None and why (see the module docstring).

    ``trusted``: the report came through an authenticated webhook, so a delivery id is believed
    when the event's address (if any) agrees.
    """
    mid = _norm_mid(report.message_id)
    signed = None
    if report.delivery_header and "." in report.delivery_header:
        # A signed X-Mailer-Delivery (<id>.<HMAC>) is as good as the Message-ID; one whose HMAC
        # does not verify was forged (or comes from another instance) and names nothing.
        signed = verified_delivery_id(settings, report.delivery_header)
        if signed is None or signed != report.delivery_id:
            return None, "the signature of the X-Mailer-Delivery header or VERP return path does not verify"
    # Unique index on deliveries.message_id.
    by_mid = s.execute(select(Delivery).where(Delivery.message_id == mid)).scalar_one_or_none() if mid else None
    by_id = s.get(Delivery, report.delivery_id) if report.delivery_id is not None else None
    if by_mid is not None and by_id is not None and by_mid.id != by_id.id:
        return None, f"delivery id {by_id.id} but Message-ID {mid} is delivery {by_mid.id}"
    if by_mid is not None:
        return by_mid, ""
    named = [r.address for r in report.recipients if r.address]
    salt = address_hash_salt(settings)
    if by_id is not None and signed == by_id.id:
        # A signed id proves the delivery; a report that names another, unredacted recipient
        # is about somebody else (a forward that bounced further on) and decides nothing.
        if (not named or all(_redacted(a) for a in named)
                or any(email_hash(a, salt) == by_id.to_hash for a in named)):
            return by_id, ""
        return None, f"the report's recipient does not match the recipient of delivery {by_id.id}"
    if by_id is None:
        what = [f"delivery id {report.delivery_id}"] if report.delivery_id is not None else []
        what += [f"Message-ID {mid}"] if mid else []
        return None, ("no delivery for " + " or ".join(what)) if what else "no delivery id or Message-ID to go by"
    if any(email_hash(a, salt) == by_id.to_hash for a in named):
        return by_id, ""
    if report.type == "complaint" and all(_redacted(a) for a in named or [None]):
        # A feedback loop that redacted the recipient: only the original's signed ids (the
        # Message-ID, a signed X-Mailer-Delivery or VERP, above) may decide; a bare VERP id or
        # an unsigned header is guessable, so it could withdraw somebody else's consent.
        return None, (f"redacted complaint names delivery {by_id.id} only by a guessable id "
                      "(no Message-ID or signed X-Mailer-Delivery)")
    if trusted and not named:
        return by_id, ""
    if not named:
        return None, f"found delivery {by_id.id} by delivery id only, but the report names no recipient"
    return None, f"the report's recipient does not match the recipient of delivery {by_id.id}"


def _recipient_for(report: bouncekit.Report, delivery: Delivery, settings: Settings) -> bouncekit.Recipient | None:
    salt = address_hash_salt(settings)
    mine = [r for r in report.recipients if r.address and email_hash(r.address, salt) == delivery.to_hash]
    if mine:
        return mine[0]
    acting = [r for r in report.recipients if r.action != bk.IGNORE]
    return (acting or report.recipients or [None])[0]


def _already(s, delivery_id: int, kind: str) -> bool:
    # bounces by delivery: at most a handful of rows per delivery.
    return s.execute(select(Bounce.id).where(Bounce.delivery_id == delivery_id, Bounce.kind == kind)
                     .limit(1)).first() is not None


def _scrub(text: str, delivery: Delivery) -> str:
    if delivery.to_address:
        text = re.sub(re.escape(delivery.to_address), ADDRESS_PLACEHOLDER, text, flags=re.IGNORECASE)
    return text


def _keep_raw(s, delivery: Delivery, kind: str, source_kind: str, raw: str) -> None:
    s.add(BounceReport(delivery_id=delivery.id, email_hash=delivery.to_hash, kind=kind, source=source_kind,
                       raw=raw[:MAX_RAW_CHARS]))


def _mark_bounced(s, delivery: Delivery, detail: str) -> None:
    # Delivery row: sent -> bounced (a report for a delivery not marked sent keeps its status).
    s.execute(update(Delivery).where(Delivery.id == delivery.id, Delivery.status == DeliveryStatus.sent)
              .values(status=DeliveryStatus.bounced, reason=f"bounced: {detail}"[:1000])
              .execution_options(synchronize_session=False))


# -- applying ------------------------------------------------------------------------------------
def apply(s, settings: Settings, report: bouncekit.Report, *, source: str, raw: str,
          source_kind: str = "mail", trusted: bool = False) -> Result:
    """Record one report (bouncekit's reading of a mail, or a webhook event) against its delivery."""
    if report.type == "not_a_report":
        return Result(source, "not-a-report", None, report.evidence or "not a bounce or complaint")
    delivery, why = find_delivery(s, settings, report, trusted=trusted)
    if delivery is None:
        return Result(source, "unmatched", None, why)
    if report.type == "complaint":
        return _complaint(s, settings, delivery, report, source, raw, source_kind)
    rcpt = _recipient_for(report, delivery, settings)
    if rcpt is None:
        return Result(source, "ignored", delivery.id, f"{report.type}: no recipient named")
    if (rcpt.action in (bk.SOFT, bk.IGNORE) and rcpt.reason in _VAGUE_REASONS
            and re.match(r"[45]\.7\.", rcpt.status or "")):
        # A security/policy status (x.7.x) with no readable cause is about us, never the mailbox.
        rcpt = bouncekit.Recipient(rcpt.address, rcpt.status, rcpt.smtp_code, "policyviolation", bk.SENDER,
                                   rcpt.evidence)
    status = rcpt.status or (rcpt.smtp_code or "")
    detail = f"{status or '-'} {rcpt.reason}"
    evidence = _scrub(rcpt.evidence or report.evidence or "", delivery)[:1000]
    if report.type in ("delay", "auto_reply") or rcpt.action == bk.IGNORE and rcpt.reason in (
            "delivered", "vacation"):
        if rcpt.action == bk.SENDER:
            sender_refusal(delivery, relay=_relay(delivery, source_kind), code=_code(rcpt.smtp_code),
                           enhanced=rcpt.status or None, reason=rcpt.reason, reply=evidence, effect="delayed")
        outcome = {"delay": "delayed", "auto_reply": "ignored"}.get(report.type, "ignored")
        return Result(source, outcome, delivery.id, f"{report.type}: {detail}: nothing to do", rcpt.reason)
    kind = {bk.SUPPRESS: "hard", bk.SOFT: "soft", bk.SENDER: "sender"}.get(rcpt.action, "onhold")
    if _already(s, delivery.id, kind):
        return Result(source, "duplicate", delivery.id, f"{kind} bounce already recorded", rcpt.reason)
    _keep_raw(s, delivery, "bounce", source_kind, raw)
    suppressed = None
    if kind in ("hard", "soft"):
        suppressed = record_bounce(settings, s, delivery, kind=kind, status_code=(status or None) and status[:20],
                                   reason=rcpt.reason, raw=evidence)
    else:
        s.add(Bounce(delivery_id=delivery.id, email_hash=delivery.to_hash, kind=kind,
                     status_code=(status or None) and status[:20], reason=rcpt.reason, raw=evidence))
        s.add(TrackingEvent(delivery_id=delivery.id, campaign_id=delivery.campaign_id,
                            customer_id=delivery.customer_id, kind=TrackingKind.bounce))
        if kind == "sender":
            sender_refusal(delivery, relay=_relay(delivery, source_kind), code=_code(rcpt.smtp_code),
                           enhanced=rcpt.status or None, reason=rcpt.reason, reply=evidence, effect="bounced later")
    _mark_bounced(s, delivery, f"{detail} ({rcpt.action})")
    log.info("delivery %s bounced (%s): %s", delivery.id, kind, detail, extra={"delivery_id": delivery.id})
    return Result(source, kind, delivery.id, detail + (f"; suppressed ({suppressed})" if suppressed else ""),
                  rcpt.reason)


def _relay(delivery: Delivery, source_kind: str) -> str:
    """The relay label of the sender-refusal metric: the delivery's relay, else "dsn" or the ESP's name."""
    return delivery.relay or ("dsn" if source_kind == "mail" else source_kind)


def _code(smtp: str | None) -> int | None:
    return int(smtp) if smtp and smtp.isdigit() else None


def _complaint(s, settings: Settings, delivery: Delivery, report: bouncekit.Report, source: str, raw: str,
               source_kind: str) -> Result:
    ftype = (report.feedback_type or "other").lower()
    if ftype in NOT_COMPLAINT_TYPES:
        return Result(source, "ignored", delivery.id, f"feedback type {ftype!r} is not a complaint", "feedback")
    if ftype in SENDER_FEEDBACK_REASONS:
        reason = SENDER_FEEDBACK_REASONS[ftype]
        if _already(s, delivery.id, "sender"):
            return Result(source, "duplicate", delivery.id, f"{ftype} report already recorded", reason)
        _keep_raw(s, delivery, "complaint", source_kind, raw)
        s.add(Bounce(delivery_id=delivery.id, email_hash=delivery.to_hash, kind="sender", status_code=ftype,
                     reason=reason, raw=None))
        sender_refusal(delivery, relay=_relay(delivery, source_kind), code=None, enhanced=None, reason=reason,
                       reply=f"{ftype} feedback report", effect="reported")
        return Result(source, "sender", delivery.id, f"{ftype} report about our mail ({reason})", reason)
    if _already(s, delivery.id, "complaint"):
        return Result(source, "duplicate", delivery.id, "complaint already recorded", "feedback")
    _keep_raw(s, delivery, "complaint", source_kind, raw)
    s.add(Bounce(delivery_id=delivery.id, email_hash=delivery.to_hash, kind="complaint",
                 status_code=ftype[:20], reason="feedback", raw=None))
    s.add(TrackingEvent(delivery_id=delivery.id, campaign_id=delivery.campaign_id, customer_id=delivery.customer_id,
                        kind=TrackingKind.complaint))
    suppressions.suppress(s, address_hash=delivery.to_hash, email=delivery.to_address,
                          reason=SuppressionReason.complaint,
                          detail=f"{ftype} complaint ({source_kind}) about delivery {delivery.id}")
    withdrawn = _withdraw_marketing(s, settings, delivery)
    metrics.count("complained", queue=delivery.queue, kind=delivery.kind)
    log.warning("delivery %s: complaint (%s); suppressed, consent withdrawn for %s", delivery.id,
                ftype, ", ".join(withdrawn) or "nothing", extra={"delivery_id": delivery.id})
    # The complaint brake may pause the campaign, in this transaction (mailer/delivery/brakes.py).
    brake = brakes.check(s, settings, delivery.campaign_id)
    paused = f"; campaign {delivery.campaign_id} paused by the {brake} brake" if brake else ""
    return Result(source, "complaint", delivery.id,
                  f"{ftype}; suppressed; consent withdrawn: {', '.join(withdrawn) or 'none held'}{paused}",
                  "feedback")


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


# -- reading sources and ingesting ---------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One message to ingest; ``maildir`` is set when it is a file of a Maildir (then it is moved)."""

    name: str
    raw: bytes
    path: Path | None = None
    maildir: Path | None = None


def _is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def _seen(name: str) -> bool:
    return ":2," in name and "S" in name.rsplit(":2,", 1)[1]


def iter_sources(paths: Iterable[str | Path]) -> Iterator[Source]:
    """Every message to ingest: a Maildir's ``new/`` and unseen ``cur/`` files, files and mbox files."""
    for raw_path in paths:
        path = Path(raw_path)
        if path.is_dir():
            if not _is_maildir(path):
                raise ValidationError(f"{path}: a directory must be a Maildir (with cur/ and new/)",
                                      field="PATH", where=str(path))
            files = sorted(p for p in (path / "new").iterdir() if p.is_file() and not p.name.startswith("."))
            files += sorted(p for p in (path / "cur").iterdir()
                            if p.is_file() and not p.name.startswith(".") and not _seen(p.name))
            for f in files:
                yield Source(str(f), f.read_bytes() if f.stat().st_size <= MAX_REPORT_BYTES else b"", f, path)
        elif path.is_file():
            if path.stat().st_size > MAX_REPORT_BYTES:
                yield Source(str(path), b"", path)
                continue
            for name, index, raw in bouncekit.read_sources(path):
                yield Source(name if index is None else f"{name}#{index}", raw, path)
        else:
            raise ValidationError(f"{path}: no such file or directory", field="PATH", where=str(path))


def _maildir(root: Path) -> Path:
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def file_away(source: Source, result: Result, unmatched_dir: Path | None) -> Path | None:
    """Move a Maildir message: processed ones to ``cur/`` (``:2,S``), rejected ones to the unmatched Maildir."""
    if source.maildir is None or source.path is None:
        return None
    base, _, info = source.path.name.partition(":2,")
    if result.rejected:
        target = _maildir(unmatched_dir or source.maildir / DEFAULT_UNMATCHED_FOLDER) / "new" / base
    else:
        flags = "".join(sorted(set(info) | {"S"}))
        target = source.maildir / "cur" / f"{base}:2,{flags}"
    os.replace(source.path, target)
    return target


def ingest(app, paths: Iterable[str | Path], *, unmatched_dir: str | Path | None = None) -> list[Result]:
    """Read and apply every report found in ``paths``; one transaction per report, then file it away."""
    chosen = unmatched_dir or app.settings.bounce_unmatched_dir
    where = Path(chosen) if chosen else None
    results: list[Result] = []
    for source in iter_sources(paths):
        if not source.raw:
            result = Result(source.name, "not-a-report", None, f"empty or larger than {MAX_REPORT_BYTES} bytes")
        else:
            report = bouncekit.classify(source.raw, verp_prefix="bounces")
            with app.session() as s:
                result = apply(s, app.settings, report, source=source.name,
                               raw=source.raw.decode("utf-8", "replace"))
        file_away(source, result, where)
        results.append(result)
    return results


def purge_reports(session, settings: Settings, older_than_days: int | None = None) -> int:
    """Delete raw bounce/complaint copies older than ``older_than_days`` (default ``MAILER_BOUNCE_RETENTION_DAYS``)."""
    days = settings.bounce_retention_days if older_than_days is None else older_than_days
    if days < 0:
        raise ValidationError(f"bounce retention must be 0 or more days, got {days}", field="older_than_days")
    cutoff = utcnow() - timedelta(days=days)
    total = 0
    while True:
        batch = select(BounceReport.id).where(BounceReport.received_at < cutoff).limit(PURGE_BATCH_ROWS)
        deleted = session.execute(delete(BounceReport).where(BounceReport.id.in_(batch.scalar_subquery()))
                                  .execution_options(synchronize_session=False)).rowcount
        total += deleted
        if deleted < PURGE_BATCH_ROWS:
            return total
