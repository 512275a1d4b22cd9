"""Double opt-in: the confirmation mail reaches a real SMTP server; only following its link grants consent."""

from __future__ import annotations

import re
from email import message_from_bytes, policy

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from mailer import segments
from mailer.app import App
from mailer.clock import utcnow
from mailer.consent import ledger as consent
from mailer.consent import verify as consent_verify
from mailer.customers.records import by_email
from mailer.errors import TokenError
from mailer.models import ConsentEvent, ConsentRequest, Delivery, DeliveryStatus
from mailer.notices.confirmation import double_opt_in
from mailer.web.app import create_app
from tests.conftest import make_settings

WORDING = "Yes, send me the Northwind newsletter. I can unsubscribe at any time."
LINK = re.compile(r"(https?://[^\s\"'<>()]+/confirm/[A-Za-z0-9_\-.]+)")


def _events(app) -> int:
    with app.session() as s:
        return s.execute(select(func.count()).select_from(ConsentEvent)).scalar_one()


def _link_from_mail(sink) -> str:
    msg = message_from_bytes(sink.received[-1].raw, policy=policy.default)
    links = set(LINK.findall(msg.get_body(("plain",)).get_content()))
    assert len(links) == 1, links
    return links.pop()


@pytest.mark.smtp
def test_consent_counts_only_after_the_mailed_link_is_followed(smtp_app, smtp_worker, smtp_sink):
    settings = smtp_app.settings
    # Given a sign-up with double opt-in
    pending, delivery_id = double_opt_in(
        smtp_app, email="new.subscriber@example.com", purpose="newsletter", source="signup_form",
        proof=consent.Proof(ip="198.51.100.23", user_agent="Safari/18", form_id="footer", wording=WORDING,
                            wording_version="2026-01"), locale="pl")
    smtp_worker.drain()
    # Then the confirmation mail arrived over SMTP with the signed link, and nothing is granted yet
    assert [m.rcpt_tos for m in smtp_sink.received] == [["new.subscriber@example.com"]]
    url = _link_from_mail(smtp_sink)
    assert url == pending.url and url.startswith("https://shop.example.com/m/confirm/")
    with smtp_app.session() as s:
        assert s.get(Delivery, delivery_id).status is DeliveryStatus.sent
        customer = by_email(s, "new.subscriber@example.com")
        assert not consent.has_consent(s, settings, customer.id, "newsletter")
        assert segments.count(s, settings, segments.load(settings, "newsletter_all")) == 0
    assert _events(smtp_app) == 0
    client = TestClient(create_app(app=smtp_app), base_url="https://shop.example.com")
    path = url.split("/m", 1)[1]
    # When a link scanner fetches the link (GET)
    page = client.get(path)
    # Then it sees a localized page with a button, and still nothing is granted
    assert page.status_code == 200
    assert 'method="post"' in page.text and "Tak, zapisz mnie" in page.text and 'lang="pl"' in page.text
    assert page.headers["cache-control"].startswith("no-store")
    assert _events(smtp_app) == 0
    # When the person presses the button (POST)
    done = client.post(path)
    # Then consent is granted, with the sign-up's proof and the confirmation time
    assert done.status_code == 200 and "Subskrypcja potwierdzona" in done.text
    with smtp_app.session() as s:
        assert consent.has_consent(s, settings, customer.id, "newsletter")
        ev = s.execute(select(ConsentEvent)).scalar_one()
        assert ev.confirmed_at is not None and ev.source.value == "signup_form" and ev.form_id == "footer"
        assert ev.wording == WORDING and ev.ip_digest is not None
        req = s.get(ConsentRequest, pending.request_id)
        assert req.confirmed_at is not None and req.event_id == ev.id
        assert segments.count(s, settings, segments.load(settings, "newsletter_all")) == 1
    # And following the link again changes nothing
    again = client.post(path)
    assert again.status_code == 200 and "Nic się nie zmieniło" in again.text
    assert client.get(path).status_code == 200
    assert _events(smtp_app) == 1
    with smtp_app.session() as s:
        assert consent_verify.verify_db(s, settings).ok


def _pending(app, email="late@example.com"):
    with app.session() as s:
        return consent.request_double_opt_in(s, app.settings, email=email, purpose="newsletter")


