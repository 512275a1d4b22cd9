"""Errors name where the bad input is: a file error without a field carries the file."""

from pathlib import Path

import pytest

from mailer.consent import wordings
from mailer.errors import ValidationError


def test_a_bad_wording_file_names_the_file_in_the_error_field(tmp_path: Path):
    # Given a wording file that is not valid TOML
    bad = tmp_path / "newsletter.toml"
    bad.write_text("[locales.en\nversion = 1\n", encoding="utf-8")

    # When it is loaded
    with pytest.raises(ValidationError) as caught:
        wordings.load_file(bad)

    # Then the error names the file both in its message and as its field
    assert str(bad) in str(caught.value)
    assert caught.value.field == str(bad)


def test_an_explicit_field_wins_over_where():
    # Given an error raised with both a field and a file
    err = ValidationError("bad", field="PATH", where="/tmp/x")

    # Then the field is the one named
    assert err.field == "PATH"
