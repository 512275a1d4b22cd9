"""Outbox transport: writes each mail as an ``.eml`` file and keeps an ``index.html``.

The embedded default (``outbox://outbox``): a person opens ``outbox/index.html`` in a
browser and sees every mail with its subject, recipient and both parts.
"""

from __future__ import annotations

import html
import json
import os
import threading
from email import message_from_bytes, policy
from pathlib import Path

from mailer.clock import utcnow
from mailer.transport.base import SendResult

_lock = threading.Lock()


class OutboxTransport:
    """``outbox://path`` (relative paths are relative to the working directory)."""

    def __init__(self, url: str):
        raw = url.split("://", 1)[1] or "outbox"
        self.path = Path(raw).expanduser()
        self.name = f"outbox://{self.path}"

    def send(self, *, envelope_from: str, recipient: str, message: bytes) -> SendResult:
        self.path.mkdir(parents=True, exist_ok=True)
        parsed = message_from_bytes(message, policy=policy.default)
        stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
        msgid = (parsed.get("Message-ID") or "").strip("<>").split("@")[0] or stamp
        safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in msgid)[:80]
        name = f"{stamp}-{safe}.eml"
        tmp = self.path / (name + ".tmp")
        tmp.write_bytes(message)
        os.replace(tmp, self.path / name)
        entry = {"file": name, "to": recipient, "from": str(parsed.get("From", "")),
                 "subject": str(parsed.get("Subject", "")), "date": str(parsed.get("Date", ""))}
        html_part = parsed.get_body(("html",))
        if html_part is not None:
            (self.path / (name[:-4] + ".html")).write_text(html_part.get_content(), encoding="utf-8")
            entry["html"] = name[:-4] + ".html"
        with _lock:
            with open(self.path / "index.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._write_index()
        return SendResult(250, f"2.0.0 Ok: written to {self.path / name}", self.name)

    def _write_index(self) -> None:
        rows = []
        with open(self.path / "index.jsonl", encoding="utf-8") as fh:
            for line in fh:
                e = json.loads(line)
                link = e.get("html") or e["file"]
                rows.append(
                    f"<tr><td>{html.escape(e['date'])}</td><td>{html.escape(e['to'])}</td>"
                    f"<td><a href=\"{html.escape(link)}\">{html.escape(e['subject'])}</a></td>"
                    f"<td><a href=\"{html.escape(e['file'])}\">.eml</a></td></tr>")
        page = ("<!doctype html><html><head><meta charset=\"utf-8\"><title>mailer outbox</title>"
                "<style>body{font-family:system-ui,sans-serif;margin:2em}td,th{padding:4px 10px;"
                "border-bottom:1px solid #ddd;text-align:left}</style></head><body>"
                f"<h1>mailer outbox</h1><p>{len(rows)} message(s)</p><table><tr><th>Date</th><th>To</th>"
                "<th>Subject (HTML part)</th><th>Raw</th></tr>" + "".join(reversed(rows)) + "</table></body></html>")
        tmp = self.path / "index.html.tmp"
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, self.path / "index.html")

    def supports_smtputf8(self) -> bool:
        return True  # files take any bytes

    def close(self) -> None:
        pass
