"""``mailer consent grant|withdraw|check|verify|export|import``: the consent ledger from the shell."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import func, select

from mailer import db
from mailer.addresses import email_hash, normalize
from mailer.app import get_app
from mailer.cli.base import EXIT_REJECTED, console, err_console, main, on_terminal, pass_settings, setup_broker
from mailer.consent import export as consent_export
from mailer.consent import importer as consent_importer
from mailer.consent import ledger as consent
from mailer.consent import suppressions
from mailer.consent import verify as consent_verify
from mailer.instance_secrets import address_hash_salt
from mailer.models import ConsentEvent, ConsentSource, LawfulBasis
from mailer.notices import confirmation

SOURCES = [s.value for s in ConsentSource]
#: Bad rows of an import printed at most; the rest are counted.
MAX_PRINTED_ERRORS = 50
BASES = [b.value for b in LawfulBasis]


def _when(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 date or date-time (e.g. 2026-01-31T12:00:00Z)",
                                 param_hint=option) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _wording(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise click.BadParameter(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})",
                                 param_hint="--wording-file") from None
    # Editors add a final newline; the wording shown is the text without it.
    text = text.rstrip("\r\n")
    if not text.strip():
        raise click.BadParameter(f"{path} is empty", param_hint="--wording-file")
    return text


def _bar(label: str) -> Progress:
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err_console,
                    transient=True)


@main.group("consent")
def consent_group() -> None:
    """The consent ledger: record, check, verify and export consent."""


@consent_group.command("grant")
@click.argument("email")
@click.option("--purpose", required=True, help="newsletter, product_updates, restock:<sku>, ...")
@click.option("--source", type=click.Choice(SOURCES), default="admin", show_default=True)
@click.option("--basis", type=click.Choice(BASES), default="consent", show_default=True,
              help="soft_opt_in: existing customer, similar products (if the deployment allows it).")
@click.option("--double-opt-in", is_flag=True, help="Mail a confirmation link; consent counts once it is followed.")
@click.option("--ip", default=None, help="IP address the consent came from.")
@click.option("--user-agent", default=None, help="Browser user agent the consent came from.")
@click.option("--form-id", default=None, help="Form or page id where the wording was shown.")
@click.option("--wording-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="File with the exact wording shown (stored with its SHA-256).")
@click.option("--wording-version", default=None, help="Version label of the wording (e.g. 2026-01).")
@click.option("--occurred-at", default=None, help="When it happened (ISO 8601, default now).")
@pass_settings
def grant_cmd(settings, email, purpose, source, basis, double_opt_in, ip, user_agent, form_id, wording_file,
              wording_version, occurred_at) -> None:
    """Record that EMAIL consents to PURPOSE (or start a double opt-in)."""

    proof = consent.Proof(ip=ip, user_agent=user_agent, form_id=form_id, wording=_wording(wording_file),
                          wording_version=wording_version)
    when = _when(occurred_at, "--occurred-at")
    address = normalize(email)
    if double_opt_in:

        if when is not None:
            raise click.BadParameter("a double opt-in happens when the link is followed; drop --occurred-at",
                                     param_hint="--occurred-at")
        setup_broker(settings)
        pending, delivery_id = confirmation.double_opt_in(get_app(), email=address, purpose=purpose, source=source,
                                                     basis=basis, proof=proof)
        if pending.already_granted:
            console.print(f"{address} already consents to {purpose}; no confirmation sent")
        elif not pending.created:
            console.print(f"a confirmation for {purpose} was sent to {address} less than "
                          f"{consent.CONFIRM_RESEND_MIN_S // 60} minutes ago (request {pending.request_id}); "
                          "not sending another")
        else:
            console.print(f"confirmation mail queued for {address} (delivery {delivery_id}, request "
                          f"{pending.request_id}); consent for {purpose} counts once the link is followed "
                          f"before {pending.expires_at:%Y-%m-%d %H:%M} UTC", highlight=False, soft_wrap=True)
            console.print(f"link: {pending.url}", highlight=False, soft_wrap=True)
        return
    with db.session_scope(settings) as s:
        ev = consent.grant(s, settings, email=address, purpose=purpose, source=source, basis=basis,
                           occurred_at=when, proof=proof)
        hit = suppressions.suppression_for(s, email_hash(address, address_hash_salt(settings)), purpose)
        seq = ev.seq
    console.print(f"recorded: {address} granted {purpose} ({basis}, source {source}); event seq {seq}",
                  highlight=False, soft_wrap=True)
    if hit is not None:
        err_console.print(f"note: {address} is suppressed ({hit.reason.value}, scope {hit.scope}); "
                          "no marketing mail will reach it", highlight=False, soft_wrap=True)


@consent_group.command("withdraw")
@click.argument("email")
@click.option("--purpose", required=True)
@click.option("--source", type=click.Choice(SOURCES), default="admin", show_default=True)
@click.option("--ip", default=None)
@click.option("--user-agent", default=None)
@click.option("--form-id", default=None)
@click.option("--occurred-at", default=None, help="When it happened (ISO 8601, default now).")
@pass_settings
def withdraw_cmd(settings, email, purpose, source, ip, user_agent, form_id, occurred_at) -> None:
    """Record that EMAIL withdraws consent for PURPOSE (takes effect at once)."""

    with db.session_scope(settings) as s:
        ev = consent.withdraw(s, settings, email=email, purpose=purpose, source=source,
                              occurred_at=_when(occurred_at, "--occurred-at"),
                              proof=consent.Proof(ip=ip, user_agent=user_agent, form_id=form_id))
        seq = ev.seq
    console.print(f"recorded: {email} withdrew {purpose} (source {source}); event seq {seq}", highlight=False, soft_wrap=True)


@consent_group.command("check")
@click.argument("email")
@click.option("--purpose", required=True)
@click.option("--at", "at", default=None, help="Ask about a past moment (ISO 8601) instead of now.")
@pass_settings
def check_cmd(settings, email, purpose, at) -> None:
    """Does EMAIL have consent for PURPOSE now (or --at T)? Exit 0 yes, 1 no."""

    when = _when(at, "--at")
    with db.session_scope(settings) as s:
        customer = consent.customer_by_email(s, email)
        yes = consent.has_consent(s, settings, customer.id, purpose, at=when)
    moment = f"at {when.isoformat()}" if when else "now"
    console.print(f"{email}: {'consent' if yes else 'NO consent'} for {purpose} {moment}", highlight=False, soft_wrap=True)
    if not yes:
        raise SystemExit(EXIT_REJECTED)


@consent_group.command("verify")
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Verify an export file on its own instead of the database.")
@pass_settings
def verify_cmd(settings, file: Path | None) -> None:
    """Check the hash chain and the current state; names the first edited, removed, inserted or reordered event
    and every (customer, purpose) whose consent_state disagrees with the events. Exit 1 on any problem."""

    def run(progress=None):
        if file is not None:
            return consent_verify.verify_file(file, progress=progress)
        with db.session_scope(settings) as s:
            return consent_verify.verify_db(s, settings, progress=progress)

    if on_terminal():
        with _bar("verifying") as bar:
            if file is not None:
                total = None
            else:
                with db.session_scope(settings) as s:
                    total = s.execute(select(func.count()).select_from(ConsentEvent)).scalar_one()
            task = bar.add_task("events", total=total)
            report = run(lambda n: bar.advance(task, n))
    else:
        report = run()
    what = str(file) if file else "consent chain"
    if report.problem is None:
        span = f"seq {report.first_seq}..{report.last_seq}" if report.last_seq is not None else "empty"
        links = f" and {report.links} links" if report.links else ""
        out = console if report.ok else err_console
        out.print(f"{'OK' if report.ok else 'CHAIN OK'}: {what}: {report.events} events{links} verified ({span}); "
                  f"head {report.head_hash}", highlight=False, markup=False, soft_wrap=True)
        out.print(report.formats_text(), highlight=False, markup=False, soft_wrap=True)
    else:
        p = report.problem
        err_console.print(f"BROKEN: {what}: {p.kind}: {p.message} ({p.where()})", highlight=False, markup=False,
                          soft_wrap=True)
    for m in report.state_mismatches:
        err_console.print(f"STATE: customer {m.customer_id}, purpose {m.purpose}: {m.kind}: {m.detail}",
                          highlight=False, markup=False, soft_wrap=True)
    if report.state_mismatches:
        err_console.print(f"BROKEN: consent_state: {len(report.state_mismatches)} (customer, purpose) rows disagree "
                          "with the events", highlight=False, markup=False, soft_wrap=True)
    if not report.ok:
        raise SystemExit(EXIT_REJECTED)


@consent_group.command("export")
@click.option("--since", default=None, help="Only events that occurred at or after this (ISO 8601).")
@click.option("--until", default=None, help="Only events that occurred before this (ISO 8601).")
@click.option("--purpose", default=None)
@click.option("--email", default=None, help="Only events about this address.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), required=True)
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--no-evidence", is_flag=True, help="Leave out the clear-text address, IP and user agent.")
@pass_settings
def export_cmd(settings, since, until, purpose, email, fmt, output: Path, no_evidence: bool) -> None:
    """Stream the consent log with its chain hashes; `mailer consent verify --file` re-checks it."""

    partial = output.with_name(output.name + ".partial")
    try:
        with db.session_scope(settings) as s, open(partial, "w", encoding="utf-8", newline="") as out:
            kwargs = dict(fmt=fmt, since=_when(since, "--since"), until=_when(until, "--until"), purpose=purpose,
                          email=email, evidence=not no_evidence)
            if on_terminal():
                with _bar("exporting") as bar:
                    task = bar.add_task("events", total=None)
                    summary = consent_export.export(s, settings, out, **kwargs,
                                                    on_total=lambda n: bar.update(task, total=n),
                                                    progress=lambda n: bar.advance(task, n))
            else:
                summary = consent_export.export(s, settings, out, **kwargs)
        os.replace(partial, output)
    finally:
        if partial.exists():
            partial.unlink()
    links = f" (+{summary.links} link records for events outside the filter)" if summary.links else ""
    console.print(f"exported {summary.events} events{links} to {output}; head {summary.head_hash}", highlight=False, soft_wrap=True)


@consent_group.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--strict", is_flag=True, help="Import nothing when any row is bad.")
@click.option("--encoding", default=consent_importer.DEFAULT_ENCODING, show_default=True,
              help="The file's text encoding: any Python codec name (utf-8-sig, cp1252, latin-1, ...).")
@click.option("--delimiter", default=consent_importer.DEFAULT_DELIMITER, show_default=True,
              help="The field separator: one character such as ';' or '\\t' (tab).")
@pass_settings
def import_cmd(settings, path: Path, strict: bool, encoding: str, delimiter: str) -> None:
    """Append existing consents from a CSV file to the ledger, with their proof.

    Columns: email, purpose, action (granted/withdrawn), occurred_at (required), source,
    ip, user_agent, wording_id, wording_version, confirmed_at (double opt-in), basis,
    external_id; see docs/consent.md. Exit code 1 when rows were rejected; the good rows
    around a bad one are still imported (with --strict, nothing is).
    """
    consent_importer.check_encoding(encoding)
    delimiter = consent_importer.check_delimiter(delimiter)
    kwargs = dict(strict=strict, encoding=encoding, delimiter=delimiter)
    if on_terminal():
        with open(path, "rb") as fh:
            total = sum(1 for _ in fh) - 1
        with _bar("importing") as bar:
            task = bar.add_task("rows", total=max(total, 0))
            result = consent_importer.import_file(settings, path, progress=lambda n: bar.advance(task, n), **kwargs)
    else:
        result = consent_importer.import_file(settings, path, **kwargs)
    for error in result.errors[:MAX_PRINTED_ERRORS]:
        click.echo(f"{path}: {error}", err=True)
    if len(result.errors) > MAX_PRINTED_ERRORS:
        err_console.print(f"... and {len(result.errors) - MAX_PRINTED_ERRORS} more bad rows", markup=False)
    if result.strict_aborted:
        err_console.print(f"--strict: {len(result.errors)} bad row(s); nothing imported", markup=False)
    else:
        span = f" (seq {result.first_seq}..{result.last_seq})" if result.events else ""
        console.print(f"imported {result.events} consent events{span}, {result.customers_created} new customers; "
                      f"rejected {len(result.errors)} row(s)", highlight=False, markup=False, soft_wrap=True)
    if result.errors:
        raise SystemExit(EXIT_REJECTED)
