"""The List-Unsubscribe mailto: form: a mail to the unsubscribe address withdraws consent."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from click.testing import CliRunner
from sqlalchemy import select

from mailer.cli import main
from mailer.models import ConsentEvent, ConsentSource, ConsentState, Delivery
from mailer.tracking import service as tracking
from tests.campaign_support import add_customer
from tests.conftest import make_settings


def _mail(subject: str) -> bytes:
    return (f"From: someone@example.net\r\nTo: unsubscribe@example.com\r\nSubject: {subject}\r\n\r\n"
            "please\r\n").encode()


def test_mailto_request_withdraws_consent_once(app, tmp_path):
    settings = app.settings
    with app.session() as s:
        customer = add_customer(s, settings, "ann@example.com")
        d = Delivery(idempotency_key="t:1", kind="newsletter/x", customer_id=customer.id, to_address=customer.email,
                     to_hash=customer.email_hash, locale="en", data={}, purpose="newsletter")
        s.add(d)
        s.flush()
        mailto = tracking.unsubscribe_mailto(settings, d)
        cid = customer.id
    # The mailto carries the token in its subject
    subject = unquote(parse_qs(urlsplit(mailto).query)["subject"][0])
    maildir = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "1.eml").write_bytes(_mail(subject))
    (maildir / "new" / "2.eml").write_bytes(_mail(subject))  # sent twice
    (maildir / "cur" / "3.eml").write_bytes(_mail("unsubscribe eyJjIjoxfQ.AAAAAAAAAAAAAAAAAAAAAA"))  # forged
    (maildir / "cur" / "4.eml").write_bytes(b"not a mail at all")
    env = {"MAILER_DATABASE_URL": settings.database_url, "MAILER_SECRET_KEY": settings.secret_key,
           "MAILER_BROKER_URL": "stub://"}
    r = CliRunner().invoke(main, ["unsubscribe", "ingest", str(maildir)], env=env)
    assert r.exit_code == 0, r.output
    assert "2 unsubscribe requests applied, 2 messages ignored" in r.output
    with app.session() as s:
        assert s.get(ConsentState, (cid, "newsletter")).granted is False
        withdrawals = s.execute(select(ConsentEvent).where(ConsentEvent.action == "withdrawn")).scalars().all()
        assert [e.source for e in withdrawals] == [ConsentSource.unsubscribe_link]


def test_subject_without_token_is_ignored():
    assert tracking.token_from_subject("Re: your newsletter") is None
    assert tracking.token_from_subject("Unsubscribe abc.def") == "abc.def"
    assert tracking.unsubscribe_by_mail(None, make_settings(), _mail("hello")) is None
