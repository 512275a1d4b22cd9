"""Shared CLI helpers: JSON given inline or as @file, and clear errors for both."""

from __future__ import annotations

import click
import pytest

from mailer.cli.base import parse_json_or_file


def test_json_inline_and_from_a_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('{"order_number": "1001"}', encoding="utf-8")
    assert parse_json_or_file('{"a": 1}', option="--data") == {"a": 1}
    assert parse_json_or_file(f"@{path}", option="--data") == {"order_number": "1001"}
    assert parse_json_or_file(None, option="--data") is None


@pytest.mark.parametrize("value,message", [
    ("@/nonexistent/data.json", "cannot read"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
])
def test_bad_json_names_the_option(value, message):
    with pytest.raises(click.BadParameter) as info:
        parse_json_or_file(value, option="--data")
    assert message in str(info.value) and info.value.param_hint == "--data"
