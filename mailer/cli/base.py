"""The root ``mailer`` group, shared helpers, and how errors reach the terminal.

A :class:`~mailer.errors.MailerError` becomes ``error: <message>`` on stderr and exit
code 2 (1 is kept for "ran, but some input was rejected"), never a traceback.
"""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mailer import limits
from mailer.app import App, set_app
from mailer.errors import MailerError
from mailer.queue.broker import setup
from mailer.rendering.i18n import MAX_LOCALE_CHARS, is_valid_locale
from mailer.settings import Settings

#: The width Rich lays out for when the output is not a terminal (a pipe, a file, CI): wide
#: enough that no table cuts a name and no line wraps a command or a path.
OFF_TERMINAL_WIDTH_CHARS = 4000


def _console(*, stderr: bool = False) -> Console:
    """A console that never wraps a printed line (``soft_wrap``) and, off a terminal, lays out
    tables at their natural width instead of 80 columns."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, soft_wrap=True, width=None if stream.isatty() else OFF_TERMINAL_WIDTH_CHARS)


err_console = _console(stderr=True)
console = _console()


def fold_table(*headers: str, **kwargs) -> Table:
    """A Rich table whose columns fold long values onto more lines instead of cutting them off."""
    t = Table(**kwargs)
    for h in headers:
        t.add_column(h, overflow="fold")
    return t

#: Exit codes: 0 fine, 1 done but something was rejected, 2 refused (bad input / error).
EXIT_REJECTED = 1
EXIT_ERROR = 2


class MailerGroup(click.Group):
    """Turns mailer errors into one clear line instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MailerError as exc:
            # The message is escaped: "subject[pl]" or user text must not be read as Rich markup.
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True,
                              soft_wrap=True)
            sys.exit(EXIT_ERROR)


@click.group(cls=MailerGroup)
@click.version_option(package_name="mailer")
@click.pass_context
def main(ctx: click.Context) -> None:
    """mailer: consent-checked newsletters and transactional notices."""
    ctx.obj = Settings.from_env()


def settings_of(ctx: click.Context) -> Settings:
    return ctx.find_root().obj


pass_settings = click.make_pass_decorator(Settings)


def check_locale(ctx: click.Context, param: click.Parameter, value):
    """Click callback for every ``--locale``: the API's rule (:func:`mailer.i18n.is_valid_locale`).

    A bad value is a usage error naming the option (exit code 2) before anything runs.
    """
    for v in (value if isinstance(value, tuple) else (value,)):
        if v is not None and not is_valid_locale(v):
            raise click.BadParameter(f"{v[:40]!r} is not a locale (e.g. pl, zh-TW, pt_BR; language of 2-3 letters, "
                                     f"at most {MAX_LOCALE_CHARS} characters)", ctx=ctx, param=param)
    return value


def parse_json(value: str | None, *, option: str) -> dict:
    if not value:
        return {}
    try:
        data = json.loads(value, parse_constant=limits.reject_constant)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                                 param_hint=option) from exc
    except ValueError as exc:  # NaN / Infinity literals
        raise click.BadParameter(str(exc), param_hint=option) from exc
    except RecursionError:
        raise click.BadParameter("JSON nests too deeply", param_hint=option) from None
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object", param_hint=option)
    problems = limits.check(data, "data")
    if problems:
        raise click.BadParameter("; ".join(msg for _, msg in problems), param_hint=option)
    return data


def parse_json_or_file(value: str | None, *, option: str) -> dict | None:
    """A JSON object given inline, or as ``@path`` to a file holding it; None when absent."""
    if value is None:
        return None
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            value = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint=option) from exc
    return parse_json(value, option=option)


def setup_broker(settings: Settings):
    """Set up the broker the enqueue port sends through (Redis, or the stub for stub://); no actors here."""

    set_app(App(settings))
    return setup(settings)


def cli_actor() -> str:
    """Who the audit log names for a command run from the shell: ``cli:<login name>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry for the uid (containers)
        return "cli"


def on_terminal() -> bool:
    return sys.stderr.isatty()