def test_expired_forged_and_foreign_links_change_nothing(app):
    client = TestClient(create_app(app=app))
    pending = _pending(app)
    # Given the request has expired
    with app.session() as s:
        s.execute(update(ConsentRequest).values(expires_at=utcnow()))
    for path in (f"/confirm/{pending.token}",                          # expired
                 f"/confirm/{pending.token[:-2]}xx",                   # tampered signature
                 "/confirm/not-a-token",                               # garbage
                 "/confirm/" + __import__("mailer.tokens", fromlist=["sign"]).sign(
                     app.settings.secret_key, "u", {"r": pending.request_id})):  # another purpose's token
        # Then GET and POST answer 404 and no consent is recorded
        assert client.get(path).status_code == 404, path
        assert client.post(path).status_code == 404, path
    assert _events(app) == 0
    with app.session() as s, pytest.raises(TokenError, match="expired"):
        consent.confirm(s, app.settings, pending.token)


def test_confirming_twice_through_the_service_records_one_event(app):
    pending = _pending(app)
    with app.session() as s:
        first = consent.confirm(s, app.settings, pending.token)
    with app.session() as s:
        second = consent.confirm(s, app.settings, pending.token)
    assert (first.status, second.status) == ("confirmed", "already_confirmed")
    assert first.event_id == second.event_id
    assert _events(app) == 1


def test_repeated_sign_up_reuses_the_pending_request_and_existing_consent_sends_nothing(app, stub_broker):
    first, d1 = double_opt_in(app, email="twice@example.com", purpose="newsletter")
    second, d2 = double_opt_in(app, email="twice@example.com", purpose="newsletter")
    assert d1 is not None and d2 is None and second.request_id == first.request_id and not second.created
    with app.session() as s:
        consent.confirm(s, app.settings, first.token)
    third, d3 = double_opt_in(app, email="twice@example.com", purpose="newsletter")
    assert third.already_granted and d3 is None
    stub_broker.drain()
    with app.session() as s:
        assert s.execute(select(func.count()).select_from(Delivery)).scalar_one() == 1


def test_cli_grant_with_double_opt_in_queues_the_mail(db_url, tmp_path, monkeypatch):
    import mailer.app as app_module

    monkeypatch.setattr(app_module, "_app", app_module._app)  # the CLI installs its own App; restore after
    wording = tmp_path / "wording.txt"
    wording.write_text(WORDING + "\n", encoding="utf-8")
    env = {"MAILER_DATABASE_URL": db_url, "MAILER_SECRET_KEY": "test-secret", "MAILER_BROKER_URL": "stub://",
           "MAILER_SMTP_URL": "memory://default"}
    runner = CliRunner()
    res = runner.invoke(main_cli(), ["consent", "grant", "cli@example.com", "--purpose", "newsletter", "--source",
                                     "signup_form", "--double-opt-in", "--ip", "192.0.2.5", "--wording-file",
                                     str(wording)], env=env)
    assert res.exit_code == 0, res.output
    assert "confirmation mail queued" in res.output and "/confirm/" in res.output
    settings = make_settings(database_url=db_url)
    app = App(settings)
    with app.session() as s:
        req = s.execute(select(ConsentRequest)).scalar_one()
        assert req.proof["ip"] == "192.0.2.5" and req.proof["wording"] == WORDING
        d = s.execute(select(Delivery)).scalar_one()
        assert d.kind == "confirm_subscription" and d.status is DeliveryStatus.queued
        assert "/confirm/" in d.data["confirm_url"]
    assert _events(app) == 0
    # And a direct grant and a withdrawal are recorded at once
    res = runner.invoke(main_cli(), ["consent", "grant", "cli@example.com", "--purpose", "loyalty",
                                     "--source", "admin"], env=env)
    assert res.exit_code == 0 and "event seq 1" in res.output
    res = runner.invoke(main_cli(), ["consent", "check", "cli@example.com", "--purpose", "loyalty"], env=env)
    assert res.exit_code == 0
    res = runner.invoke(main_cli(), ["consent", "withdraw", "cli@example.com", "--purpose", "loyalty"], env=env)
    assert res.exit_code == 0 and "withdrew loyalty" in res.output
    res = runner.invoke(main_cli(), ["consent", "check", "cli@example.com", "--purpose", "loyalty"], env=env)
    assert res.exit_code == 1 and "NO consent" in res.output
    res = runner.invoke(main_cli(), ["consent", "grant", "cli@example.com", "--purpose", "spam"], env=env)
    assert res.exit_code == 2 and "unknown consent purpose" in res.output
    app.close()


def main_cli():
    from mailer.cli import main

    return main
