"""The consent ledger as the console browses it, and its export as a stream of bytes.

* :func:`page`: events filtered by purpose, source and occurred date, newest first,
  keyset-paginated on ``seq`` (``before_seq``), never OFFSET.
* :func:`stream_export`: the very bytes ``mailer consent export`` writes
  (:func:`mailer.consent.export.export`, the one implementation), produced in a thread
  with its own session and handed over in chunks through a bounded queue, so a large
  ledger streams to the browser in constant memory.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer import db
from mailer.consent import export as consent_export
from mailer.errors import ValidationError
from mailer.models import ConsentEvent, ConsentSource, Wording
from mailer.settings import Settings

#: Events on one page of the ledger browser.
PAGE_ROWS = 50
#: Characters handed to the HTTP response at a time.
CHUNK_CHARS = 64 * 1024
#: Chunks buffered between the exporting thread and the response.
QUEUE_CHUNKS = 16
#: Longest purpose accepted in a filter, characters (the column's width).
PURPOSE_MAX_CHARS = 100


@dataclass(frozen=True)
class Filters:
    purpose: str | None = None
    source: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def parse_filters(purpose: str | None, source: str | None, since: str | None, until: str | None) -> Filters:
    """Form values to filters; a bad one raises ValidationError naming its field."""
    purpose = (purpose or "").strip() or None
    if purpose is not None and len(purpose) > PURPOSE_MAX_CHARS:
        raise ValidationError(f"purpose: at most {PURPOSE_MAX_CHARS} characters", field="purpose")
    source = (source or "").strip() or None
    if source is not None and source not in {s.value for s in ConsentSource}:
        raise ValidationError(f"source: one of {', '.join(s.value for s in ConsentSource)}", field="source")
    return Filters(purpose, source, consent_export._parse_when((since or "").strip() or None, "since"),
                   consent_export._parse_when((until or "").strip() or None, "until"))


@dataclass
class Page:
    events: list[ConsentEvent]
    #: Pass as ``before_seq`` for the next (older) page; None on the last page.
    next_before: int | None


def page(session: Session, filters: Filters, *, before_seq: int | None = None, rows: int = PAGE_ROWS) -> Page:
    """One page of matching events, newest first."""
    t = ConsentEvent
    q = select(t)
    if filters.purpose:
        q = q.where(t.purpose == filters.purpose)
    if filters.source:
        q = q.where(t.source == ConsentSource(filters.source))
    if filters.since:
        q = q.where(t.occurred_at >= filters.since)
    if filters.until:
        q = q.where(t.occurred_at < filters.until)
    if before_seq is not None:
        q = q.where(t.seq < before_seq)
    # Keyset on the unique seq index walked backwards: each page costs the same, however
    # deep; one extra row says whether an older page exists.
    found = list(session.execute(q.order_by(t.seq.desc()).limit(rows + 1)).scalars())
    more = len(found) > rows
    found = found[:rows]
    return Page(found, found[-1].seq if more and found else None)


def wordings(session: Session) -> list[Wording]:
    """Every registered wording version with its hash, by wording, locale and time."""
    # A small table (versions × locales): read it whole.
    return list(session.execute(select(Wording).order_by(Wording.wording_id, Wording.locale,
                                                         Wording.registered_at, Wording.id)).scalars())


class _Closed(Exception):
    """The reader went away: stop exporting."""


class _QueueWriter:
    def __init__(self, q: queue.Queue, stop: threading.Event):
        self.q, self.stop, self.buf, self.size = q, stop, [], 0

    def write(self, text: str) -> None:
        self.buf.append(text)
        self.size += len(text)
        if self.size >= CHUNK_CHARS:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            chunk = "".join(self.buf).encode("utf-8")
            self.buf, self.size = [], 0
            while True:
                if self.stop.is_set():
                    raise _Closed
                try:
                    self.q.put(chunk, timeout=0.5)
                    return
                except queue.Full:
                    continue


_DONE = object()


def stream_export(settings: Settings, *, fmt: str, filters: Filters, email: str | None = None,
                  evidence: bool = True) -> Iterator[bytes]:
    """The bytes of ``mailer consent export --format FMT`` with the same filters, in chunks."""
    if fmt not in ("csv", "jsonl"):
        raise ValidationError(f"format: csv or jsonl, got {fmt!r}", field="format")
    q: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        writer = _QueueWriter(q, stop)
        try:
            with db.session_scope(settings) as s:
                consent_export.export(s, settings, writer, fmt=fmt, since=filters.since, until=filters.until,
                                      purpose=filters.purpose, email=email, evidence=evidence)
            writer.flush()
        except _Closed:
            return
        except BaseException as exc:  # handed to the reader, which re-raises it
            failure.append(exc)
        finally:
            while not stop.is_set():
                try:
                    q.put(_DONE, timeout=0.5)
                    break
                except queue.Full:
                    continue

    worker = threading.Thread(target=run, name="consent-export", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                break
            yield item
        if failure:
            raise failure[0]
    finally:
        stop.set()
        worker.join(timeout=5)


__all__ = ["Filters", "parse_filters", "page", "Page", "wordings", "stream_export"]
