"""The console's compliance pages over HTTP, on SQLite and PostgreSQL: customers (search,
profile, access export, erasure, suppressions), consent (ledger, verify, export, wordings)
and the audit log; roles, CSRF, the audit trail of every action, and escaping."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from mailer import audit, db
from mailer.cli import main
from mailer.consent import export as consent_export
from mailer.consent import verify as consent_verify
from mailer.gdpr import requests as gdpr
from mailer.models import AuditEntry, Customer, Suppression, SuppressionReason
from mailer.web.app import create_app
from tests.compliance_support import IP, SCRIPT, UA, WORDING, WORDING_SHA, seed_person

#: The audit actions these pages record.
MINE = ("consent.export", "gdpr.export", "gdpr.erase", "suppression.add", "suppression.remove")
FROZEN = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


@pytest.fixture
def client_as(console_as):
    """``client_as(role, email=None)``: (a logged-in TestClient, its CSRF token)."""

    def make(role: str, email: str | None = None) -> tuple[TestClient, str]:
        client = console_as(role, **({"email": email} if email else {}))
        return client, client.csrf_token

    return make


def audit_actions(settings) -> list[tuple[str, str]]:
    with db.session_scope(settings) as s:
        return [(e.action, e.target) for e in s.query(AuditEntry).order_by(AuditEntry.seq)
                if e.action in MINE]


def test_customer_pages_need_a_login_and_the_compliance_role(client_as, app, settings):
    cid = seed_person(settings)
    anonymous = TestClient(create_app(app=app))
    # Given no session: a redirect to the login page with the way back
    r = anonymous.get("/console/customers?q=ada", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next=")
    # Given a marketer and a viewer: refused, on every compliance page
    for role in ("marketer", "viewer"):
        client, _ = client_as(role)
        for url in ("/console/customers", f"/console/customers/{cid}", "/console/consent",
                    "/console/consent/wordings", "/console/audit", "/console/audit/export.csv"):
            assert client.get(url, follow_redirects=False).status_code == 403, (role, url)
    # Given compliance and admin: allowed
    for role in ("compliance", "admin"):
        client, _ = client_as(role)
        assert client.get(f"/console/customers/{cid}").status_code == 200


def test_search_then_profile_shows_consent_history_with_proof(client_as, app, settings):
    cid = seed_person(settings)
    client, _ = client_as("compliance")
    # When searching by the start of the name
    r = client.get("/console/customers", params={"q": "Lovel"})
    # Then the customer is listed with a link to the profile
    assert r.status_code == 200 and f'href="/console/customers/{cid}"' in r.text and "ada@example.com" in r.text
    # And the profile shows the proof of the grant, the mail's SMTP reply and the tags
    page = client.get(f"/console/customers/{cid}").text
    for expected in (WORDING, WORDING_SHA, IP, UA, "footer", "250 2.0.0 Ok: queued as ABC123", "VIP", "shoe_size"):
        assert expected in page, expected


def test_a_bad_search_is_a_clear_422_naming_the_field(client_as, app, settings):
    client, _ = client_as("compliance")
    r = client.get("/console/customers", params={"q": "x" * 321})
    assert r.status_code == 422 and "q: at most 320 characters" in r.text


def test_access_export_download_is_the_cli_document_and_is_audited(client_as, app, settings, tmp_path):
    cid = seed_person(settings)
    client, token = client_as("compliance", "officer@example.com")
    # When the officer downloads the access export
    r = client.post(f"/console/customers/{cid}/export", data={"csrf_token": token})
    # Then it is the JSON document of `mailer gdpr export`, as an attachment
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    doc = json.loads(r.content)
    out = tmp_path / "cli.json"
    env = {"MAILER_DATABASE_URL": settings.database_url, "MAILER_SECRET_KEY": settings.secret_key}
    assert CliRunner().invoke(main, ["gdpr", "export", "ada@example.com", "-o", str(out)], env=env).exit_code == 0
    cli = json.loads(out.read_text())
    doc.pop("exported_at"), cli.pop("exported_at")
    assert doc == cli
    assert doc["profiles"][0]["email"] == "ada@example.com"
    assert [e["evidence"]["ip"] for e in doc["consent"]["events"] if e["purpose"] == "newsletter"] == [IP]
    # And the audit log says who exported whom
    with db.session_scope(settings) as s:
        e = s.query(AuditEntry).filter_by(action="gdpr.export").one()
        assert (e.actor, e.target) == ("officer@example.com", f"customer:{cid}")


def test_erasure_needs_the_typed_address_then_erases_and_is_audited(client_as, app, settings):
    cid = seed_person(settings)
    client, token = client_as("compliance")
    # When the confirmation is wrong: 422, and nothing is erased
    r = client.post(f"/console/customers/{cid}/erase", data={"csrf_token": token, "confirm": "ada@example.org"})
    assert r.status_code == 422 and "type the customer" in r.text
    with db.session_scope(settings) as s:
        assert s.get(Customer, cid).email == "ada@example.com"
    assert ("gdpr.erase", f"customer:{cid}") not in audit_actions(settings)
    # When the address is typed (any case): erased through the gdpr service, with a tombstone
    r = client.post(f"/console/customers/{cid}/erase", data={"csrf_token": token, "confirm": " ADA@example.com "},
                    follow_redirects=False)
    assert r.status_code == 303
    with db.session_scope(settings) as s:
        c = s.get(Customer, cid)
        assert c.email is None and c.first_name is None and c.erased_at is not None
        assert gdpr.is_erased(s, settings, "ada@example.com")
    assert ("gdpr.erase", f"customer:{cid}") in audit_actions(settings)
    page = client.get(f"/console/customers/{cid}?done=erased").text
    assert "A tombstone keeps the address suppressed" in page and "ada@example.com" not in page


def test_suppressions_are_added_and_lifted_with_a_reason_through_the_service(client_as, app, settings):
    cid = seed_person(settings)
    client, token = client_as("compliance")
    # When a manual suppression is added without a reason: 422 naming it
    r = client.post(f"/console/customers/{cid}/suppressions", data={"csrf_token": token, "reason": " "})
    assert r.status_code == 422 and "reason:" in r.text
    # When added with a reason, then lifted with a reason
    r = client.post(f"/console/customers/{cid}/suppressions",
                    data={"csrf_token": token, "reason": "asked by phone", "scope": "marketing"},
                    follow_redirects=False)
    assert r.status_code == 303
    with db.session_scope(settings) as s:
        sid = s.query(Suppression).one().id
    assert "asked by phone" in client.get(f"/console/customers/{cid}").text
    r = client.post(f"/console/customers/{cid}/suppressions/{sid}/remove",
                    data={"csrf_token": token, "reason": "confirmed by e-mail"}, follow_redirects=False)
    assert r.status_code == 303
    with db.session_scope(settings) as s:
        assert s.query(Suppression).count() == 0
    # Then both are in the audit log, and an erasure tombstone cannot be lifted
    assert [a for a, _ in audit_actions(settings)] == ["suppression.add", "suppression.remove"]
    with db.session_scope(settings) as s:
        c = s.get(Customer, cid)
        s.add(Suppression(email_hash=c.email_hash, reason=SuppressionReason.erased, scope="all"))
        s.flush()
        tomb = s.query(Suppression).one().id
    r = client.post(f"/console/customers/{cid}/suppressions/{tomb}/remove",
                    data={"csrf_token": token, "reason": "please"})
    assert r.status_code == 422
    with db.session_scope(settings) as s:
        assert s.query(Suppression).count() == 1


def test_a_post_without_the_csrf_token_is_refused(client_as, app, settings):
    cid = seed_person(settings)
    client, _ = client_as("compliance")
    r = client.post(f"/console/customers/{cid}/erase", data={"confirm": "ada@example.com"})
    assert r.status_code == 403
    with db.session_scope(settings) as s:
        assert s.get(Customer, cid).email == "ada@example.com"


def test_ledger_filters_and_pages_verify_shows_the_head_hash(client_as, app, settings):
    seed_person(settings, "ada@example.com")
    client, token = client_as("compliance")
    r = client.get("/console/consent", params={"purpose": "loyalty", "source": "checkout"})
    assert r.status_code == 200 and r.text.count("<td>checkout</td>") == 1
    assert client.get("/console/consent", params={"source": "fax"}).status_code == 422
    r = client.post("/console/consent/verify", data={"csrf_token": token})
    with db.session_scope(settings) as s:
        head = consent_verify.verify_db(s, settings).head_hash
    assert r.status_code == 200 and head in r.text and "intact" in r.text


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_consent_export_download_is_byte_identical_to_the_cli(client_as, app, settings, tmp_path, monkeypatch, fmt):
    seed_person(settings, "ada@example.com")
    seed_person(settings, "bob@example.com", first_name="Bob")
    client, token = client_as("compliance", "officer@example.com")
    monkeypatch.setattr(consent_export, "utcnow", lambda: FROZEN)
    out = tmp_path / f"cli.{fmt}"
    env = {"MAILER_DATABASE_URL": settings.database_url, "MAILER_SECRET_KEY": settings.secret_key}
    result = CliRunner().invoke(main, ["consent", "export", "--format", fmt, "--purpose", "newsletter",
                                       "-o", str(out)], env=env)
    assert result.exit_code == 0, result.output
    r = client.post("/console/consent/export", data={"csrf_token": token, "format": fmt, "purpose": "newsletter"})
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    assert r.content == out.read_bytes()
    assert ("consent.export", "consent_events") in audit_actions(settings)


def test_wordings_page_lists_versions_with_their_hash(client_as, app, settings):
    seed_person(settings)
    client, _ = client_as("compliance")
    page = client.get("/console/consent/wordings").text
    assert WORDING in page and WORDING_SHA in page and "2026-01" in page


def test_audit_page_filters_and_exports_csv(client_as, app, settings):
    cid = seed_person(settings)
    client, token = client_as("compliance", "officer@example.com")
    client.post(f"/console/customers/{cid}/export", data={"csrf_token": token})
    client.post(f"/console/customers/{cid}/suppressions", data={"csrf_token": token, "reason": "test"})
    page = client.get("/console/audit", params={"action": "gdpr.export"}).text
    assert "gdpr.export" in page and f"customer:{cid}" in page and "suppression.add</td>" not in page
    assert client.get("/console/audit", params={"action": "nope"}).status_code == 422
    r = client.get("/console/audit/export.csv", params={"actor": "officer@example.com"})
    assert r.status_code == 200
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert {row["action"] for row in rows} & set(MINE) == {"gdpr.export", "suppression.add"}
    assert {row["actor"] for row in rows} == {"officer@example.com"}
    with db.session_scope(settings) as s:
        assert audit.verify(s).ok


def test_customer_text_is_shown_as_text_on_every_compliance_page(client_as, app, settings):
    # Given a customer whose name, tags and attribute values carry markup, and an audit entry quoting it
    cid = seed_person(settings, "eve@example.com", first_name=SCRIPT, last_name=SCRIPT, tags=(SCRIPT,),
                      attributes={"note": SCRIPT, SCRIPT: "key"})
    client, token = client_as("compliance")
    client.post(f"/console/customers/{cid}/suppressions", data={"csrf_token": token, "reason": SCRIPT})
    pages = [client.get("/console/customers", params={"q": "eve"}), client.get(f"/console/customers/{cid}"),
             client.get("/console/consent"), client.get("/console/audit"),
             client.post(f"/console/customers/{cid}/suppressions", data={"csrf_token": token, "reason": SCRIPT,
                                                                          "scope": SCRIPT * 30})]
    # Then every page shows it escaped, never as markup
    for r in pages:
        assert SCRIPT not in r.text, r.url
    for r in pages[:2] + pages[3:4]:
        assert "&lt;script&gt;" in r.text, r.url
