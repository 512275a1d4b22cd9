"""DKIM: every signature mailer makes verifies with dkimpy, an independent implementation."""

from __future__ import annotations

import re
from email import message_from_bytes, policy

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from mailer.clock import utcnow
from mailer.errors import ConfigurationError
from mailer.message.dkim import SPACE_PROBES, Signer, relaxed_body, relaxed_header
from mailer.message.mime import MailParts, build
from tests.conftest import make_settings
from tests.dkim_support import dkim_settings, signed_header_names, signer, verify_all


@pytest.fixture(scope="module")
def keys_root(tmp_path_factory):
    return tmp_path_factory.mktemp("dkimkeys")


def marketing_mail(subject="Spring sale: 20 % off", to_name="Zoë Kowalska") -> bytes:
    return build(MailParts(
        from_name="Northwind Shop", from_address="shop@example.com", to_name=to_name,
        to_address="zoe@example.org", subject=subject, text="Hello Zoë,\n\nour sale starts today.  \n\n\n",
        html="<html><body><p>Hello Zoë</p></body></html>", message_id="<42.abcdef@example.com>", date=utcnow(),
        headers=[("List-Unsubscribe", "<https://shop.example.com/u/TOKEN>, <mailto:unsubscribe@example.com>"),
                 ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
                 ("List-Id", '"Northwind newsletter" <newsletter.example.com>'),
                 ("Feedback-ID", "c1:newsletter:marketing:example.com")]))


def test_dual_signature_both_verify_and_cover_the_required_headers(keys_root):
    # Given a marketing mail and a signer with an RSA and an Ed25519 key
    signed = signer(keys_root).sign(marketing_mail())
    # Then dkimpy verifies both signatures against the published keys
    assert verify_all(signed, keys_root) == [("ed25519-sha256", True), ("rsa-sha256", True)]
    # And each covers From, To, Subject, Date, Message-ID, the MIME headers and both List-Unsubscribe headers
    for algorithm in ("rsa-sha256", "ed25519-sha256"):
        names = set(signed_header_names(signed, algorithm))
        assert {"from", "to", "subject", "date", "message-id", "mime-version", "content-type",
                "list-unsubscribe", "list-unsubscribe-post", "list-id", "feedback-id"} <= names
    # And the signed mail still parses under the standard library's strict policy
    msg = message_from_bytes(signed, policy=policy.strict)
    assert msg["Subject"] == "Spring sale: 20 % off" and msg["To"].addresses[0].display_name == "Zoë Kowalska"


@pytest.mark.parametrize("rsa,ed25519,expected", [
    (True, False, ["rsa-sha256"]),
    (False, True, ["ed25519-sha256"]),
])
def test_single_key_configurations_sign_once(keys_root, rsa, ed25519, expected):
    signed = signer(keys_root, rsa=rsa, ed25519=ed25519).sign(marketing_mail())
    assert verify_all(signed, keys_root) == [(a, True) for a in expected]


@pytest.mark.parametrize("tamper", [
    pytest.param(lambda m: m.replace(b"Subject: Spring sale", b"Subject: Summer sale"), id="subject changed"),
    pytest.param(lambda m: m.replace(b"Subject:", b"Subject: Free money\r\nSubject:", 1), id="second subject added"),
    pytest.param(lambda m: m.replace(b"From: Northwind Shop <shop@example.com>",
                                     b"From: Northwind Shop <shop@example.com>\r\nFrom: <evil@example.net>"),
                 id="second from added"),
    pytest.param(lambda m: m.replace(b"List-Unsubscribe: <https://shop.example.com/u/TOKEN>",
                                     b"List-Unsubscribe: <https://evil.example.net/u/TOKEN>"), id="unsubscribe link"),
    pytest.param(lambda m: m[:-40] + b"QUFBQUFB" + m[-32:], id="body changed"),
])
def test_any_tampering_breaks_both_signatures(keys_root, tamper):
    signed = signer(keys_root).sign(marketing_mail())
    forged = tamper(signed)
    assert forged != signed
    assert verify_all(forged, keys_root) == [("ed25519-sha256", False), ("rsa-sha256", False)]


