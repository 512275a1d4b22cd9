"""``mailer bounces ingest``: DSNs and ARF complaints mapped to deliveries, suppressions updated."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from mailer import metrics
from mailer.addresses import email_hash
from mailer.clock import utcnow
from mailer.cli import main
from mailer.consent import ledger as consent
from mailer.customers.records import get_or_create
from mailer.delivery import bounces
from mailer.delivery import process as delivery
from mailer.delivery.compose import delivery_header, message_id, return_path
from mailer.gdpr import requests as gdpr
from mailer.instance_secrets import address_hash_salt
from mailer.models import (
    Bounce,
    BounceReport,
    ConsentEvent,
    Delivery,
    DeliveryStatus,
    Suppression,
    SuppressionReason,
    TrackingEvent,
    TrackingKind,
)
from tests.bounce_support import arf, dsn


def sent_delivery(app, email: str, *, purpose: str = "newsletter", grant: tuple[str, ...] = ("newsletter",)) -> Delivery:
    """A delivery the relay accepted earlier (status sent, Message-ID recorded)."""
    settings = app.settings
    with app.session() as s:
        c = get_or_create(s, settings, email, locale="en")
        s.flush()
        for p in grant:
            if not consent.has_consent(s, settings, c.id, p):
                consent.append(s, settings, customer=c, purpose=p, action="granted", source="signup_form")
        n = s.execute(select(func.count()).select_from(Delivery)).scalar_one()
        d = Delivery(idempotency_key=f"test:{email}:{n}", kind="order_delayed", customer_id=c.id, to_address=c.email,
                     to_hash=email_hash(c.email, address_hash_salt(settings)), locale="en", data={},
                     purpose=purpose, queue="bulk", status=DeliveryStatus.sent)
        s.add(d)
        s.flush()
        d.message_id = message_id(settings, d.id)
        s.flush()
        s.expunge(d)
        return d


def write(tmp_path, name: str, raw: bytes):
    path = tmp_path / name
    path.write_bytes(raw)
    return path


def test_hard_bounce_dsn_suppresses_the_address_and_marks_the_delivery_bounced(app, tmp_path):
    # Given a delivered mail and the DSN that came back to its VERP return path
    d = sent_delivery(app, "bob@example.org")
    report = write(tmp_path, "dsn.eml", dsn(to=return_path(app.settings, d.id), message_id=d.message_id,
                                             recipient="bob@example.org"))
    # When it is ingested
    (result,) = bounces.ingest(app, [report])
    # Then the address is suppressed as a hard bounce, the delivery is bounced, the report is kept
    assert (result.outcome, result.delivery_id) == ("hard", d.id) and "5.1.1" in result.detail
    with app.session() as s:
        assert s.get(Delivery, d.id).status is DeliveryStatus.bounced
        sup = s.execute(select(Suppression).where(Suppression.email_hash == d.to_hash)).scalar_one()
        assert sup.reason is SuppressionReason.hard_bounce
        b = s.execute(select(Bounce).where(Bounce.delivery_id == d.id)).scalar_one()
        assert (b.kind, b.status_code, b.reason) == ("hard", "5.1.1", "userunknown")
        # And the suppression's detail is compact, without the address; the raw copy is kept apart
        assert "bob@example.org" not in sup.detail and "userunknown" in sup.detail
        kept = s.execute(select(BounceReport).where(BounceReport.delivery_id == d.id)).scalar_one()
        assert kept.email_hash == d.to_hash and "Undelivered Mail" in kept.raw
        assert s.execute(select(TrackingEvent.kind).where(TrackingEvent.delivery_id == d.id)).scalar_one() \
            is TrackingKind.bounce
    # And ingesting the same report again changes nothing
    (again,) = bounces.ingest(app, [report])
    assert again.outcome == "duplicate"
    with app.session() as s:
        assert s.execute(select(func.count()).select_from(Bounce)).scalar_one() == 1
    # And the next mail to that address is suppressed at send time
    later = sent_delivery(app, "bob@example.org")
    with app.session() as s:
        s.get(Delivery, later.id).status = DeliveryStatus.queued
    assert delivery.process(app, later.id).status == "suppressed"


def test_soft_bounces_are_counted_and_suppress_at_the_limit(app, tmp_path):
    limit = app.settings.soft_bounce_limit
    results = []
    for i in range(limit):
        d = sent_delivery(app, "full@example.org")
        results += bounces.ingest(app, [write(tmp_path, f"soft{i}.eml", dsn(
            to=return_path(app.settings, d.id), message_id=d.message_id, recipient="full@example.org",
            status="5.2.2", diagnostic="smtp; 552 5.2.2 Mailbox full"))])
    assert [r.outcome for r in results] == ["soft"] * limit
    assert "suppressed" not in results[-2].detail and "suppressed (soft_bounce)" in results[-1].detail
    with app.session() as s:
        h = email_hash("full@example.org", address_hash_salt(app.settings))
        reasons = s.execute(select(Suppression.reason).where(Suppression.email_hash == h)).scalars().all()
        assert reasons == [SuppressionReason.soft_bounce]


def test_delay_notices_change_nothing(app, tmp_path):
    d = sent_delivery(app, "slow@example.org")
    (r,) = bounces.ingest(app, [write(tmp_path, "delayed.eml", dsn(
        to=return_path(app.settings, d.id), message_id=d.message_id, recipient="slow@example.org",
        status="4.4.1", action="delayed", diagnostic="smtp; 451 4.4.1 no answer from host"))])
    assert r.outcome == "delayed"
    with app.session() as s:
        assert s.get(Delivery, d.id).status is DeliveryStatus.sent
        assert s.execute(select(Suppression)).first() is None


def test_complaint_suppresses_and_withdraws_every_marketing_consent(app, tmp_path):
    # Given a newsletter mail to a customer who also consented to product updates
    d = sent_delivery(app, "angry@example.org", grant=("newsletter", "product_updates"))
    report = write(tmp_path, "arf.eml", arf(to="fbl@example.com", message_id=d.message_id,
                                             recipient="angry@example.org",
                                             mail_from=return_path(app.settings, d.id)))
    # When the mailbox provider's complaint report is ingested
    (r,) = bounces.ingest(app, [report])
    # Then the address is suppressed as a complaint and both consents are withdrawn in the ledger
    assert r.outcome == "complaint" and "newsletter" in r.detail and "product_updates" in r.detail
    with app.session() as s:
        sup = s.execute(select(Suppression).where(Suppression.email_hash == d.to_hash)).scalar_one()
        assert sup.reason is SuppressionReason.complaint and sup.scope == "all"
        for purpose in ("newsletter", "product_updates"):
            assert not consent.has_consent(s, app.settings, d.customer_id, purpose)
        sources = s.execute(select(ConsentEvent.source).where(ConsentEvent.customer_id == d.customer_id,
                                                              ConsentEvent.action == "withdrawn")).scalars().all()
        assert [x.value for x in sources] == ["complaint", "complaint"]
        assert s.execute(select(TrackingEvent.kind).where(TrackingEvent.delivery_id == d.id)).scalar_one() \
            is TrackingKind.complaint
    # And a second copy of the report changes nothing
    assert bounces.ingest(app, [report])[0].outcome == "duplicate"


def test_not_spam_feedback_changes_nothing(app, tmp_path):
    d = sent_delivery(app, "happy@example.org")
    (r,) = bounces.ingest(app, [write(tmp_path, "ns.eml", arf(to="fbl@example.com", message_id=d.message_id,
                                                               recipient="happy@example.org",
                                                               feedback_type="not-spam"))])
    assert r.outcome == "ignored"
    with app.session() as s:
        assert s.execute(select(Suppression)).first() is None


@pytest.mark.parametrize("case", ["wrong recipient", "ids disagree", "unknown message id", "not a report"])
def test_reports_that_cannot_be_mapped_change_nothing(app, tmp_path, case):
    d = sent_delivery(app, "victim@example.org")
    other = sent_delivery(app, "other@example.org")
    verp = return_path(app.settings, d.id)
    raw = {
        # A forged DSN to a guessable return path, about somebody else
        "wrong recipient": dsn(to=verp, message_id=None, recipient="someone@example.org"),
        "ids disagree": dsn(to=verp, message_id=other.message_id, recipient="victim@example.org"),
        "unknown message id": dsn(to="postmaster@example.com", message_id="<1.deadbeef@example.com>",
                                  recipient="victim@example.org"),
        "not a report": b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nJust a mail\r\n",
    }[case]
    (r,) = bounces.ingest(app, [write(tmp_path, "r.eml", raw)])
    assert r.rejected and r.outcome == ("not-a-report" if case == "not a report" else "unmatched")
    with app.session() as s:
        assert s.execute(select(Suppression)).first() is None
        assert s.execute(select(Bounce)).first() is None
        assert s.get(Delivery, d.id).status is DeliveryStatus.sent


def test_message_id_alone_is_enough(app, tmp_path):
    d = sent_delivery(app, "mid@example.org")
    (r,) = bounces.ingest(app, [write(tmp_path, "r.eml", dsn(to="postmaster@example.com", message_id=d.message_id,
                                                              recipient="mid@example.org"))])
    assert (r.outcome, r.delivery_id) == ("hard", d.id)


def test_cli_ingests_a_maildir_forever_moving_what_it_read_and_exits_for_this_run_only(app, tmp_path):
    # Given a Maildir with a DSN and a complaint in new/, an unmatched report in new/, an already
    # processed message in cur/ (Seen flag), and a stray file outside it
    a = sent_delivery(app, "m1@example.org")
    b = sent_delivery(app, "m2@example.org")
    maildir = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "1.mx").write_bytes(dsn(to=return_path(app.settings, a.id), message_id=a.message_id,
                                               recipient="m1@example.org"))
    (maildir / "new" / "2.mx").write_bytes(arf(to="fbl@example.com", message_id=b.message_id,
                                               recipient="m2@example.org"))
    (maildir / "new" / "3.mx").write_bytes(dsn(to="bounces+999999@example.com", message_id="<nope@example.com>",
                                               recipient="who@example.org"))
    (maildir / "cur" / "0.mx:2,S").write_bytes(b"Subject: old\r\n\r\nalready read\r\n")
    stray = write(tmp_path, "stray.eml", b"Subject: hello\r\n\r\nnot a report\r\n")
    unmatched = tmp_path / "Unmatched"
    env = {"MAILER_DATABASE_URL": app.settings.database_url, "MAILER_SECRET_KEY": app.settings.secret_key,
           "MAILER_BROKER_URL": "stub://", "MAILER_BOUNCE_UNMATCHED_DIR": str(unmatched)}
    # When `mailer bounces ingest` reads them
    res = CliRunner().invoke(main, ["bounces", "ingest", str(maildir), str(stray), "--json"], env=env)
    # Then both reports are applied, the unmatched one and the stray file are rejected, the exit code says so,
    # and the message already seen is not read again
    assert res.exit_code == 1, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert [(r["outcome"], r["delivery_id"]) for r in rows] == [("hard", a.id), ("complaint", b.id),
                                                                ("unmatched", None), ("not-a-report", None)]
    # And the processed messages moved to cur/ with the Seen flag, the unmatched one to the unmatched Maildir
    assert sorted(p.name for p in (maildir / "cur").iterdir()) == ["0.mx:2,S", "1.mx:2,S", "2.mx:2,S"]
    assert list((maildir / "new").iterdir()) == []
    assert [p.name for p in (unmatched / "new").iterdir()] == ["3.mx"] and (unmatched / "cur").is_dir()
    assert stray.exists()  # a file outside a Maildir is never moved
    # When cron runs it again on the Maildir alone
    res = CliRunner().invoke(main, ["bounces", "ingest", str(maildir)], env=env)
    # Then nothing is re-read and the exit code is about this run: 0
    assert res.exit_code == 0 and "0 report(s)" in res.output, res.output
    # And a directory that is not a Maildir is a clear error
    res = CliRunner().invoke(main, ["bounces", "ingest", str(tmp_path / "Maildir" / "new")], env=env)
    assert res.exit_code == 2 and "must be a Maildir" in res.output


def test_unmatched_reports_default_to_a_maildir_inside_the_ingested_one(app, tmp_path):
    # Given a Maildir holding a report for no known delivery, and no unmatched folder configured
    maildir = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "9.mx").write_bytes(dsn(to="bounces+424242@example.com", message_id=None,
                                               recipient="x@example.org"))
    # When it is ingested
    (r,) = bounces.ingest(app, [maildir])
    # Then it is unmatched and kept apart in .Unmatched (Maildir++ style)
    assert r.outcome == "unmatched"
    assert [p.name for p in (maildir / ".Unmatched" / "new").iterdir()] == ["9.mx"]


def test_a_sender_side_reason_in_the_diagnostic_never_suppresses_the_customer(app, tmp_path, caplog):
    # Given a DSN whose Status says 5.1.1 but whose diagnostic says our IP is blacklisted
    d = sent_delivery(app, "erin@example.org")
    raw = dsn(to=return_path(app.settings, d.id), message_id=d.message_id, recipient="erin@example.org",
              diagnostic="smtp; 550 5.7.1 Service unavailable; client host [192.0.2.10] blocked using zen.spamhaus.org")
    before = metrics.sender_refusals(relay="dsn", reason="blocked")
    # When it is ingested
    with caplog.at_level(logging.WARNING, logger="mailer.bounces"):
        (r,) = bounces.ingest(app, [write(tmp_path, "blk.eml", raw)])
    # Then it is a sender-side bounce: recorded, alerted and counted, but nothing is suppressed
    assert (r.outcome, r.reason) == ("sender", "blocked")
    assert metrics.sender_refusals(relay="dsn", reason="blocked") == before + 1
    assert any("sender-side refusal" in rec.getMessage() for rec in caplog.records)
    with app.session() as s:
        assert s.execute(select(Suppression)).first() is None
        assert s.execute(select(Bounce.kind)).scalars().all() == ["sender"]


@pytest.mark.parametrize("feedback_type", ["abuse", "opt-out", "fraud"])
def test_every_complaint_type_suppresses_and_withdraws_consent(app, tmp_path, feedback_type):
    # Given a complaint of this feedback type about a newsletter
    d = sent_delivery(app, "fay@example.org")
    raw = arf(to="fbl@example.com", message_id=d.message_id, recipient="fay@example.org", feedback_type=feedback_type)
    # When it is ingested
    (r,) = bounces.ingest(app, [write(tmp_path, "c.eml", raw)])
    # Then the address is suppressed and the marketing consent is withdrawn
    assert r.outcome == "complaint", r
    with app.session() as s:
        assert s.execute(select(Suppression.reason)).scalar_one() is SuppressionReason.complaint
        assert not consent.has_consent(s, app.settings, d.customer_id, "newsletter")


def test_a_redacted_complaint_is_matched_through_the_original_headers(app, tmp_path):
    # Given a feedback loop that redacts the recipient and strips the Message-ID, keeping the
    # return path and the original's signed X-Mailer-Delivery header
    d = sent_delivery(app, "gus@example.org")
    raw = arf(to="fbl@example.com", message_id=None, recipient="redacted@example.org",
              mail_from=return_path(app.settings, d.id), delivery_header=delivery_header(app.settings, d.id))
    assert b"gus@example.org" not in raw
    # When it is ingested
    (r,) = bounces.ingest(app, [write(tmp_path, "red.eml", raw)])
    # Then it is matched to the delivery and takes effect
    assert (r.outcome, r.delivery_id) == ("complaint", d.id)


def test_erasure_removes_raw_copies_and_the_address_from_stored_details(app, tmp_path):
    # Given a hard bounce ingested for an address, and a legacy suppression detail quoting the address
    d = sent_delivery(app, "hal@example.org")
    bounces.ingest(app, [write(tmp_path, "h.eml", dsn(to=return_path(app.settings, d.id), message_id=d.message_id,
                                                      recipient="hal@example.org"))])
    with app.session() as s:
        sup = s.execute(select(Suppression)).scalar_one()
        sup.detail = "legacy: Final-Recipient: rfc822; hal@example.org"
        assert s.execute(select(func.count()).select_from(BounceReport)).scalar_one() == 1
    # When the person is erased
    with app.session() as s:
        report = gdpr.erase(s, app.settings, "hal@example.org")
    # Then no raw copy remains and no stored detail holds the address
    assert report.bounce_reports == 1
    with app.session() as s:
        assert s.execute(select(BounceReport)).first() is None
        details = s.execute(select(Suppression.detail)).scalars().all()
        assert details and all("hal@example.org" not in (x or "") for x in details)
        assert all(b.raw is None for b in s.execute(select(Bounce)).scalars())


def test_raw_copies_are_purged_after_the_retention(app, tmp_path):
    # Given a raw copy received 100 days ago and one received today, with a 90-day retention
    d = sent_delivery(app, "ida@example.org")
    with app.session() as s:
        s.add(BounceReport(delivery_id=d.id, email_hash=d.to_hash, kind="bounce", source="mail", raw="old",
                           received_at=utcnow() - timedelta(days=100)))
        s.add(BounceReport(delivery_id=d.id, email_hash=d.to_hash, kind="bounce", source="mail", raw="new"))
    # When the purge runs
    with app.session() as s:
        n = bounces.purge_reports(s, app.settings.replace(bounce_retention_days=90))
    # Then only the old one is gone
    assert n == 1
    with app.session() as s:
        assert s.execute(select(BounceReport.raw)).scalars().all() == ["new"]


@pytest.mark.parametrize("forged", ["bad signature", "verp only", "unsigned header"])
def test_a_forged_redacted_complaint_withdraws_nobody_s_consent(app, tmp_path, forged):
    # Given a sent newsletter, and a "complaint" with a redacted recipient that names its delivery
    # only by something anybody can write: a signature that does not verify, the guessable VERP
    # return path, or an unsigned X-Mailer-Delivery
    d = sent_delivery(app, "ivy@example.org")
    header = {"bad signature": f"{d.id}.0123456789abcdef", "verp only": None, "unsigned header": str(d.id)}[forged]
    bare_verp = f"bounces+{d.id}@{app.settings.bounce_domain}"  # the older, unsigned form
    raw = arf(to="fbl@example.com", message_id=None, recipient="redacted@example.org",
              mail_from=bare_verp, delivery_header=header)
    # When it is ingested
    (r,) = bounces.ingest(app, [write(tmp_path, "forged.eml", raw)])
    # Then it is unmatched: nobody is suppressed and the consent is still held
    assert r.outcome == "unmatched", r
    with app.session() as s:
        assert s.execute(select(Suppression)).first() is None
        assert consent.has_consent(s, app.settings, d.customer_id, "newsletter")


@pytest.mark.parametrize("tampered", [False, True])
def test_a_redacted_complaint_is_matched_by_its_signed_verp_return_path_alone(app, tmp_path, tampered):
    # Given a feedback loop that redacts the recipient and strips both the Message-ID and the
    # X-Mailer-Delivery header, keeping only the original's return path (signed VERP), or the
    # same return path with its signature altered
    d = sent_delivery(app, "kim@example.org")
    verp = return_path(app.settings, d.id)
    if tampered:
        verp = verp.replace(verp.split("@")[0][-4:], "0000", 1)
    raw = arf(to="fbl@example.com", message_id=None, recipient="redacted@example.org", mail_from=verp)
    assert b"kim@example.org" not in raw and b"X-Mailer-Delivery" not in raw
    # When it is ingested
    (r,) = bounces.ingest(app, [write(tmp_path, "verp.eml", raw)])
    # Then the signed return path matches it and withdraws consent; a tampered one matches nothing
    with app.session() as s:
        if tampered:
            assert r.outcome == "unmatched", r
            assert consent.has_consent(s, app.settings, d.customer_id, "newsletter")
        else:
            assert (r.outcome, r.delivery_id) == ("complaint", d.id)
            assert not consent.has_consent(s, app.settings, d.customer_id, "newsletter")


def test_a_signed_delivery_header_alone_matches_a_bounce(app, tmp_path):
    # Given a DSN sent to a shared mailbox (no VERP), without the Message-ID, whose original
    # carries the signed X-Mailer-Delivery header
    d = sent_delivery(app, "jo@example.org")
    raw = dsn(to="postmaster@example.com", message_id=None, recipient="jo@example.org",
              delivery_header=delivery_header(app.settings, d.id))
    # When it is ingested
    (r,) = bounces.ingest(app, [write(tmp_path, "signed.eml", raw)])
    # Then it is matched to the delivery by the header
    assert (r.outcome, r.delivery_id) == ("hard", d.id)


def test_a_forged_delivery_header_on_a_bounce_suppresses_nobody(app, tmp_path):
    # Given a DSN naming the victim's delivery with a made-up signature
    d = sent_delivery(app, "kim@example.org")
    raw = dsn(to="postmaster@example.com", message_id=None, recipient="kim@example.org",
              delivery_header=f"{d.id}.ffffffffffffffff")
    # When it is ingested
    (r,) = bounces.ingest(app, [write(tmp_path, "forged.eml", raw)])
    # Then it is unmatched and says why
    assert r.outcome == "unmatched" and "signature" in r.detail
    with app.session() as s:
        assert s.execute(select(Suppression)).first() is None


def test_not_spam_feedback_keeps_the_consent(app, tmp_path):
    # Given a customer who holds newsletter consent, and a provider's not-spam report about our mail
    d = sent_delivery(app, "lea@example.org")
    raw = arf(to="fbl@example.com", message_id=d.message_id, recipient="lea@example.org", feedback_type="not-spam")
    # When it is ingested
    (r,) = bounces.ingest(app, [write(tmp_path, "ns.eml", raw)])
    # Then nothing changes: no suppression, no bounce record, the consent is still held
    assert r.outcome == "ignored"
    with app.session() as s:
        assert s.execute(select(Suppression)).first() is None
        assert s.execute(select(Bounce)).first() is None
        assert consent.has_consent(s, app.settings, d.customer_id, "newsletter")


@pytest.mark.parametrize(("feedback_type", "reason"), [("auth-failure", "authfailure"), ("virus", "virusdetected")])
def test_auth_failure_and_virus_reports_alert_and_penalise_nobody(app, tmp_path, caplog, feedback_type, reason):
    # Given a feedback report about our mail itself (it failed authentication, or carried a virus)
    d = sent_delivery(app, "max@example.org")
    raw = arf(to="fbl@example.com", message_id=d.message_id, recipient="max@example.org",
              feedback_type=feedback_type)
    # When it is ingested
    with caplog.at_level(logging.WARNING, logger="mailer.bounces"):
        (r,) = bounces.ingest(app, [write(tmp_path, "fb.eml", raw)])
    # Then it is a sender-side alert with its reason: nobody suppressed, consent kept
    assert (r.outcome, r.reason) == ("sender", reason)
    assert any("sender-side refusal" in m for m in caplog.messages)
    with app.session() as s:
        assert s.execute(select(Suppression)).first() is None
        assert consent.has_consent(s, app.settings, d.customer_id, "newsletter")
        assert s.execute(select(Bounce.kind, Bounce.reason)).one() == ("sender", reason)
