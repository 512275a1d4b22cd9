"""``mailer campaign ...``: create (with A/B variants), preview, send, pause, resume, cancel, list, status, report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mailer import db, segments
from mailer.app import App, get_app
from mailer.campaigns import abtest, reports
from mailer.campaigns import fanout as campaign_actors
from mailer.campaigns import service as campaigns
from mailer.cli.base import (
    console,
    err_console,
    fold_table,
    main,
    on_terminal,
    parse_json_or_file,
    pass_settings,
    setup_broker,
)
from mailer.models import Campaign
from mailer.tracking import service as tracking

#: Seconds between refreshes of ``campaign status --watch``.
WATCH_INTERVAL_S = 1.0


@main.group("campaign")
def campaign_group() -> None:
    """Newsletters to a segment: create, preview, send, watch and report."""


@campaign_group.command("create")
@click.option("--name", required=True, help="A name for people (shown in lists and reports).")
@click.option("--template", required=True, help="Newsletter kind, e.g. newsletter/product_launch.")
@click.option("--segment", required=True, help="Segment name (segments/<name>.toml).")
@click.option("--subject", multiple=True,
              help="Subject for every locale, or LOCALE=TEXT for one (repeatable). Default: the template's.")
@click.option("--preheader", multiple=True,
              help="Preheader for every locale, or LOCALE=TEXT for one (repeatable). Default: the template's.")
@click.option("--subject-all-locales", is_flag=True,
              help="A --subject without a locale is meant for every locale, languages included (no warning).")
@click.option("--send-at", default=None, help="ISO-8601 start time (no offset: the shop's time zone).")
@click.option("--local-time", default=None, help="HH:MM: deliver at this time in each recipient's zone.")
@click.option("--no-tracking", is_flag=True, help="No open pixel, no click tracking.")
@click.option("--data", default=None, help="Template data as JSON, or @file.json (default: the sample data).")
@click.option("--variant", multiple=True,
              help="A/B test: FIELD=TEXT starts a variant (FIELD: subject, preheader, template); "
                   "LOCALE:FIELD=TEXT (or *:FIELD=TEXT) adds to the one before. 2-4 variants; the first is the default.")
@click.option("--test-share", type=float, default=None, help="A/B test: percent of the segment in the test (1-50).")
@click.option("--winner-metric", type=click.Choice(abtest.METRICS), default=None,
              help="A/B test: what picks the winner: human open rate, click rate or attributed revenue.")
@click.option("--test-wait", default=None, help="A/B test: how long to wait before picking the winner (90m, 4h, 2d; "
                                                "default 4h).")
@click.option("--confidence", type=float, default=None,
              help="A/B test: confidence a difference must reach to pick a winner (default 0.95).")
@pass_settings
def create_cmd(settings, name, template, segment, subject, preheader, subject_all_locales, send_at, local_time,
               no_tracking, data, variant, test_share, winner_metric, test_wait, confidence) -> None:
    """Validate and store a draft campaign; prints its id.

    One ``--subject TEXT`` without a locale replaces the subject of every locale: a warning on
    stderr names the locales that will get it in another language than their body, unless
    ``--subject-all-locales`` says so deliberately.
    """

    app = App(settings)
    payload = parse_json_or_file(data, option="--data")
    subjects = campaigns.parse_subjects(subject)
    if subject_all_locales and "*" not in subjects:
        raise click.BadParameter("needs a --subject TEXT without a locale", param_hint="--subject-all-locales")
    variants = abtest.parse_variants(variant)
    ab = None
    if variants:
        if test_share is None or winner_metric is None:
            raise click.UsageError("an A/B test (--variant) needs --test-share and --winner-metric")
        ab = abtest.Settings(test_share_percent=test_share, winner_metric=winner_metric,
                             wait_s=abtest.parse_wait(test_wait or "4h"),
                             confidence=0.95 if confidence is None else confidence)
    elif any(o is not None for o in (test_share, winner_metric, test_wait, confidence)):
        raise click.UsageError("--test-share, --winner-metric, --test-wait and --confidence need --variant")
    with db.session_scope(settings) as s:
        c = campaigns.create(s, settings, app.renderer, name=name, template=template, segment=segment,
                             subjects=subjects, data=payload, preheaders=campaigns.parse_preheaders(preheader),
                             send_at=campaigns.parse_send_at(send_at, settings), local_time=local_time,
                             tracking=not no_tracking, variants=variants or None, ab=ab)
        cid = c.id
    err_console.print(f"created draft campaign {cid}: {template} -> segment {segment}"
                      f"{' at ' + send_at if send_at else ''}{' (local ' + local_time + ')' if local_time else ''}"
                      f"{' without tracking' if no_tracking else ''}"
                      f"{f', A/B test of {len(variants)} variants on {test_share:g} % by {winner_metric}' if ab else ''}"
                      f"; send it with: mailer campaign send {cid}",
                      highlight=False)
    foreign = campaigns.foreign_subject_locales(app.renderer, settings, template, subjects)
    if foreign and not subject_all_locales:
        err_console.print(f"warning: the --subject without a locale replaces the template's subject in "
                          f"{', '.join(foreign)}: those customers get it over a body in their own language. "
                          f"Give --subject LOCALE=TEXT for each, or --subject-all-locales if that is meant.",
                          highlight=False, markup=False)
    click.echo(cid)


@campaign_group.command("preview")
@click.argument("campaign_id", type=int)
@click.option("--email", required=True, help="Render as this recipient would receive it.")
@click.option("-o", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Write the HTML here (the text part goes next to it as .txt).")
@click.option("--variant", default=None, help="An A/B test's variant to render (A, B, ...; default A).")
@pass_settings
def preview_cmd(settings, campaign_id: int, email: str, output: Path, variant: str | None) -> None:
    """Write the campaign's HTML (and text) as EMAIL would receive it."""

    app = App(settings)
    with db.session_scope(settings) as s:
        p = campaigns.preview(s, settings, app.renderer, campaign_id, email, variant=variant)
    output.write_text(p.html, encoding="utf-8")
    text_path = output.with_suffix(".txt")
    text_path.write_text(f"Subject: {p.subject}\n\n{p.text}", encoding="utf-8")
    console.print(f"subject ({p.locale}): {p.subject}", highlight=False)
    console.print(f"wrote {output} and {text_path}", highlight=False)


