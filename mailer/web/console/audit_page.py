"""Console: the audit log (compliance and admin): view with filters, export as CSV.

* ``GET /console/audit``             entries newest first, filtered by action, actor and date,
                                     keyset-paginated (``before=<seq>``), with the chain check.
* ``GET /console/audit/export.csv``  the same filters, every matching entry, streamed as CSV
                                     (spreadsheet-safe cells, :mod:`mailer.csvsafe`).

Reads only: the log is written by :func:`mailer.audit.record` and nobody edits it
(the database's guard triggers refuse UPDATE and DELETE).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from mailer import audit, csvsafe
from mailer.clock import utcnow
from mailer.compliance.ledger import parse_filters
from mailer.errors import ValidationError
from mailer.web.console.auth import ConsoleUser, require
from mailer.web.console.render import render
from mailer.web.deps import get_mailer

router = APIRouter()

#: Entries on one page.
PAGE_ROWS = 50
#: Entries fetched per round trip while exporting.
EXPORT_BATCH_ROWS = 1000
CSV_COLUMNS = ("seq", "occurred_at", "actor", "action", "target", "detail", "ip", "prev_hash", "hash")


def _filters(action: str | None, actor: str | None, since: str | None, until: str | None):
    action = (action or "").strip() or None
    if action is not None and action not in audit.ACTIONS:
        raise ValidationError(f"action: one of {', '.join(audit.ACTIONS)}", field="action")
    actor = (actor or "").strip().lower() or None
    dates = parse_filters(None, None, since, until)
    return action, actor, dates.since, dates.until


def _matching(session, action, actor, since, until, *, before: int | None, limit: int) -> list:
    # audit.entries pages by seq (keyset); the actor filter is applied here, and pages
    # are refilled until full so a rare actor still gives full pages.
    out, cursor = [], before
    while len(out) < limit:
        batch = list(audit.entries(session, action=action, since=since, until=until, limit=EXPORT_BATCH_ROWS,
                                   before_seq=cursor))
        if not batch:
            break
        out += [e for e in batch if actor is None or e.actor.lower() == actor]
        cursor = batch[-1].seq
    return out[:limit]


@router.get("/audit")
def audit_page(request: Request, *, action: Annotated[str | None, Query(max_length=50)] = None,
               actor: Annotated[str | None, Query(max_length=320)] = None, since: Annotated[str | None, Query(max_length=40)] = None,
               until: Annotated[str | None, Query(max_length=40)] = None, before: Annotated[int | None, Query(ge=1)] = None,
               user: Annotated[ConsoleUser, Depends(require("audit"))]):
    form = {"action": action or "", "actor": actor or "", "since": since or "", "until": until or ""}
    ctx = {"form": form, "actions": audit.ACTIONS, "rows": [], "next_before": None, "error": None, "chain": None}
    try:
        action_, actor_, since_, until_ = _filters(action, actor, since, until)
    except ValidationError as exc:
        ctx["error"] = str(exc)
        return render(request, user, "console/audit/list.html", ctx, status_code=422)
    with get_mailer(request).session() as s:
        rows = _matching(s, action_, actor_, since_, until_, before=before, limit=PAGE_ROWS + 1)
        ctx["next_before"] = rows[PAGE_ROWS - 1].seq if len(rows) > PAGE_ROWS else None
        ctx["rows"] = [{"seq": e.seq, "occurred_at": e.occurred_at, "actor": e.actor, "action": e.action,
                        "target": e.target, "detail": json.dumps(e.detail, ensure_ascii=False, sort_keys=True)
                        if e.detail is not None else "", "ip": e.ip or ""} for e in rows[:PAGE_ROWS]]
        ctx["chain"] = audit.verify(s)
        return render(request, user, "console/audit/list.html", ctx)


def _csv(settings, action, actor, since, until, mailer_app) -> Iterator[bytes]:
    buf = io.StringIO()
    w = csvsafe.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    with mailer_app.session() as s:
        cursor = None
        while True:
            batch = list(audit.entries(s, action=action, since=since, until=until, limit=EXPORT_BATCH_ROWS,
                                       before_seq=cursor))
            if not batch:
                break
            for e in batch:
                if actor is None or e.actor.lower() == actor:
                    w.writerow([e.seq, e.occurred_at.isoformat(), e.actor, e.action, e.target,
                                json.dumps(e.detail, ensure_ascii=False, sort_keys=True) if e.detail is not None
                                else "", e.ip or "", e.prev_hash, e.hash])
            cursor = batch[-1].seq
            yield buf.getvalue().encode("utf-8")
            buf.seek(0)
            buf.truncate()
    rest = buf.getvalue()
    if rest:
        yield rest.encode("utf-8")


@router.get("/audit/export.csv")
def audit_export(request: Request, *, action: Annotated[str | None, Query(max_length=50)] = None,
                 actor: Annotated[str | None, Query(max_length=320)] = None, since: Annotated[str | None, Query(max_length=40)] = None,
                 until: Annotated[str | None, Query(max_length=40)] = None, user: Annotated[ConsoleUser, Depends(require("audit"))]):
    try:
        action_, actor_, since_, until_ = _filters(action, actor, since, until)
    except ValidationError as exc:
        form = {"action": action or "", "actor": actor or "", "since": since or "", "until": until or ""}
        return render(request, user, "console/audit/list.html",
                      {"form": form, "actions": audit.ACTIONS, "rows": [], "next_before": None,
                       "error": str(exc), "chain": None}, status_code=422)
    mailer_app = get_mailer(request)
    name = f"audit-log-{utcnow():%Y%m%dT%H%M%SZ}.csv"
    return StreamingResponse(_csv(mailer_app.settings, action_, actor_, since_, until_, mailer_app),
                             media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{name}"',
                                      "Cache-Control": "no-store"})
