"""``mailer worker``: a thin wrapper over ``dramatiq mailer.worker.boot``."""

from __future__ import annotations

import os
import sys

import click

from mailer.cli.base import main, pass_settings
from mailer.queue.broker import QUEUES


@main.command("worker", context_settings={"ignore_unknown_options": True})
@click.option("--processes", "-p", default=None, type=int, help="Worker processes (default: CPU count).")
@click.option("--threads", "-t", default=None, type=int, help="Threads per process (MAILER_WORKER_THREADS).")
@click.option("--queues", "-Q", multiple=True, help=f"Queues to consume (default: {', '.join(QUEUES)}).")
@click.argument("dramatiq_args", nargs=-1, type=click.UNPROCESSED)
@pass_settings
def worker_cmd(settings, processes, threads, queues, dramatiq_args) -> None:
    """Run Dramatiq workers on the Redis broker (extra arguments go to dramatiq)."""
    args = [sys.executable, "-m", "dramatiq", "mailer.worker.boot",
            "--threads", str(threads or settings.worker_threads)]
    if processes:
        args += ["--processes", str(processes)]
    if queues:
        args += ["--queues", *queues]
    args += list(dramatiq_args)
    os.execvp(args[0], args)  # our interpreter runs dramatiq, arguments as a list, no shell  # nosec B606
