"""Console: the consent ledger (compliance and admin).

* ``GET  /console/consent``           the ledger filtered by purpose, source and occurred date, newest first,
                                      keyset-paginated (``before=<seq>``).
* ``POST /console/consent/verify``    verify the chain and the derived state (mailer/consent/verify.py) and
                                      show the head hash, to record elsewhere.
* ``POST /console/consent/export``    a streamed download, CSV or JSONL: the bytes of ``mailer consent export``
                                      with the same purpose/since/until filters (audit ``consent.export``).
* ``GET  /console/consent/wordings``  every wording version with its SHA-256 and text.

The export has no source filter (neither has the CLI): a source chosen on the page
filters the listing only, and the export form says so.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import StreamingResponse

from mailer import audit
from mailer.clock import utcnow
from mailer.compliance import ledger as ledger_view
from mailer.consent import verify as consent_verify
from mailer.errors import ValidationError
from mailer.models import ConsentSource
from mailer.web.console.auth import ConsoleUser, require
from mailer.web.console.render import render
from mailer.web.deps import client_ip, get_mailer

router = APIRouter()

SOURCES = [s.value for s in ConsentSource]


def _form(purpose, source, since, until) -> dict:
    return {"purpose": purpose or "", "source": source or "", "since": since or "", "until": until or ""}


@router.get("/consent")
def ledger_page(request: Request, *, purpose: Annotated[str | None, Query(max_length=200)] = None,
                source: Annotated[str | None, Query(max_length=50)] = None, since: Annotated[str | None, Query(max_length=40)] = None,
                until: Annotated[str | None, Query(max_length=40)] = None, before: Annotated[int | None, Query(ge=1)] = None,
                user: Annotated[ConsoleUser, Depends(require("consent"))]):
    form = _form(purpose, source, since, until)
    try:
        filters = ledger_view.parse_filters(purpose, source, since, until)
    except ValidationError as exc:
        return render(request, user, "console/consent/ledger.html",
                      {"form": form, "page": None, "error": str(exc), "sources": SOURCES, "before": before},
                      status_code=422)
    with get_mailer(request).session() as s:
        page = ledger_view.page(s, filters, before_seq=before)
        return render(request, user, "console/consent/ledger.html",
                      {"form": form, "page": page, "error": None, "sources": SOURCES, "before": before})


@router.post("/consent/verify")
def verify(request: Request, *, user: Annotated[ConsoleUser, Depends(require("consent"))]):
    mailer_app = get_mailer(request)
    with mailer_app.session() as s:
        report = consent_verify.verify_db(s, mailer_app.settings)
    return render(request, user, "console/consent/verify.html",
                  {"report": report, "checked_at": utcnow()}, status_code=200)


@router.post("/consent/export")
def export(request: Request, *, format: Annotated[str, Form(max_length=10)] = "jsonl", purpose: Annotated[str, Form(max_length=200)] = "",
           since: Annotated[str, Form(max_length=40)] = "", until: Annotated[str, Form(max_length=40)] = "",
           user: Annotated[ConsoleUser, Depends(require("consent", write=True))]):
    mailer_app = get_mailer(request)
    try:
        filters = ledger_view.parse_filters(purpose, None, since, until)
        if format not in ("csv", "jsonl"):
            raise ValidationError(f"format: csv or jsonl, got {format!r}", field="format")
    except ValidationError as exc:
        return render(request, user, "console/consent/ledger.html",
                      {"form": _form(purpose, None, since, until), "page": None, "error": str(exc),
                       "sources": SOURCES, "before": None}, status_code=422)
    # The export is recorded before the first byte goes out (a download cut short was still asked for).
    with mailer_app.session() as s:
        audit.record(s, actor=user.email, action="consent.export", target="consent_events",
                     detail={"format": format, "purpose": filters.purpose,
                             "since": filters.since.isoformat() if filters.since else None,
                             "until": filters.until.isoformat() if filters.until else None},
                     ip=client_ip(request))
    name = f"consent-log-{utcnow():%Y%m%dT%H%M%SZ}.{format}"
    media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson; charset=utf-8"
    return StreamingResponse(ledger_view.stream_export(mailer_app.settings, fmt=format, filters=filters),
                             media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"',
                                                        "Cache-Control": "no-store"})


@router.get("/consent/wordings")
def wordings_page(request: Request, *, user: Annotated[ConsoleUser, Depends(require("consent"))]):
    with get_mailer(request).session() as s:
        rows = ledger_view.wordings(s)
        return render(request, user, "console/consent/wordings.html", {"wordings": rows})
