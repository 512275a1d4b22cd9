"""The hardened HTTP layer through the real ASGI app: 413, 422 listing every bad field, NaN and
out-of-range numbers, strict tokens, trusted proxies in consent proof, cross-site POSTs, and
property tests that arbitrary JSON or bytes never give a 5xx."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import func, select

from mailer import limits
from mailer.app import App, set_app
from mailer.models import ConsentEvent, ConsentEvidence, CsatRating, Delivery, ShopEvent
from mailer.tracking import service as tracking
from mailer.transport import memory
from mailer.web import apikeys
from mailer.web.app import create_app
from tests.campaign_support import newsletter_templates
from tests.conftest import make_settings
from tests.test_web_endpoints import _campaign_mail, _granted, _links, _path, _unsubscribe_path

PROXY = "10.0.0.2"
NOTICE = {"kind": "order_delayed", "email": "alice@example.com",
          "data": {"order_number": "1001", "new_eta": "2026-12-01"}}


@pytest.fixture
def web(db_url, tmp_path):
    """The app behind a trusted proxy (10.0.0.0/8), a TestClient whose socket peer is that proxy, an API key."""
    memory.clear()
    settings = make_settings(database_url=db_url, templates_dir=newsletter_templates(tmp_path),
                             base_url="http://testserver", trusted_proxies="10.0.0.0/8")
    app = App(settings)
    previous = set_app(app)
    client = TestClient(create_app(app=app), follow_redirects=False, client=(PROXY, 50000))
    client.mailer = app
    with app.session() as s:
        client.bearer = {"Authorization": f"Bearer {apikeys.create(s, 'shop').key}"}
    yield client
    app.close()
    set_app(previous)


def _count(web, model) -> int:
    with web.mailer.session() as s:
        return s.execute(select(func.count()).select_from(model)).scalar_one()


def _fields(r) -> list[str]:
    assert r.status_code == 422, r.text
    return [d["field"] for d in r.json()["detail"]]


# -- body size and data limits ---------------------------------------------------------------
def test_oversized_body_gets_413_and_stores_nothing(web):
    # Given a notice whose body is larger than MAILER_MAX_BODY_BYTES (256 KiB by default)
    assert web.mailer.settings.max_body_bytes == 262_144
    body = {**NOTICE, "data": {**NOTICE["data"], "reason": "x" * 270_000}}
    raw = json.dumps(body).encode()
    # When it is posted, declared by length or streamed chunked
    r = web.post("/v1/notices", json=body, headers=web.bearer)
    chunked = web.post("/v1/notices", content=iter([raw[i:i + 10_000] for i in range(0, len(raw), 10_000)]),
                       headers={**web.bearer, "Content-Type": "application/json"})
    # Then 413 both ways, and nothing is stored
    assert r.status_code == 413 and chunked.status_code == 413
    assert _count(web, Delivery) == 0


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_in_api_json_get_422_naming_the_field(web, literal):
    # Given JSON with a NaN/Infinity literal (Python's json module would accept it)
    notice = json.dumps(NOTICE).replace('"new_eta"', f'"total": {literal}, "new_eta"')
    event = '{"type": "order_placed", "data": {"email": "a@example.com", "order_number": "1", "total": %s}}' % literal
    # When it is posted to either API
    rn = web.post("/v1/notices", content=notice, headers={**web.bearer, "Content-Type": "application/json"})
    re_ = web.post("/v1/events", content=event, headers={**web.bearer, "Content-Type": "application/json"})
    # Then 422 naming data.total, and nothing stored
    assert _fields(rn) == ["data.total"] and _fields(re_) == ["data.total"]
    assert _count(web, Delivery) == 0 and _count(web, ShopEvent) == 0
    # And at the top level (no field to walk) it is a 422 too, not a 500 from echoing NaN back
    top = json.dumps(NOTICE).replace('"email": "alice@example.com"', f'"customer_id": {literal}')
    assert _fields(web.post("/v1/notices", content=top,
                            headers={**web.bearer, "Content-Type": "application/json"})) == ["customer_id"]


def test_out_of_range_numbers_get_422_naming_the_field_not_a_database_error(web):
    # Given ids and counts beyond what the database columns hold
    cases = [
        ({"kind": "order_delayed", "customer_id": 2**63, "data": NOTICE["data"]}, "/v1/notices", "customer_id"),
        ({"kind": "order_delayed", "customer_id": -5, "data": NOTICE["data"]}, "/v1/notices", "customer_id"),
        ({**NOTICE, "data": {**NOTICE["data"], "n": 10**30}}, "/v1/notices", "data.n"),
        ({"type": "customer_updated", "data": {"email": "a@example.com", "orders_count": 2**31}}, "/v1/events",
         "data.orders_count"),
        ({"type": "customer_updated", "data": {"email": "a@example.com", "total_spent": 10**15}}, "/v1/events",
         "data.total_spent"),
        ({"type": "order_placed", "data": {"email": "a@example.com", "order_number": "1",
                                           "items": [{"name": "x", "quantity": 2**63}]}}, "/v1/events",
         "data.items[0].quantity"),
    ]
    for body, path, field in cases:
        # When each is posted; then 422 names the field
        assert _fields(web.post(path, json=body, headers=web.bearer)) == [field], body
    assert _count(web, Delivery) == 0 and _count(web, ShopEvent) == 0


def test_a_request_with_several_errors_lists_all_of_them(web):
    # Given an event with three bad fields
    event = {"type": "order_delayed", "data": {"email": "nope", "order_number": "has space", "new_eta": "soon"}}
    # Then all three are listed, each with loc and msg
    r = web.post("/v1/events", json=event, headers=web.bearer)
    assert sorted(_fields(r)) == ["data.email", "data.new_eta", "data.order_number"]
    assert all(d["loc"][0] == "body" and d["msg"] for d in r.json()["detail"])
    # And a notice with pydantic-level errors and data-limit errors lists both kinds
    notice = {"kind": "", "email": "a@example.com", "data": {"b": "x" * 20_000,
                                                             "c": [[[[[[[[[1]]]]]]]]]}}
    notice["locale"] = "not a locale!"
    r = web.post("/v1/notices", json=notice, headers=web.bearer)
    assert sorted(_fields(r)) == sorted(["kind", "locale", "data.b", "data.c[0][0][0][0][0][0][0]"])
    # And a notice with data limits broken and no recipient lists both
    r = web.post("/v1/notices", json={"kind": "order_delayed", "data": {"x": "y" * (limits.DATA_STRING_MAX_CHARS + 1)}},
                 headers=web.bearer)
    assert _fields(r) == ["email", "data.x"]


def test_json_nested_too_deep_for_python_is_a_422(web):
    r = web.post("/v1/notices", content=b'{"data":' + b"[" * 5000 + b"]" * 5000 + b"}",
                 headers={**web.bearer, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"]


# -- tokens ------------------------------------------------------------------------------------
def test_tokens_with_trailing_bytes_or_padding_get_404_and_change_nothing(web):
    _, msg = _campaign_mail(web)
    unsub = _unsubscribe_path(msg)
    prefs = _path(next(u for u in _links(msg) if "/preferences/" in u))
    for path in (unsub + "A", unsub + "=", unsub + "%00", unsub + "=="):
        assert web.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 404, path
        assert web.get(path).status_code == 404
    assert web.get(prefs + "AA").status_code == 404 and web.get(prefs + "=").status_code == 404
    assert web.get("/t/o/" + unsub.rsplit("/", 1)[1] + "x.gif").status_code == 404
    assert web.get("/confirm/" + unsub.rsplit("/", 1)[1] + "=").status_code == 404
    assert _granted(web)


# -- client IP ---------------------------------------------------------------------------------
def test_one_click_records_the_client_ip_from_a_trusted_proxy(web):
    # Given the request arrives from the trusted proxy, which appended the real client
    _, msg = _campaign_mail(web)
    r = web.post(_unsubscribe_path(msg), data={"List-Unsubscribe": "One-Click"},
                 headers={"X-Forwarded-For": "6.6.6.6, 198.51.100.7"})
    assert r.status_code == 200
    # Then the consent proof holds the address the proxy saw, not the forged left-most one
    assert _withdrawal_ips(web) == ["198.51.100.7"]


def _withdrawal_ips(web) -> list[str]:
    with web.mailer.session() as s:
        return list(s.execute(select(ConsentEvidence.ip).join(ConsentEvent, ConsentEvent.id == ConsentEvidence.event_id)
                              .where(ConsentEvent.action == "withdrawn")).scalars())


def test_x_forwarded_for_from_an_untrusted_peer_is_not_believed(web):
    # Given the same request straight from the internet (peer not in MAILER_TRUSTED_PROXIES)
    direct = TestClient(web.app, client=("203.0.113.50", 40000))
    _, msg = _campaign_mail(web)
    assert direct.post(_unsubscribe_path(msg), data={"List-Unsubscribe": "One-Click"},
                       headers={"X-Forwarded-For": "198.51.100.7"}).status_code == 200
    assert _withdrawal_ips(web) == ["203.0.113.50"]


# -- cross-site POSTs --------------------------------------------------------------------------
CROSS = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}


def test_cross_site_posts_to_recipient_pages_get_403_and_change_nothing(web):
    _, msg = _campaign_mail(web)
    prefs = _path(next(u for u in _links(msg) if "/preferences/" in u))
    csat = tracking.csat_urls(web.mailer.settings, "1001", None)
    csat_path = _path(csat["comment_url"])
    # When another site's form posts to the preference centre and the CSAT comment form
    assert web.post(prefs, data={"purposes": []}, headers=CROSS).status_code == 403
    assert web.post(csat_path, data={"comment": "spam", "rating": 1}, headers=CROSS).status_code == 403
    assert web.post("/confirm/whatever", headers={"Origin": "https://evil.example"}).status_code == 403
    # Then nothing changed
    assert _granted(web) and _count(web, CsatRating) == 0
    # And the same POSTs from our own pages work
    same = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    assert web.post(prefs, data={"purposes": []}, headers=same).status_code == 200
    assert not _granted(web)


def test_one_click_unsubscribe_still_works_cross_site(web):
    # Given a mail provider's cross-site one-click POST without cookies
    _, msg = _campaign_mail(web)
    r = web.post(_unsubscribe_path(msg), data={"List-Unsubscribe": "One-Click"}, headers=CROSS)
    # Then it unsubscribes
    assert r.status_code == 200 and not _granted(web)


# -- property tests ----------------------------------------------------------------------------
_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                           max_size=4), max_leaves=25)
_bodies = st.one_of(
    _json,
    st.fixed_dictionaries({"kind": st.sampled_from(["order_delayed", "nope", ""]) | _json,
                           "email": st.sampled_from(["a@example.com", "bad"]) | _json, "data": _json}),
    st.fixed_dictionaries({"type": st.sampled_from(["order_placed", "customer_updated"]) | _json,
                           "data": st.fixed_dictionaries({"email": st.just("a@example.com")}, optional={
                               "order_number": _json, "total": _json, "items": _json, "orders_count": _json})}),
)
_PROPS = hsettings(max_examples=40, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@_PROPS
@given(body=_bodies, path=st.sampled_from(["/v1/notices", "/v1/events"]))
def test_arbitrary_json_never_gives_a_5xx(web, body, path):
    text = json.dumps(body)  # NaN / Infinity become the JS literals Python's parser accepts
    r = web.post(path, content=text, headers={**web.bearer, "Content-Type": "application/json"})
    assert r.status_code < 500, (r.status_code, r.text)


@_PROPS
@given(raw=st.binary(max_size=300), path=st.sampled_from(["/v1/notices", "/v1/events"]),
       ctype=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]))
def test_arbitrary_bytes_never_give_a_5xx(web, raw, path, ctype):
    r = web.post(path, content=raw, headers={**web.bearer, "Content-Type": ctype})
    assert r.status_code < 500, (r.status_code, r.text)