def test_relaxed_canonicalization_survives_harmless_rewrapping(keys_root):
    # Given a signed mail whose headers a relay re-folds and pads with whitespace
    signed = signer(keys_root).sign(marketing_mail())
    rewrapped = signed.replace(b"Subject: Spring sale:", b"Subject:   Spring \r\n\t sale:")
    rewrapped = rewrapped.replace(b"MIME-Version: 1.0", b"MIME-Version:  1.0 ")
    assert rewrapped != signed
    # Then both signatures still verify
    assert verify_all(rewrapped, keys_root) == [("ed25519-sha256", True), ("rsa-sha256", True)]


def test_canonicalization_matches_rfc6376_examples():
    # RFC 6376 section 3.4.5
    assert relaxed_header(b"A", b" X\r\n") == b"a:X"
    assert relaxed_header(b"B ", b" Y\t\r\n\tZ  ") == b"b:Y Z"
    assert relaxed_body(b" C \r\nD \t E\r\n\r\n\r\n") == b" C\r\nD E\r\n"
    assert relaxed_body(b"") == b"" and relaxed_body(b"\r\n\r\n") == b""


def _reference_relaxed_body(body: bytes) -> bytes:
    # RFC 6376 3.4.4 spelled out with the two substitutions always applied (no fast path).
    body = re.sub(rb"[ \t]+", b" ", body)
    body = re.sub(rb"[ \t]+\r\n", b"\r\n", body).rstrip(b" \t\r\n")
    return body + b"\r\n" if body else b""


@hsettings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.sampled_from([b" ", b"  ", b"\t", b"\r\n", b" \r\n", b"\r", b"QUJD", b"x y", b"\r\n\r\n"]),
                       max_size=40),
       spaces=st.integers(0, 2 * SPACE_PROBES))
def test_the_body_fast_path_canonicalizes_exactly_like_the_rfc(pieces, spaces):
    # Given a body of any mix of spaces, tabs and line ends, after up to twice the number
    # of single spaces the fast path looks at one by one
    body = b"a " * spaces + b"".join(pieces)
    # When it is canonicalized, Then the result is the RFC's, substitutions always applied
    assert relaxed_body(body) == _reference_relaxed_body(body)


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(subject=st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=120),
       name=st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=60))
def test_any_printable_subject_and_name_sign_verify_and_round_trip(keys_root, subject, name):
    signed = signer(keys_root).sign(marketing_mail(subject=subject, to_name=name))
    assert all(ok for _, ok in verify_all(signed, keys_root))
    msg = message_from_bytes(signed, policy=policy.strict)
    assert " ".join(msg["Subject"].split()) == " ".join(subject.split())
    assert all(len(line) <= 998 for line in signed.split(b"\r\n"))


def test_from_settings_loads_both_keys_and_publishes_dns_records(keys_root):
    s = Signer.from_settings(make_settings(**dkim_settings(keys_root)))
    records = dict(s.dns_records())
    assert set(records) == {"mailer-ed._domainkey.example.com", "mailer._domainkey.example.com"}
    assert records["mailer-ed._domainkey.example.com"].startswith("v=DKIM1; k=ed25519; p=")
    assert records["mailer._domainkey.example.com"].startswith("v=DKIM1; k=rsa; p=")
    # And no keys configured means no signing (the mail is unchanged)
    unsigned = Signer.from_settings(make_settings())
    assert not unsigned.enabled and unsigned.sign(b"X: y\r\n\r\nbody") == b"X: y\r\n\r\nbody"


