"""The consent ledger: appends, current and historical state, soft opt-in, append-only tables, chain tampering."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select

from mailer import db
from mailer.clock import utcnow
from mailer.consent import ledger as consent
from mailer.consent import verify as consent_verify
from mailer.customers.records import get_or_create
from mailer.errors import ChainBroken, ConsentError, NotFound
from mailer.models import ConsentEvent, ConsentEvidence, ConsentState
from tests.conftest import make_settings
from tests.consent_support import renumber, unprotected

PROOF = consent.Proof(ip="192.0.2.7", user_agent="Mozilla/5.0 test", form_id="footer-signup",
                      wording="Yes, send me the newsletter.", wording_version="2026-01")


def _events(s) -> list[ConsentEvent]:
    return list(s.execute(select(ConsentEvent).order_by(ConsentEvent.seq)).scalars())


def test_append_links_events_and_keeps_proof_out_of_the_chain(settings):
    # Given a customer
    with db.session_scope(settings) as s:
        alice = get_or_create(s, settings, "alice@example.com")
        # When consent is granted with proof, then withdrawn
        first = consent.append(s, settings, customer=alice, purpose="newsletter", action="granted",
                               source="signup_form", proof=PROOF)
        second = consent.withdraw(s, settings, customer=alice, purpose="newsletter", source="unsubscribe_link")
    with db.session_scope(settings) as s:
        evs = _events(s)
        # Then the events form a chain from the genesis hash
        assert [e.seq for e in evs] == [1, 2]
        assert evs[0].prev_hash == consent.GENESIS and evs[1].prev_hash == evs[0].hash
        assert evs[0].hash == consent.chain_hash(consent.GENESIS, consent.event_fields(evs[0]))
        # And the chain holds only digests of the personal proof; the clear values are evidence rows
        assert evs[0].ip_digest and "192.0.2.7" not in consent.canonical(consent.event_fields(evs[0])).decode()
        assert "alice@example.com" not in consent.canonical(consent.event_fields(evs[0])).decode()
        evidence = s.get(ConsentEvidence, first.id)
        assert (evidence.email, evidence.ip, evidence.user_agent) == ("alice@example.com", "192.0.2.7",
                                                                     "Mozilla/5.0 test")
        assert evs[0].wording_sha256 == __import__("hashlib").sha256(b"Yes, send me the newsletter.").hexdigest()
        # And the current state is the withdrawal
        assert not consent.has_consent(s, settings, alice.id, "newsletter")
        assert s.get(ConsentState, (alice.id, "newsletter")).event_id == second.id
        assert consent_verify.verify_db(s, settings).ok


def test_history_answers_consent_at_a_past_moment(settings):
    # Given a grant a day ago and a withdrawal an hour ago
    now = utcnow()
    with db.session_scope(settings) as s:
        bob = get_or_create(s, settings, "bob@example.com")
        consent.append(s, settings, customer=bob, purpose="newsletter", action="granted", source="checkout",
                       occurred_at=now - timedelta(days=1))
        consent.append(s, settings, customer=bob, purpose="newsletter", action="withdrawn", source="admin",
                       occurred_at=now - timedelta(hours=1))
        # Then consent held in between, not before and not now
        assert consent.has_consent(s, settings, bob.id, "newsletter", at=now - timedelta(hours=5))
        assert not consent.has_consent(s, settings, bob.id, "newsletter", at=now - timedelta(days=2))
        assert not consent.has_consent(s, settings, bob.id, "newsletter")


def test_backdated_import_does_not_override_a_newer_state(settings):
    now = utcnow()
    with db.session_scope(settings) as s:
        c = get_or_create(s, settings, "carol@example.com")
        consent.append(s, settings, customer=c, purpose="newsletter", action="withdrawn", source="admin",
                       occurred_at=now)
        # When an older grant is imported afterwards
        consent.append(s, settings, customer=c, purpose="newsletter", action="granted", source="import",
                       occurred_at=now - timedelta(days=30))
        # Then the withdrawal still decides the current state
        assert not consent.has_consent(s, settings, c.id, "newsletter")


def test_soft_opt_in_is_its_own_basis_and_can_be_switched_off(db_url):
    on = make_settings(database_url=db_url)
    off = make_settings(database_url=db_url, soft_opt_in=False)
    with db.session_scope(on) as s:
        d = get_or_create(s, on, "dana@example.com")
        consent.append(s, on, customer=d, purpose="product_updates", action="granted", source="checkout",
                       basis="soft_opt_in")
        # Then it counts while the deployment allows soft opt-in, and not when it is off
        assert consent.has_consent(s, on, d.id, "product_updates")
        assert not consent.has_consent(s, off, d.id, "product_updates")
        # And new soft opt-in grants are refused when it is off
        with pytest.raises(ConsentError, match="soft opt-in is switched off"):
            consent.append(s, off, customer=d, purpose="newsletter", action="granted", source="checkout",
                           basis="soft_opt_in")
        assert s.execute(select(ConsentEvent.basis)).scalar_one().value == "soft_opt_in"


def test_bad_purpose_source_and_erased_customer_are_refused(settings):
    with db.session_scope(settings) as s:
        e = get_or_create(s, settings, "erin@example.com")
        with pytest.raises(ConsentError, match="unknown consent purpose 'spam'"):
            consent.append(s, settings, customer=e, purpose="spam", action="granted", source="admin")
        with pytest.raises(ConsentError, match="sources: checkout"):
            consent.append(s, settings, customer=e, purpose="newsletter", action="granted", source="carrier-pigeon")
        # restock:<sku> purposes need no configuration
        consent.append(s, settings, customer=e, purpose="restock:SKU-42", action="granted", source="api")
        e.email = None
        with pytest.raises(ConsentError, match="was erased"):
            consent.append(s, settings, customer=e, purpose="newsletter", action="granted", source="admin")
    with db.session_scope(settings) as s:
        with pytest.raises(NotFound):
            consent.withdraw(s, settings, email="nobody@example.com", purpose="newsletter")


def _chain(settings, n: int = 6) -> None:
    """Events 1..n over three customers; the last two are each customer's latest."""
    with db.session_scope(settings) as s:
        people = [get_or_create(s, settings, f"p{i}@example.com") for i in range(3)]
        for i in range(n):
            consent.append(s, settings, customer=people[i % 3], purpose=("newsletter", "loyalty")[i % 2],
                           action=("granted", "withdrawn")[(i // 3) % 2], source="signup_form", proof=PROOF)


@pytest.mark.parametrize("statement", ["UPDATE consent_events SET purpose = 'loyalty' WHERE seq = 1",
                                       "DELETE FROM consent_events WHERE seq = 1"])
def test_the_database_refuses_update_and_delete(settings, statement):
    # Given a chain
    _chain(settings, 2)
    # When anyone (even with SQL access through the application's connection) changes it
    engine = db.get_engine(settings)
    with pytest.raises(sa.exc.DatabaseError, match="append-only"):
        with engine.begin() as conn:
            conn.exec_driver_sql(statement)
    # Then nothing changed and the chain verifies
    with db.session_scope(settings) as s:
        assert s.execute(select(func.count()).select_from(ConsentEvent)).scalar_one() == 2
        assert consent_verify.verify_db(s, settings).ok


def test_emptying_the_table_is_refused_too(settings):
    # Given a chain
    _chain(settings, 1)
    # When someone empties the table: TRUNCATE on PostgreSQL, unconditional DELETE on SQLite
    statement = ("TRUNCATE consent_events CASCADE" if settings.database_url.startswith("postgresql")
                 else "DELETE FROM consent_events")
    with pytest.raises(sa.exc.DatabaseError, match="append-only"):
        with db.get_engine(settings).begin() as conn:
            conn.exec_driver_sql(statement)
    # Then the event is still there
    with db.session_scope(settings) as s:
        assert s.execute(select(func.count()).select_from(ConsentEvent)).scalar_one() == 1


def _tamper_edit(conn, s):
    conn.exec_driver_sql("UPDATE consent_events SET purpose = 'product_updates' WHERE seq = 3")


def _tamper_edit_rehash(conn, s):
    ev = s.execute(select(ConsentEvent).where(ConsentEvent.seq == 3)).scalar_one()
    fields = consent.event_fields(ev) | {"action": "granted" if ev.action.value == "withdrawn" else "withdrawn"}
    new_hash = consent.chain_hash(ev.prev_hash, fields)
    conn.execute(sa.text("UPDATE consent_events SET action = :a, hash = :h WHERE seq = 3"),
                 {"a": fields["action"], "h": new_hash})


def _tamper_delete(conn, s):
    conn.exec_driver_sql("DELETE FROM consent_evidence WHERE event_id = (SELECT id FROM consent_events WHERE seq = 3)")
    conn.exec_driver_sql("DELETE FROM consent_events WHERE seq = 3")


def _tamper_delete_renumber(conn, s):
    _tamper_delete(conn, s)
    renumber(conn, from_seq=4, delta=-1)


def _tamper_insert(conn, s):
    ev2 = s.execute(select(ConsentEvent).where(ConsentEvent.seq == 2)).scalar_one()
    renumber(conn, from_seq=3, delta=1)
    fields = consent.event_fields(ev2) | {"seq": 3, "purpose": "newsletter", "action": "granted",
                                          "subject_hash": "f" * 64}
    forged = {c.key: getattr(ev2, c.key) for c in ConsentEvent.__table__.columns if c.key != "id"}
    forged |= {"seq": 3, "purpose": "newsletter", "action": "granted", "subject_hash": "f" * 64,
               "prev_hash": ev2.hash, "hash": consent.chain_hash(ev2.hash, fields)}
    forged["action"], forged["basis"], forged["source"] = "granted", ev2.basis.value, ev2.source.value
    conn.execute(sa.insert(ConsentEvent.__table__).values(**forged))


def _tamper_reorder(conn, s):
    conn.exec_driver_sql("UPDATE consent_events SET seq = -3 WHERE seq = 3")
    conn.exec_driver_sql("UPDATE consent_events SET seq = 3 WHERE seq = 4")
    conn.exec_driver_sql("UPDATE consent_events SET seq = 4 WHERE seq = -3")


def _tamper_truncate(conn, s):
    conn.exec_driver_sql("DELETE FROM consent_evidence WHERE event_id IN (SELECT id FROM consent_events WHERE seq >= 5)")
    conn.exec_driver_sql("DELETE FROM consent_events WHERE seq >= 5")


@pytest.mark.parametrize("tamper, kind, seq", [
    (_tamper_edit, "edited", 3),
    (_tamper_edit_rehash, "edited", 3),
    (_tamper_delete, "removed", 4),
    (_tamper_delete_renumber, "removed", 3),
    (_tamper_insert, "inserted", 3),
    (_tamper_reorder, "reordered", 3),
    (_tamper_truncate, "truncated", None),
], ids=["edit", "edit-and-rehash", "delete", "delete-and-renumber", "insert", "reorder", "truncate"])
def test_verify_names_the_first_tampered_event(settings, tamper, kind, seq):
    # Given a verified chain of six events
    _chain(settings, 6)
    with db.session_scope(settings) as s:
        assert consent_verify.verify_db(s, settings).ok
        # When someone with database access bypasses the append-only protection and tampers
        with unprotected(settings.database_url) as conn:
            tamper(conn, s)
    db.dispose_engines()
    # Then verification fails, naming what happened and where
    with db.session_scope(settings) as s:
        report = consent_verify.verify_db(s, settings)
    assert not report.ok
    assert report.problem.kind == kind, report.problem
    if seq is not None:
        assert report.problem.seq == seq, report.problem
    with pytest.raises(ChainBroken, match=kind):
        report.raise_for_problem()


def test_cli_verify_exits_non_zero_on_a_broken_chain(settings):
    from click.testing import CliRunner

    from mailer.cli import main

    _chain(settings, 4)
    env = {"MAILER_DATABASE_URL": settings.database_url, "MAILER_SECRET_KEY": settings.secret_key}
    ok = CliRunner().invoke(main, ["consent", "verify"], env=env)
    assert ok.exit_code == 0, ok.output
    assert "OK" in ok.output and "4 events" in ok.output
    with unprotected(settings.database_url) as conn:
        _tamper_edit(conn, None)
    db.dispose_engines()
    bad = CliRunner().invoke(main, ["consent", "verify"], env=env)
    assert bad.exit_code == 1
    assert "BROKEN" in bad.output and "edited" in bad.output and "seq 3" in bad.output
