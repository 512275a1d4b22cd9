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
import sqlalchemy as sa

from mailer import db
from mailer.delivery.compose import message_id
from mailer.models import Delivery
from tests.campaign_support import newsletter_templates
from tests.conftest import make_settings
from tests.dkim_support import dkim_settings, verify_all
from tests.faults.harness import (
    FINISH_TIMEOUT_S,
    Workers,
    campaign_stage,
    campaign_status,
    message_ids,
    recipients,
    send_campaign,
    wait_for,
    worker_env,
    write_segment,
)
from tests.smtp_sink import SMTPSink

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.smtp, pytest.mark.postgres]

CONSENTING = 2000
WITHOUT = 100


def test_kill9_twice_mid_campaign_loses_nothing_and_duplicates_at_most_one_per_kill(pg_schema, redis_url,
                                                                                     fault_dir):
    # Given a campaign to 2,000 consenting customers (and 100 who never consented)
    sink = SMTPSink().start()
    templates = newsletter_templates(fault_dir)
    segments = write_segment(fault_dir / "segments")
    dkim = dkim_settings(fault_dir)
    settings = make_settings(database_url=pg_schema.url(), broker_url=redis_url, smtp_url=sink.url,
                             templates_dir=templates, segments_dir=segments, secret_key="fault-test-secret",
                             **dkim)
    stage = campaign_stage(settings, fault_dir, consenting=CONSENTING, without=WITHOUT)
    workers = Workers(worker_env(database_url=pg_schema.url(), broker_url=redis_url, smtp_url=sink.url,
                                 templates_dir=templates, segments_dir=segments, **dkim),
                      fault_dir / "logs", threads=1)
    try:
        a, b = workers.start(), workers.start()
        # When the campaign is sent and worker A is killed with SIGKILL a quarter of the way in
        send_campaign(settings, stage.campaign_id)
        wait_for(lambda: len(sink.received) >= CONSENTING // 4, 120, what="a quarter of the campaign")
        workers.kill9(a)
        at_first_kill = len(sink.received)
        # And worker B is killed the same way past half way, and a new worker C takes over
        wait_for(lambda: len(sink.received) >= at_first_kill + CONSENTING // 4, 120, what="half the campaign")
        workers.kill9(b)
        at_second_kill = len(sink.received)
        workers.start()
        # Then the campaign completes
        wait_for(lambda: campaign_status(settings, stage.campaign_id)[0] == "completed", FINISH_TIMEOUT_S,
                 0.5, "the campaign to complete")
    except AssertionError:
        print(workers.logs())
        print(campaign_status(settings, stage.campaign_id))
        raise
    finally:
        workers.stop_all()
        sink.stop()
    status, by_status = campaign_status(settings, stage.campaign_id)
    print(f"kills at {at_first_kill} and {at_second_kill} received; final {by_status}")
    assert status == "completed" and by_status == {"sent": CONSENTING}
    # And every consenting recipient got their message exactly once, apart from at most
    # one duplicate per kill (counted by Message-ID at the SMTP server)
    counts = message_ids(sink)

    with db.session_scope(settings) as s:
        rows = s.execute(sa.select(Delivery.id, Delivery.customer_id, Delivery.message_id)
                         .where(Delivery.campaign_id == stage.campaign_id)).all()
    assert {r.customer_id for r in rows} == set(stage.consenting)
    expected = {message_id(settings, r.id) for r in rows}
    assert {r.message_id for r in rows} == expected
    assert set(counts) == expected
    duplicates = sum(n - 1 for n in counts.values())
    print(f"duplicates: {duplicates}")
    assert duplicates <= 2
    # And nobody without consent got anything
    got = recipients(sink)
    assert not set(stage.without.values()) & set(got)
    # And every message carries two DKIM signatures that dkimpy verifies (dkimpy's
    # pure-Python RSA needs ~20 ms per signature: spread over both cores)
    received = list(sink.received)
    with ProcessPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(verify_all, [r.raw for r in received], [fault_dir] * len(received),
                                chunksize=50))
    bad = [i for i, res in enumerate(results) if res != [("ed25519-sha256", True), ("rsa-sha256", True)]]
    assert bad == [], f"{len(bad)} of {len(received)} messages failed DKIM verification, e.g. {results[bad[0]]}"