@campaign_group.command("send")
@click.argument("campaign_id", type=int)
@pass_settings
def send_cmd(settings, campaign_id: int) -> None:
    """Start sending a draft (or schedule it for its --send-at)."""

    setup_broker(settings)
    with db.session_scope(settings) as s:
        c = campaigns.send(s, settings, campaign_id)
        status, send_at = c.status.value, c.send_at

    campaign_actors.start(get_app(), campaign_id)
    when = f" for {send_at:%Y-%m-%d %H:%M} UTC" if status == "scheduled" else ""
    console.print(f"campaign {campaign_id} {status}{when}; watch it with: mailer campaign status {campaign_id} --watch",
                  highlight=False)


@campaign_group.command("pause")
@click.argument("campaign_id", type=int)
@pass_settings
def pause_cmd(settings, campaign_id: int) -> None:
    """Pause: nothing more goes out until resume."""

    with db.session_scope(settings) as s:
        held = campaigns.pause(s, campaign_id)
    console.print(f"campaign {campaign_id} paused; {held} deliveries held", highlight=False)


@campaign_group.command("resume")
@click.argument("campaign_id", type=int)
@pass_settings
def resume_cmd(settings, campaign_id: int) -> None:
    """Resume a paused campaign."""

    setup_broker(settings)
    with db.session_scope(settings) as s:
        c = campaigns.resume(s, campaign_id)
        status, fanout_done = c.status.value, c.fanout_done
    app = get_app()
    enqueued = campaign_actors.enqueue_queued(app, campaign_id)
    if not fanout_done:
        campaign_actors.start(app, campaign_id)
    console.print(f"campaign {campaign_id} {status}; {enqueued} deliveries re-enqueued", highlight=False)


@campaign_group.command("cancel")
@click.argument("campaign_id", type=int)
@pass_settings
def cancel_cmd(settings, campaign_id: int) -> None:
    """Cancel: no further mail of this campaign is sent."""

    with db.session_scope(settings) as s:
        n = campaigns.cancel(s, campaign_id)
    console.print(f"campaign {campaign_id} cancelled; {n} deliveries not sent", highlight=False)


