"""``mailer demo``: the whole path on the embedded default, mail into ./outbox; ``--serve`` then serves it.

Every line is printed with ``soft_wrap`` so no command or path is ever split across lines,
on a terminal or off one.
"""

from __future__ import annotations

import click

from mailer.cli.base import console, main, pass_settings
from mailer.cli.serve import run_server
from mailer.demo import run, serving


def _say(text: str) -> None:
    console.print(text, soft_wrap=True, highlight=False, markup=False)


@main.command("demo")
@click.option("--serve", "serve_after", is_flag=True,
              help="After the demo, serve its links (unsubscribe, preferences, tracking) until Ctrl-C.")
@pass_settings
def demo_cmd(settings, serve_after: bool) -> None:
    """Create the database, load sample customers and consent, send notices, print the outbox.

    Idempotent by reuse: a second run in the same folder finds the notices and the campaign
    of the first (by their keys and name), sends nothing again and reports this run only.
    """
    result = run(settings)
    for note in result.notes:
        _say(f"  {note}")
    other = ", ".join(f"{v} {k}" for k, v in sorted(result.other.items())) or "none"
    _say(f"this run: sent {result.sent} mails (other outcomes: {other})")
    for reason, n in result.skipped_reasons.items():
        _say(f"  {n} skipped (not sent): {reason}")
    if result.reused:
        _say(f"reused {result.reused} deliveries from an earlier demo run in this folder; "
             f"they were not sent again (delete mailer.db and outbox/ to start over)")
    if settings.smtp_url.startswith("outbox"):
        _say(f"outbox: {result.outbox}  — open {result.outbox / 'index.html'} in a browser")
    else:
        _say(f"delivered through {result.outbox}")
    if not serve_after:
        _say(f"to try the unsubscribe and tracking links, run `mailer serve` or `mailer demo --serve` "
             f"(they point at {settings.base_url})")
        return
    _say(f"serving the links at {settings.base_url} (http://{settings.http_host}:{settings.http_port}); "
         f"Ctrl-C to stop")
    with serving(settings) as app:
        run_server(app, host=settings.http_host, port=settings.http_port)
