"""POST /v1/notices: bearer API keys, Idempotency-Key honoured durably, 422 naming the field."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from mailer.models import ApiKey, Delivery, IdempotencyRecord
from mailer.transport import memory
from mailer.web import apikeys
from mailer.web.app import create_app

DATA = {"order_number": "1001", "new_eta": "2026-12-01"}


@pytest.fixture
def api(app, stub_broker):
    """A TestClient on the real ASGI app, the in-process broker and worker, and one API key."""
    with app.session() as s:
        created = apikeys.create(s, "shop-backend")
    client = TestClient(create_app(app=app))
    client.mailer = app
    client.broker = stub_broker
    client.key = created.key
    client.bearer = {"Authorization": f"Bearer {created.key}"}
    return client


def _deliveries(api) -> int:
    with api.mailer.session() as s:
        return s.execute(select(func.count()).select_from(Delivery)).scalar_one()


def test_key_is_stored_hashed_and_shown_once(api):
    with api.mailer.session() as s:
        row = s.execute(select(ApiKey)).scalar_one()
        assert row.key_hash == apikeys.key_hash(api.key) and api.key not in (row.key_hash, row.prefix)
        assert api.key.startswith(f"mk_{row.prefix}_")


def test_notice_is_accepted_and_delivered(api):
    # When a service posts a notice with a valid key
    r = api.post("/v1/notices", json={"kind": "order_delayed", "email": "Alice@Example.com", "data": DATA},
                 headers=api.bearer)
    # Then 202 with the delivery id, on the transactional queue, and the mail goes out
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["queue"] == "transactional" and body["kind"] == "order_delayed"
    api.broker.drain()
    with api.mailer.session() as s:
        assert s.get(Delivery, body["delivery_id"]).status.value == "sent"
    assert [m.recipient.lower() for m in memory.outbox()] == ["alice@example.com"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer mk_wrong_key"}, {"Authorization": "Basic eDp5"},
                                     {"Authorization": "Bearer "}])
def test_no_key_or_wrong_key_is_401_and_changes_nothing(api, headers):
    r = api.post("/v1/notices", json={"kind": "order_delayed", "email": "a@example.com", "data": DATA},
                 headers=headers)
    assert r.status_code == 401
    assert _deliveries(api) == 0


def test_revoked_key_is_401(api):
    with api.mailer.session() as s:
        apikeys.revoke(s, "shop-backend")
    r = api.post("/v1/notices", json={"kind": "order_delayed", "email": "a@example.com", "data": DATA},
                 headers=api.bearer)
    assert r.status_code == 401


def test_same_idempotency_key_gives_same_delivery_and_one_mail(api):
    headers = {**api.bearer, "Idempotency-Key": "order-1001-delay-1"}
    body = {"kind": "order_delayed", "email": "bob@example.com", "data": DATA}
    first = api.post("/v1/notices", json=body, headers=headers)
    api.broker.drain()
    second = api.post("/v1/notices", json=body, headers=headers)
    api.broker.drain()
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert _deliveries(api) == 1 and len(memory.outbox()) == 1


def test_idempotency_survives_a_new_app_process(api):
    # Given a notice accepted under a key
    headers = {**api.bearer, "Idempotency-Key": "durable-1"}
    body = {"kind": "order_delayed", "email": "carol@example.com", "data": DATA}
    first = api.post("/v1/notices", json=body, headers=headers).json()
    # When the HTTP app restarts (a fresh ASGI app and App on the same database)
    from mailer.app import App

    fresh = TestClient(create_app(app=App(api.mailer.settings)))
    again = fresh.post("/v1/notices", json=body, headers=headers)
    # Then the same delivery comes back and no second one exists
    assert again.status_code == 202 and again.json() == first
    assert _deliveries(api) == 1
    with api.mailer.session() as s:
        assert s.execute(select(func.count()).select_from(IdempotencyRecord)).scalar_one() == 1


def test_same_key_with_a_different_body_is_refused(api):
    headers = {**api.bearer, "Idempotency-Key": "k-2"}
    api.post("/v1/notices", json={"kind": "order_delayed", "email": "d@example.com", "data": DATA}, headers=headers)
    r = api.post("/v1/notices", json={"kind": "order_delayed", "email": "someone-else@example.com", "data": DATA},
                 headers=headers)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert _deliveries(api) == 1


@pytest.mark.parametrize("body,loc", [
    ({"email": "a@example.com", "data": DATA}, ["body", "kind"]),
    ({"kind": "no_such_kind", "email": "a@example.com", "data": DATA}, ["body", "kind"]),
    ({"kind": "order_delayed", "email": "a@example.com", "data": {"order_number": "1"}},
     ["body", "data", "new_eta"]),
    ({"kind": "order_delayed", "email": "not-an-address", "data": DATA}, ["body", "email"]),
    ({"kind": "order_delayed", "data": DATA}, ["body", "email"]),
    ({"kind": "order_delayed", "email": "a@example.com", "customer_id": 5, "data": DATA}, ["body", "email"]),
    ({"kind": "order_delayed", "customer_id": 999999, "data": DATA}, ["body", "customer_id"]),
    ({"kind": "order_delayed", "email": "a@example.com", "data": DATA, "locale": "x" * 30}, ["body", "locale"]),
    ({"kind": "order_delayed", "email": "a@example.com", "data": DATA, "colour": "red"}, ["body", "colour"]),
    ({"kind": "order_delayed", "email": "a@example.com", "data": "not an object"}, ["body", "data"]),
])
def test_validation_errors_are_422_naming_the_field(api, body, loc):
    r = api.post("/v1/notices", json=body, headers=api.bearer)
    assert r.status_code == 422, r.text
    locs = [d["loc"] for d in r.json()["detail"]]
    assert loc in locs, locs
    assert _deliveries(api) == 0


def test_every_missing_template_field_is_listed_in_one_422(api):
    # Given a shipping_update with none of its four required fields
    r = api.post("/v1/notices", json={"kind": "shipping_update", "email": "a@example.com", "data": {}},
                 headers=api.bearer)
    # Then one 422 lists each of them, and nothing was stored
    assert r.status_code == 422, r.text
    locs = [d["loc"] for d in r.json()["detail"]]
    assert locs == [["body", "data", f] for f in ("carrier", "tracking_number", "tracking_url", "status")]
    assert _deliveries(api) == 0


def test_a_failed_request_can_be_corrected_and_retried_with_the_same_key(api):
    headers = {**api.bearer, "Idempotency-Key": "fix-me"}
    bad = api.post("/v1/notices", json={"kind": "order_delayed", "email": "e@example.com",
                                        "data": {"order_number": "1"}}, headers=headers)
    good = api.post("/v1/notices", json={"kind": "order_delayed", "email": "e@example.com", "data": DATA},
                    headers=headers)
    assert bad.status_code == 422 and good.status_code == 202
