"""``mailer gdpr export EMAIL -o FILE.json``, ``mailer gdpr erase EMAIL``, ``mailer gdpr purge``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from mailer import db
from mailer.addresses import normalize
from mailer.cli.base import console, main, pass_settings
from mailer.delivery import bounces
from mailer.gdpr import requests as gdpr


@main.group("gdpr")
def gdpr_group() -> None:
    """Data subject requests (access, portability, erasure) and retention."""


@gdpr_group.command("export")
@click.argument("email")
@click.option("-o", "--output", "output", required=True, help="JSON file to write (- for standard output).")
@pass_settings
def export_cmd(settings, email: str, output: str) -> None:
    """Everything held about EMAIL as one JSON document (GDPR Art. 15 and 20)."""

    with db.session_scope(settings) as s:
        doc = gdpr.export(s, settings, email)
    text = gdpr.export_json(doc)
    if output == "-":
        sys.stdout.write(text)
        return
    path = Path(output)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    counts = ", ".join(f"{len(doc[k])} {k.replace('_', ' ')}" for k in ("deliveries", "tracking_events"))
    console.print(f"wrote {path}: {len(doc['profiles'])} profile(s), {len(doc['consent']['events'])} consent "
                  f"events, {counts}", highlight=False, soft_wrap=True)


@gdpr_group.command("erase")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation on a terminal.")
@pass_settings
def erase_cmd(settings, email: str, yes: bool) -> None:
    """Erase EMAIL's personal data; a salted-hash tombstone keeps the address suppressed (Art. 17)."""

    address = normalize(email)
    if not yes and sys.stdin.isatty():
        click.confirm(f"Erase all personal data of {address}? This cannot be undone", abort=True)
    with db.session_scope(settings) as s:
        report = gdpr.erase(s, settings, address)
    changed = {k: v for k, v in report.as_dict().items() if k != "email_hash" and v}
    detail = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in changed.items()) or "no personal data was held"
    console.print(f"erased {address} (tombstone {report.email_hash[:16]}…); {detail}", highlight=False, soft_wrap=True)


@gdpr_group.command("purge")
@click.option("--tracking-older-than", "days", type=click.IntRange(min=0), default=None,
              help="Delete tracking events older than DAYS (default: MAILER_TRACKING_RETENTION_DAYS).")
@click.option("--bounces-older-than", "bounce_days", type=click.IntRange(min=0), default=None,
              help="Delete raw bounce/complaint copies older than DAYS (default: MAILER_BOUNCE_RETENTION_DAYS).")
@pass_settings
def purge_cmd(settings, days: int | None, bounce_days: int | None) -> None:
    """Retention: delete old tracking events and old raw copies of bounces and complaints."""

    with db.session_scope(settings) as s:
        n = gdpr.purge_tracking(s, settings, days)
        b = bounces.purge_reports(s, settings, bounce_days)
    used = settings.tracking_retention_days if days is None else days
    used_b = settings.bounce_retention_days if bounce_days is None else bounce_days
    console.print(f"deleted {n} tracking events older than {used} days, "
                  f"{b} raw bounce reports older than {used_b} days", soft_wrap=True)