@campaign_group.command("list")
@pass_settings
def list_cmd(settings) -> None:
    """Every campaign, newest first."""

    table = fold_table("id", "name", "status", "template", "segment", "options", "created (UTC)")
    with db.session_scope(settings) as s:
        campaigns.finish_completed(s)
        for c in campaigns.list_campaigns(s):
            options = ", ".join(o for o in (f"at {c.send_at:%Y-%m-%d %H:%M}" if c.send_at else "",
                                            f"{c.local_time} local" if c.local_time else "",
                                            "" if c.tracking else "no tracking",
                                            f"A/B {len(c.variants)} variants" if c.variants else "") if o)
            table.add_row(str(c.id), c.name, c.status.value, c.template, c.segment, options,
                          f"{c.created_at:%Y-%m-%d %H:%M}")
    console.print(table)


def _snapshot(settings, campaign_id: int, estimate: dict):

    with db.session_scope(settings) as s:
        # The completion rule (fan-out done, nothing pending) is applied on read as well as
        # by the worker's sweeper, so status is right even where no sweeper runs (demo).
        campaigns.finish_completed(s)
        f = reports.figures(s, campaign_id)
        f.ab_test = reports.ab_summary(s, campaign_id)
        c = s.get(Campaign, campaign_id)
        if c.fanout_done or c.status.value in ("completed", "cancelled"):
            total = f.total
        else:
            if "segment" not in estimate:
                try:
                    estimate["segment"] = segments.count(s, settings, segments.load(settings, c.segment))
                except Exception:
                    estimate["segment"] = 0
            total = max(f.total, estimate["segment"])
    return f, total


def _figures_table(f) -> Table:
    table = Table(title=f"campaign {f.campaign_id}: {f.name} ({f.status})", show_header=False)
    r = f.rates
    for label, value in (("queued (pending)", f.pending), ("sent", f.sent), ("failed", f.failed),
                         ("bounced", f.bounced), ("suppressed", f.suppressed),
                         ("skipped", f"{f.skipped} ({f.frequency_capped} by frequency cap)"),
                         ("cancelled", f.cancelled), ("held (paused)", f.held),
                         ("unique human opens", f"{f.unique_opens}  ({r['open_rate'] * 100:.1f} %)"),
                         ("machine opens", f.machine_opens),
                         ("unique clicks", f"{f.unique_clicks}  ({r['click_rate'] * 100:.1f} %, "
                                           f"{r['click_to_open'] * 100:.1f} % of openers)"),
                         ("unsubscribes", f"{f.unsubscribes}  ({r['unsubscribe_rate'] * 100:.2f} %)"),
                         ("complaints", f"{f.complaints}  ({r['complaint_rate'] * 100:.3f} %)"),
                         ("bounce rate", f"{r['bounce_rate'] * 100:.2f} %"),
                         ("attributed orders", f"{f.attributed_orders}  ({f.conversion_rate * 100:.2f} % converted)"),
                         ("attributed revenue", "  ".join(f"{v} {c}" for c, v in f.attributed_revenue.items())
                          or "none"),
                         ("revenue per recipient", "  ".join(f"{v} {c}" for c, v in f.revenue_per_recipient.items())
                          or "none")):
        table.add_row(label, str(value))
    if f.brake:
        d = f.brake_detail or {}
        table.add_row("PAUSED BY BRAKE", f"{f.brake}: {d.get('complaints', 0)} complaints, "
                                         f"{d.get('hard_bounces', 0)} hard bounces in {d.get('sent', 0)} sent "
                                         f"(complaint rate {d.get('complaint_rate', 0) * 100:.3f} % / limit "
                                         f"{d.get('max_complaint_rate', 0) * 100:.2f} %, hard-bounce rate "
                                         f"{d.get('hard_bounce_rate', 0) * 100:.2f} % / limit "
                                         f"{d.get('max_hard_bounce_rate', 0) * 100:.1f} %); "
                                         f"resume explicitly: mailer campaign resume {f.campaign_id}")
    ab = getattr(f, "ab_test", None)
    if ab:
        table.add_row("A/B test", reports.ab_line(ab))
        for v in ab["variants"]:
            table.add_row(f"  variant {v['label']}", f"sent {v['sent']}, opens {v['unique_opens']} "
                                                     f"({v['open_rate'] * 100:.1f} %), clicks {v['unique_clicks']} "
                                                     f"({v['click_rate'] * 100:.1f} %), revenue {v['revenue']:.2f}")
    return table


