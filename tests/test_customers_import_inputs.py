"""The customer import never crashes on bad input and never throws good rows away.

Encodings, oversized cells, unterminated quotes, NUL bytes, blank lines, wrong field
counts, other delimiters, and numbers the columns cannot hold; plus a property test:
arbitrary bytes between good rows cost only their own row.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import select

from mailer.cli import main
from mailer.customers.records import MAX_ORDERS_COUNT, import_file
from mailer.db import session_scope
from mailer.errors import ValidationError
from mailer.models import Customer

HEADER = b"email,first_name,total_spent,orders_count\n"
GOOD_BEFORE = b"before@example.com,Before,10,1\n"
GOOD_AFTER = b"after@example.com,After,20,2\n"


def emails(settings) -> set[str]:
    with session_scope(settings) as s:
        return set(s.execute(select(Customer.email)).scalars())


def sandwich(tmp_path, bad: bytes, name: str = "c.csv"):
    """A file: header, a good row, ``bad`` (line 3), another good row."""
    path = tmp_path / name
    path.write_bytes(HEADER + GOOD_BEFORE + bad + GOOD_AFTER)
    return path


BAD_LINES = [
    (b"bad@example.com,\xff\xfeAnn,1,1\n", 3, "first_name", "byte 0xff is not valid utf-8 text"),
    (b"bad@example.com," + b"x" * 200_000 + b",1,1\n", 3, "-", "longer than"),
    (b'bad@example.com,"Ann,1,1\n', 3, "-", "not closed"),
    (b"bad@example.com,An\x00n,1,1\n", 3, "first_name", "NUL byte"),
    (b"\n", 3, "-", "blank line"),
    (b"bad@example.com,Ann\n", 3, "-", "fewer than the header"),
    (b"bad@example.com,Ann,1,1,surplus\n", 3, "-", "more than the header"),
    (b"bad@example.com,Ann,nan,1\n", 3, "total_spent", "non-negative amount"),
    (b"bad@example.com,Ann,inf,1\n", 3, "total_spent", "non-negative amount"),
    (b"bad@example.com,Ann,-Infinity,1\n", 3, "total_spent", "non-negative amount"),
    (b"bad@example.com,Ann,1e400,1\n", 3, "total_spent", "more than the column holds"),
    (b"bad@example.com,Ann,1000000000000,1\n", 3, "total_spent", "more than the column holds"),
    (b"bad@example.com,Ann,1.005,1\n", 3, "total_spent", "more than 2 decimal places"),
    (b"bad@example.com,Ann,1,9223372036854775808\n", 3, "orders_count", "more than the column holds"),
    (b"bad@example.com,Ann,1,%d\n" % (MAX_ORDERS_COUNT + 1), 3, "orders_count", "more than the column holds"),
    (b"bad@example.com,Ann,1," + b"9" * 5000 + b"\n", 3, "orders_count", "whole number"),
    (b"bad@example.com,Ann,1,1e3\n", 3, "orders_count", "whole number"),
]


@pytest.mark.parametrize("bad,line,column,reason", BAD_LINES,
                         ids=["not-utf8", "200kb-cell", "unterminated-quote", "nul", "blank", "too-few",
                              "too-many", "nan", "inf", "-inf", "1e400", "over-numeric-14-2", "3-decimals",
                              "over-bigint", "over-integer", "5000-digits", "not-integer"])
def test_a_bad_line_is_a_row_error_and_the_good_rows_around_it_are_imported(settings, tmp_path, bad, line,
                                                                            column, reason):
    # Given a good row, a bad line, and another good row
    path = sandwich(tmp_path, bad)
    # When imported
    result = import_file(settings, path)
    # Then the bad line is one error naming the line and column, and both good rows are in
    assert [(e.line, e.column) for e in result.errors] == [(line, column)], result.errors
    assert reason in result.errors[0].reason
    assert emails(settings) == {"before@example.com", "after@example.com"}


def test_unterminated_quote_does_not_swallow_the_rest_of_the_file(settings, tmp_path):
    # Given an unterminated quote on line 3, then 60 good rows
    rows = b"".join(b"r%d@example.com,R,1,1\n" % i for i in range(60))
    path = sandwich(tmp_path, b'bad@example.com,"Ann,1,1\n' + rows)
    # When imported
    result = import_file(settings, path)
    # Then only line 3 is an error; every good row after it is imported
    assert [e.line for e in result.errors] == [3]
    assert len(emails(settings)) == 62


def test_a_quoted_value_may_still_span_lines(settings, tmp_path):
    # Given a quoted extra-column value with a line break in it
    path = tmp_path / "c.csv"
    path.write_bytes(b'email,note\nann@example.com,"line one\nline two"\nbo@example.com,x\n')
    # When imported
    result = import_file(settings, path)
    # Then it is one record; the next row's line number is still right
    assert result.errors == [] and result.created == 2
    with session_scope(settings) as s:
        ann = s.execute(select(Customer).where(Customer.email == "ann@example.com")).scalar_one()
        assert ann.attributes == {"note": "line one\nline two"}


def test_blank_lines_at_the_end_are_ignored(settings, tmp_path):
    # Given a file ending in blank lines
    path = tmp_path / "c.csv"
    path.write_bytes(HEADER + GOOD_BEFORE + b"\n\r\n\n")
    # When imported
    result = import_file(settings, path)
    # Then nothing is an error
    assert result.errors == [] and result.created == 1


def test_strict_imports_nothing_when_a_line_is_not_utf8(settings, tmp_path):
    # Given a file with one undecodable line
    path = sandwich(tmp_path, b"bad@example.com,\xe9,1,1\n")
    # When imported with strict
    result = import_file(settings, path, strict=True)
    # Then nothing is stored
    assert result.strict_aborted and emails(settings) == set()


def test_encoding_option_reads_other_encodings_and_a_bom(settings, tmp_path):
    # Given a cp1250 file and a UTF-8 file with a byte-order mark
    legacy = tmp_path / "cp1250.csv"
    legacy.write_bytes(HEADER + "lukasz@example.com,Łukasz,1,1\n".encode("cp1250"))
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + HEADER + GOOD_BEFORE)
    # When imported with --encoding cp1250, and with utf-8-sig
    assert import_file(settings, legacy, encoding="cp1250").errors == []
    assert import_file(settings, bom, encoding="utf-8-sig").errors == []
    # Then the name is decoded right and the BOM is not part of the email column
    with session_scope(settings) as s:
        names = dict(s.execute(select(Customer.email, Customer.first_name)).all())
    assert names == {"lukasz@example.com": "Łukasz", "before@example.com": "Before"}


def test_cli_encoding_and_delimiter_options(settings, tmp_path):
    env = {"MAILER_DATABASE_URL": settings.database_url}
    runner = CliRunner()
    semi = tmp_path / "semi.csv"
    semi.write_bytes(b"email;first_name\nann@example.com;Ann\n")
    tabs = tmp_path / "tabs.csv"
    tabs.write_bytes(b"email\tfirst_name\nbo@example.com\tBo\n")
    # Given a ';'-separated file imported without --delimiter
    res = runner.invoke(main, ["customers", "import", str(semi)], env=env)
    # Then it is refused with a hint naming the option
    assert res.exit_code == 2
    assert "looks like ';'-separated; pass --delimiter ';'" in res.output
    res = runner.invoke(main, ["customers", "import", str(tabs)], env=env)
    assert res.exit_code == 2 and "pass --delimiter '\\t'" in res.output
    # When passed the delimiter, both import
    assert runner.invoke(main, ["customers", "import", "--delimiter", ";", str(semi)], env=env).exit_code == 0
    assert runner.invoke(main, ["customers", "import", "--delimiter", "\\t", str(tabs)], env=env).exit_code == 0
    assert emails(settings) == {"ann@example.com", "bo@example.com"}
    # An unknown codec or a bad delimiter is a clear usage error, not a traceback
    res = runner.invoke(main, ["customers", "import", "--encoding", "klingon", str(semi)], env=env)
    assert res.exit_code == 2 and "unknown text encoding 'klingon'" in res.output
    res = runner.invoke(main, ["customers", "import", "--delimiter", "ab", str(semi)], env=env)
    assert res.exit_code == 2 and "delimiter 'ab'" in res.output
    # A non-UTF-8 line is reported as FILE: line N, column C: reason
    bad = sandwich(tmp_path, b"bad@example.com,\xff,1,1\n", "bad.csv")
    res = runner.invoke(main, ["customers", "import", str(bad)], env=env)
    assert res.exit_code == 1
    assert f"{bad}: line 3, column first_name: byte 0xff is not valid utf-8" in res.output
    assert "--encoding" in res.output


def test_header_problems_are_file_level_errors_naming_line_1(tmp_path, settings):
    for body in (b"", b"\xffemail,name\n", b'email,"name\n', b"email,email\n"):
        # Given a file whose header is empty, undecodable, unterminated or repeated
        path = tmp_path / "h.csv"
        path.write_bytes(body)
        # When imported, Then a ValidationError names the file and line 1
        with pytest.raises(ValidationError, match=r"h\.csv: line 1: "):
            import_file(settings, path)


_LINE = st.binary(max_size=300).filter(lambda b: b"\n" not in b and b"\r" not in b)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(junk=st.one_of(_LINE, st.binary(max_size=300)))
def test_arbitrary_bytes_between_good_rows_cost_only_their_own_rows(settings, tmp_path, junk):
    # Given good rows, one line of arbitrary bytes (any newlines in it make more lines), good rows
    path = tmp_path / "p.csv"
    path.write_bytes(HEADER + GOOD_BEFORE + junk + b"\n" + GOOD_AFTER)
    # When imported, Then it does not raise and both good rows are imported
    import_file(settings, path)
    assert {"before@example.com", "after@example.com"} <= emails(settings)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.binary(max_size=600), encoding=st.sampled_from(["utf-8", "utf-8-sig", "cp1252", "utf-16"]))
def test_arbitrary_files_are_imported_or_refused_cleanly(settings, tmp_path, data, encoding):
    # Given any bytes as a file (sometimes after a valid header)
    path = tmp_path / "any.csv"
    for body in (data, HEADER + data):
        path.write_bytes(body)
        # When imported, Then only the documented ValidationError (a bad header, or a stream
        # the codec refuses as a whole) may come out, naming the file
        try:
            result = import_file(settings, path, encoding=encoding)
        except ValidationError as exc:
            assert str(path) in str(exc) and ("line 1" in str(exc) or "--encoding" in str(exc))
        else:
            assert all(e.line >= 2 for e in result.errors)
