"""Shared CLI helpers: JSON given inline or as @file, clear errors for both, output that is not cut off."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest

from mailer.cli.base import parse_json_or_file
from mailer.settings import PROJECT_ROOT


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


def test_tables_and_hints_are_not_cut_or_wrapped_off_a_terminal(tmp_path):
    """Given a segment with a long name and description and a 40-column COLUMNS,
    when ``segments list`` prints into a pipe (not a terminal),
    then its name, description and file are printed whole on one line."""
    seg_dir = tmp_path / "segments"
    seg_dir.mkdir()
    long_name = "subscribers_who_opened_the_spring_catalogue_twice"
    long_desc = "Subscribers who opened the spring catalogue at least twice and clicked a product in it"
    (seg_dir / f"{long_name}.toml").write_text(
        f'description = "{long_desc}"\npurpose = "newsletter"\n\n[where]\ntotal_spent = {{ gt = 1000 }}\n',
        encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(MAILER_SEGMENTS_DIR=str(seg_dir), MAILER_DATABASE_URL=f"sqlite:///{tmp_path / 'm.db'}",
               COLUMNS="40", PYTHONPATH=str(PROJECT_ROOT))
    res = subprocess.run([sys.executable, "-m", "mailer.cli", "segments", "list"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if long_name in ln)
    assert long_desc in line and f"{long_name}.toml" in line
