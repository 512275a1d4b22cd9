"""Public sign-up and restock forms (/f/{form_id}), restock requests over HTTP, and their abuse protection.

Every test runs through the real ASGI app (TestClient) on SQLite and PostgreSQL; mails are
counted in the memory transport's outbox after the in-process worker drained.
"""

from __future__ import annotations

import re
import shutil
import uuid

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from mailer.app import App, set_app
from mailer.automations.publish import publish
from mailer.consent import forms, ledger, wordings
from mailer.errors import NotFound, ValidationError
from mailer.models import ConsentEvent, ConsentRequest, ConsentState, Customer, Delivery
from mailer.settings import PROJECT_ROOT
from mailer.transport import memory, ratelimit
from mailer.web import apikeys
from mailer.web.app import create_app
from tests.conftest import REDIS_HOST, REDIS_PORT, _run_stub_worker, make_settings, need_service

SHOP = "https://shop.example.com"
PL_TEXT = ("Tak, chcę otrzymywać newsletter Northwind Shop z ofertami i nowościami. "
           "Mogę zrezygnować w każdej chwili.")


@pytest.fixture
def site(db_url, tmp_path):
    """The app with forms and wordings folders of its own, an all-scope key and a running in-process worker."""
    memory.clear()
    ratelimit.reset()
    for name in ("forms", "wordings"):
        shutil.copytree(PROJECT_ROOT / name, tmp_path / name)
    app = App(make_settings(database_url=db_url, forms_dir=tmp_path / "forms", wordings_dir=tmp_path / "wordings",
                            base_url="http://testserver"))
    previous = set_app(app)
    broker = _run_stub_worker(app)
    broker_obj = next(broker)
    with app.session() as s:
        key = apikeys.create(s, "all", ",".join(apikeys.SCOPES)).key
    client = TestClient(create_app(app=app), follow_redirects=False)
    client.mailer, client.key, client.broker, client.dir = app, key, broker_obj, tmp_path
    yield client
    next(broker, None)
    app.close()
    set_app(previous)
    ratelimit.reset()


def _count(site, model, *where) -> int:
    with site.mailer.session() as s:
        return s.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def _sent(site) -> list:
    site.broker.drain()
    return memory.outbox()


# -- the form file ---------------------------------------------------------------------------
def test_a_broken_form_file_is_refused_naming_file_and_field(tmp_path):
    # Given form files with one mistake each
    settings = make_settings(forms_dir=tmp_path)
    cases = {
        "a": ('kind = "signup"\npurposes = ["nope"]\n[wording]\nid = "newsletter"\nversion = "1"\n', "purposes[0]"),
        "b": ('purposes = ["newsletter"]\ndouble_opt_in = false\n[wording]\nid = "n"\nversion = "1"\n',
              "double_opt_in"),
        "c": ('purposes = ["newsletter"]\nallowed_origins = ["https://x.example/path"]\n'
              '[wording]\nid = "n"\nversion = "1"\n', "allowed_origins[0]"),
        "d": ('purposes = ["newsletter"]\n[wording]\nid = "n"\nversion = "1"\n[theme]\n"--x" = "red;}body{"\n',
              "theme.--x"),
        "e": ('purposes = ["newsletter"]\nfields = ["first_name"]\n[wording]\nid = "n"\nversion = "1"\n', "fields"),
        "f": ('kind = "restock"\npurposes = ["newsletter"]\n', "purposes"),
        "g": ('purposes = ["newsletter"]\nsurprise = 1\n', "surprise"),
    }
    for name, (text, field) in cases.items():
        (tmp_path / f"{name}.toml").write_text(text)
        # When it is loaded / Then the error names the file and the field
        with pytest.raises(ValidationError) as exc:
            forms.load(settings, name)
        assert f"{name}.toml" in str(exc.value) and field in str(exc.value), (name, str(exc.value))
    # And an oversized file and an unknown or ill-named form are refused too
    (tmp_path / "big.toml").write_text("# " + "x" * forms.MAX_FORM_FILE_BYTES)
    with pytest.raises(ValidationError, match="larger than"):
        forms.load(settings, "big")
    for name in ("missing", "../etc/passwd", "UPPER"):
        with pytest.raises(NotFound):
            forms.load(settings, name)


