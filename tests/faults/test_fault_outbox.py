"""Fault 6: two worker processes write one campaign into the same outbox folder at once.

``mailer worker -p 2`` (two real Dramatiq processes, two threads each, Redis broker)
sends a campaign through ``outbox://DIR``.  Four writers in two processes share one
folder: every Message-ID must be written exactly once, ``index.html`` must list every
mail (no writer's entry lost to another's rewrite), and no temporary file may be left.
"""

from __future__ import annotations

import collections
from email.parser import BytesHeaderParser

import pytest

from mailer.delivery.compose import message_id

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

RECIPIENTS = 300


def test_two_worker_processes_write_every_message_id_into_the_outbox_exactly_once(fault, fault_dir):
    # Given a campaign to 300 consenting customers whose transport is an outbox folder
    outbox = fault_dir / "outbox"
    run = fault(consenting=RECIPIENTS, threads=2, transport_url=f"outbox://{outbox}")
    with run.live():
        # When the campaign is sent through `mailer worker -p 2` (two processes, two threads each)
        run.workers.start_mailer_worker(processes=2)
        run.send()
        # Then it completes
        run.wait_completed()
    status, by_status = run.status()
    assert status == "completed" and by_status == {"sent": RECIPIENTS}
    # And the folder holds every delivery's Message-ID exactly once
    parser = BytesHeaderParser()
    emls = [p for p in outbox.glob("*.eml") if not p.name.startswith(".")]
    counts = collections.Counter(parser.parsebytes(p.read_bytes())["Message-ID"] for p in emls)
    expected = {message_id(run.settings, row.id) for row in run.deliveries()}
    assert set(counts) == expected
    assert [mid for mid, n in counts.items() if n != 1] == []
    # And index.html lists every mail, each linking its own .eml
    index = (outbox / "index.html").read_text(encoding="utf-8")
    assert index.count("<tr>") == len(emls) + 1
    assert all(f'href="{p.name}"' in index for p in emls)
    # And no writer left a temporary file behind; the images are next to the mails
    assert list(outbox.glob(".tmp-*")) == []
    assert list((outbox / "assets").glob("*.png"))
