"""The README keeps its promises: the two commands first, every setting documented."""

from __future__ import annotations

import re

from mailer.settings import PROJECT_ROOT, settings_markdown

README = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_opens_with_the_two_commands():
    blocks = re.findall(r"```sh\n(.*?)\n```", README, flags=re.S)
    assert blocks[0].strip() == "pip install -e . && mailer demo"
    assert blocks[1].strip() == "pip install -e '.[dev]' && pytest"
    assert README.index(blocks[0]) < 400


def test_readme_settings_table_matches_the_settings():
    # When this fails: run `python -m mailer.settings` and paste its output into README.md.
    assert settings_markdown() in README


def test_readme_links_every_doc():
    docs = sorted(p.name for p in (PROJECT_ROOT / "docs").glob("*.md"))
    missing = [d for d in docs if f"docs/{d}" not in README]
    assert missing == []


def test_ci_runs_the_readme_test_command():
    ci = (PROJECT_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install -e '.[dev]' && pytest" in ci