def test_the_shipped_forms_load():
    # Given the forms shipped in forms/ / When loaded / Then they are what docs/forms.md describes
    settings = make_settings()
    signup, restock = forms.load(settings, "newsletter"), forms.load(settings, "restock")
    assert signup.purposes == ("newsletter",) and signup.wording_id == "newsletter" and signup.double_opt_in
    assert restock.kind == "restock" and restock.purposes_for("SKU-1") == ("restock:SKU-1",)


# -- the hosted page and the snippet -----------------------------------------------------------
def test_the_hosted_page_is_localized_accessible_and_shows_the_exact_wording(site):
    # When the hosted form is opened in Polish
    r = site.get("/f/newsletter?locale=pl")
    # Then it is a Polish page with labelled fields, no script, and the wording text whose hash is stored
    assert r.status_code == 200
    html = r.text
    assert '<html lang="pl" dir="ltr">' in html
    assert PL_TEXT in html and "<script" not in html
    assert re.search(r'<label for="mailer-newsletter-email">Adres e-mail</label>', html)
    assert 'aria-describedby="mailer-newsletter-wording"' in html
    assert "script-src" not in r.headers["content-security-policy"]
    assert "--mailer-accent:#1f4e79;" in html
    with site.mailer.session() as s:
        assert wordings.current(s, site.mailer.settings, "newsletter", "pl").sha256 == wordings.sha256(PL_TEXT)
    # And an Arabic page is right-to-left, and an unknown form is 404
    assert 'dir="rtl"' in site.get("/f/newsletter?locale=ar").text or \
        'lang="en"' in site.get("/f/newsletter?locale=ar").text
    assert site.get("/f/nope").status_code == 404
    assert site.post("/f/nope", data={"email": "a@example.com"}).status_code == 404


@pytest.mark.parametrize("locale, title, button", [
    ("zh-TW", "訂閱電子報", "訂閱"), ("zh-CN", "订阅电子报", "订阅"), ("ko", "뉴스레터 구독", "구독하기"),
    ("fr", "Inscription", "S&#x27;inscrire"), ("ar", "اشترك", "اشترك"), ("de", "Anmelden", "Anmelden")])
def test_the_hosted_page_speaks_every_shipped_locale_with_its_own_wording(site, locale, title, button):
    # When the hosted form is opened in a locale the templates ship
    r = site.get(f"/f/newsletter?locale={locale}")
    # Then its strings and the wording are in that language (the exact words the ledger will hash)
    assert r.status_code == 200
    assert f"<h1>{title}</h1>" in r.text and f">{button}</button>" in r.text
    with site.mailer.session() as s:
        v = wordings.resolve(s, site.mailer.settings, "newsletter", "2026-12", locale)
    assert v.locale == locale and v.text in r.text.replace("&#x27;", "'")


