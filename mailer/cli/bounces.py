"""``mailer bounces ingest PATH...``: apply DSNs (RFC 3464) and complaint reports (RFC 5965).

PATH is a report file (one mail, as saved from the bounce mailbox) or a Maildir; see
:mod:`mailer.bounces` for what each report changes.  Prints one line per report and a
summary; exit code 0 when every report was applied (or was a duplicate, a delay
notice or a non-complaint feedback report), 1 when some could not be parsed or
matched to a delivery (nothing is changed for those), 2 on a bad path.
"""

from __future__ import annotations

import collections
import json
import sys

import click
from rich.table import Table

from mailer import bouncekit
from mailer.app import App
from mailer.cli.base import EXIT_REJECTED, console, main, on_terminal, pass_settings
from mailer.delivery import bounces


@main.group("bounces")
def bounces_group() -> None:
    """Bounces and complaints that arrive after sending."""


@bounces_group.command("explain")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message instead of text.")
@pass_settings
def explain_cmd(settings, paths: tuple[str, ...], as_json: bool) -> None:
    """Say, for each message in PATH... (files, Maildirs, mbox files), what ingest would do and why.

    Changes nothing.  Reads no database: the reading comes from mailer.bouncekit alone.
    """
    prefix = "bounces"  # VERP local part: bounces+<delivery id>.<HMAC>@MAILER_BOUNCE_DOMAIN
    for path in paths:
        try:
            sources = list(bouncekit.read_sources(path))
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"{path}: cannot read: {exc}") from exc
        for file, index, raw in sources:
            report = bouncekit.classify(raw, verp_prefix=prefix)
            d = report.to_dict()
            out = {"file": file, **({"index": index} if index is not None else {}), "type": d["type"],
                   "recipients": d["recipients"]}
            if report.feedback_type:
                out["feedback_type"] = report.feedback_type
            if report.message_id:
                out["message_id"] = report.message_id
            if report.delivery_id is not None:
                out["delivery_id"] = report.delivery_id
            out["evidence"] = report.evidence
            if as_json:
                click.echo(json.dumps(out, ensure_ascii=False))
                continue
            where = file if index is None else f"{file}#{index}"
            click.echo(f"{where}: {report.type}"
                       + (f" ({report.feedback_type})" if report.feedback_type else "")
                       + (f", delivery {report.delivery_id}" if report.delivery_id is not None else "")
                       + (f", Message-ID {report.message_id}" if report.message_id else ""))
            for r in report.recipients:
                click.echo(f"  {r.address or '(no address)'}: {r.reason} -> {r.action}"
                           f"  [status {r.status or '-'}, smtp {r.smtp_code or '-'}]")
                if r.evidence:
                    click.echo(f"    because: {r.evidence}")


@bounces_group.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per report instead of a table.")
@click.option("--unmatched-dir", type=click.Path(file_okay=False), default=None,
              help="Maildir to move unmatched reports to (default MAILER_BOUNCE_UNMATCHED_DIR, "
                   "else .Unmatched inside each Maildir).")
@pass_settings
def ingest_cmd(settings, paths: tuple[str, ...], as_json: bool, unmatched_dir: str | None) -> None:
    """Apply bounces and complaints in PATH... (files, mbox files or Maildirs); exit 1 if this run left some unmatched.

    Maildir messages move to cur/ (":2,S") once processed, unmatched ones to the unmatched Maildir,
    so cron can run this forever.
    """

    app = App(settings)
    try:
        results = bounces.ingest(app, paths, unmatched_dir=unmatched_dir)
    finally:
        app.close()
    if as_json:
        for r in results:
            click.echo(json.dumps({"source": r.source, "outcome": r.outcome, "reason": r.reason,
                                   "delivery_id": r.delivery_id, "detail": r.detail}, ensure_ascii=False))
    else:
        table = Table(show_header=True, header_style="bold", box=None if not on_terminal() else None)
        for col in ("report", "outcome", "delivery", "detail"):
            table.add_column(col, overflow="fold")
        for r in results:
            style = "red" if r.rejected else ("yellow" if r.outcome in ("hard", "complaint") else "")
            table.add_row(r.source, f"[{style}]{r.outcome}[/]" if style else r.outcome,
                          str(r.delivery_id or "-"), r.detail)
        console.print(table)
        counts = collections.Counter(r.outcome for r in results)
        console.print(f"{len(results)} report(s): " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    if any(r.rejected for r in results):
        sys.exit(EXIT_REJECTED)
