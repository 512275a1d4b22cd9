"""The embedded demo: `mailer demo` fills an outbox a person can open."""

from __future__ import annotations

import os
import sqlite3
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
    # And the skipped deliveries come with their stored reasons (the consent gate at work)
    assert "skipped (not sent): no current consent for loyalty" in res.stdout
    # And no printed line is wrapped: each command and path stays whole on its line
    assert any(line.endswith(f"open {outbox / 'index.html'} in a browser") for line in res.stdout.splitlines())
    assert "(see it with: mailer campaign status 1)" in res.stdout
    assert "`mailer serve`" in res.stdout and "mailer demo --serve" in res.stdout
    # And its newsletter, all sent, reads completed (the console does not list it as running)
    with sqlite3.connect(tmp_path / "mailer.db") as con:
        assert con.execute("SELECT status FROM campaigns WHERE id = 1").fetchone() == ("completed",)
    # When the demo runs a second time in the same folder
    again = subprocess.run([sys.executable, "-m", "mailer.cli", "demo"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    # Then it reuses the first run's notices and campaign (one of every notice kind, replenishment
    # included, and the newsletter to its 5 consenting customers): nothing is resent, and it says so
    assert sorted(outbox.glob("*.eml")) == emls
    assert "this run: sent 0 mails (other outcomes: none)" in again.stdout
    assert "reused 19 deliveries from an earlier demo run" in again.stdout
    assert "campaign 1: reused from an earlier run" in again.stdout
