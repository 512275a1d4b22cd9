"""``mailer templates check`` and ``mailer preview KIND --locale L [--data JSON] [-o file.html]``.

``templates check`` compiles and renders every kind x locale with its sample data
(and once more with only the required fields), and reports every problem with its
file and line; CI runs it.  ``preview`` writes the HTML and the plain-text part of
one mail for a person to look at.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from mailer.cli.base import EXIT_REJECTED, check_locale, console, err_console, main, parse_json_or_file, pass_settings
from mailer.rendering import Renderer, check_templates, preview_context


@main.group("templates")
def templates_group() -> None:
    """Notice and newsletter templates (templates/<kind>/<locale>.mjml)."""


@templates_group.command("check")
@click.option("--kind", "kinds", multiple=True, help="Only this kind (repeatable), e.g. order_delayed.")
@click.option("--locale", "locales", multiple=True, help="Only this locale (repeatable), e.g. zh-TW.",
              callback=check_locale)
@pass_settings
def check_cmd(settings, kinds: tuple[str, ...], locales: tuple[str, ...]) -> None:
    """Render every kind x locale with its sample data; exit 1 and list every problem."""
    renderer = Renderer(settings)
    problems = check_templates(renderer, kinds or None, locales or None)
    checked_kinds = list(kinds) or renderer.kinds()
    if problems:
        # One line per problem, compiler style (path:line: ...), so editors and CI logs link to it.
        for p in problems:
            where = f"{_short(p.file, settings)}{':' + str(p.line) if p.line else ''}: " if p.file else ""
            err_console.print(f"{where}{p.kind}{' [' + p.locale + ']' if p.locale else ''}: {p.message}",
                              markup=False, highlight=False, soft_wrap=True)
        err_console.print(f"{len(problems)} template problem(s)", markup=False, highlight=False)
        raise SystemExit(EXIT_REJECTED)
    pairs = sum(len([loc for loc in renderer.spec(k).locales if not locales or loc in locales])
                for k in checked_kinds)
    console.print(f"templates ok: {len(checked_kinds)} kinds, {pairs} kind x locale pairs rendered "
                  f"({renderer.compiles} compiles)")


def _short(path: str | None, settings) -> str:
    if not path:
        return ""
    try:
        return str(Path(path).resolve().relative_to(Path(settings.templates_dir).resolve().parent))
    except ValueError:
        return path


@main.command("preview")
@click.argument("kind")
@click.option("--locale", default="en", show_default=True, help="Locale (fallback applies: zh-HK -> zh-TW).",
              callback=check_locale)
@click.option("--data", "data", default=None,
              help="Template data as a JSON object, or @file.json (default: the kind's sample.json).")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write; the text part goes next to it as .txt "
                   "(default: preview/<kind>.<locale>.html).")
@click.option("--currency", default=None, help="Recipient currency for money (ISO 4217, e.g. PLN, KRW).")
@click.option("--first-name", "first_name", default=None, help="Recipient first name (default: a sample name).")
@click.option("--timezone", default=None, help="Recipient time zone (IANA, e.g. Asia/Taipei).")
@pass_settings
def preview_cmd(settings, kind: str, locale: str, data: str | None, output: Path | None, currency: str | None,
                first_name: str | None, timezone: str | None) -> None:
    """Render KIND for one locale and write the HTML and the plain-text part."""
    renderer = Renderer(settings)
    payload = parse_json_or_file(data, option="--data")
    if payload is None:
        payload = renderer.sample(kind)
    ctx = preview_context(settings, locale, currency=currency, first_name=first_name, timezone=timezone)
    rendered = renderer.render(kind, locale, payload, context=ctx)
    if output is None:
        output = Path("preview") / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', kind)}.{rendered.locale}.html"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(rendered.html, encoding="utf-8")
    text_path = output.with_suffix(".txt")
    text_path.write_text(f"Subject: {rendered.subject}\nPreheader: {rendered.preheader}\n\n{rendered.text}",
                         encoding="utf-8")
    console.print(f"[bold]{kind}[/] in [bold]{rendered.locale}[/]"
                  + (f" (asked for {locale})" if rendered.locale != locale else ""), highlight=False)
    console.print(f"subject:   {rendered.subject}", highlight=False, markup=False)
    console.print(f"preheader: {rendered.preheader}", highlight=False, markup=False)
    console.print(f"html:      {output} ({len(rendered.html.encode('utf-8')):,} bytes)", highlight=False)
    console.print(f"text:      {text_path}", highlight=False)
