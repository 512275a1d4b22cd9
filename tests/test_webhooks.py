"""ESP webhooks: payloads shaped as each provider documents, signed with keys made in the test."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from sqlalchemy import select

from mailer import metrics
from mailer.app import App
from mailer.models import Suppression, SuppressionReason, WebhookEvent
from mailer.web.app import create_app
from tests.test_bounces_ingest import sent_delivery

MAILGUN_KEY = "key-test-mailgun"
POSTMARK_AUTH = "pm:secret"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-test.pem"


@pytest.fixture
def keys(tmp_path):
    sg = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(rsa_key.public_key())
            .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
            .sign(rsa_key, hashes.SHA256()))
    cache = tmp_path / "sns-certs"
    cache.mkdir()
    (cache / "SimpleNotificationService-test.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return {"sendgrid": sg, "sns": rsa_key, "cache": cache}


@pytest.fixture
def web(settings, keys):
    pub = base64.b64encode(keys["sendgrid"].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    app = App(settings.replace(mailgun_signing_key=MAILGUN_KEY, postmark_webhook_auth=POSTMARK_AUTH,
                               sendgrid_public_key=pub, ses_cert_cache_dir=str(keys["cache"])))
    yield app, TestClient(create_app(app=app))
    app.close()


def _mailgun(event: dict, key: str = MAILGUN_KEY) -> dict:
    ts, token = str(int(time.time())), "a" * 50
    sig = hmac.new(key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()
    return {"signature": {"timestamp": ts, "token": token, "signature": sig}, "event-data": event}


def _suppressions(app):
    with app.session() as s:
        return s.execute(select(Suppression.reason)).scalars().all()


def test_mailgun_permanent_failure_suppresses_once_and_a_wrong_signature_is_401(web):
    app, client = web
    # Given a sent delivery and Mailgun's "failed" event (severity permanent) about it
    d = sent_delivery(app, "mg@example.org")
    event = {"id": "mg-evt-1", "event": "failed", "severity": "permanent", "recipient": "mg@example.org",
             "reason": "bounce", "timestamp": time.time(),
             "message": {"headers": {"message-id": d.message_id.strip("<>"), "to": "mg@example.org"}},
             "delivery-status": {"code": 550, "message": "5.1.1 The email account that you tried to reach does "
                                 "not exist", "description": ""}}
    # When it is posted with a wrong signature
    bad = client.post("/webhooks/mailgun", json=_mailgun(event, key="wrong"))
    # Then 401 and nothing is stored
    assert bad.status_code == 401
    assert _suppressions(app) == []
    # When it is posted signed, twice
    first = client.post("/webhooks/mailgun", json=_mailgun(event))
    second = client.post("/webhooks/mailgun", json=_mailgun(event))
    # Then it takes effect once: a hard bounce suppression
    assert first.status_code == 200 and first.json()["events"][0]["outcome"] == "hard", first.text
    assert second.json()["events"][0]["outcome"] == "duplicate"
    assert _suppressions(app) == [SuppressionReason.hard_bounce]


def test_postmark_spam_complaint_suppresses_and_basic_auth_is_required(web):
    app, client = web
    # Given a delivery and Postmark's SpamComplaint webhook carrying our delivery id as metadata
    d = sent_delivery(app, "pm@example.org")
    body = {"RecordType": "SpamComplaint", "ID": 42, "Type": "SpamComplaint", "TypeCode": 100001,
            "MessageID": "00000000-0000-0000-0000-000000000000", "Email": "pm@example.org",
            "Metadata": {"X-Mailer-Delivery": str(d.id)}, "BouncedAt": "2026-12-01T10:00:00Z"}
    # When it is posted without and with the configured basic auth
    assert client.post("/webhooks/postmark", json=body).status_code == 401
    assert client.post("/webhooks/postmark", json=body, auth=("pm", "nope")).status_code == 401
    ok = client.post("/webhooks/postmark", json=body, auth=("pm", "secret"))
    # Then the complaint suppresses the address
    assert ok.status_code == 200 and ok.json()["events"][0]["outcome"] == "complaint", ok.text
    assert _suppressions(app) == [SuppressionReason.complaint]


def test_postmark_hard_bounce_with_sender_side_details_is_not_the_customers_fault(web):
    app, client = web
    # Given Postmark's HardBounce whose Details say our IP is listed
    d = sent_delivery(app, "pb@example.org")
    body = {"RecordType": "Bounce", "ID": 7, "Type": "HardBounce", "TypeCode": 1, "Email": "pb@example.org",
            "Metadata": {"X-Mailer-Delivery": str(d.id)}, "Description": "The server was unable to deliver",
            "Details": "smtp;550 5.7.1 Service unavailable; client host blocked using zen.spamhaus.org"}
    before = metrics.sender_refusals(relay="postmark", reason="blocked")
    # When it is posted
    r = client.post("/webhooks/postmark", json=body, auth=("pm", "secret"))
    # Then it is a sender-side alert, nobody is suppressed
    assert r.json()["events"][0]["outcome"] == "sender", r.text
    assert _suppressions(app) == []
    assert metrics.sender_refusals(relay="postmark", reason="blocked") == before + 1


def test_sendgrid_bounce_is_verified_with_ecdsa(web, keys):
    app, client = web
    # Given SendGrid's bounce event for a delivery, signed over timestamp + body
    d = sent_delivery(app, "sg@example.org")
    events = [{"email": "sg@example.org", "timestamp": int(time.time()), "smtp-id": d.message_id,
               "event": "bounce", "type": "bounce", "sg_event_id": "sg-1", "sg_message_id": "x.filter",
               "reason": "550 5.1.1 The email account that you tried to reach does not exist.", "status": "5.1.1"}]
    raw = json.dumps(events).encode()
    ts = str(int(time.time()))
    sig = base64.b64encode(keys["sendgrid"].sign(ts.encode() + raw, ec.ECDSA(hashes.SHA256()))).decode()
    headers = {"Content-Type": "application/json", "X-Twilio-Email-Event-Webhook-Timestamp": ts}
    # When it is posted with a signature over other bytes, then with the right one
    bad = client.post("/webhooks/sendgrid", content=raw + b" ",
                      headers={**headers, "X-Twilio-Email-Event-Webhook-Signature": sig})
    ok = client.post("/webhooks/sendgrid", content=raw,
                     headers={**headers, "X-Twilio-Email-Event-Webhook-Signature": sig})
    # Then the first is 401 and the second suppresses the address
    assert bad.status_code == 401
    assert ok.status_code == 200 and ok.json()["events"][0]["outcome"] == "hard", ok.text
    assert _suppressions(app) == [SuppressionReason.hard_bounce]


def _sns(keys, msg: dict) -> dict:
    fields = {"Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
              "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                           "TopicArn", "Type")}[msg["Type"]]
    signed = "".join(f"{k}\n{msg[k]}\n" for k in fields if k in msg)
    sig = keys["sns"].sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    return {**msg, "SignatureVersion": "2", "Signature": base64.b64encode(sig).decode(), "SigningCertURL": CERT_URL}


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def test_ses_complaint_through_sns_is_verified_and_subscription_is_recorded_not_fetched(web, keys, caplog):
    app, client = web
    # Given an SES complaint notification about a delivery, wrapped in a signed SNS Notification
    d = sent_delivery(app, "ses@example.org")
    ses = {"notificationType": "Complaint",
           "complaint": {"complainedRecipients": [{"emailAddress": "ses@example.org"}], "complaintFeedbackType": "abuse",
                         "timestamp": _now_iso(), "feedbackId": "fb-1"},
           "mail": {"messageId": "ses-internal-id", "headers": [{"name": "Message-ID", "value": d.message_id},
                                                                 {"name": "X-Mailer-Delivery", "value": str(d.id)}]}}
    note = _sns(keys, {"Type": "Notification", "MessageId": "sns-1", "TopicArn": "arn:aws:sns:eu-west-1:1:ses",
                       "Message": json.dumps(ses), "Timestamp": _now_iso()})
    # When it is posted tampered, then as signed
    tampered = client.post("/webhooks/ses", content=json.dumps({**note, "MessageId": "sns-2"}),
                           headers={"Content-Type": "text/plain"})
    ok = client.post("/webhooks/ses", content=json.dumps(note), headers={"Content-Type": "text/plain"})
    # Then the tampered one is 401, the signed one suppresses
    assert tampered.status_code == 401
    assert ok.status_code == 200 and ok.json()["events"][0]["outcome"] == "complaint", ok.text
    assert _suppressions(app) == [SuppressionReason.complaint]
    # When a certificate URL outside sns.<region>.amazonaws.com is given
    evil = {**note, "SigningCertURL": "https://evil.example.com/SimpleNotificationService-test.pem"}
    # Then it is refused
    assert client.post("/webhooks/ses", content=json.dumps(evil)).status_code == 401
    # When a signed SubscriptionConfirmation arrives
    sub = _sns(keys, {"Type": "SubscriptionConfirmation", "MessageId": "sns-sub", "Token": "tok",
                      "TopicArn": "arn:aws:sns:eu-west-1:1:ses", "Message": "You have chosen to subscribe",
                      "SubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=tok",
                      "Timestamp": _now_iso()})
    r = client.post("/webhooks/ses", content=json.dumps(sub))
    # Then it is recorded and the URL logged for the operator
    assert r.status_code == 200 and r.json()["events"][0]["outcome"] == "subscription"
    with app.session() as s:
        row = s.execute(select(WebhookEvent).where(WebhookEvent.kind == "subscription")).scalar_one()
        assert "ConfirmSubscription" in row.detail


def test_garbage_bodies_are_400_or_401_never_500(web):
    _, client = web
    # Given bodies that are not JSON
    # When they are posted to each endpoint
    # Then no endpoint answers 5xx
    for path in ("/webhooks/ses", "/webhooks/sendgrid", "/webhooks/mailgun"):
        assert client.post(path, content=b"\xff{not json").status_code in (400, 401)
    assert client.post("/webhooks/postmark", content=b"[1]", auth=("pm", "secret")).status_code == 400


def _sendgrid_post(client, keys, events: list) -> dict:
    raw = json.dumps(events).encode()
    ts = str(int(time.time()))
    sig = base64.b64encode(keys["sendgrid"].sign(ts.encode() + raw, ec.ECDSA(hashes.SHA256()))).decode()
    r = client.post("/webhooks/sendgrid", content=raw, headers={
        "Content-Type": "application/json", "X-Twilio-Email-Event-Webhook-Timestamp": ts,
        "X-Twilio-Email-Event-Webhook-Signature": sig})
    assert r.status_code == 200, r.text
    return r.json()


def _tracking_rows(app):
    from mailer.models import TrackingEvent

    with app.session() as s:
        return sorted((e.kind.value, e.delivery_id, e.url) for e in s.execute(select(TrackingEvent)).scalars())


@pytest.fixture
def tracking_web(settings, keys):
    pub = base64.b64encode(keys["sendgrid"].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    app = App(settings.replace(mailgun_signing_key=MAILGUN_KEY, postmark_webhook_auth=POSTMARK_AUTH,
                               sendgrid_public_key=pub, ses_cert_cache_dir=str(keys["cache"]), webhook_tracking=True))
    yield app, TestClient(create_app(app=app))
    app.close()


def test_opens_and_clicks_from_every_provider_are_recorded_when_the_setting_is_on(tracking_web, keys):
    app, client = tracking_web
    # Given a sent newsletter and MAILER_WEBHOOK_TRACKING on
    from mailer.delivery.compose import delivery_header

    d = sent_delivery(app, "trk@example.org")
    signed = delivery_header(app.settings, d.id)
    # When SendGrid posts an open (Apple's proxy: sg_machine_open) and a click, as its Event Webhook documents
    now = int(time.time())
    out = _sendgrid_post(client, keys, [
        {"email": "trk@example.org", "timestamp": now, "event": "open", "sg_event_id": "o-1", "smtp-id": d.message_id,
         "useragent": "Mozilla/5.0", "ip": "198.51.100.7", "sg_machine_open": True},
        {"email": "trk@example.org", "timestamp": now, "event": "click", "sg_event_id": "c-1", "smtp-id": d.message_id,
         "useragent": "Mozilla/5.0", "ip": "198.51.100.7", "url": "https://shop.example/sale"}])
    # And Mailgun posts "clicked" (our signed header among the message headers)
    mg = client.post("/webhooks/mailgun", json=_mailgun({
        "id": "mg-click-1", "event": "clicked", "timestamp": time.time(), "recipient": "trk@example.org",
        "url": "https://shop.example/boots", "ip": "203.0.113.9", "client-info": {"user-agent": "Mozilla/5.0"},
        "message": {"headers": {"message-id": "someone-else@mailgun.example", "x-mailer-delivery": signed}}}))
    # And Postmark posts an Open with our delivery in its metadata
    pm = client.post("/webhooks/postmark", auth=("pm", "secret"), json={
        "RecordType": "Open", "ID": 900, "MessageID": "pm-internal", "Recipient": "trk@example.org",
        "ReceivedAt": "2026-12-01T10:00:00Z", "UserAgent": "Mozilla/5.0 (Windows NT 10.0)",
        "Geo": {"IP": "192.0.2.50"}, "Metadata": {"X-Mailer-Delivery": signed}, "FirstOpen": True})
    # And SES publishes a Click event through SNS
    ses = {"eventType": "Click", "mail": {"messageId": "ses-id", "destination": ["trk@example.org"],
                                          "headers": [{"name": "Message-ID", "value": d.message_id}]},
           "click": {"ipAddress": "192.0.2.60", "link": "https://shop.example/hats", "timestamp": _now_iso(),
                     "userAgent": "Mozilla/5.0"}}
    sn = client.post("/webhooks/ses", content=json.dumps(_sns(keys, {
        "Type": "Notification", "MessageId": "sns-click-1", "TopicArn": "arn:aws:sns:eu-west-1:1:ses",
        "Message": json.dumps(ses), "Timestamp": _now_iso()})))
    # Then each is recorded once in the tracking table, the proxy open as a machine open
    assert [e["outcome"] for e in out["events"]] == ["machine_open", "click"], out
    assert mg.json()["events"][0]["outcome"] == "click", mg.text
    assert pm.json()["events"][0]["outcome"] == "open", pm.text
    assert sn.json()["events"][0]["outcome"] == "click", sn.text
    assert _tracking_rows(app) == sorted([
        ("machine_open", d.id, None), ("click", d.id, "https://shop.example/sale"),
        ("click", d.id, "https://shop.example/boots"), ("open", d.id, None), ("click", d.id, "https://shop.example/hats")])
    # And the same open again changes nothing
    assert _sendgrid_post(client, keys, [{"email": "trk@example.org", "timestamp": now, "event": "open",
                                         "sg_event_id": "o-1", "smtp-id": d.message_id}])["events"][0]["outcome"] \
        == "duplicate"


def test_opens_from_webhooks_are_ignored_by_default_and_a_forged_header_matches_nothing(web, tracking_web, keys):
    app, client = web
    # Given a sent newsletter and MAILER_WEBHOOK_TRACKING off (the default)
    d = sent_delivery(app, "off@example.org")
    # When SendGrid posts an open for it
    out = _sendgrid_post(client, keys, [{"email": "off@example.org", "timestamp": int(time.time()), "event": "open",
                                         "sg_event_id": "o-off", "smtp-id": d.message_id}])
    # Then it is acknowledged and nothing is recorded
    assert out["events"][0]["outcome"] == "ignored"
    assert _tracking_rows(app) == []
    with app.session() as s:
        assert "MAILER_WEBHOOK_TRACKING is off" in s.execute(select(WebhookEvent.detail)).scalar_one()
    # Given the setting on, When Postmark reports a click whose X-Mailer-Delivery signature is forged
    on_app, on_client = tracking_web
    e = sent_delivery(on_app, "forge@example.org")
    pm = on_client.post("/webhooks/postmark", auth=("pm", "secret"), json={
        "RecordType": "Click", "ID": 901, "Recipient": "forge@example.org", "OriginalLink": "https://x.example/",
        "ReceivedAt": "2026-12-01T10:00:00Z", "Metadata": {"X-Mailer-Delivery": f"{e.id}.0000000000000000"}})
    # Then it is unmatched and nothing is recorded
    assert pm.json()["events"][0]["outcome"] == "unmatched", pm.text
    assert _tracking_rows(on_app) == []
