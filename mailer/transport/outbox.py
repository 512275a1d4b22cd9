"""Outbox transport: writes each mail as an ``.eml`` file and keeps an ``index.html``.

The embedded default (``outbox://outbox``): a person opens ``outbox/index.html`` in a
browser (a phone too) and sees every mail with its date, kind, locale, recipient and
subject, a search box, and links to an HTML copy and the raw ``.eml``.  The packaged
sample images are copied to ``outbox/assets/`` and the HTML copies point there.

Safe with many threads and processes writing one folder: every file is written under
a unique temporary name and renamed into place (``os.replace``); the ``.eml`` appearing
is the commit point.  ``index.html`` is rebuilt from the directory listing under an
``fcntl.flock`` lock and renamed into place, so no writer corrupts it or drops another's
mail (a writer that dies mid-way leaves at most a ``.tmp-*`` file, never a half mail).
"""

from __future__ import annotations

import fcntl
import html
import os
import secrets
import tempfile
import threading
from email import message_from_bytes, policy
from email.parser import BytesHeaderParser
from pathlib import Path

from mailer import assets
from mailer.clock import utcnow
from mailer.transport.base import SendResult

#: The newest mails listed in index.html (the folder keeps them all).
MAX_INDEX_ROWS = 2000
#: Longest subject / address shown in the index, characters (they come from outside).
MAX_SHOWN_CHARS = 300
#: The lock file the writers of one folder take while rebuilding its index.
LOCK_NAME = ".index.lock"

_header_parser = BytesHeaderParser(policy=policy.default)


def _write_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to a unique temporary file next to ``target``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _shown(value: object) -> str:
    text = " ".join(str(value or "").split())
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS - 1] + "…"


class OutboxTransport:
    """``outbox://path`` (relative paths are relative to the working directory)."""

    def __init__(self, url: str):
        raw = url.split("://", 1)[1] or "outbox"
        self.path = Path(raw).expanduser()
        self.name = f"outbox://{self.path}"
        #: Index rows already read, by .eml name (a renamed-in .eml never changes).
        self._rows: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self._assets_copied = False

    def send(self, *, envelope_from: str, recipient: str, message: bytes) -> SendResult:
        self.path.mkdir(parents=True, exist_ok=True)
        if not self._assets_copied:
            assets.copy_images(self.path)
            self._assets_copied = True
        parsed = message_from_bytes(message, policy=policy.default)
        stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
        msgid = (parsed.get("Message-ID") or "").strip("<> ").split("@")[0] or stamp
        safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in msgid)[:80]
        # The random part keeps two writes of one Message-ID (a duplicate) two files.
        base = f"{stamp}-{safe}-{secrets.token_hex(4)}"
        html_part = parsed.get_body(("html",))
        if html_part is not None:
            _write_atomic(self.path / f"{base}.html",
                          assets.localize_html(html_part.get_content()).encode("utf-8"))
        _write_atomic(self.path / f"{base}.eml", message)
        self.rebuild_index()
        return SendResult(250, f"2.0.0 Ok: written to {self.path / (base + '.eml')}", self.name)

    # -- the index ------------------------------------------------------------------------------
    def rebuild_index(self) -> None:
        """Rewrite index.html from the folder's ``.eml`` files (under the folder's flock)."""
        with self._lock, open(self.path / LOCK_NAME, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                names = sorted((p.name for p in self.path.glob("*.eml") if not p.name.startswith(".")), reverse=True)
                rows = [self._row(n) for n in names[:MAX_INDEX_ROWS]]
                _write_atomic(self.path / "index.html", _page(rows, len(names)).encode("utf-8"))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _row(self, name: str) -> dict[str, str]:
        row = self._rows.get(name)
        if row is None:
            with open(self.path / name, "rb") as fh:
                head = _header_parser.parse(fh, headersonly=True)
            html_copy = name[:-4] + ".html"
            row = {"file": name, "html": html_copy if (self.path / html_copy).exists() else "",
                   "date": _shown(head.get("Date")), "to": _shown(head.get("To")),
                   "subject": _shown(head.get("Subject")), "kind": _shown(head.get("X-Mailer-Kind")),
                   "locale": _shown(head.get("Content-Language")), "id": _shown(head.get("Message-ID"))}
            self._rows[name] = row
        return row

    def supports_smtputf8(self) -> bool:
        return True  # files take any bytes

    def close(self) -> None:
        pass


_STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;padding:1em;max-width:72em;color:#1f2933}
h1{font-size:1.4em;margin:.2em 0}
input[type=search]{width:100%;box-sizing:border-box;font-size:1em;padding:.5em;margin:.5em 0 1em}
table{border-collapse:collapse;width:100%}
th,td{padding:6px 10px;border-bottom:1px solid #ddd;text-align:start;vertical-align:top;overflow-wrap:anywhere}
th{font-size:.85em;color:#5f6b76}
.kind{font-family:ui-monospace,monospace;font-size:.9em}
.muted{color:#5f6b76;font-size:.85em}
@media (max-width:600px){
 thead{display:none}
 table,tbody,tr,td{display:block;width:auto}
 tr{border:1px solid #ddd;border-radius:8px;margin:0 0 .8em;padding:.4em .6em}
 td{border:0;padding:2px 0}
 td[data-label]::before{content:attr(data-label) ": ";color:#5f6b76;font-size:.85em}
 td.subject{font-weight:bold;font-size:1.05em}
}
"""

# Filters rows by what they show (textContent: nothing is interpreted as HTML).
_SCRIPT = """
document.getElementById('q').addEventListener('input', function (e) {
  var q = e.target.value.toLowerCase(), shown = 0;
  document.querySelectorAll('tbody tr').forEach(function (tr) {
    var hit = tr.textContent.toLowerCase().indexOf(q) !== -1;
    tr.hidden = !hit; if (hit) { shown++; }
  });
  document.getElementById('count').textContent = shown;
});
"""


def _page(rows: list[dict[str, str]], total: int) -> str:
    e = html.escape
    body = []
    for r in rows:
        link = r["html"] or r["file"]
        body.append(
            "<tr>"
            f"<td class=\"subject\" dir=\"auto\"><a href=\"{e(link)}\">{e(r['subject']) or '(no subject)'}</a></td>"
            f"<td data-label=\"To\" dir=\"auto\">{e(r['to'])}</td>"
            f"<td data-label=\"Kind\" class=\"kind\">{e(r['kind']) or '—'}</td>"
            f"<td data-label=\"Locale\">{e(r['locale']) or '—'}</td>"
            f"<td data-label=\"Date\" class=\"muted\">{e(r['date'])}</td>"
            f"<td><a href=\"{e(r['file'])}\">.eml</a></td>"
            "</tr>")
    older = (f"<p class=\"muted\">The newest {len(rows)} are listed; {total - len(rows)} older mails "
             "are in the folder.</p>") if total > len(rows) else ""
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>mailer outbox</title><style>{_STYLE}</style></head><body>"
            f"<h1>mailer outbox</h1><p><span id=\"count\">{len(rows)}</span> of {total} message(s)</p>"
            "<input id=\"q\" type=\"search\" placeholder=\"Search subject, address, kind, locale\" "
            "aria-label=\"Search the outbox\">"
            "<table><thead><tr><th>Subject (HTML copy)</th><th>To</th><th>Kind</th><th>Locale</th><th>Date</th>"
            f"<th>Raw</th></tr></thead><tbody>{''.join(body)}</tbody></table>{older}"
            f"<script>{_SCRIPT}</script></body></html>")
