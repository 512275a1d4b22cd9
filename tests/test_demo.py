"""The embedded demo: `mailer demo` fills an outbox a person can open."""

from __future__ import annotations

import os
import subprocess
import sys
from email import message_from_bytes, policy

import pytest


@pytest.mark.slow
def test_demo_writes_an_outbox_of_parseable_mails_with_both_parts(tmp_path):
    # Given an empty directory and no MAILER_* configuration
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    # When the README's first command runs the demo there
    res = subprocess.run([sys.executable, "-m", "mailer.cli", "demo"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr + res.stdout
    # Then it says where the outbox is
    outbox = tmp_path / "outbox"
    assert str(outbox / "index.html") in res.stdout.replace("\n", "")
    assert (tmp_path / "mailer.db").exists()
    # And every .eml parses with the strict policy and has a text and an HTML part
    emls = sorted(outbox.glob("*.eml"))
    assert len(emls) >= 7
    for path in emls:
        msg = message_from_bytes(path.read_bytes(), policy=policy.strict)
        assert msg["Subject"] and msg["Message-ID"] and msg["To"]
        assert msg.get_body(("plain",)).get_content().strip()
        assert "<html" in msg.get_body(("html",)).get_content()
    index = (outbox / "index.html").read_text(encoding="utf-8")
    assert index.count("<tr>") == len(emls) + 1
    # And a second run works too (the database is migrated, not recreated)
    again = subprocess.run([sys.executable, "-m", "mailer.cli", "demo"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert len(list(outbox.glob("*.eml"))) > len(emls)
