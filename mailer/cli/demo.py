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
        console.print(f"  {note}")
    other = ", ".join(f"{v} {k}" for k, v in sorted(result.other.items())) or "none"
    console.print(f"sent {result.sent} mails (other outcomes: {other})")
    if settings.smtp_url.startswith("outbox"):
        console.print(f"outbox: {result.outbox}  — open {result.outbox / 'index.html'} in a browser")
    else:
        console.print(f"delivered through {result.outbox}")
