"""Data subject requests: access export, erasure (chain intact, tombstone kept), retention purge."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from mailer import db, segments
from mailer.cli import main
from mailer.clock import utcnow
from mailer.consent import ledger as consent
from mailer.consent import verify as consent_verify
from mailer.gdpr import requests as gdpr
from mailer.customers.records import by_email, import_file
from mailer.errors import NotFound
from mailer.models import (
    ConsentEvent,
    ConsentEvidence,
    Customer,
    Delivery,
    DeliveryStatus,
    Suppression,
    TrackingEvent,
)
from mailer.notices.trigger import notify
from mailer.settings import PROJECT_ROOT
from tests.conftest import make_settings

DEMO = PROJECT_ROOT / "mailer" / "demo_data" / "customers.csv"
ALICE = "alice@example.com"
PROOF = consent.Proof(ip="203.0.113.44", user_agent="Firefox/133 alice-laptop", form_id="checkout",
                      wording="Send me news.", wording_version="v3")


def _world(app, stub_broker) -> int:
    """Demo customers; Alice consents twice with proof, gets a notice and a newsletter, opens it."""
    settings = app.settings
    import_file(settings, DEMO)
    with app.session() as s:
        for email in (ALICE, "layla@example.com"):
            c = by_email(s, email)
            consent.append(s, settings, customer=c, purpose="newsletter", action="granted", source="checkout",
                           proof=PROOF)
        consent.append(s, settings, customer=by_email(s, ALICE), purpose="loyalty", action="granted",
                       source="preference_centre", proof=PROOF)
    notify("order_delayed", to=ALICE, data=app.renderer.sample("order_delayed") | {"order_number": "A-77"},
           settings=settings)
    notify("newsletter/seasonal_sale", to=ALICE, data=app.renderer.sample("newsletter/seasonal_sale"),
           settings=settings)
    stub_broker.drain()
    with app.session() as s:
        alice = by_email(s, ALICE)
        d = s.execute(select(Delivery).where(Delivery.customer_id == alice.id).order_by(Delivery.id)).scalars().first()
        s.add(TrackingEvent(delivery_id=d.id, customer_id=alice.id, kind="open", ip="203.0.113.44",
                            user_agent="Firefox/133 alice-laptop", occurred_at=utcnow()))
        return alice.id


def test_access_export_holds_everything_about_the_person(app, stub_broker):
    # Given a customer with consent, mail and tracking
    alice_id = _world(app, stub_broker)
    # When she asks for her data
    with app.session() as s:
        doc = gdpr.export(s, app.settings, "Alice@Example.com")
    # Then the document is JSON and holds profile, consent with proof, deliveries and tracking
    text = json.dumps(doc, ensure_ascii=False)
    assert json.loads(text)["subject"]["email"] == ALICE
    [profile] = doc["profiles"]
    assert (profile["id"], profile["first_name"], profile["tags"]) == (alice_id, "Alice", ["VIP", "newsletter"])
    assert [e["purpose"] for e in doc["consent"]["events"]] == ["newsletter", "loyalty"]
    assert doc["consent"]["events"][0]["evidence"]["ip"] == "203.0.113.44"
    assert doc["consent"]["events"][0]["wording"] == "Send me news."
    assert {c["purpose"] for c in doc["consent"]["current"] if c["granted"]} == {"newsletter", "loyalty"}
    assert sorted(d["kind"] for d in doc["deliveries"]) == ["newsletter/seasonal_sale", "order_delayed"]
    assert all(d["to_address"] == ALICE for d in doc["deliveries"])
    assert doc["tracking_events"][0]["ip"] == "203.0.113.44"
    # And nothing about Layla is in it
    assert "layla" not in text
    with app.session() as s, pytest.raises(NotFound, match="nothing is held about nobody@example.com"):
        gdpr.export(s, app.settings, "nobody@example.com")


def test_erasure_removes_personal_data_keeps_consent_events_and_the_chain_verifies(app, stub_broker):
    settings = app.settings
    alice_id = _world(app, stub_broker)
    with app.session() as s:
        events_before = s.execute(select(func.count()).select_from(ConsentEvent)).scalar_one()
    # When Alice's data is erased
    with app.session() as s:
        report = gdpr.erase(s, settings, ALICE)
    assert report.customers == 1 and report.withdrawals == 2 and report.evidence == 4
    assert report.deliveries == 2 and report.tracking_events == 1
    with app.session() as s:
        # Then the profile holds nothing personal any more
        alice = s.get(Customer, alice_id)
        assert alice.email is None and alice.first_name is None and alice.tag_names == []
        assert alice.erased_at is not None and alice.locale is None and alice.country is None
        # And deliveries and tracking keep no address, data, IP or user agent
        for d in s.execute(select(Delivery).where(Delivery.customer_id == alice_id)).scalars():
            assert d.to_address is None and d.data == {} and ALICE not in (d.smtp_reply or "")
        t = s.execute(select(TrackingEvent).where(TrackingEvent.customer_id == alice_id)).scalar_one()
        assert t.ip is None and t.user_agent is None
        # And her consent events stay (hash only), with a withdrawal per purpose, and no clear proof
        events = list(s.execute(select(ConsentEvent).where(ConsentEvent.customer_id == alice_id)
                                .order_by(ConsentEvent.seq)).scalars())
        assert len(events) == 4 and [e.action.value for e in events[-2:]] == ["withdrawn", "withdrawn"]
        assert s.execute(select(func.count()).select_from(ConsentEvidence)
                         .where(ConsentEvidence.event_id.in_([e.id for e in events]))).scalar_one() == 0
        assert s.execute(select(func.count()).select_from(ConsentEvent)).scalar_one() == events_before + 2
        assert not consent.has_consent(s, settings, alice_id, "newsletter")
        # And the chain still verifies
        report = consent_verify.verify_db(s, settings)
        assert report.ok, report.problem
        # And a tombstone keeps the address suppressed for every mail
        tomb = s.execute(select(Suppression).where(Suppression.reason == "erased")).scalar_one()
        assert tomb.scope == "all" and tomb.email is None and tomb.email_hash == alice.email_hash
        # And Layla is untouched
        assert by_email(s, "layla@example.com").first_name == "ليلى"
    # And what is left about Alice names her only by hash
    with app.session() as s:
        doc = gdpr.export(s, settings, ALICE)
    leftover = json.dumps({k: v for k, v in doc.items() if k != "subject"}, ensure_ascii=False)
    for personal in (ALICE, "Alice", "Martin", "203.0.113.44", "alice-laptop", "A-77"):
        assert personal not in leftover, personal
    # And erasing again changes nothing more
    with app.session() as s:
        again = gdpr.erase(s, settings, ALICE)
    assert (again.customers, again.withdrawals, again.evidence) == (0, 0, 0)


def test_erased_address_reimported_stays_suppressed(app, stub_broker):
    settings = app.settings
    _world(app, stub_broker)
    with app.session() as s:
        gdpr.erase(s, settings, ALICE)
    # When the shop imports the address again and even records fresh consent
    import_file(settings, DEMO)
    with app.session() as s:
        new = by_email(s, ALICE)
        consent.append(s, settings, customer=new, purpose="newsletter", action="granted", source="import")
        new_id = new.id
    # Then segments exclude it
    with app.session() as s:
        seg = segments.load(settings, "newsletter_all")
        emails = [r.email for p in segments.stream(s, settings, seg) for r in p]
        assert ALICE not in emails and "layla@example.com" in emails
        assert not segments.contains(s, settings, seg, new_id)
    # And the send gate suppresses every mail to it, transactional included
    ids = [notify("order_delayed", to=ALICE, data=app.renderer.sample("order_delayed") | {"order_number": "B-1"},
                  settings=settings),
           notify("newsletter/seasonal_sale", to=ALICE, data=app.renderer.sample("newsletter/seasonal_sale")
                  | {"campaign": "again"}, idempotency_key="again", settings=settings)]
    stub_broker.drain()
    with app.session() as s:
        for delivery_id in ids:
            d = s.get(Delivery, delivery_id)
            assert d.status is DeliveryStatus.suppressed and "erased" in d.reason


def test_purge_tracking_deletes_only_old_events(db_url):
    settings = make_settings(database_url=db_url, tracking_retention_days=30)
    now = utcnow()
    with db.session_scope(settings) as s:
        s.add_all([TrackingEvent(kind="open", occurred_at=now - timedelta(days=d)) for d in (1, 29, 31, 400, 800)])
    with db.session_scope(settings) as s:
        assert gdpr.purge_tracking(s, settings, 365) == 2
    with db.session_scope(settings) as s:
        assert gdpr.purge_tracking(s, settings) == 1  # the default: MAILER_TRACKING_RETENTION_DAYS
        left = sorted((now - t).days for t in s.execute(select(TrackingEvent.occurred_at)).scalars())
        assert left == [1, 28] or left == [1, 29]


def test_gdpr_cli_export_erase_purge(settings, tmp_path):
    import_file(settings, DEMO)
    with db.session_scope(settings) as s:
        consent.append(s, settings, customer=by_email(s, ALICE), purpose="newsletter", action="granted",
                       source="signup_form", proof=PROOF)
    env = {"MAILER_DATABASE_URL": settings.database_url, "MAILER_SECRET_KEY": settings.secret_key}
    runner = CliRunner()
    out = tmp_path / "alice.json"
    res = runner.invoke(main, ["gdpr", "export", ALICE, "-o", str(out)], env=env)
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text(encoding="utf-8"))["profiles"][0]["email"] == ALICE
    res = runner.invoke(main, ["gdpr", "erase", ALICE], env=env)
    assert res.exit_code == 0, res.output
    assert "erased alice@example.com" in res.output and "withdrawals: 1" in res.output
    assert runner.invoke(main, ["consent", "verify"], env=env).exit_code == 0
    res = runner.invoke(main, ["gdpr", "purge", "--tracking-older-than", "10"], env=env)
    assert res.exit_code == 0 and "deleted 0 tracking events older than 10 days" in res.output
    res = runner.invoke(main, ["gdpr", "export", "not-an-address", "-o", str(out)], env=env)
    assert res.exit_code == 2 and "invalid e-mail address" in res.output
