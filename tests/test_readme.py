"""The README keeps its promises: the two commands first, every setting documented."""

from __future__ import annotations

import re

from mailer.settings import PROJECT_ROOT, settings_markdown

README = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
VENV = "python3 -m venv .venv && . .venv/bin/activate"
DEMO_COMMAND = f"{VENV} && pip install -c requirements.lock -e . && mailer demo"
TEST_COMMAND = f"{VENV} && pip install -c requirements.lock -e '.[dev]' && pytest"


def test_readme_opens_with_the_two_commands():
    blocks = re.findall(r"```sh\n(.*?)\n```", README, flags=re.S)
    assert blocks[0].strip() == DEMO_COMMAND
    assert blocks[1].strip() == TEST_COMMAND
    assert README.index(blocks[1]) < 1000


def test_readme_settings_table_matches_the_settings():
    # When this fails: run `python -m mailer.settings` and paste its output into README.md.
    assert settings_markdown() in README


def test_readme_links_every_doc():
    docs = sorted(p.name for p in (PROJECT_ROOT / "docs").glob("*.md"))
    missing = [d for d in docs if f"docs/{d}" not in README]
    assert missing == []


def test_ci_runs_the_readme_test_command():
    ci = (PROJECT_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert TEST_COMMAND in ci


def test_the_lock_pins_every_dependency_of_pyproject():
    """Given pyproject's runtime and dev dependencies, each has an exact pin in requirements.lock."""
    import tomllib

    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    names = {re.split(r"[\[<>=!~ ;]", w, maxsplit=1)[0].lower().replace("_", "-") for w in wanted}
    lock = (PROJECT_ROOT / "requirements.lock").read_text(encoding="utf-8")
    pinned = {m.group(1).lower().replace("_", "-") for m in re.finditer(r"^([A-Za-z0-9_.-]+)==", lock, re.M)}
    assert sorted(names - pinned) == []