def test_the_embed_snippet_posts_to_mailer_and_loads_the_script_from_mailer(site):
    # When the shop asks for its snippet
    r = site.get("/f/restock/embed?locale=pl&sku=MUG-1")
    # Then it is a form posting to mailer's /f/restock with the hidden sku, and the script is mailer's own
    assert r.status_code == 200
    assert 'action="http://testserver/f/restock"' in r.text and 'name="sku" value="MUG-1"' in r.text
    assert '<script src="http://testserver/f/embed.js" defer></script>' in r.text
    js = site.get("/f/embed.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "fetch(" in js.text


# -- submissions ----------------------------------------------------------------------------------
def test_a_sign_up_stores_a_pending_request_with_proof_and_mails_one_confirmation(site):
    # When someone signs up on the Polish page
    r = site.post("/f/newsletter", data={"email": "Ann@Example.com", "first_name": "Ann", "locale": "pl",
                                         "website": ""}, headers={"User-Agent": "Firefox/140"})
    # Then the answer is a thank-you page, nothing is granted, and one Polish confirmation mail goes out
    assert r.status_code == 200 and "Sprawdź skrzynkę" in r.text
    assert _count(site, ConsentEvent) == 0
    with site.mailer.session() as s:
        req = s.execute(select(ConsentRequest)).scalar_one()
        customer = s.get(Customer, req.customer_id)
    assert req.proof["wording"] == PL_TEXT and req.proof["form_id"] == "newsletter"
    assert req.proof["user_agent"] == "Firefox/140" and req.proof["first_name"] == "Ann"
    assert customer.first_name is None  # not before the address owner confirms
    sent = _sent(site)
    assert [m.recipient for m in sent] == ["ann@example.com"]
    assert "Potwierd" in sent[0].message.get_body(("html",)).get_content()


def test_confirming_grants_with_the_wording_hash_and_the_first_name(site):
    # Given a sign-up
    site.post("/f/newsletter", data={"email": "bo@example.com", "first_name": "Bo", "locale": "pl"})
    with site.mailer.session() as s:
        req = s.execute(select(ConsentRequest)).scalar_one()
        token = ledger._confirm_token(site.mailer.settings, req)
    # When the confirmation link is followed
    assert site.post(f"/confirm/{token}").status_code == 200
    # Then a grant holds the wording's hash and the double opt-in confirmation, and the name is kept
    with site.mailer.session() as s:
        ev = s.execute(select(ConsentEvent)).scalar_one()
        assert ev.wording_sha256 == wordings.sha256(PL_TEXT) and ev.confirmed_at is not None
        assert s.get(Customer, ev.customer_id).first_name == "Bo"


def test_a_form_with_two_purposes_mails_one_link_that_confirms_both(site):
    # Given a sign-up box that asks for the newsletter and the loyalty programme
    path = site.dir / "forms" / "multi.toml"
    path.write_text((site.dir / "forms" / "newsletter.toml").read_text()
                    .replace('purposes = ["newsletter"]', 'purposes = ["newsletter", "loyalty"]'))
    # When someone signs up on it
    r = site.post("/f/multi", data={"email": "duo@example.com", "locale": "pl"})
    # Then two requests are stored (each its own proof) but only ONE confirmation mail goes out
    assert r.status_code == 200
    assert _count(site, ConsentRequest) == 2
    sent = _sent(site)
    assert [m.recipient for m in sent] == ["duo@example.com"]
    link = re.search(r"http://testserver(/confirm/[A-Za-z0-9._~-]+)", sent[0].message.get_body(("html",)).get_content())
    assert link, "the confirmation mail carries the link"
    # And the page asking names both purposes, and following the link grants both, once
    ask = site.get(link.group(1))
    assert ask.status_code == 200 and "Newsletter, Nagrody i oferty programu lojalnościowego" in ask.text
    assert site.post(link.group(1)).status_code == 200
    with site.mailer.session() as s:
        granted = sorted(e.purpose for e in s.execute(select(ConsentEvent)).scalars())
        states = sorted(st.purpose for st in s.execute(select(ConsentState)).scalars())
    assert granted == ["loyalty", "newsletter"] and states == ["loyalty", "newsletter"]
    again = site.post(link.group(1))
    assert again.status_code == 200 and _count(site, ConsentEvent) == 2
    # And signing up again within ten minutes sends no second mail
    site.post("/f/multi", data={"email": "duo@example.com", "locale": "pl"})
    assert _sent(site) == sent


def test_a_combined_link_never_confirms_another_persons_request(site):
    # Given two people's pending requests
    with site.mailer.session() as s:
        a = ledger.request_double_opt_in(s, site.mailer.settings, purpose="newsletter", email="a@example.com")
        b = ledger.request_double_opt_in(s, site.mailer.settings, purpose="loyalty", email="b@example.com")
        # When a link is minted for a's request naming b's too (as a forger with the key could)
        token = ledger._confirm_token(site.mailer.settings, s.get(ConsentRequest, a.request_id), (b.request_id,))
        # Then combining the two refuses, and following the link grants a only
        with pytest.raises(Exception, match="one customer"):
            ledger.combine(s, site.mailer.settings, [a, b])
    assert site.post(f"/confirm/{token}").status_code == 200
    with site.mailer.session() as s:
        assert [(e.customer_id, e.purpose) for e in s.execute(select(ConsentEvent)).scalars()] == \
            [(a.customer_id, "newsletter")]


def test_bad_input_is_422_naming_the_field_and_stores_nothing(site):
    # When an address is malformed (page) or missing (fetch)
    page = site.post("/f/newsletter", data={"email": "not-an-address", "locale": "pl"})
    api = site.post("/f/newsletter", data={"first_name": "x"}, headers={"Accept": "application/json"})
    # Then each is 422 naming email, and nothing is stored or sent
    assert page.status_code == 422 and 'aria-invalid="true"' in page.text
    assert api.status_code == 422 and [d["field"] for d in api.json()["detail"]] == ["email"]
    assert _count(site, Customer) == 0 and _count(site, ConsentRequest) == 0 and _sent(site) == []


def test_a_form_with_redirects_answers_303(site):
    # Given a form with success and error URLs
    path = site.dir / "forms" / "newsletter.toml"
    path.write_text(path.read_text().replace('double_opt_in = true',
                                             f'double_opt_in = true\nsuccess_url = "{SHOP}/thanks"\n'
                                             f'error_url = "{SHOP}/oops"'))
    # When a good and a bad sign-up are posted / Then they are sent to each URL
    ok = site.post("/f/newsletter", data={"email": "cy@example.com"})
    bad = site.post("/f/newsletter", data={"email": "nope"})
    assert (ok.status_code, ok.headers["location"]) == (303, f"{SHOP}/thanks")
    assert (bad.status_code, bad.headers["location"]) == (303, f"{SHOP}/oops?error=email")


# -- CORS ---------------------------------------------------------------------------------------
def test_cors_answers_allowed_origins_only(site):
    # When a fetch comes from the allowed shop, and one from elsewhere
    pre_ok = site.options("/f/newsletter", headers={"Origin": SHOP, "Access-Control-Request-Method": "POST"})
    pre_bad = site.options("/f/newsletter", headers={"Origin": "https://evil.example",
                                                     "Access-Control-Request-Method": "POST"})
    ok = site.post("/f/newsletter", data={"email": "di@example.com"},
                   headers={"Origin": SHOP, "Accept": "application/json"})
    bad = site.post("/f/newsletter", data={"email": "eve@example.com"},
                    headers={"Origin": "https://evil.example", "Accept": "application/json"})
    # Then only the shop is named in Access-Control-Allow-Origin; the other gets 403 and nothing is stored
    assert pre_ok.status_code == 204 and pre_ok.headers["access-control-allow-origin"] == SHOP
    assert pre_bad.status_code == 403 and "access-control-allow-origin" not in pre_bad.headers
    assert ok.status_code == 200 and ok.json()["status"] == "ok"
    assert ok.headers["access-control-allow-origin"] == SHOP
    assert bad.status_code == 403 and "access-control-allow-origin" not in bad.headers
    assert _count(site, ConsentRequest) == 1
    assert [m.recipient for m in _sent(site)] == ["di@example.com"]


# -- abuse ----------------------------------------------------------------------------------------
def test_a_filled_honeypot_pretends_success_and_stores_nothing(site):
    # When a bot fills the hidden field
    r = site.post("/f/newsletter", data={"email": "victim@example.com", "website": "http://spam.example"},
                  headers={"Accept": "application/json"})
    # Then it is told the same as a person, and nothing is stored or sent
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert _count(site, Customer) == 0 and _sent(site) == []


def test_fifty_sign_ups_from_one_ip_are_cut_off_at_the_budget(site):
    # Given the per-IP budget
    budget = site.mailer.settings.signup_ip_per_minute
    # When one IP signs up 50 different addresses
    codes = [site.post("/f/newsletter", data={"email": f"p{i}@example.com"},
                       headers={"Accept": "application/json"}).status_code for i in range(50)]
    # Then no more than the budget got through (a minute boundary may split them) and the rest got 429
    assert codes.count(200) <= 2 * budget and codes.count(429) >= 50 - 2 * budget
    assert len(_sent(site)) == codes.count(200) == _count(site, ConsentRequest)


def test_the_same_victim_twenty_times_gets_one_confirmation_and_no_grant(site):
    # When someone signs the same address up 20 times
    answers = [site.post("/f/newsletter", data={"email": "victim@example.com"},
                         headers={"Accept": "application/json"}) for _ in range(20)]
    # Then every answer reads the same, one confirmation mail goes out, and nothing is granted
    assert {(a.status_code, a.json()["message"]) for a in answers} == {(200, answers[0].json()["message"])}
    sent = _sent(site)
    assert [m.recipient for m in sent] == ["victim@example.com"]
    assert _count(site, ConsentEvent) == 0
    assert _count(site, Delivery, Delivery.kind != "confirm_subscription") == 0


def test_the_answer_does_not_reveal_a_subscribed_address(site):
    # Given an address that already has consent
    with site.mailer.session() as s:
        ledger.grant(s, site.mailer.settings, purpose="newsletter", source="api", email="known@example.com")
    # When it and an unknown address are signed up
    known = site.post("/f/newsletter", data={"email": "known@example.com"}, headers={"Accept": "application/json"})
    new = site.post("/f/newsletter", data={"email": "new@example.com"}, headers={"Accept": "application/json"})
    # Then the answers are identical, and only the unknown address gets a confirmation
    assert (known.status_code, known.json()) == (new.status_code, new.json())
    assert [m.recipient for m in _sent(site)] == ["new@example.com"]


def test_the_per_address_budget_holds_across_processes_through_redis():
    # Given two processes' limiters on one Redis (reset stands in for a second process) and a key of this run
    need_service("Redis", REDIS_HOST, REDIS_PORT)
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"  # no flush: the key below is this run's own
    key = f"signup:address:test-{uuid.uuid4().hex}"
    settings = make_settings(broker_url=url, signup_address_per_hour=3)
    ratelimit.reset()
    first = ratelimit.limiter_for(settings)
    took = [first.try_acquire(key, 3, bucket_ms=3_600_000) for _ in range(2)]
    ratelimit.reset()
    second = ratelimit.limiter_for(settings)
    # When the second takes three more
    took += [second.try_acquire(key, 3, bucket_ms=3_600_000) for _ in range(3)]
    client = redis.Redis.from_url(url)
    for k in client.scan_iter(f"{ratelimit.KEY_PREFIX}:{key}*"):
        client.delete(k)
    client.close()
    ratelimit.reset()
    # Then the budget was shared: the second process had one token left, not three
    assert second is not first and second.shared
    assert took == [True, True, True, False, False]


# -- restock --------------------------------------------------------------------------------------
def test_a_restock_form_requests_restock_sku_by_double_opt_in(site):
    # When a product page's "notify me" is used
    r = site.post("/f/restock", data={"email": "fay@example.com", "sku": "MUG-1", "locale": "en"},
                  headers={"Accept": "application/json", "Origin": SHOP})
    bad = site.post("/f/restock", data={"email": "fay@example.com"}, headers={"Accept": "application/json"})
    # Then a restock:MUG-1 request is pending (no grant yet), and a missing sku is a 422 naming sku
    assert r.status_code == 200
    with site.mailer.session() as s:
        assert s.execute(select(ConsentRequest.purpose)).scalar_one() == "restock:MUG-1"
    assert _count(site, ConsentEvent) == 0
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "sku"


def _restock(site, **body):
    return site.post("/v1/restock-requests", json={"email": "gus@example.com", "sku": "MUG-1", "locale": "pl"} | body,
                     headers={"Authorization": f"Bearer {site.key}"})


def test_a_restock_request_over_http_is_mailed_when_the_product_is_back(site):
    # When the shop's backend records a restock request
    r = _restock(site)
    # Then restock:MUG-1 is granted at once
    assert r.status_code == 200 and r.json()["status"] == "granted" and r.json()["purpose"] == "restock:MUG-1"
    assert _count(site, ConsentState, ConsentState.purpose == "restock:MUG-1", ConsentState.granted.is_(True)) == 1
    # And when the product is restocked, the back-in-stock automation schedules their mail
    # (merged for 15 minutes, so it is not due yet: the delivery row is the promise)
    publish("product_restocked", {"sku": "MUG-1", "name": "Mug", "price": "12.00",
                                  "url": "https://shop.example.com/mug"}, app=site.mailer)
    with site.mailer.session() as s:
        rows = s.execute(select(Delivery.kind, Delivery.purpose, Customer.email)
                         .join(Customer, Customer.id == Delivery.customer_id)).all()
    assert [tuple(r) for r in rows] == [("back_in_stock", "restock:MUG-1", "gus@example.com")]


def test_a_restock_request_with_double_opt_in_mails_a_confirmation_and_bad_input_is_422(site):
    # When the body asks for double opt-in, and another names a bad sku and address
    r = _restock(site, double_opt_in=True)
    bad = _restock(site, email="nope", sku="has space")
    # Then a confirmation is mailed and nothing granted; the bad one names both fields and stores nothing
    assert r.json()["status"] == "confirmation_sent" and _count(site, ConsentEvent) == 0
    assert bad.status_code == 422
    assert {d["field"] for d in bad.json()["detail"]} >= {"sku"}
    assert _count(site, ConsentRequest) == 1
    # And without the consents scope the door is shut
    with site.mailer.session() as s:
        other = apikeys.create(s, "notices-only", "notices").key
    denied = site.post("/v1/restock-requests", json={"email": "a@example.com", "sku": "X"},
                       headers={"Authorization": f"Bearer {other}"})
    assert denied.status_code == 403 and "'consents' scope" in denied.json()["detail"]
