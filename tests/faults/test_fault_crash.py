"""Fault 1: workers killed with SIGKILL in the middle of a 2,000-recipient campaign.

Two real ``dramatiq`` worker processes send the campaign; one is killed with kill -9,
then the other, and a new one is started.  At the end every consenting recipient got
exactly one message (counted by Message-ID at the SMTP server) apart from at most one
duplicate per kill, nobody without consent got anything, the campaign is complete,
and every message's two DKIM signatures verify with dkimpy.

Each worker process runs one thread: the duplicate window is one message per thread
(a crash between the relay's "250 OK" and the commit that records it), so with one
thread per process "at most one duplicate per kill" is exactly the guarantee.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import pytest

from mailer.delivery.compose import message_id
from tests.dkim_support import dkim_settings, verify_all
from tests.faults.harness import duplicates, recipients

pytestmark = [pytest.mark.slow, pytest.mark.smtp, pytest.mark.postgres]

CONSENTING = 2000
WITHOUT = 100


def test_kill9_twice_mid_campaign_loses_nothing_and_duplicates_at_most_one_per_kill(fault, fault_dir):
    # Given a campaign to 2,000 consenting customers (and 100 who never consented), DKIM-signed,
    # and two workers of one thread each
    run = fault(consenting=CONSENTING, without=WITHOUT, threads=1, settings=dkim_settings(fault_dir))
    with run.live():
        a, b = run.workers.start(), run.workers.start()
        # When the campaign is sent and worker A is killed with SIGKILL a quarter of the way in
        run.send()
        run.wait_received(CONSENTING // 4, "a quarter of the campaign")
        run.workers.kill9(a)
        at_first_kill = run.received()
        # And worker B is killed the same way past half way, and a new worker C takes over
        run.wait_received(at_first_kill + CONSENTING // 4, "half the campaign")
        run.workers.kill9(b)
        at_second_kill = run.received()
        run.workers.start()
        # Then the campaign completes
        run.wait_completed()
    status, by_status = run.status()
    print(f"kills at {at_first_kill} and {at_second_kill} received; final {by_status}")
    assert status == "completed" and by_status == {"sent": CONSENTING}
    # And every consenting recipient got their message exactly once, apart from at most
    # one duplicate per kill (counted by Message-ID at the SMTP server)
    counts = run.message_ids()
    rows = run.deliveries()
    assert {r.customer_id for r in rows} == set(run.consenting)
    expected = {message_id(run.settings, r.id) for r in rows}
    assert {r.message_id for r in rows} == expected
    assert set(counts) == expected
    twice = duplicates(counts)
    print(f"duplicates: {twice}")
    assert twice <= 2
    # And nobody without consent got anything
    got = recipients(run.sink)
    assert not set(run.without.values()) & set(got)
    # And every message carries two DKIM signatures that dkimpy verifies (dkimpy's
    # pure-Python RSA needs ~20 ms per signature: spread over both cores)
    received = list(run.sink.received)
    with ProcessPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(verify_all, [r.raw for r in received], [fault_dir] * len(received),
                                chunksize=50))
    bad = [i for i, res in enumerate(results) if res != [("ed25519-sha256", True), ("rsa-sha256", True)]]
    assert bad == [], f"{len(bad)} of {len(received)} messages failed DKIM verification, e.g. {results[bad[0]]}"