def test_bad_key_configuration_is_a_clear_error(keys_root, tmp_path):
    rsa_path = dkim_settings(keys_root)["dkim_rsa_key"]
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    cases = [
        (dict(dkim_domain="example.com", dkim_rsa_key=str(tmp_path / "missing.pem")), "cannot read DKIM key file"),
        (dict(dkim_domain="example.com", dkim_rsa_key=str(garbage)), "not an unencrypted PEM private key"),
        (dict(dkim_domain="example.com", dkim_rsa_key=str(ec_key)), "not an RSA key"),
        (dict(dkim_domain="example.com", dkim_ed25519_key=rsa_path), "not an Ed25519 key"),
        (dict(dkim_domain="", dkim_rsa_key=rsa_path), "MAILER_DKIM_DOMAIN is empty"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigurationError, match=message):
            Signer.from_settings(make_settings(**overrides))


def test_cli_generates_keys_and_prints_their_dns_records(tmp_path):
    from click.testing import CliRunner

    from mailer.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["dkim", "keygen", str(tmp_path / "keys")])
    assert res.exit_code == 0, res.output
    assert oct((tmp_path / "keys" / "dkim-rsa.pem").stat().st_mode & 0o777) == "0o600"
    env = {"MAILER_DKIM_DOMAIN": "shop.example", "MAILER_DKIM_RSA_KEY": str(tmp_path / "keys" / "dkim-rsa.pem"),
           "MAILER_DKIM_ED25519_KEY": str(tmp_path / "keys" / "dkim-ed25519.pem")}
    res = runner.invoke(main, ["dkim", "dns"], env=env)
    assert res.exit_code == 0, res.output
    assert "mailer._domainkey.shop.example. IN TXT" in res.output and "k=rsa" in res.output
    assert "mailer-ed._domainkey.shop.example. IN TXT" in res.output and "k=ed25519" in res.output
    # A second keygen into the same folder refuses to overwrite
    res = runner.invoke(main, ["dkim", "keygen", str(tmp_path / "keys")])
    assert res.exit_code == 2 and "refusing to overwrite" in res.output


@pytest.mark.smtp
def test_mails_received_by_a_real_relay_verify_including_list_unsubscribe(db_url, keys_root, tmp_path):
    # Given DKIM keys in the settings, a real SMTP server and a marketing kind
    from mailer.app import App
    from mailer.delivery import process as delivery
    from mailer.delivery.compose import compose
    from mailer.delivery.mail import MailContext
    from mailer.models import Delivery
    from mailer.notices import trigger as notices
    from tests.campaign_support import NEWS_KIND, newsletter_templates
    from tests.smtp_sink import SMTPSink

    sink = SMTPSink().start()
    app = App(make_settings(database_url=db_url, smtp_url=sink.url, templates_dir=newsletter_templates(tmp_path),
                            **dkim_settings(keys_root)))
    try:
        # When a notice goes out through the worker's send path
        d = notices.create(app, "order_delayed", to="anna@example.org",
                           data={"order_number": "7", "new_eta": "2026-12-01"}).delivery_id
        assert delivery.process(app, d).status == "sent"
        (got,) = sink.received
        # Then dkimpy verifies both signatures of what the relay received
        assert verify_all(got.raw, keys_root) == [("ed25519-sha256", True), ("rsa-sha256", True)]
        # And a newsletter's signatures cover its List-Unsubscribe and List-Unsubscribe-Post headers
        news = Delivery(id=99, idempotency_key="x", kind=NEWS_KIND, customer_id=None, to_address="anna@example.org",
                        to_hash="h", locale="en", data={"headline": "Sale"}, purpose="newsletter", queue="bulk")
        composed = compose(app.settings, app.renderer, app.signer, MailContext.of(news))
        assert verify_all(composed.message, keys_root) == [("ed25519-sha256", True), ("rsa-sha256", True)]
        names = signed_header_names(composed.message, "rsa-sha256")
        assert "list-unsubscribe" in names and "list-unsubscribe-post" in names
    finally:
        app.close()
        sink.stop()
