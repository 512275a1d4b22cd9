"""Campaign fan-out on the ``bulk`` queue: segment -> deliveries -> ``send_batch`` messages.

``fan_out(campaign_id)`` streams the campaign's segment in keyset batches (customer-id
order, from the campaign's ``cursor``).  Each batch is one transaction that

1. inserts one delivery per recipient with idempotency key ``campaign:<id>:<customer>``
   (``INSERT ... ON CONFLICT DO NOTHING``: a recipient never gets two deliveries), and
2. advances ``campaigns.cursor`` to the batch's last customer id, but only if the cursor
   is still where this step read it and the campaign is still running (an optimistic
   check: a second fan-out running concurrently, or a pause, makes this step roll back).

Only after the commit are the new deliveries enqueued, ``settings.batch_size`` ids per
``send_batch`` message.  A worker killed at any point resumes from the committed cursor
(the sweeper hook restarts a fan-out that stopped beating): batches before it were
committed with their deliveries, batches after it were not, so nobody is skipped and
nobody gets a second delivery; deliveries whose message was lost are re-enqueued by the
sweeper from the database.

Local-time campaigns create ``scheduled`` deliveries whose ``send_after`` is the
recipient's next HH:MM; their messages are enqueued with a matching delay, and the
sweeper enqueues them again when due if a message is lost.

A campaign with an A/B test (:mod:`mailer.campaigns.abtest`) is fanned out twice: first
only the test share, each recipient with their variant; after the decision, from the
start again with the winner (the test share is skipped by the idempotency key).

One message fans out at most :data:`BATCHES_PER_MESSAGE` batches and then enqueues its
own continuation, so a pause takes effect between batches and no actor runs long.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from datetime import datetime

from sqlalchemy import update

from mailer import segments
from mailer.campaigns import abtest
from mailer.campaigns import service as campaigns
from mailer.clock import utcnow
from mailer.db import dialect_insert
from mailer.errors import ControlFlow, SegmentError
from mailer.models import Campaign, CampaignStatus, Delivery, DeliveryStatus
from mailer.queue import port
from mailer.queue.port import QUEUE_BULK

log = logging.getLogger("mailer.campaigns")

#: Recipients read from the segment per transaction.
FANOUT_BATCH = 500
#: Batches one fan-out message handles before it re-enqueues itself.
BATCHES_PER_MESSAGE = 20


class _Lost(ControlFlow):
    """Another fan-out advanced the cursor first, or the campaign stopped running."""


def fan_out_batch(app, campaign_id: int, *, batch_size: int | None = None, now: datetime | None = None) -> bool:
    """Fan out one batch; True if there may be more, False when done, paused or lost."""

    settings = app.settings
    batch_size = batch_size or FANOUT_BATCH
    now = now or utcnow()
    test_ends = None
    try:
        with app.session() as s:
            c = s.get(Campaign, campaign_id)
            if c is None or c.status is not CampaignStatus.running or c.fanout_done:
                return False
            try:
                segment = segments.load(settings, c.segment)
            except SegmentError as exc:
                broken = exc
            else:
                broken = None
            if broken is not None:
                # The segment file was removed or broken after the campaign was created:
                # stop here (paused, nothing more is sent) rather than retry forever.
                campaigns.pause(s, campaign_id, actor="fanout:segment-broken")
                log.error("campaign %s paused: its segment %r cannot be loaded: %s; fix the segment file and "
                          "run: mailer campaign resume %s", campaign_id, c.segment, broken, campaign_id)
                return False
            pages = segments.stream(s, settings, segment, after_id=c.cursor, batch_size=batch_size, now=now)
            try:
                batch = next(pages, [])
            finally:
                pages.close()
            start_cursor = c.cursor
            test = abtest.plan(s, c)
            if not batch:
                res = s.execute(update(Campaign)
                                .where(Campaign.id == campaign_id, Campaign.cursor == start_cursor,
                                       Campaign.status == CampaignStatus.running)
                                .values(fanout_done=True, fanout_heartbeat_at=now)
                                .execution_options(synchronize_session=False))
                if res.rowcount != 1:
                    raise _Lost()
                if test is not None:
                    test_ends = abtest.test_share_out(s, campaign_id, now=now)
                log.info("campaign %s: fan-out done", campaign_id)
                created, last = [], True
            else:
                rows = [row for row in (_row(settings, c, r, now, test) for r in batch) if row is not None]
                # One statement per batch, built once per dialect: a recipient who already has
                # this campaign's delivery (unique idempotency key) is skipped, never given a
                # second one; the rows go as a parameter list, which SQLAlchemy's
                # "insertmanyvalues" sends as multi-row INSERTs from one cached compilation.
                created = s.execute(_insert_deliveries(s.get_bind().dialect.name), rows).all() if rows else []
                new_cursor = batch[-1].customer_id
                last = len(batch) < batch_size  # a short page is the segment's end
                # The checkpoint commits with the batch's deliveries, or neither does.
                res = s.execute(update(Campaign)
                                .where(Campaign.id == campaign_id, Campaign.cursor == start_cursor,
                                       Campaign.status == CampaignStatus.running)
                                .values(cursor=new_cursor, fanout_heartbeat_at=now, fanout_done=last)
                                .execution_options(synchronize_session=False))
                if res.rowcount != 1:
                    raise _Lost()
                if last and test is not None:
                    test_ends = abtest.test_share_out(s, campaign_id, now=now)
    except _Lost:
        log.info("campaign %s: fan-out step lost the cursor race or the campaign stopped; this chain ends",
                 campaign_id)
        return False
    enqueue_created(app, created, now=now)
    if test_ends is not None:
        abtest.schedule_decision(campaign_id, test_ends, now=now)
    if last and batch:
        log.info("campaign %s: fan-out done", campaign_id)
    return not last


@functools.lru_cache(maxsize=4)
def _insert_deliveries(dialect: str):
    """``INSERT ... ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, status, send_after``
    on the deliveries table, built once per dialect.

    A Core statement on the table executed with a list of rows: the ORM's multi-row
    ``insert(Delivery).values(rows)`` compiled a new statement for every batch (a VALUES
    clause of 500 rows x 16 columns), 12 to 13 times the CPU per row on SQLite and 3.7 times
    on PostgreSQL of this one, whose compilation is cached (docs/benchmarks.md, "third pass")."""
    table = Delivery.__table__
    return (dialect_insert(dialect, table).on_conflict_do_nothing(index_elements=["idempotency_key"])
            .returning(table.c.id, table.c.status, table.c.send_after))


def _row(settings, campaign: Campaign, r, now: datetime, test: abtest.Plan | None = None) -> dict | None:
    """The delivery row for one recipient; None when an A/B test leaves them out of this pass."""
    kind, variant, start = campaign.template, None, campaign.started_at or now
    if test is not None:
        picked = test.variant_for(campaign.id, r.customer_id)
        if picked is None:
            return None
        variant, kind = picked
        start = test.decided_at or start  # the rest goes out at the same local time, after the decision
    if campaign.local_time:
        send_after = campaigns.next_local_time(start, campaign.local_time, r.timezone, settings)
        status = DeliveryStatus.scheduled
    else:
        send_after, status = None, DeliveryStatus.queued
    return dict(idempotency_key=f"campaign:{campaign.id}:{r.customer_id}", kind=kind, variant=variant,
                campaign_id=campaign.id, customer_id=r.customer_id, to_address=r.email, to_hash=r.email_hash,
                locale=r.locale or settings.default_locale, data={}, purpose=campaign.purpose, queue=QUEUE_BULK,
                status=status, attempts=0, send_after=send_after, created_at=now, updated_at=now)


def enqueue_created(app, created, *, now: datetime | None = None) -> None:
    """Send ``send_batch`` messages for new deliveries: queued at once, scheduled with a delay."""
    now = now or utcnow()
    size = max(1, app.settings.batch_size)
    queued = [row[0] for row in created if row[1] == DeliveryStatus.queued or row[1] == "queued"]
    later: dict[datetime, list[int]] = defaultdict(list)
    for row in created:
        if row[1] in (DeliveryStatus.scheduled, "scheduled") and row[2] is not None:
            later[row[2]].append(row[0])
    if not port.enqueue_batches(queued, size):
        return
    for when, ids in sorted(later.items()):
        if not port.enqueue_batches(ids, size, delay_ms=max(0, int((when - now).total_seconds() * 1000))):
            return


def enqueue_queued(app, campaign_id: int) -> int:
    """Enqueue every queued delivery of a campaign (after resume); returns how many."""
    size = max(1, app.settings.batch_size)
    total, after = 0, 0
    while True:
        with app.session() as s:
            ids = campaigns.queued_ids(s, campaign_id, after_id=after, limit=size)
        if not ids:
            return total
        port.send(port.SEND_BATCH, ids)
        total += len(ids)
        after = ids[-1]


def start_if_due(app, campaign_id: int, *, now: datetime | None = None) -> bool:
    """A scheduled campaign whose send_at has come starts running (conditional UPDATE)."""
    now = now or utcnow()
    with app.session() as s:
        res = s.execute(update(Campaign)
                        .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.scheduled,
                               Campaign.send_at <= now)
                        .values(status=CampaignStatus.running, started_at=now, fanout_heartbeat_at=now)
                        .execution_options(synchronize_session=False))
        return res.rowcount == 1


def start(app, campaign_id: int) -> None:
    """Enqueue the fan-out of a campaign just sent (now, or delayed until its send_at)."""
    with app.session() as s:
        c = campaigns.get(s, campaign_id)
        delay_ms = 0
        if c.status is CampaignStatus.scheduled and c.send_at is not None:
            delay_ms = max(0, int((c.send_at - utcnow()).total_seconds() * 1000))
    # Broker down: the campaign is committed as running (or scheduled); the sweep hook
    # starts a due campaign and restarts a fan-out whose heartbeat went stale.
    port.enqueue_stored(port.FAN_OUT, campaign_id, delay_ms=delay_ms or None)


def fan_out_step(app, campaign_id: int) -> bool:
    """One ``fan_out`` message's work: up to BATCHES_PER_MESSAGE batches; True when it must continue."""
    start_if_due(app, campaign_id)
    return all(fan_out_batch(app, campaign_id) for _ in range(BATCHES_PER_MESSAGE))


def sweep_hook(app) -> None:
    """Sweeper hook: start due campaigns, restart stalled fan-outs, release stray held
    deliveries of running campaigns, and mark finished campaigns completed."""
    with app.session() as s:
        started, stalled = campaigns.due_and_stalled(s, app.settings)
        stray = campaigns.held_in_running(s)
        for cid in stray:
            campaigns.release_held(s, cid)
        campaigns.finish_completed(s)
    for cid in started + stalled:
        port.enqueue_stored(port.FAN_OUT, cid)
    for cid in stray:
        enqueue_queued(app, cid)

