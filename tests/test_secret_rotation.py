"""Rotating secrets loses nothing: link keys rotate through MAILER_SECRET_KEYS, and the
address-hash salt lives in the database (migration 0003), independent of the key."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select

from mailer import db, instance_secrets, tokens
from mailer.addresses import email_hash
from mailer.app import App, set_app
from mailer.cli import main
from mailer.consent import ledger as consent
from mailer.consent import suppressions
from mailer.gdpr import requests as gdpr
from mailer.customers.records import by_email, import_file
from mailer.errors import ConfigurationError, TokenError
from mailer.instance_secrets import address_hash_salt
from mailer.models import Delivery, Suppression
from mailer.settings import PROJECT_ROOT, Settings
from mailer.tracking import service as tracking
from mailer.transport import memory
from mailer.web.app import create_app
from tests.conftest import make_settings

DEMO = PROJECT_ROOT / "mailer" / "demo_data" / "customers.csv"
ALICE = "alice@example.com"
#: An unsubscribe token minted by the code before key rotation existed (key "test-secret").
OLD_CODE_TOKEN = "eyJjIjo3LCJkIjo0MiwicCI6Im5ld3NsZXR0ZXIiLCJ4IjoyODAwMDAwMDAwfQ.Sty-VRJt50DQlApO3AShpQ"
#: A moment before OLD_CODE_TOKEN expires (Unix seconds).
BEFORE_EXPIRY_S = 1_800_000_000


def _legacy_salt(secret_key: str) -> bytes:
    """What mailer derived the salt from before migration 0003."""
    return hashlib.sha256(("salt:" + secret_key).encode()).hexdigest().encode()


# -- link keys -----------------------------------------------------------------------------------
def test_a_token_minted_by_the_old_code_still_verifies():
    # Given a token signed by the pre-rotation code with the single key "test-secret"
    # When it is verified with that key alone, and with a newer key in front of it
    # Then both accept it and read the same payload
    for keys in ("test-secret", ("test-secret",), ("newer-key", "test-secret")):
        body = tokens.verify(keys, tracking.UNSUBSCRIBE, OLD_CODE_TOKEN, now=BEFORE_EXPIRY_S)
        assert body == {"c": 7, "d": 42, "p": "newsletter"}
    # And the same payload signed today with that one key gives the very same token
    assert tokens.sign("test-secret", tracking.UNSUBSCRIBE, {"c": 7, "d": 42, "p": "newsletter"},
                       ttl_s=10**9, now=BEFORE_EXPIRY_S) == OLD_CODE_TOKEN
    # And without the key it is refused
    with pytest.raises(TokenError):
        tokens.verify(("newer-key",), tracking.UNSUBSCRIBE, OLD_CODE_TOKEN, now=BEFORE_EXPIRY_S)


def test_new_tokens_are_signed_with_the_newest_key():
    # Given two keys, newest first
    token = tokens.sign(("new", "old"), tracking.PREFERENCES, {"c": 1})
    # Then the token verifies with the new key alone and not with the old one alone
    assert tokens.verify("new", tracking.PREFERENCES, token) == {"c": 1}
    with pytest.raises(TokenError):
        tokens.verify("old", tracking.PREFERENCES, token)


def test_secret_keys_setting_is_newest_first_and_secret_key_alone_still_works():
    # Given only MAILER_SECRET_KEY, then MAILER_SECRET_KEYS as well
    one = Settings.from_env({"MAILER_SECRET_KEY": "only"})
    two = Settings.from_env({"MAILER_SECRET_KEY": "ignored", "MAILER_SECRET_KEYS": " new , old ,"})
    # Then the signing keys are the single key, or the list in order (blank entries dropped)
    assert one.signing_keys == ("only",)
    assert two.signing_keys == ("new", "old")
    with pytest.raises(ConfigurationError):
        tokens.sign((), tracking.OPEN, {"d": 1})


@pytest.fixture
def web_factory(db_url, tmp_path):
    """Build TestClients on one database with different key settings."""
    from tests.campaign_support import newsletter_templates

    memory.clear()
    templates = newsletter_templates(tmp_path)
    made: list[App] = []
    previous = None

    def make(**keys) -> TestClient:
        nonlocal previous
        app = App(make_settings(database_url=db_url, templates_dir=templates, base_url="http://testserver",
                                **keys))
        made.append(app)
        old = set_app(app)
        previous = old if previous is None else previous
        client = TestClient(create_app(app=app), follow_redirects=False)
        client.mailer = app
        return client

    yield make
    for app in made:
        app.close()
    set_app(previous)


def _sent_unsubscribe_path(web, email: str) -> str:
    from tests.test_web_endpoints import _campaign_mail, _unsubscribe_path

    _, msg = _campaign_mail(web, email=email)
    return _unsubscribe_path(msg)


def test_rotating_the_key_keeps_old_unsubscribe_links_until_the_old_key_is_removed(web_factory):
    # Given a newsletter sent while MAILER_SECRET_KEY was "old-key"
    before = web_factory(secret_key="old-key")
    old_path = _sent_unsubscribe_path(before, "ann@example.com")
    # When the key is rotated: MAILER_SECRET_KEYS=new-key,old-key
    rotated = web_factory(secret_keys=("new-key", "old-key"))
    # Then the old link still opens its page
    assert rotated.get(old_path).status_code == 200
    # And a newly sent link is signed with the new key only
    new_path = _sent_unsubscribe_path(rotated, "bob@example.com")
    new_token = new_path.rsplit("/", 1)[1]
    assert tokens.verify("new-key", tracking.UNSUBSCRIBE, new_token)["p"] == "newsletter"
    with pytest.raises(TokenError):
        tokens.verify("old-key", tracking.UNSUBSCRIBE, new_token)
    # When the old key is removed (MAILER_SECRET_KEYS=new-key)
    after = web_factory(secret_keys=("new-key",))
    # Then the old link is a 404, and the new one still works (one-click unsubscribe included)
    assert after.get(old_path).status_code == 404
    assert after.post(old_path, data={"List-Unsubscribe": "One-Click"}).status_code == 404
    assert after.get(new_path).status_code == 200
    assert after.post(new_path, data={"List-Unsubscribe": "One-Click"}).status_code == 200


# -- the address-hash salt -----------------------------------------------------------------------
def test_a_new_database_gets_a_random_salt_not_derived_from_the_key(db_url):
    # Given a database created by the migrations (db_url) and settings with a known key
    settings = make_settings(database_url=db_url)
    salt = address_hash_salt(settings)
    # Then the salt is 32 random bytes (as hex) and not what the key used to derive
    assert len(salt) == 64 and bytes.fromhex(salt.decode())
    assert salt != _legacy_salt(settings.secret_key)
    # And it does not change with the key
    assert address_hash_salt(make_settings(database_url=db_url, secret_keys=("rotated",))) == salt


def test_the_salt_is_read_once_per_database_not_per_hash(db_url):
    # Given settings on a database whose salt has been read once
    settings = make_settings(database_url=db_url)
    first = address_hash_salt(settings)
    statements: list[str] = []
    engine = db.get_engine(settings)

    def listener(_conn, _cursor, statement, *_rest) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", listener)
    try:
        # When many addresses are hashed
        salts = {address_hash_salt(make_settings(database_url=db_url)) for _ in range(50)}
    finally:
        sa.event.remove(engine, "before_cursor_execute", listener)
    # Then no further query ran, and every call saw the same salt
    assert salts == {first} and statements == []


def test_an_explicit_salt_that_differs_from_the_stored_one_is_refused(db_url):
    # Given a database with its stored salt
    stored = address_hash_salt(make_settings(database_url=db_url))
    # When MAILER_HASH_SALT names another value
    # Then hashing refuses with a message naming the setting, instead of hashing differently
    with pytest.raises(ConfigurationError, match="MAILER_HASH_SALT does not match"):
        _ = address_hash_salt(make_settings(database_url=db_url, hash_salt="something-else"))
    # And the stored value itself is accepted
    assert address_hash_salt(make_settings(database_url=db_url, hash_salt=stored.decode())) == stored


def test_after_rotating_the_key_the_access_export_still_finds_consent_events(db_url, tmp_path):
    # Given Alice's consent, recorded while MAILER_SECRET_KEY was "old-key"
    settings = make_settings(database_url=db_url, secret_key="old-key")
    import_file(settings, DEMO)
    with db.session_scope(settings) as s:
        consent.append(s, settings, customer=by_email(s, ALICE), purpose="newsletter", action="granted",
                       source="signup_form")
    # When the key is rotated and then the old one removed, and she asks for her data
    out = tmp_path / "alice.json"
    for keys in ("new-key,old-key", "new-key"):
        env = {"MAILER_DATABASE_URL": db_url, "MAILER_SECRET_KEYS": keys, "MAILER_SECRET_KEY": "",
               "MAILER_HASH_SALT": ""}
        res = CliRunner().invoke(main, ["gdpr", "export", ALICE, "-o", str(out)], env=env)
        assert res.exit_code == 0, res.output
        # Then her consent event is in the export
        doc = json.loads(out.read_text(encoding="utf-8"))
        assert [e["purpose"] for e in doc["consent"]["events"]] == ["newsletter"], keys


def test_after_rotating_the_key_an_erasure_tombstone_still_blocks_the_address(db_url):
    # Given Alice erased while MAILER_SECRET_KEY was "old-key"
    old = make_settings(database_url=db_url, secret_key="old-key")
    import_file(old, DEMO)
    with db.session_scope(old) as s:
        gdpr.erase(s, old, ALICE)
    db.dispose_engines()  # a fresh process: nothing cached
    # When the key is rotated (old key removed) and the shop imports her address again
    new = make_settings(database_url=db_url, secret_keys=("new-key",))
    import_file(new, DEMO)
    with db.session_scope(new) as s:
        again = by_email(s, ALICE)
        tomb = s.execute(select(Suppression).where(Suppression.reason == "erased")).scalar_one()
        # Then the new profile hashes to the tombstone, and the tombstone suppresses it
        assert again.email_hash == tomb.email_hash == email_hash(ALICE, address_hash_salt(new))
        assert suppressions.suppression_for(s, again.email_hash, "newsletter") is not None
        # And erasing again finds what to erase by that hash
        assert gdpr.erase(s, new, ALICE).customers == 1


# -- migration of an existing database -------------------------------------------------------------
HASH_COLUMNS = {"customers": "email_hash", "suppressions": "email_hash", "consent_events": "subject_hash",
                "deliveries": "to_hash"}


def _before_0003(url: str) -> str:
    return ScriptDirectory.from_config(db.alembic_config(url)).get_revision("0003").down_revision


def _old_database(url: str, secret_key: str) -> dict:
    """A database at the revision before 0003, holding hashes made the old way from ``secret_key``."""
    db.downgrade(url, "base")
    db.upgrade(url, _before_0003(url))
    salt = _legacy_salt(secret_key)
    with db.get_engine(url).begin() as conn:
        for i, address in enumerate((ALICE, "bob@example.com"), start=1):
            conn.execute(sa.text("INSERT INTO customers (email, email_hash, total_spent, orders_count, attributes,"
                                 " created_at, updated_at) VALUES (:e, :h, 0, 0, '{}', CURRENT_TIMESTAMP, "
                                 "CURRENT_TIMESTAMP)"), {"e": address, "h": email_hash(address, salt)})
            conn.execute(sa.text("INSERT INTO consent_events (seq, customer_id, subject_hash, purpose, action, "
                                 "basis, source, occurred_at, recorded_at, prev_hash, hash) VALUES (:i, :i, :h, "
                                 "'newsletter', 'granted', 'consent', 'api', CURRENT_TIMESTAMP, "
                                 "CURRENT_TIMESTAMP, :p, :x)"),
                         {"i": i, "h": email_hash(address, salt), "p": f"p{i}", "x": f"x{i}"})
        conn.execute(sa.text("INSERT INTO suppressions (email_hash, reason, scope, created_at) VALUES "
                             "(:h, 'erased', 'all', CURRENT_TIMESTAMP)"), {"h": email_hash("carol@example.com", salt)})
    return _hashes(url)


def _hashes(url: str) -> dict:
    with db.get_engine(url).connect() as conn:
        return {t: sorted(conn.execute(sa.text(f"SELECT {c} FROM {t}")).scalars())  # nosec B608 - fixed names
                for t, c in HASH_COLUMNS.items()}


def test_migrating_an_existing_database_changes_no_stored_hash(db_url):
    # Given a database written by the old code, whose salt derived from MAILER_SECRET_KEY=legacy-key
    before = _old_database(db_url, "legacy-key")
    # When it is upgraded with that key configured
    db.upgrade(make_settings(database_url=db_url, secret_key="legacy-key"))
    # Then every stored hash is unchanged, and the stored salt reproduces them
    assert _hashes(db_url) == before and before["customers"]
    settings = make_settings(database_url=db_url, secret_key="legacy-key")
    assert address_hash_salt(settings) == _legacy_salt("legacy-key")
    # And after rotating the key, the addresses still hash to what is stored
    db.dispose_engines()
    rotated = make_settings(database_url=db_url, secret_keys=("brand-new",))
    assert email_hash(ALICE, address_hash_salt(rotated)) in before["customers"]
    assert email_hash("carol@example.com", address_hash_salt(rotated)) in before["suppressions"]


def test_migrating_with_a_key_that_does_not_reproduce_the_hashes_stops_and_changes_nothing(db_url):
    # Given a database written with MAILER_SECRET_KEY=legacy-key
    before = _old_database(db_url, "legacy-key")
    revision = db.current_revision(db_url)
    # When it is upgraded with another key configured
    with pytest.raises(RuntimeError, match="none of MAILER_HASH_SALT, MAILER_SECRET_KEY"):
        db.upgrade(make_settings(database_url=db_url, secret_key="wrong-key"))
    # Then the revision, the hashes and the schema are as before (no instance_secrets table)
    assert db.current_revision(db_url) == revision and _hashes(db_url) == before
    assert not sa.inspect(db.get_engine(db_url)).has_table("instance_secrets")
    # And an upgrade that lists the old key among MAILER_SECRET_KEYS finds it
    db.upgrade(make_settings(database_url=db_url, secret_keys=("new-key", "legacy-key")))
    assert instance_secrets.address_hash_salt(make_settings(database_url=db_url)) == _legacy_salt("legacy-key")


def test_an_explicit_salt_seeds_a_new_database(db_url):
    # Given an empty database at the revision before 0003 and MAILER_HASH_SALT set
    db.downgrade(db_url, "base")
    db.upgrade(db_url, _before_0003(db_url))
    # When it is upgraded
    db.upgrade(make_settings(database_url=db_url, hash_salt="pinned-salt-value"))
    # Then the stored salt is that value, whatever the key
    assert address_hash_salt(make_settings(database_url=db_url)) == b"pinned-salt-value"
    assert hmac.compare_digest(email_hash(ALICE, b"pinned-salt-value"),
                               email_hash(ALICE, address_hash_salt(make_settings(database_url=db_url))))


def test_deliveries_keep_their_hash_across_rotation(app, stub_broker):
    # Given a notice delivered before rotation
    from mailer.notices.trigger import notify

    import_file(app.settings, DEMO)
    delivery_id = notify("order_delayed", to=ALICE, settings=app.settings,
                         data=app.renderer.sample("order_delayed") | {"order_number": "A-1"})
    stub_broker.drain()
    # When the key is rotated
    rotated = app.settings.replace(secret_keys=("rotated",))
    # Then the delivery's stored hash is still the hash of the address
    with db.session_scope(rotated) as s:
        assert s.get(Delivery, delivery_id).to_hash == email_hash(ALICE, address_hash_salt(rotated))
