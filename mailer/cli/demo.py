"""``mailer demo``: the whole path on the embedded default, mail into ./outbox."""

from __future__ import annotations

from mailer.cli.base import console, main, pass_settings
from mailer.demo import run


@main.command("demo")
@pass_settings
def demo_cmd(settings) -> None:
    """Create the database, load sample customers and consent, send notices, print the outbox."""
    result = run(settings)
    for note in result.notes:
        console.print(f"  {note}", soft_wrap=True)
    other = ", ".join(f"{v} {k}" for k, v in sorted(result.other.items())) or "none"
    console.print(f"sent {result.sent} mails (other outcomes: {other})", soft_wrap=True)
    if settings.smtp_url.startswith("outbox"):
        console.print(f"outbox: {result.outbox}  — open {result.outbox / 'index.html'} in a browser",
                      soft_wrap=True, highlight=False)
    else:
        console.print(f"delivered through {result.outbox}", soft_wrap=True, highlight=False)
    console.print(f"to try the unsubscribe and tracking links, run `mailer serve` "
                  f"(they point at {settings.base_url})", soft_wrap=True, highlight=False)
