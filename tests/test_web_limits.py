"""Input bounds and web hardening that need no database: data limits, strict tokens, client IPs,
the cross-site check, log redaction, the body-size middleware and the CLI ``--data`` parser."""

from __future__ import annotations

import logging

import click
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from mailer import limits, tokens
from mailer.cli.base import parse_json
from mailer.errors import InvalidEvent, TokenError
from mailer.events import schemas as events
from mailer.settings import Settings
from mailer.web import security as web_security

SECRET = "s3cret-for-tests"


# -- data limits -------------------------------------------------------------------------------
def test_every_broken_limit_is_listed_with_its_field_path():
    # Given data breaking several limits at once
    data = {"items": [{"name": "ok"}, {"name": "x" * (limits.DATA_STRING_MAX_CHARS + 1)}],
            "total": float("nan"), "big": 2**63, "neg": -(2**63) - 1, "inf": float("-inf"),
            "deep": [[[[[[[[["too deep"]]]]]]]]]}
    # When it is checked
    fields = [f for f, _ in limits.check(data)]
    # Then each problem names its field, in document order
    assert fields == ["data.items[1].name", "data.total", "data.big", "data.neg", "data.inf",
                      "data.deep[0][0][0][0][0][0][0]"]


def test_total_size_list_length_and_key_length_are_bounded():
    # Given data that is too big in total, a list that is too long and a key that is too long
    chunk = "y" * limits.DATA_STRING_MAX_CHARS
    too_big = {f"k{i}": chunk for i in range(limits.DATA_TOTAL_MAX_BYTES // limits.DATA_STRING_MAX_CHARS + 1)}
    # Then each is refused naming where
    assert [f for f, _ in limits.check(too_big)] == ["data"]
    assert [f for f, _ in limits.check({"l": list(range(limits.DATA_LIST_MAX_ITEMS + 1))})] == ["data.l"]
    assert [f for f, _ in limits.check({"k" * (limits.DATA_KEY_MAX_CHARS + 1): 1})] == ["data"]
    # And data within the limits passes
    assert limits.check({"items": [{"name": "Linen shirt", "price": 129.9, "qty": 2**63 - 1}]}) == []


def test_problem_list_is_capped():
    # Given more bad values than PROBLEMS_MAX_COUNT
    data = {"v": [float("nan")] * (limits.PROBLEMS_MAX_COUNT + 5)}
    problems = limits.check(data)
    # Then the list is capped, with a last line saying the rest are not listed
    assert len(problems) == limits.PROBLEMS_MAX_COUNT + 1
    assert "not listed" in problems[-1][1]


def test_event_validation_lists_every_bad_field_and_refuses_nan_and_huge_counts():
    # Given an event with several bad fields
    data = {"email": "not an address", "order_number": "1001", "new_eta": "soon",
            "items": [{"name": "Shirt", "quantity": 2**40}, {"name": "Hat", "price": "abc"}],
            "compensation_percent": 500, "reason": float("inf")}
    # When it is validated (as Python callers of events.publish do)
    with pytest.raises(InvalidEvent) as caught:
        events.validate("order_delayed", data)
    # Then every problem is listed, NaN/Infinity included (JSON limits are checked first)
    assert [f for f, _ in caught.value.problems] == ["data.reason"]
    del data["reason"]
    with pytest.raises(InvalidEvent) as caught:
        events.validate("order_delayed", data)
    assert sorted(f for f, _ in caught.value.problems) == sorted([
        "data.email", "data.new_eta", "data.items[0].quantity", "data.items[1].price",
        "data.compensation_percent"])


def test_cli_data_refuses_nan_infinity_and_out_of_range_numbers():
    # Given --data JSON with the literals Python's json module would accept
    for text in ('{"total": NaN}', '{"total": Infinity}', '{"total": -Infinity}'):
        # Then it is refused as a bad parameter, never passed on
        with pytest.raises(click.BadParameter, match="NaN and Infinity"):
            parse_json(text, option="--data")
    with pytest.raises(click.BadParameter, match="64-bit"):
        parse_json('{"id": 99999999999999999999}', option="--data")
    with pytest.raises(click.BadParameter, match="too deeply"):
        parse_json("[" * 100_000, option="--data")
    assert parse_json('{"total": 1.5}', option="--data") == {"total": 1.5}


# -- tokens ------------------------------------------------------------------------------------
def test_strict_tokens_refuse_padding_trailing_bytes_and_slack_bits():
    # Given a valid token
    token = tokens.sign(SECRET, "u", {"d": 7, "p": "newsletter"})
    assert tokens.verify(SECRET, "u", token) == {"d": 7, "p": "newsletter"}
    body, mac = token.split(".")
    # When it is spelled any other way
    variants = [token + "=", token + "A", token + "%00", token + " ", body + "=." + mac, body + "." + mac + "==",
                body + ".+" + mac[1:], body + "." + mac[:-1] + ("B" if mac[-1] == "A" else "A"),
                body + "." + mac + "AA", "." + mac, body + ".", token + "\n", "é" + token]
    for variant in variants:
        if variant == token:
            continue
        # Then it is refused (TokenError, which the web layer answers with 404)
        with pytest.raises(TokenError):
            tokens.verify(SECRET, "u", variant)


# -- client IP ---------------------------------------------------------------------------------
def _request(peer: str, xff: list[str] | None = None, headers: dict | None = None) -> Request:
    raw = [(b"x-forwarded-for", v.encode()) for v in (xff or [])]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw, "client": (peer, 1234),
                    "query_string": b"", "scheme": "http", "server": ("shop.example.com", 80)})