def _line(f) -> str:
    ab = getattr(f, "ab_test", None)
    return (f"queued {f.pending}  sent {f.sent}  failed {f.failed}  suppressed {f.suppressed}  "
            f"bounced {f.bounced}  skipped {f.skipped}" + (f"  A/B {reports.ab_line(ab).split(' (')[0]}" if ab else ""))


@campaign_group.command("status")
@click.argument("campaign_id", type=int)
@click.option("--watch", is_flag=True, help="Follow progress live until the campaign finishes (Ctrl-C stops).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@pass_settings
def status_cmd(settings, campaign_id: int, watch: bool, as_json: bool) -> None:
    """Sent, failed, bounced, opens, clicks, unsubscribes, complaints and their rates."""
    estimate: dict = {}
    f, total = _snapshot(settings, campaign_id, estimate)
    if watch:
        f = _watch(settings, campaign_id, estimate)
    if as_json:
        click.echo(json.dumps({**f.as_dict(), "ab_test": getattr(f, "ab_test", None)}, indent=2, sort_keys=True))
    else:
        console.print(_figures_table(f))


def _watch(settings, campaign_id: int, estimate: dict):
    f, total = _snapshot(settings, campaign_id, estimate)
    try:
        if on_terminal():
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), console=err_console,
                          transient=False) as progress:
                task = progress.add_task(f"campaign {campaign_id}", total=total or None, completed=f.done,
                                         counts=_line(f))
                while f.status not in ("completed", "cancelled"):
                    time.sleep(WATCH_INTERVAL_S)
                    f, total = _snapshot(settings, campaign_id, estimate)
                    progress.update(task, total=total or None, completed=f.done,
                                    counts=f"{_line(f)}  [{f.status}]")
        else:
            last = None
            while True:
                line = f"{f.status}: {f.done}/{total} done  {_line(f)}"
                if line != last:
                    click.echo(line)
                    last = line
                if f.status in ("completed", "cancelled"):
                    break
                time.sleep(WATCH_INTERVAL_S)
                f, total = _snapshot(settings, campaign_id, estimate)
    except KeyboardInterrupt:
        pass
    return f


@campaign_group.command("report")
@click.argument("campaign_id", type=int)
@click.option("-o", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Write the self-contained HTML report here.")
@pass_settings
def report_cmd(settings, campaign_id: int, output: Path) -> None:
    """A self-contained HTML page: figures, a chart of opens and clicks over time, top links."""

    with db.session_scope(settings) as s:
        campaigns.finish_completed(s)  # a campaign whose deliveries all ended reads "completed", not "running"
        page = reports.html_report(s, campaign_id)
    output.write_text(page, encoding="utf-8")
    console.print(f"wrote {output}", highlight=False)


# -- mailto: unsubscribe requests ------------------------------------------------------------------
@main.group("unsubscribe")
def unsubscribe_group() -> None:
    """Unsubscribe requests that arrive by mail (the List-Unsubscribe mailto: address)."""


def _messages(paths: tuple[Path, ...]):
    for path in paths:
        if path.is_dir():
            # A Maildir: new/ and cur/ hold one message per file; a plain folder: its files.
            subdirs = [path / "new", path / "cur"] if (path / "new").is_dir() else [path]
            for sub in subdirs:
                for f in sorted(sub.iterdir()):
                    if f.is_file():
                        yield f
        else:
            yield path


@unsubscribe_group.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@pass_settings
def ingest_cmd(settings, paths: tuple[Path, ...]) -> None:
    """Apply unsubscribe requests from .eml files or Maildir folders (subject: unsubscribe <token>)."""

    done = ignored = 0
    for f in _messages(paths):
        with db.session_scope(settings) as s:
            result = tracking.unsubscribe_by_mail(s, settings, f.read_bytes())
        if result is None:
            ignored += 1
            err_console.print(f"{f}: no valid unsubscribe token in the subject; ignored", highlight=False)
        else:
            done += 1
    console.print(f"{done} unsubscribe requests applied, {ignored} messages ignored", highlight=False)
