"""Fault 6: two worker processes write one campaign into the same outbox folder at once.

``mailer worker -p 2`` (two real Dramatiq processes, two threads each, Redis broker)
sends a campaign through ``outbox://DIR``.  Four writers in two processes share one
folder: every Message-ID must be written exactly once, ``index.html`` must list every
mail (no writer's entry lost to another's rewrite), and no temporary file may be left.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from email.parser import BytesHeaderParser
from types import SimpleNamespace

import pytest

from mailer.delivery.compose import message_id
from tests.faults.harness import (
    FINISH_TIMEOUT_S,
    campaign_status,
    deliveries,
    prepare,
    send_campaign,
    wait_for,
    worker_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

RECIPIENTS = 300


def _start_mailer_worker(env: dict, log_dir) -> subprocess.Popen:
    """``mailer worker -p 2 -t 2`` in its own session (so its whole process group can be stopped)."""
    with open(log_dir / "mailer-worker.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "mailer.cli", "worker", "-p", "2", "-t", "2",
                                 "--worker-shutdown-timeout", "3000"],
                                cwd=log_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_two_worker_processes_write_every_message_id_into_the_outbox_exactly_once(pg_schema, redis_url, fault_dir):
    # Given a campaign to 300 consenting customers whose transport is an outbox folder
    outbox = fault_dir / "outbox"
    transport = SimpleNamespace(url=f"outbox://{outbox}")
    settings, stage, env_kwargs = prepare(fault_dir, database_url=pg_schema.url(), broker_url=redis_url,
                                          sink=transport, consenting=RECIPIENTS)
    log_dir = fault_dir / "logs"
    worker = _start_mailer_worker(worker_env(database_url=pg_schema.url(), **env_kwargs), log_dir)
    try:
        # When the campaign is sent through `mailer worker -p 2` (two processes, two threads each)
        send_campaign(settings, stage.campaign_id)
        # Then it completes
        wait_for(lambda: campaign_status(settings, stage.campaign_id)[0] == "completed", FINISH_TIMEOUT_S,
                 0.5, "the campaign to complete")
    except AssertionError:
        print((log_dir / "mailer-worker.log").read_text(errors="replace")[-5000:])
        print(campaign_status(settings, stage.campaign_id))
        raise
    finally:
        _stop(worker)
    status, by_status = campaign_status(settings, stage.campaign_id)
    assert status == "completed" and by_status == {"sent": RECIPIENTS}
    # And the folder holds every delivery's Message-ID exactly once
    parser = BytesHeaderParser()
    emls = [p for p in outbox.glob("*.eml") if not p.name.startswith(".")]
    counts = collections.Counter(parser.parsebytes(p.read_bytes())["Message-ID"] for p in emls)
    expected = {message_id(settings, row.id) for row in deliveries(settings, stage.campaign_id)}
    assert set(counts) == expected
    assert [mid for mid, n in counts.items() if n != 1] == []
    # And index.html lists every mail, each linking its own .eml
    index = (outbox / "index.html").read_text(encoding="utf-8")
    assert index.count("<tr>") == len(emls) + 1
    assert all(f'href="{p.name}"' in index for p in emls)
    # And no writer left a temporary file behind; the images are next to the mails
    assert list(outbox.glob(".tmp-*")) == []
    assert list((outbox / "assets").glob("*.png"))
