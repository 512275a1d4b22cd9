"""Deliveries from shops: stored once under their webhook id, processed durably, reported.

:func:`receive` runs in the HTTP request after the signature was checked: one
``INSERT ... ON CONFLICT DO NOTHING`` of the raw delivery (``uq_connector_webhooks_delivery``
makes a second one, also a concurrent one, a counted duplicate), commit, then
``port.enqueue_stored`` of ``process_shop_webhook`` by actor name with the row's id.  The
shop gets its 200 at once; nothing else (no parsing of the topic, no lookups) is on that path.

:func:`process` is that actor's work: it claims the row under a lease (one conditional
UPDATE: two workers never run one delivery at once), runs the topic's handler, and marks
it ``done`` (the body is dropped: personal data is not kept longer than needed) or
``failed`` with the reason.  Handlers publish with idempotency keys and record consent
only when it changes, so a second run changes nothing.  An error that may pass (the
database is away) leaves the row to be retried; the sweep hook re-enqueues rows whose
message was lost.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, case, func, or_, select, update

from mailer.app import App
from mailer.clock import utcnow
from mailer.connectors import privacy, shopify, woocommerce, writeback
from mailer.connectors.common import Ctx
from mailer.db import insert_or_ignore
from mailer.errors import ValidationError
from mailer.models import ConnectorWebhook
from mailer.queue import port

log = logging.getLogger("mailer.connectors")

#: Topic -> handler, per platform.
HANDLERS = {"shopify": {**shopify.TOPICS, **privacy.TOPICS}, "woocommerce": woocommerce.TOPICS}
#: A claimed delivery is someone's for this long (seconds); after that another worker may take it.
LEASE_S = 120
#: A pending delivery untouched this long (seconds) is re-enqueued by the sweep hook.
STALE_S = 60
#: Most deliveries re-enqueued per sweep.
SWEEP_BATCH = 500
#: Longest webhook id and topic kept.
MAX_WEBHOOK_ID_CHARS = 200
MAX_TOPIC_CHARS = 100


@dataclass(frozen=True)
class Receipt:
    """What :func:`receive` did: ``stored``, ``duplicate`` or ``ignored`` (an unmapped topic)."""

    outcome: str
    id: int | None


def is_mapped(platform: str, topic: str) -> bool:
    return topic in HANDLERS.get(platform, {})


#: dialect name -> the acknowledge path's INSERT, built once (its parameters bound per call,
#: so SQLAlchemy's compiled cache serves it without rebuilding a cache key from values).
_INSERTS: dict[str, object] = {}


def _insert_statement(session):
    name = session.get_bind().dialect.name
    stmt = _INSERTS.get(name)
    if stmt is None:
        table = ConnectorWebhook.__table__
        stmt = _INSERTS[name] = insert_or_ignore(session, table, index_elements=[
            "platform", "shop", "webhook_id"]).returning(table.c.id)
    return stmt


def receive(app: App, platform: str, shop: str, webhook_id: str, topic: str, raw: bytes) -> Receipt:
    """Store one verified delivery (once), then hand it to a worker by id.

    The acknowledge path is kept minimal: one ``INSERT ... ON CONFLICT DO NOTHING
    RETURNING id`` and its commit (a second statement only for a duplicate, to count it),
    then the enqueue after the commit.
    """
    webhook_id, topic = webhook_id[:MAX_WEBHOOK_ID_CHARS], topic[:MAX_TOPIC_CHARS]
    mapped = is_mapped(platform, topic)
    now = utcnow()
    with app.session() as s:
        # One statement: uq_connector_webhooks_delivery turns a second delivery (also a
        # concurrent one) into no row, without an exception and a second transaction.
        # Core on the session's connection: the ORM's bulk-insert machinery is not needed for one row.
        row_id = s.connection().execute(_insert_statement(s), dict(
            platform=platform, shop=shop, webhook_id=webhook_id, topic=topic,
            status="pending" if mapped else "ignored", attempts=0, duplicates=0,
            body=raw.decode("utf-8") if mapped else None,
            detail=None if mapped else "topic not mapped: acknowledged and counted",
            received_at=now, processed_at=None if mapped else now, lease_until=None)).scalar_one_or_none()
        if row_id is None:
            # The same delivery again (a retry, or two at once): count it on the first row
            # (one row of uq_connector_webhooks_delivery).
            s.execute(update(ConnectorWebhook).where(ConnectorWebhook.platform == platform,
                                                     ConnectorWebhook.shop == shop,
                                                     ConnectorWebhook.webhook_id == webhook_id)
                      .values(duplicates=ConnectorWebhook.duplicates + 1))
    if row_id is None:
        return Receipt("duplicate", None)
    if not mapped:
        return Receipt("ignored", row_id)
    port.enqueue_stored(port.PROCESS_SHOP_WEBHOOK, row_id)
    return Receipt("stored", row_id)


def _claim(app: App, row_id: int, now: datetime) -> ConnectorWebhook | None:
    with app.session() as s:
        # One conditional UPDATE: only a pending row, or one whose lease ran out, is taken.
        res = s.execute(update(ConnectorWebhook)
                        .where(ConnectorWebhook.id == row_id,
                               or_(ConnectorWebhook.status == "pending",
                                   and_(ConnectorWebhook.status == "processing",
                                        ConnectorWebhook.lease_until < now)))
                        .values(status="processing", lease_until=now + timedelta(seconds=LEASE_S),
                                attempts=ConnectorWebhook.attempts + 1)
                        .execution_options(synchronize_session=False))
        if not res.rowcount:
            return None
        row = s.get(ConnectorWebhook, row_id)
        s.expunge(row)
        return row


def _finish(app: App, row_id: int, status: str, detail: str) -> None:
    with app.session() as s:
        s.execute(update(ConnectorWebhook).where(ConnectorWebhook.id == row_id)
                  .values(status=status, detail=detail[:4000], lease_until=None, processed_at=utcnow(),
                          body=None if status == "done" else ConnectorWebhook.body))


def process(app: App, row_id: int, *, now: datetime | None = None) -> str | None:
    """Apply one stored delivery; its final status, or None when it is not ours to run now."""
    row = _claim(app, row_id, utcnow())
    if row is None:
        return None
    ctx = Ctx(app=app, platform=row.platform, shop=row.shop, webhook_id=row.webhook_id, topic=row.topic,
              now=now or utcnow())
    try:
        body = json.loads(row.body or "null")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        _finish(app, row_id, "failed", "the body is not a JSON object")
        return "failed"
    try:
        writeback.known_shop(app, row.platform, row.shop)
        HANDLERS[row.platform][row.topic](ctx, body)
    except ValidationError as exc:
        # The payload cannot become a valid event: retrying will not help.
        ctx.note(f"refused: {exc}")
        _finish(app, row_id, "failed", "; ".join(ctx.notes))
        log.warning("%s delivery %s (%s) failed: %s", row.platform, row.webhook_id, row.topic, exc)
        return "failed"
    except Exception:
        # Possibly passing (database away): release the lease so a retry can take it.
        with app.session() as s:
            s.execute(update(ConnectorWebhook).where(ConnectorWebhook.id == row_id)
                      .values(status="pending", lease_until=None))
        raise
    _finish(app, row_id, "done", "; ".join(ctx.notes) or "nothing to do")
    return "done"


def sweep_hook(app: App) -> None:
    """Re-enqueue deliveries whose message was lost (pending too long, or a lease run out)."""
    now = utcnow()
    with app.session() as s:
        # ix_connector_webhooks_status: pending/processing rows are few; oldest first.
        ids = s.execute(select(ConnectorWebhook.id)
                        .where(or_(and_(ConnectorWebhook.status == "pending",
                                        ConnectorWebhook.received_at < now - timedelta(seconds=STALE_S)),
                                   and_(ConnectorWebhook.status == "processing", ConnectorWebhook.lease_until < now)))
                        .order_by(ConnectorWebhook.received_at).limit(SWEEP_BATCH)).scalars().all()
    for row_id in ids:
        port.enqueue_stored(port.PROCESS_SHOP_WEBHOOK, row_id)


# -- mailer connect status --------------------------------------------------------------------------
@dataclass(frozen=True)
class TopicStatus:
    platform: str
    shop: str
    topic: str
    last_received_at: datetime
    deliveries: int
    failed: int
    pending: int
    ignored: int
    duplicates: int


def status(app: App) -> list[TopicStatus]:
    """Per shop and topic: the last delivery, how many failed, are waiting, were ignored or repeated."""
    c = ConnectorWebhook
    with app.session() as s:
        # One grouped pass over ix_connector_webhooks_shop_topic.
        rows = s.execute(select(c.platform, c.shop, c.topic, func.max(c.received_at), func.count(),
                                func.sum(case((c.status == "failed", 1), else_=0)),
                                func.sum(case((c.status.in_(("pending", "processing")), 1), else_=0)),
                                func.sum(case((c.status == "ignored", 1), else_=0)),
                                func.coalesce(func.sum(c.duplicates), 0))
                         .group_by(c.platform, c.shop, c.topic).order_by(c.platform, c.shop, c.topic)).all()
    return [TopicStatus(r[0], r[1], r[2], r[3], int(r[4]), int(r[5] or 0), int(r[6] or 0), int(r[7] or 0),
                        int(r[8] or 0)) for r in rows]