def test_x_forwarded_for_is_ignored_without_trusted_proxies():
    # Given no MAILER_TRUSTED_PROXIES (the default)
    settings = Settings(trusted_proxies="")
    # Then a client claiming another IP in X-Forwarded-For is recorded by its socket address
    assert web_security.client_ip(_request("203.0.113.9", ["198.51.100.1"]), settings) == "203.0.113.9"


def test_x_forwarded_for_is_walked_from_the_right_past_trusted_proxies_only():
    settings = Settings(trusted_proxies="10.0.0.0/8, 192.168.1.1")
    # Given a request through two trusted proxies, with a forged left-most entry
    req = _request("10.0.0.2", ["6.6.6.6, 198.51.100.7", "192.168.1.1"])
    # Then the client is the right-most address that is not a trusted proxy
    assert web_security.client_ip(req, settings) == "198.51.100.7"
    # And an untrusted peer's X-Forwarded-For is not believed
    assert web_security.client_ip(_request("203.0.113.5", ["198.51.100.7"]), settings) == "203.0.113.5"
    # And garbage stops the walk at the last address believed
    assert web_security.client_ip(_request("10.0.0.2", ["198.51.100.7, not-an-ip"]), settings) == "10.0.0.2"
    # And a trusted peer without the header is itself the client
    assert web_security.client_ip(_request("10.0.0.2"), settings) == "10.0.0.2"


def test_bad_trusted_proxies_setting_is_a_configuration_error():
    from mailer.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="MAILER_TRUSTED_PROXIES"):
        web_security.trusted_networks("10.0.0.0/8, nonsense")


# -- cross-site check --------------------------------------------------------------------------
@pytest.mark.parametrize(("headers", "cross"), [
    ({"Sec-Fetch-Site": "cross-site"}, True),
    ({"Sec-Fetch-Site": "same-site"}, True),
    ({"Sec-Fetch-Site": "same-origin", "Origin": "https://evil.example"}, False),
    ({"Sec-Fetch-Site": "none"}, False),
    ({"Origin": "https://evil.example", "Host": "shop.example.com"}, True),
    ({"Origin": "null", "Host": "shop.example.com"}, True),
    ({"Origin": "https://mail.example.com", "Host": "shop.example.com"}, False),  # MAILER_BASE_URL
    ({"Origin": "http://shop.example.com", "Host": "shop.example.com"}, False),  # own Host
    ({}, False),  # no browser headers: not a forged browser form
])
def test_cross_site_check(headers, cross):
    settings = Settings(base_url="https://mail.example.com:443/m")
    assert web_security.is_cross_site(_request("203.0.113.9", headers=headers), settings) is cross


# -- logs --------------------------------------------------------------------------------------
def test_access_log_lines_have_tokens_redacted():
    # Given uvicorn-style access records for token URLs
    token = tokens.sign(SECRET, "u", {"d": 1})
    filt = web_security.TokenRedactingFilter()
    for path in (f"/u/{token}", f"/t/o/{token}.gif", f"/t/c/{token}", f"/preferences/{token}?x=1",
                 f"/csat/{token}", f"/confirm/{token}"):
        record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                                   ("203.0.113.9:1234", "POST", path, "1.1", 200), None)
        # When the filter runs
        assert filt.filter(record)
        # Then the token is gone and the route is still readable
        line = record.getMessage()
        assert token not in line and token.split(".")[0] not in line and "[redacted]" in line, line
    # And the config `mailer serve` gives uvicorn puts the filter on every handler and on mailer's logs
    config = web_security.log_config()
    assert all("redact_tokens" in h["filters"] for h in config["handlers"].values())
    assert config["loggers"]["mailer"]["handlers"] == ["default"]


def test_mailer_serve_runs_uvicorn_with_redaction_and_without_its_proxy_headers(monkeypatch):
    # Given uvicorn.run replaced by a recorder
    import uvicorn
    from click.testing import CliRunner

    from mailer.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: seen.update(kw))
    # When `mailer serve --workers 2` starts
    result = CliRunner().invoke(main, ["serve", "--workers", "2"], env={"MAILER_TRUSTED_PROXIES": "10.0.0.0/8"})
    # Then uvicorn gets the redacting log config and does not rewrite client IPs itself
    assert result.exit_code == 0, result.output
    assert seen["proxy_headers"] is False
    assert "redact_tokens" in seen["log_config"]["filters"]


# -- body size ---------------------------------------------------------------------------------
def _echo_app(limit: int) -> TestClient:
    api = FastAPI()

    @api.post("/echo")
    async def echo(request: Request) -> dict:
        return {"n": len(await request.body())}

    api.add_middleware(web_security.BodyLimitMiddleware, max_body_bytes=limit)
    return TestClient(api)


def test_bodies_over_the_limit_get_413_by_length_and_when_chunked():
    client = _echo_app(100)
    # Given a body within the limit, it is read
    assert client.post("/echo", content=b"x" * 100).json() == {"n": 100}
    # When a body declares more than the limit
    assert client.post("/echo", content=b"x" * 101).status_code == 413
    # Or streams more than the limit without a Content-Length (chunked)
    r = client.post("/echo", content=iter([b"x" * 60, b"x" * 60]))
    # Then 413
    assert r.status_code == 413
    assert client.post("/echo", content=iter([b"x" * 50, b"x" * 50])).json() == {"n": 100}
