"""The compliance services behind the console: customer search, the profile read model,
suppressions added and lifted by a person, the ledger browser and the streamed export."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from mailer import db
from mailer.addresses import email_hash
from mailer.cli import main
from mailer.compliance import ledger as ledger_view
from mailer.compliance import profile, search
from mailer.consent import export as consent_export
from mailer.consent import suppressions
from mailer.errors import NotFound, ValidationError
from mailer.instance_secrets import address_hash_salt
from mailer.models import Suppression, SuppressionReason
from tests.compliance_support import IP, UA, WORDING, WORDING_SHA, seed_person

FROZEN = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def test_search_finds_by_email_prefix_and_by_name_prefix(settings):
    # Given three customers
    seed_person(settings, "ada@example.com", first_name="Ada", last_name="Lovelace")
    seed_person(settings, "adam@example.org", first_name="Adam", last_name="Smith")
    seed_person(settings, "grace@example.com", first_name="Grace", last_name="Hopper")
    with db.session_scope(settings) as s:
        # When searching an e-mail prefix (any case), a first name, a last name and "first last"
        by_mail = [h.email for h in search.search(s, "ADA")]
        by_full = [h.email for h in search.search(s, "ada@example.com")]
        by_last = [h.email for h in search.search(s, "hop")]
        by_both = [h.email for h in search.search(s, "grace hop")]
        by_swap = [h.email for h in search.search(s, "smith ad")]
        none = search.search(s, "zed")
    # Then each finds exactly the customers it names, ordered by e-mail
    assert by_mail == ["ada@example.com", "adam@example.org"]
    assert by_full == ["ada@example.com"]
    assert by_last == ["grace@example.com"]
    assert by_both == ["grace@example.com"]
    assert by_swap == ["adam@example.org"]
    assert none == []


@pytest.mark.parametrize("bad", ["", "   ", "x" * 321, "a\x00b"])
def test_search_refuses_empty_overlong_and_control_text_naming_the_field(settings, bad):
    with db.session_scope(settings) as s, pytest.raises(ValidationError) as err:
        search.search(s, bad)
    assert err.value.field == "q"


def test_profile_shows_consent_with_proof_mail_tracking_and_suppressions(settings):
    # Given a customer with a confirmed newsletter grant, a withdrawn loyalty consent, a mail and an open
    cid = seed_person(settings)
    # When the profile is read
    with db.session_scope(settings) as s:
        p = profile.load(s, cid)
        consent = {c.purpose: c for c in p.consent}
        proof = consent["newsletter"].history[0]
        # Then current consent is per purpose, with the full proof of the grant
        assert consent["newsletter"].granted is True and consent["loyalty"].granted is False
        assert [e.action for e in consent["loyalty"].history] == ["withdrawn", "granted"]
        assert (proof.wording_text, proof.wording_sha256, proof.ip, proof.user_agent) == (WORDING, WORDING_SHA,
                                                                                         IP, UA)
        assert proof.confirmed_at is not None and proof.form_id == "footer"
        # And the mail with its SMTP reply, the open, tags and attributes
        assert [(d.status.value, d.smtp_reply) for d in p.deliveries] == [("sent", "250 2.0.0 Ok: queued as ABC123")]
        assert [t.kind.value for t in p.tracking] == ["open"]
        assert p.tags == ["VIP"] and p.attributes == {"shoe_size": "42"}
        assert p.suppressions == [] and p.pending_sends == []


def test_profile_of_an_unknown_customer_is_not_found(settings):
    with db.session_scope(settings) as s, pytest.raises(NotFound):
        profile.load(s, 999)


def test_a_person_adds_a_manual_suppression_and_lifts_it_but_never_an_erasure(settings):
    seed_person(settings)
    h = email_hash("ada@example.com", address_hash_salt(settings))
    # Given a manual suppression added with a reason, and an erasure tombstone
    with db.session_scope(settings) as s:
        row = suppressions.add_manual(s, address_hash=h, email="ada@example.com", reason="asked by phone")
        manual_id = row.id
        suppressions.suppress(s, address_hash=h, email=None, reason=SuppressionReason.erased)
        erased_id = s.query(Suppression).filter_by(reason=SuppressionReason.erased).one().id
        # Then the manual one stops mail (the send path's own check)
        assert suppressions.suppression_for(s, h, "newsletter") is not None
    # When the manual one is lifted with a reason
    with db.session_scope(settings) as s:
        suppressions.remove(s, suppression_id=manual_id, address_hash=h, reason="address confirmed")
    # Then it is gone; and the tombstone cannot be lifted, nor anything without a reason
    with db.session_scope(settings) as s:
        assert [r.reason for r in suppressions.for_address(s, h)] == [SuppressionReason.erased]
        with pytest.raises(ValidationError) as err:
            suppressions.remove(s, suppression_id=erased_id, address_hash=h, reason="oops")
        assert err.value.field == "suppression_id"
        with pytest.raises(ValidationError) as err:
            suppressions.add_manual(s, address_hash=h, email=None, reason="  ")
        assert err.value.field == "reason"
        with pytest.raises(NotFound):
            suppressions.remove(s, suppression_id=erased_id, address_hash="other", reason="x")


def test_ledger_pages_by_keyset_with_filters(settings):
    # Given two people with three events each (newsletter grant, loyalty grant and withdrawal)
    seed_person(settings, "ada@example.com")
    seed_person(settings, "bob@example.com", first_name="Bob")
    with db.session_scope(settings) as s:
        # When paging two at a time over everything, and filtering by purpose and source
        first = ledger_view.page(s, ledger_view.Filters(), rows=2)
        second = ledger_view.page(s, ledger_view.Filters(), before_seq=first.next_before, rows=2)
        third = ledger_view.page(s, ledger_view.Filters(), before_seq=second.next_before, rows=2)
        loyalty = ledger_view.page(s, ledger_view.parse_filters("loyalty", "checkout", None, None))
        # Then pages are newest first without overlap, and the last says so
        assert [e.seq for e in first.events + second.events + third.events] == [6, 5, 4, 3, 2, 1]
        assert third.next_before is None
        assert [(e.purpose, e.source.value) for e in loyalty.events] == [("loyalty", "checkout")] * 2
    with pytest.raises(ValidationError) as err:
        ledger_view.parse_filters(None, "fax", None, None)
    assert err.value.field == "source"
    with pytest.raises(ValidationError) as err:
        ledger_view.parse_filters(None, None, "yesterday", None)
    assert err.value.field == "since"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_streamed_export_is_byte_identical_to_the_cli_export(settings, tmp_path, monkeypatch, fmt):
    # Given a ledger, and one clock for both exports (the begin record names its time)
    seed_person(settings, "ada@example.com")
    seed_person(settings, "bob@example.com", first_name="Bob")
    monkeypatch.setattr(consent_export, "utcnow", lambda: FROZEN)
    monkeypatch.setattr(ledger_view, "CHUNK_CHARS", 100)  # many chunks, so the hand-over is exercised
    out = tmp_path / f"ledger.{fmt}"
    # When the CLI writes its file and the console streams the same export
    env = {"MAILER_DATABASE_URL": settings.database_url, "MAILER_SECRET_KEY": settings.secret_key}
    result = CliRunner().invoke(main, ["consent", "export", "--format", fmt, "-o", str(out)], env=env)
    assert result.exit_code == 0, result.output
    streamed = b"".join(ledger_view.stream_export(settings, fmt=fmt, filters=ledger_view.Filters()))
    # Then the bytes are the same, and the file verifies
    assert streamed == out.read_bytes()
    assert len(streamed) > 1000
    from mailer.consent import verify
    assert verify.verify_stream(io.BytesIO(streamed), fmt).ok


def test_streamed_export_with_a_purpose_filter_matches_the_cli_filter(settings, tmp_path, monkeypatch):
    seed_person(settings, "ada@example.com")
    monkeypatch.setattr(consent_export, "utcnow", lambda: FROZEN)
    out = tmp_path / "loyalty.jsonl"
    env = {"MAILER_DATABASE_URL": settings.database_url, "MAILER_SECRET_KEY": settings.secret_key}
    result = CliRunner().invoke(main, ["consent", "export", "--format", "jsonl", "--purpose", "loyalty",
                                       "--since", "2026-01-01", "-o", str(out)], env=env)
    assert result.exit_code == 0, result.output
    filters = ledger_view.parse_filters("loyalty", None, "2026-01-01", None)
    assert b"".join(ledger_view.stream_export(settings, fmt="jsonl", filters=filters)) == out.read_bytes()


def test_stream_export_refuses_an_unknown_format(settings):
    with pytest.raises(ValidationError) as err:
        next(ledger_view.stream_export(settings, fmt="xml", filters=ledger_view.Filters()))
    assert err.value.field == "format"


def test_the_suppressions_cli_uses_the_same_service(settings):
    seed_person(settings)
    env = {"MAILER_DATABASE_URL": settings.database_url, "MAILER_SECRET_KEY": settings.secret_key}
    run = CliRunner().invoke
    # When an operator suppresses an address by hand, lists it and lifts it
    added = run(main, ["suppressions", "add", "Ada@Example.com", "--reason", "asked by phone"], env=env)
    assert added.exit_code == 0, added.output
    listed = run(main, ["suppressions", "list", "ada@example.com"], env=env)
    sid = int(listed.output.split()[0])
    assert "manual" in listed.output and "asked by phone" in listed.output
    # Then without a reason it is refused, and with one it is gone
    assert run(main, ["suppressions", "remove", "ada@example.com", str(sid), "--reason", " "], env=env).exit_code != 0
    lifted = run(main, ["suppressions", "remove", "ada@example.com", str(sid), "--reason", "confirmed"], env=env)
    assert lifted.exit_code == 0, lifted.output
    assert "not suppressed" in run(main, ["suppressions", "list", "ada@example.com"], env=env).output
