"""``mailer customers import``: good rows in, bad rows reported by line/column/reason."""

from __future__ import annotations

from decimal import Decimal

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from mailer.addresses import email_hash
from mailer.cli import main
from mailer.customers.records import import_file
from mailer.instance_secrets import address_hash_salt
from mailer.models import Customer, CustomerTag, SpendTier

HEADER = ("email,first_name,last_name,locale,timezone,country,tags,total_spent,currency,orders_count,"
          "last_order_at,predicted_spend_tier\n")


def write(tmp_path, body: str, name: str = "customers.csv"):
    path = tmp_path / name
    path.write_text(HEADER + body, encoding="utf-8")
    return path


def test_good_rows_import_with_every_column(settings, tmp_path):
    # Given a CSV with two valid rows, tags separated by ; and ,
    path = write(tmp_path, "Ann@Example.COM,Ann,Lee,pl-PL,Europe/Warsaw,pl,VIP;newsletter,1520.50,pln,14,"
                           "2026-11-02,high\n"
                           "bo@example.com,Bo,,zh-TW,Asia/Taipei,TW,\"a, b\",0,TWD,0,,\n")
    # When imported
    result = import_file(settings, path)
    # Then both are stored, normalized
    assert (result.created, result.updated, result.errors) == (2, 0, [])
    from mailer.db import session_scope

    with session_scope(settings) as s:
        ann = s.execute(select(Customer).where(Customer.email == "ann@example.com")).scalar_one()
        assert ann.locale == "pl-PL" and ann.country == "PL" and ann.currency == "PLN"
        assert ann.total_spent == Decimal("1520.50") and ann.orders_count == 14
        assert ann.predicted_spend_tier is SpendTier.high
        assert ann.last_order_at.year == 2026 and ann.last_order_at.tzinfo is not None
        assert ann.tag_names == ["VIP", "newsletter"]
        assert ann.email_hash == email_hash("ann@example.com", address_hash_salt(settings))
        bo = s.execute(select(Customer).where(Customer.email == "bo@example.com")).scalar_one()
        assert bo.tag_names == ["a", "b"] and bo.last_order_at is None and bo.predicted_spend_tier is None


def test_reimport_updates_by_email_and_replaces_tags(settings, tmp_path):
    import_file(settings, write(tmp_path, "a@example.com,A,,en,,,x;y,10,EUR,1,,low\n"))
    result = import_file(settings, write(tmp_path, "A@example.com,Anna,,fr,,,z,20,EUR,2,,medium\n", "b.csv"))
    assert (result.created, result.updated) == (0, 1)
    from mailer.db import session_scope

    with session_scope(settings) as s:
        assert s.execute(select(func.count()).select_from(Customer)).scalar_one() == 1
        a = s.execute(select(Customer)).scalar_one()
        assert (a.first_name, a.locale, a.orders_count, a.tag_names) == ("Anna", "fr", 2, ["z"])


BAD_ROWS = [
    ("not-an-email,A,,en,,,,0,,0,,\n", "email", "invalid e-mail address"),
    ("b@example.com,A,,en,Mars/Base,,,0,,0,,\n", "timezone", "IANA"),
    ("c@example.com,A,,en,,,,-5,,0,,\n", "total_spent", "non-negative"),
    ("d@example.com,A,,en,,,,0,,lots,,\n", "orders_count", "whole number"),
    ("e@example.com,A,,en,,,,0,,0,yesterday,\n", "last_order_at", "ISO 8601"),
    ("f@example.com,A,,en,,,,0,,0,,enormous\n", "predicted_spend_tier", "high, medium, low"),
    ("g@example.com,A,,en,,,,0,EURO,0,,\n", "currency", "ISO 4217"),
    ("h@example.com,A,,en,,Poland,,0,,0,,\n", "country", "two-letter"),
    ('i@example.com,"A\nBcc: x@evil.test",,en,,,,0,,0,,\n', "first_name", "line break"),
]


@pytest.mark.parametrize("row,column,reason", BAD_ROWS)
def test_bad_row_is_reported_with_line_column_reason_and_good_rows_still_import(settings, tmp_path, row,
                                                                                 column, reason):
    # Given a good row, a bad row, and another good row
    path = write(tmp_path, "good1@example.com,G,,en,,,,0,,0,,\n" + row + "good2@example.com,G,,en,,,,0,,0,,\n")
    # When imported
    result = import_file(settings, path)
    # Then the bad row is named (line 3: header is line 1) and both good rows are in
    assert len(result.errors) == 1
    err = result.errors[0]
    assert (err.line, err.column) == (3, column)
    assert reason in err.reason
    assert result.created == 2


def test_strict_imports_nothing_when_a_row_is_bad(settings, tmp_path):
    path = write(tmp_path, "good@example.com,G,,en,,,,0,,0,,\nbad,B,,en,,,,0,,0,,\n")
    result = import_file(settings, path, strict=True)
    assert result.strict_aborted and result.imported == 0
    from mailer.db import session_scope

    with session_scope(settings) as s:
        assert s.execute(select(func.count()).select_from(Customer)).scalar_one() == 0


def test_file_without_email_column_is_refused(settings, tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("name,locale\nA,en\n", encoding="utf-8")
    runner = CliRunner()
    res = runner.invoke(main, ["customers", "import", str(path)],
                        env={"MAILER_DATABASE_URL": settings.database_url})
    assert res.exit_code == 2
    assert "line 1" in res.output and "'email' column" in res.output


def test_cli_exit_code_says_whether_rows_were_rejected(settings, tmp_path):
    env = {"MAILER_DATABASE_URL": settings.database_url}
    runner = CliRunner()
    ok = runner.invoke(main, ["customers", "import", str(write(tmp_path, "a@example.com,A,,en,,,,0,,0,,\n"))],
                       env=env)
    assert ok.exit_code == 0, ok.output
    assert "imported 1 customers" in ok.output
    bad = runner.invoke(main, ["customers", "import",
                               str(write(tmp_path, "b@example.com,B,,en,,,,0,,0,,\nnope,,,,,,,,,,,\n", "b.csv"))],
                        env=env)
    assert bad.exit_code == 1
    assert "line 3, column email" in bad.output
    strict = runner.invoke(main, ["customers", "import", "--strict",
                                  str(write(tmp_path, "c@example.com,C,,en,,,,0,,0,,\nnope,,,,,,,,,,,\n", "c.csv"))],
                           env=env)
    assert strict.exit_code == 1 and "nothing imported" in strict.output


def test_extra_values_beyond_header_are_reported(settings, tmp_path):
    path = write(tmp_path, "a@example.com,A,,en,,,,0,,0,,,surplus\n")
    result = import_file(settings, path)
    assert result.errors and result.errors[0].line == 2 and "more than the header" in result.errors[0].reason


def test_tags_are_one_row_each(settings, tmp_path):
    import_file(settings, write(tmp_path, "a@example.com,A,,en,,,VIP;VIP;x,0,,0,,\n"))
    from mailer.db import session_scope

    with session_scope(settings) as s:
        assert s.execute(select(func.count()).select_from(CustomerTag)).scalar_one() == 2
