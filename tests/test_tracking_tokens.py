"""Tracking tokens and machine-open detection (pure functions, no database)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from mailer import tokens
from mailer.errors import TokenError
from mailer.models import Delivery
from mailer.tracking import service as tracking
from tests.conftest import make_settings

SETTINGS = make_settings(base_url="https://mail.shop.example", machine_open_window_s=10)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def _delivery(**kw) -> Delivery:
    base = dict(id=42, customer_id=7, purpose="newsletter", created_at=NOW - timedelta(days=1))
    base.update(kw)
    return Delivery(**base)


def _payload(token: str) -> dict:
    body = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def test_tokens_carry_ids_only_and_are_deterministic_per_delivery():
    d = _delivery(to_address="ann@example.com")
    first, again = tracking.unsubscribe_url(SETTINGS, d), tracking.unsubscribe_url(SETTINGS, d)
    assert first == again  # a retry composes the same mail
    token = first.rsplit("/", 1)[1]
    payload = _payload(token)
    assert set(payload) == {"d", "c", "p", "x"} and "ann" not in token and "example" not in json.dumps(payload)
    assert payload["x"] == int(d.created_at.timestamp()) + SETTINGS.token_ttl_days * 86_400


def test_a_token_is_only_valid_for_its_own_purpose():
    d = _delivery()
    unsubscribe = tracking.unsubscribe_token(SETTINGS, d)
    assert tracking.read(SETTINGS, tracking.UNSUBSCRIBE, unsubscribe).customer_id == 7
    for other in (tracking.OPEN, tracking.PREFERENCES, tracking.CLICK, tracking.CSAT):
        with pytest.raises(TokenError):
            tracking.read(SETTINGS, other, unsubscribe)
    with pytest.raises(TokenError):
        tracking.read(SETTINGS.replace(secret_key="another"), tracking.UNSUBSCRIBE, unsubscribe)


def test_expired_tokens_are_refused():
    old = _delivery(created_at=NOW - timedelta(days=SETTINGS.token_ttl_days + 2))
    token = tracking.unsubscribe_token(SETTINGS, old)
    with pytest.raises(TokenError, match="expired"):
        tracking.read(SETTINGS, tracking.UNSUBSCRIBE, token)


@pytest.mark.parametrize("url,wrapped", [
    ("https://shop.example.com/p/1?a=b&c=d", True),
    ("http://shop.example.com/", True),
    ("mailto:help@shop.example.com", False),
    ("tel:+48123456789", False),
    ("#top", False),
    ("javascript:alert(1)", False),
    ("https://" + "a" * 2000 + ".example.com/", False),
])
def test_only_http_links_are_wrapped(url, wrapped):
    out = tracking.click_url(SETTINGS, _delivery(), url)
    assert (out != url) is wrapped
    if wrapped:
        token = out.rsplit("/", 1)[1]
        assert tracking.read(SETTINGS, tracking.CLICK, token).url == url


def test_click_token_with_a_non_http_target_is_refused_even_if_signed():
    token = tokens.sign(SETTINGS.secret_key, tracking.CLICK, {"d": 1, "u": "javascript:alert(1)"})
    with pytest.raises(TokenError):
        tracking.read(SETTINGS, tracking.CLICK, token)


@pytest.mark.parametrize("ua,ip,minutes,machine", [
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) AppleWebKit/605.1.15 Mobile/15E148", "198.51.100.1", 60, False),
    ("Mozilla/5.0", "198.51.100.1", 60, True),                                    # Apple MPP
    ("Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)", None, 60, True),
    ("YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html", None, 60, True),
    ("Mozilla/5.0 (Macintosh) Safari/605", "17.58.100.2", 60, True),             # Apple's network
    ("Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0", "198.51.100.1", 0.05, True),  # 3 s after delivery
    ("", None, 60, True),
])
def test_machine_open_detection(ua, ip, minutes, machine):
    sent = NOW - timedelta(minutes=minutes)
    assert (tracking.is_machine(SETTINGS, user_agent=ua, ip=ip, sent_at=sent, now=NOW) is not None) is machine


def test_ip_addresses_are_stored_truncated():
    assert tracking.anonymize_ip("203.0.113.77") == "203.0.113.0"
    assert tracking.anonymize_ip("2001:db8:abcd:12:1:2:3:4") == "2001:db8:abcd::"
    assert tracking.anonymize_ip("not-an-ip") is None


def test_csat_links_rate_one_to_five():
    links = tracking.csat_urls(SETTINGS, "NW-1", 3)
    ratings = [tracking.read(SETTINGS, tracking.CSAT, u.rsplit("/", 1)[1]).rating for u in links["rating_urls"]]
    assert ratings == [1, 2, 3, 4, 5]
    assert tracking.read(SETTINGS, tracking.CSAT, links["comment_url"].rsplit("/", 1)[1]).rating is None


_VALUES = st.one_of(st.integers(-2**70, 2**70), st.text(max_size=40), st.booleans(), st.none(),
                    st.floats(allow_nan=False, allow_infinity=False), st.lists(st.integers(), max_size=3))


@hsettings(max_examples=300, deadline=None)
@given(payload=st.dictionaries(st.text(max_size=6), _VALUES, max_size=5), ttl=st.one_of(st.none(), st.integers(0, 10**6)))
def test_a_token_body_is_the_canonical_compact_json_of_its_payload(payload, ttl):
    # Given any payload (ints and strings take the fast path; bools, None, floats, lists the encoder)
    token = tokens.sign("k", "c", payload, ttl_s=ttl, now=1_800_000_000)
    # Then the body is exactly json.dumps(sort_keys, compact), byte for byte, so tokens minted
    # before the fast path and after it are the same text
    body = dict(payload) | ({"x": 1_800_000_000 + ttl} if ttl is not None else {})
    raw = base64.urlsafe_b64decode(token.split(".")[0] + "=" * (-len(token.split(".")[0]) % 4))
    assert raw == json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    # And the MAC is the HMAC-SHA256 of that body under the purpose's key
    mac = base64.urlsafe_b64decode(token.split(".")[1] + "==")
    assert mac == hmac.new(tokens._key("k", "c"), raw, hashlib.sha256).digest()[:tokens.MAC_BYTES]
    if "x" not in payload:
        assert tokens.verify("k", "c", token, now=1_800_000_000) == payload


def test_the_unsubscribe_header_and_link_carry_one_token():
    # Given a marketing delivery
    d = _delivery()
    # When its unsubscribe URL and mailto are made together
    url, mailto = tracking.unsubscribe_links(SETTINGS, d)
    # Then they are what the single helpers make, with the same token
    assert url == tracking.unsubscribe_url(SETTINGS, d)
    assert mailto == tracking.unsubscribe_mailto(SETTINGS, d)
    assert url.rsplit("/", 1)[1] in mailto
