"""Shops over HTTP: consents with proof, versioned wordings, customers, GDPR requests and scoped API keys.

Every test runs through the real ASGI app (TestClient) on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import shutil

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from mailer import db
from mailer.app import App, set_app
from mailer.cli import main
from mailer.consent import verify
from mailer.gdpr import requests as gdpr
from mailer.models import (
    ApiKey,
    ConsentEvent,
    ConsentEvidence,
    ConsentRequest,
    Customer,
    Delivery,
    IdempotencyRecord,
    Wording,
)
from mailer.settings import PROJECT_ROOT
from mailer.transport import memory
from mailer.web import apikeys
from mailer.web.app import create_app
from tests.conftest import make_settings

WORDING_VERSION = "2026-12"
PL_TEXT = ("Tak, chcę otrzymywać newsletter Northwind Shop z ofertami i nowościami. "
           "Mogę zrezygnować w każdej chwili.")


@pytest.fixture
def api(db_url, tmp_path):
    """A TestClient on the app, a wordings folder of its own, and one key per scope plus one with all."""
    memory.clear()
    folder = tmp_path / "wordings"
    shutil.copytree(PROJECT_ROOT / "wordings", folder)
    app = App(make_settings(database_url=db_url, wordings_dir=folder, base_url="http://testserver"))
    previous = set_app(app)
    from mailer.worker.actors import setup

    setup(app.settings)  # stub broker: confirmation mails are enqueued in process
    keys = {}
    with app.session() as s:
        keys["all"] = apikeys.create(s, "all", ",".join(apikeys.SCOPES)).key
        for scope in apikeys.SCOPES:
            keys[scope] = apikeys.create(s, f"only-{scope}", scope).key
    client = TestClient(create_app(app=app), follow_redirects=False)
    client.mailer, client.keys, client.wordings_dir = app, keys, folder
    yield client
    app.close()
    set_app(previous)


def _h(api, key="all", **extra) -> dict:
    return {"Authorization": f"Bearer {api.keys[key]}", **extra}


def _grant(**overrides) -> dict:
    return {"email": "Ann@Example.com", "purposes": ["newsletter"], "action": "grant", "source": "checkout",
            "wording_id": "newsletter", "wording_version": WORDING_VERSION, "ip": "203.0.113.7",
            "user_agent": "Mozilla/5.0 (X11; Linux) Firefox/140.0", "locale": "pl"} | overrides


def _count(api, model) -> int:
    with api.mailer.session() as s:
        return s.execute(select(func.count()).select_from(model)).scalar_one()


# -- scopes ------------------------------------------------------------------------------------
ENDPOINTS = [
    ("post", "/v1/consents", "consents", _grant()),
    ("get", "/v1/customers/ann@example.com/consents", "consents", None),
    ("get", "/v1/wordings/newsletter?locale=pl", "consents", None),
    ("put", "/v1/customers/ann@example.com", "customers", {"first_name": "Ann"}),
    ("get", "/v1/customers/ann@example.com", "customers", None),
    ("delete", "/v1/customers/ann@example.com", "gdpr", None),
    ("get", "/v1/customers/ann@example.com/export", "gdpr", None),
    ("post", "/v1/notices", "notices", {"kind": "order_delayed", "email": "ann@example.com", "data": {}}),
    ("post", "/v1/events", "events", {"type": "order.placed", "data": {}}),
    ("get", "/v1/campaigns/1/stats", "reports", None),
]


@pytest.mark.parametrize("method,path,scope,body", ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_every_endpoint_wants_its_scope(api, method, path, scope, body):
    # Given a key for every scope but this endpoint's
    kwargs = {"json": body} if body is not None else {}
    for other in apikeys.SCOPES:
        if other == scope:
            continue
        # When it calls the endpoint
        r = api.request(method, path, headers=_h(api, other), **kwargs)
        # Then it gets 403 naming the scope it lacks
        assert r.status_code == 403, (other, r.text)
        assert f"'{scope}' scope" in r.json()["detail"]
    # And without a key it gets 401, and the key with the scope passes the door
    assert api.request(method, path, **kwargs).status_code == 401
    assert api.request(method, path, headers=_h(api, scope), **kwargs).status_code not in (401, 403)


def test_keys_from_before_scopes_keep_notices_and_events(db_url):
    # Given a key created at revision 0003, before scopes existed
    db.downgrade(db_url, "0003")
    engine = db.get_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO api_keys (name, prefix, key_hash, created_at) "
                             "VALUES ('legacy', 'abcd1234', :h, CURRENT_TIMESTAMP)"), {"h": "f" * 64})
    # When the database is upgraded to 0004
    db.upgrade(db_url)
    # Then the key holds exactly notices and events
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT scopes FROM api_keys WHERE name = 'legacy'")).scalar_one() == \
            "notices,events"


def test_apikey_cli_creates_scoped_keys_and_lists_scopes_and_last_use(api):
    # Given the CLI on the test database
    env = {"MAILER_DATABASE_URL": api.mailer.settings.database_url, "MAILER_SECRET_KEY": "test-secret",
           "COLUMNS": "200"}
    # When a key is created with --scope and used once
    made = CliRunner().invoke(main, ["apikey", "create", "crm", "--scope", "customers,gdpr"], env=env)
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[0]
    assert api.get("/v1/customers/nobody@example.com", headers={"Authorization": f"Bearer {key}"}).status_code == 404
    # Then the list shows its scopes and a last use, and an unused key shows "never"
    listed = CliRunner().invoke(main, ["apikey", "list"], env=env)
    row = next(line for line in listed.output.splitlines() if "crm" in line)
    assert "customers,gdpr" in row and "never" not in row
    assert "never" in next(line for line in listed.output.splitlines() if "only-gdpr" in line)
    # And an unknown scope is refused, naming it
    bad = CliRunner().invoke(main, ["apikey", "create", "x", "--scope", "notices,admin"], env=env)
    assert bad.exit_code != 0 and "'admin'" in bad.output
    with api.mailer.session() as s:
        assert s.execute(select(ApiKey).where(ApiKey.name == "x")).first() is None


# -- wordings ----------------------------------------------------------------------------------
def test_wording_is_served_per_locale_and_registered_with_its_hash(api):
    # When a shop asks for the Polish wording, and for a locale it lacks
    pl = api.get("/v1/wordings/newsletter?locale=pl-PL", headers=_h(api))
    fallback = api.get("/v1/wordings/newsletter?locale=ja", headers=_h(api))
    # Then it gets the Polish text (fallback chain) and the default locale's
    assert pl.status_code == 200 and pl.json()["text"] == PL_TEXT and pl.json()["version"] == WORDING_VERSION
    assert fallback.json()["locale"] == "en"
    # And the version's SHA-256 is stored with its exact text
    with api.mailer.session() as s:
        row = s.execute(select(Wording).where(Wording.wording_id == "newsletter", Wording.locale == "pl")).scalar_one()
    assert row.text == PL_TEXT and row.sha256 == pl.json()["sha256"]
    # And an unknown wording is 404, a malformed id 422
    assert api.get("/v1/wordings/nope", headers=_h(api)).status_code == 404
    assert api.get("/v1/wordings/..%2Fsecrets", headers=_h(api)).status_code in (404, 422)


def test_a_registered_version_never_changes_its_words(api):
    # Given the newsletter wording registered
    assert api.get("/v1/wordings/newsletter", headers=_h(api)).status_code == 200
    path = api.wordings_dir / "newsletter.toml"
    # When someone edits the Polish text without a new version
    path.write_text(path.read_text(encoding="utf-8").replace("Tak, chcę", "Chcę"), encoding="utf-8")
    r = api.get("/v1/wordings/newsletter?locale=pl", headers=_h(api))
    # Then the wording is refused, naming the file and the version
    assert r.status_code == 422 and "newsletter.toml" in r.text and WORDING_VERSION in r.text
    # And with a new version the new words are registered beside the old ones
    path.write_text(path.read_text(encoding="utf-8").replace('version = "2026-12"\ntext = "Chcę',
                                                               'version = "2027-01"\ntext = "Chcę'), encoding="utf-8")
    assert api.get("/v1/wordings/newsletter?locale=pl", headers=_h(api)).json()["version"] == "2027-01"
    with api.mailer.session() as s:
        versions = s.execute(select(Wording.version).where(Wording.wording_id == "newsletter",
                                                           Wording.locale == "pl")).scalars().all()
    assert sorted(versions) == ["2026-12", "2027-01"]


def test_wordings_list_cli_shows_hashes(api):
    env = {"MAILER_DATABASE_URL": api.mailer.settings.database_url, "MAILER_SECRET_KEY": "test-secret",
           "MAILER_WORDINGS_DIR": str(api.wordings_dir), "COLUMNS": "250"}
    out = CliRunner().invoke(main, ["wordings", "list"], env=env)
    assert out.exit_code == 0, out.output
    from mailer.consent.wordings import sha256

    assert sha256(PL_TEXT) in out.output and "newsletter" in out.output


# -- consents ----------------------------------------------------------------------------------
def test_grant_records_proof_with_the_wording_hash_and_the_chain_verifies(api):
    # When a shop's backend records checkout consent with the customer's proof
    r = api.post("/v1/consents", json=_grant(), headers=_h(api))
    # Then it is granted, and the event carries the wording's hash and a chain hash
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    wording = api.get("/v1/wordings/newsletter?locale=pl", headers=_h(api)).json()
    assert result["status"] == "granted" and result["wording_sha256"] == wording["sha256"]
    with api.mailer.session() as s:
        ev, evidence = s.execute(select(ConsentEvent, ConsentEvidence)
                                 .join(ConsentEvidence, ConsentEvidence.event_id == ConsentEvent.id)).one()
        assert ev.hash == result["hash"] and ev.wording == PL_TEXT and ev.source.value == "checkout"
        # And the proof is the customer's IP and user agent from the body, not the caller's socket
        assert evidence.ip == "203.0.113.7" and evidence.user_agent.endswith("Firefox/140.0")
        assert s.execute(select(Customer.locale)).scalar_one() == "pl"
        assert verify.verify_db(s, api.mailer.settings).problem is None
    # And the history endpoint shows it with its hash
    hist = api.get("/v1/customers/ann@example.com/consents", headers=_h(api)).json()
    assert hist["current"] == [{"purpose": "newsletter", "granted": True, "basis": "consent",
                                "event_id": ev.id, "since": hist["current"][0]["since"]}]
    assert [e["hash"] for e in hist["history"]] == [result["hash"]]


def test_the_same_idempotency_key_records_once(api):
    # When the same request is sent twice with one Idempotency-Key
    first = api.post("/v1/consents", json=_grant(), headers=_h(api, **{"Idempotency-Key": "order-991"}))
    again = api.post("/v1/consents", json=_grant(), headers=_h(api, **{"Idempotency-Key": "order-991"}))
    # Then one event is recorded and the second answer replays the first
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true" and again.json() == first.json()
    assert _count(api, ConsentEvent) == 1
    # And the key with another body is refused
    other = api.post("/v1/consents", json=_grant(purposes=["loyalty"]),
                     headers=_h(api, **{"Idempotency-Key": "order-991"}))
    assert other.status_code == 422 and other.json()["detail"][0]["field"] == "Idempotency-Key"
    assert _count(api, ConsentEvent) == 1


def test_bad_consent_names_every_bad_field_and_stores_nothing(api):
    # When a grant has a bad address, an unknown purpose, a bad IP and an unknown wording version
    r = api.post("/v1/consents", json=_grant(email="not-an-address", purposes=["newsletter", "spam"],
                                             ip="300.1.1.1", wording_version="1999"), headers=_h(api))
    # Then the 422 names each of them
    assert r.status_code == 422
    assert {d["field"] for d in r.json()["detail"]} == {"email", "purposes[1]", "ip", "wording_version"}
    # And an unknown wording, a missing wording and a naive time are refused too
    assert api.post("/v1/consents", json=_grant(wording_id="ghost"), headers=_h(api)).json()["detail"][0][
        "field"] == "wording_id"
    no_wording = _grant()
    del no_wording["wording_id"], no_wording["wording_version"]
    assert api.post("/v1/consents", json=no_wording, headers=_h(api)).status_code == 422
    assert api.post("/v1/consents", json=_grant(occurred_at="2026-01-01T10:00:00"), headers=_h(api)).status_code == 422
    assert api.post("/v1/consents", json=_grant(occurred_at="2999-01-01T10:00:00Z"),
                    headers=_h(api)).json()["detail"][0]["field"] == "occurred_at"
    assert api.post("/v1/consents", json=_grant(action="maybe"), headers=_h(api)).status_code == 422
    # And nothing was stored
    assert _count(api, ConsentEvent) == 0 and _count(api, Customer) == 0 and _count(api, IdempotencyRecord) == 0


def test_double_opt_in_mails_a_confirmation_instead_of_granting(api):
    # When a grant asks for double opt-in, twice
    r = api.post("/v1/consents", json=_grant(double_opt_in=True), headers=_h(api))
    again = api.post("/v1/consents", json=_grant(double_opt_in=True), headers=_h(api))
    # Then nothing is granted, one request is pending and one confirmation mail is queued
    assert r.json()["results"][0]["status"] == "confirmation_sent"
    assert again.json()["results"][0]["status"] == "confirmation_pending"
    assert _count(api, ConsentEvent) == 0 and _count(api, ConsentRequest) == 1
    with api.mailer.session() as s:
        kinds = s.execute(select(Delivery.kind)).scalars().all()
        proof = s.execute(select(ConsentRequest.proof)).scalar_one()
    assert kinds == ["confirm_subscription"]
    assert proof["ip"] == "203.0.113.7" and proof["wording"] == PL_TEXT and proof["wording_version"] == WORDING_VERSION


def test_double_opt_in_for_two_purposes_mails_one_confirmation(api):
    # When a checkout asks for double opt-in to the newsletter and the loyalty programme
    r = api.post("/v1/consents", json=_grant(double_opt_in=True, purposes=["newsletter", "loyalty"]), headers=_h(api))
    # Then both are pending, each with its own request, and ONE confirmation mail is queued
    assert [x["status"] for x in r.json()["results"]] == ["confirmation_sent", "confirmation_sent"]
    assert _count(api, ConsentRequest) == 2 and _count(api, ConsentEvent) == 0
    with api.mailer.session() as s:
        assert s.execute(select(Delivery.kind)).scalars().all() == ["confirm_subscription"]


def test_withdrawal_is_recorded_and_an_unknown_address_is_404(api):
    # Given a grant
    api.post("/v1/consents", json=_grant(), headers=_h(api))
    # When the shop withdraws it
    r = api.post("/v1/consents", json={"email": "ann@example.com", "purposes": ["newsletter"], "action": "withdraw"},
                 headers=_h(api))
    # Then it is withdrawn and the current state says so
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "withdrawn"
    hist = api.get("/v1/customers/ann@example.com/consents", headers=_h(api)).json()
    assert hist["current"][0]["granted"] is False and len(hist["history"]) == 2
    # And a withdrawal for an address mailer never saw stores nothing
    unknown = api.post("/v1/consents", json={"email": "zed@example.com", "purposes": ["newsletter"],
                                             "action": "withdraw"}, headers=_h(api))
    assert unknown.status_code == 404 and _count(api, Customer) == 1
    assert api.get("/v1/customers/zed@example.com/consents", headers=_h(api)).status_code == 404


# -- customers and GDPR ------------------------------------------------------------------------
def test_put_creates_then_updates_a_customer_with_the_import_rules(api):
    body = {"first_name": "Ann", "locale": "pl", "timezone": "Europe/Warsaw", "country": "pl", "tags": ["vip", "b2b"],
            "total_spent": "129.90", "currency": "pln", "orders_count": 3, "last_order_at": "2026-11-02",
            "predicted_spend_tier": "high", "attributes": {"loyalty_id": "L-7"}}
    # When a shop PUTs a new customer, then again with changes
    created = api.put("/v1/customers/Ann@Example.com", json=body, headers=_h(api))
    updated = api.put("/v1/customers/ann@example.com", json=body | {"first_name": "Anna", "tags": ["vip"]},
                      headers=_h(api))
    # Then the first creates (201), the second updates (200), normalized as the import does
    assert created.status_code == 201, created.text
    assert updated.status_code == 200
    got = api.get("/v1/customers/ann@example.com", headers=_h(api)).json()
    assert got["first_name"] == "Anna" and got["tags"] == ["vip"] and got["country"] == "PL"
    assert got["currency"] == "PLN" and got["total_spent"] == "129.90" and got["attributes"] == {"loyalty_id": "L-7"}
    assert _count(api, Customer) == 1


def test_bad_customer_names_every_bad_field_and_stores_nothing(api):
    # When a customer has a bad zone, country, amount and date
    r = api.put("/v1/customers/ann@example.com", json={"timezone": "Mars/Olympus", "country": "P1",
                                                       "total_spent": "-5", "last_order_at": "yesterday"},
                headers=_h(api))
    # Then the 422 names each of them and nothing is stored
    assert r.status_code == 422
    assert {d["field"] for d in r.json()["detail"]} == {"timezone", "country", "total_spent", "last_order_at"}
    assert api.put("/v1/customers/not-an-address", json={}, headers=_h(api)).json()["detail"][0]["field"] == "email"
    assert api.put("/v1/customers/a@example.com", json={"nickname": "x"}, headers=_h(api)).status_code == 422
    assert _count(api, Customer) == 0
    assert api.get("/v1/customers/ann@example.com", headers=_h(api)).status_code == 404


def test_export_and_erase_are_the_gdpr_commands(api):
    # Given a customer with consent
    api.put("/v1/customers/ann@example.com", json={"first_name": "Ann"}, headers=_h(api))
    api.post("/v1/consents", json=_grant(), headers=_h(api))
    # When the shop asks for the export over HTTP and the operator runs the command
    http_doc = api.get("/v1/customers/ann@example.com/export", headers=_h(api)).json()
    with api.mailer.session() as s:
        cli_doc = json.loads(json.dumps(gdpr.export(s, api.mailer.settings, "ann@example.com"), default=str))
    # Then they are the same document (but for the moment it was made)
    http_doc.pop("exported_at"), cli_doc.pop("exported_at")
    assert http_doc == cli_doc and http_doc["profiles"][0]["first_name"] == "Ann"
    # When the shop erases the customer over HTTP
    erased = api.delete("/v1/customers/ann@example.com", headers=_h(api))
    # Then it is the erasure report, the address is gone and tombstoned, and repeating is safe
    assert erased.status_code == 200 and erased.json()["customers"] == 1 and erased.json()["withdrawals"] == 1
    with api.mailer.session() as s:
        assert gdpr.is_erased(s, api.mailer.settings, "ann@example.com")
        assert s.execute(select(Customer.email)).scalar_one() is None
        assert verify.verify_db(s, api.mailer.settings).problem is None
    assert api.delete("/v1/customers/ann@example.com", headers=_h(api)).status_code == 200
    assert api.get("/v1/customers/ann@example.com", headers=_h(api)).status_code == 404
