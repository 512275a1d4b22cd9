"""``mailer bounces explain PATH... [--json]``: what ingest would do and why, changing nothing."""

from __future__ import annotations

import json

from click.testing import CliRunner

from mailer.cli import main
from tests.bounce_support import arf, dsn

_AUTO_REPLY = (b"From: Ann <ann@example.org>\r\nTo: shop@example.com\r\nSubject: Out of office\r\n"
               b"Auto-Submitted: auto-replied\r\n\r\nI am away until Monday.\r\n")


def _mbox(*messages: bytes) -> bytes:
    return b"".join(b"From MAILER-DAEMON Mon Nov 23 10:00:00 2026\n" + m.replace(b"\r\n", b"\n") + b"\n"
                    for m in messages)


def test_explain_json_reads_mbox_and_maildir_and_moves_nothing(tmp_path, settings):
    # Given an mbox holding a DSN (signed header, VERP) and a complaint, and a Maildir holding an auto-reply
    box = tmp_path / "bounces.mbox"
    box.write_bytes(_mbox(
        dsn(to="bounces+7@example.com", message_id="<7.abc@shop.example>", recipient="bob@example.org",
            delivery_header="7.0123456789abcdef"),
        arf(to="fbl@example.com", message_id="<8.def@shop.example>", recipient="eve@example.org",
            feedback_type="opt-out")))
    maildir = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "1.mx").write_bytes(_AUTO_REPLY)
    env = {"MAILER_DATABASE_URL": "sqlite:///" + str(tmp_path / "never-created.db"),
           "MAILER_SECRET_KEY": settings.secret_key, "MAILER_BROKER_URL": "stub://"}
    # When `mailer bounces explain --json` reads both
    res = CliRunner().invoke(main, ["bounces", "explain", str(box), str(maildir), "--json"], env=env)
    # Then it prints one JSON object per message with the fields
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert [(r["type"], r.get("index")) for r in rows] == [("bounce", 0), ("complaint", 1), ("auto_reply", None)]
    bounce, complaint, auto = rows
    assert bounce["recipients"] == [{"address": "bob@example.org", "status": "5.1.1", "smtp_code": "550",
                                     "reason": "userunknown", "action": "suppress"}]
    assert (bounce["message_id"], bounce["delivery_id"]) == ("<7.abc@shop.example>", 7)
    assert "User unknown" in bounce["evidence"] and bounce["file"] == str(box)
    assert (complaint["feedback_type"], complaint["recipients"][0]["action"]) == ("opt-out", "complaint")
    assert auto["recipients"][0]["reason"] == "vacation" and auto["recipients"][0]["action"] == "ignore"
    # And nothing moved or was created: the Maildir is as it was, no database was opened
    assert [p.name for p in (maildir / "new").iterdir()] == ["1.mx"] and list((maildir / "cur").iterdir()) == []
    assert not (tmp_path / "never-created.db").exists()


def test_explain_text_says_why(tmp_path, settings):
    # Given a DSN whose status says 5.1.1 but whose diagnostic says our IP is listed
    path = tmp_path / "r.eml"
    path.write_bytes(dsn(to="bounces+9@example.com", message_id=None, recipient="cy@example.org",
                         diagnostic="smtp; 550 5.7.1 Service unavailable; client host blocked using zen.spamhaus.org"))
    env = {"MAILER_DATABASE_URL": "sqlite:///" + str(tmp_path / "x.db"), "MAILER_SECRET_KEY": settings.secret_key,
           "MAILER_BROKER_URL": "stub://"}
    # When explained as text
    res = CliRunner().invoke(main, ["bounces", "explain", str(path)], env=env)
    # Then it names the reason, the action and the line it decided on
    assert res.exit_code == 0, res.output
    assert "cy@example.org: blocked -> sender" in res.output and "because:" in res.output
    assert "spamhaus" in res.output
