"""Shop credentials at rest: webhook secrets and API tokens recorded by ``mailer connect`` are
stored sealed (AES-256-GCM under the database's own key), also those stored before migration 0015."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from mailer import db, instance_secrets
from mailer.app import App
from mailer.cli.base import main
from mailer.connectors import signing, writeback
from mailer.errors import ConfigurationError
from mailer.models import ConnectorShop
from tests import connector_payloads as P
from tests.conftest import make_settings

SECRET = "shpss_clear_secret_4711"  # test values, not real ones  # nosec B105
TOKEN = "shpat_clear_token_0815"  # nosec B105


def _raw_rows(url: str) -> list[tuple]:
    with sa.create_engine(url).connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text("SELECT platform, shop, secret, api_token FROM connector_shops"))]


def _dump(url: str) -> str:
    """Every text value of the shops table and the outbox, as one string (what a dump would show)."""
    with sa.create_engine(url).connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM connector_shops")).all()
    return json.dumps([[str(v) for v in r] for r in rows])


def test_mailer_connect_stores_no_clear_secret_or_token_and_the_shop_still_works(db_url):
    # Given a database, and a shop recorded with mailer connect (secret and Admin API token)
    settings = make_settings(database_url=db_url, shopify_secrets="")
    result = CliRunner().invoke(main, ["connect", "shopify", "--shop", P.SHOP, "--secret", SECRET,
                                       "--api-token", TOKEN],
                                env={"MAILER_DATABASE_URL": db_url, "MAILER_BROKER_URL": "stub://",
                                     "MAILER_SHOPIFY_SECRETS": ""})
    assert result.exit_code == 0, result.output
    # Then the table holds neither value in clear, only sealed values
    dump = _dump(db_url)
    assert SECRET not in dump and TOKEN not in dump
    [(_, _, secret, token)] = _raw_rows(db_url)
    assert secret.startswith(instance_secrets.SEALED_PREFIX) and token.startswith(instance_secrets.SEALED_PREFIX)
    # And mailer opens them where they are needed: the webhook check and the write-back
    app = App(settings)
    with app.session() as s:
        assert signing.secret_for(s, settings, "shopify", P.SHOP) == SECRET
        shop = s.execute(sa.select(ConnectorShop)).scalar_one()
        assert writeback.api_token(settings, shop) == TOKEN
    # And recording the same secret again seals it afresh (a new nonce: no equal ciphertexts to compare)
    writeback.connect(app, "shopify", P.SHOP, secret=SECRET, api_url=None, api_token=None)
    [(_, _, again, _)] = _raw_rows(db_url)
    assert again != secret and again.startswith(instance_secrets.SEALED_PREFIX)


def test_a_sealed_value_copied_to_another_shop_does_not_open(db_url):
    # Given two shops, one with a token
    settings = make_settings(database_url=db_url)
    app = App(settings)
    writeback.connect(app, "shopify", P.SHOP, secret=None, api_url=None, api_token=TOKEN)
    writeback.connect(app, "shopify", "other-shop.myshopify.com", secret=None, api_url=None, api_token=None)
    # When someone copies the sealed token onto the other shop's row
    with app.session() as s:
        sealed = s.execute(sa.select(ConnectorShop.api_token).where(ConnectorShop.shop == P.SHOP)).scalar_one()
        s.execute(sa.update(ConnectorShop).where(ConnectorShop.shop == "other-shop.myshopify.com")
                  .values(api_token=sealed))
    # Then it does not open there, and the error names the row and column
    with app.session() as s:
        other = s.execute(sa.select(ConnectorShop).where(ConnectorShop.shop == "other-shop.myshopify.com")
                          ).scalar_one()
        with pytest.raises(ConfigurationError, match="api_token of shopify:other-shop.myshopify.com"):
            writeback.api_token(settings, other)


def test_migration_0015_seals_the_credentials_already_stored_and_its_downgrade_opens_them(db_url):
    # Given a database at revision 0013 with a shop whose secret and token were stored in clear
    db.downgrade(db_url, "0013")
    with sa.create_engine(db_url).begin() as conn:
        conn.execute(sa.text("INSERT INTO connector_shops (platform, shop, secret, api_url, api_token, "
                             "writeback_cursor, created_at, updated_at) VALUES ('woocommerce', :shop, :secret, "
                             ":shop, :token, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
                     {"shop": P.STORE, "secret": SECRET, "token": "ck_1:cs_2"})
    # When it is upgraded
    db.upgrade(db_url)
    instance_secrets.forget()
    # Then neither is in clear any more, and both open to what they were
    dump = _dump(db_url)
    assert SECRET not in dump and "ck_1:cs_2" not in dump
    settings = make_settings(database_url=db_url, woocommerce_secrets="")
    app = App(settings)
    with app.session() as s:
        assert signing.secret_for(s, settings, "woocommerce", P.STORE) == SECRET
        assert writeback.api_token(settings, s.execute(sa.select(ConnectorShop)).scalar_one()) == "ck_1:cs_2"
    # And the downgrade puts them back in clear (nothing lost either way)
    db.dispose_engines()
    db.downgrade(db_url, "0013")
    assert _raw_rows(db_url) == [("woocommerce", P.STORE, SECRET, "ck_1:cs_2")]
    db.upgrade(db_url)
