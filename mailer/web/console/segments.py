"""``/console/segments``: every segment with its live count, its definition in words and a sample.

Counts come from :func:`mailer.segments.count`, the code behind ``mailer segments show
--count``; the words from :func:`mailer.segments.describe`. Segments stay files
(``segments/<name>.toml``): the console reads them and never writes one.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from mailer import segments
from mailer.errors import SegmentError
from mailer.web.console.auth import ConsoleUser, require
from mailer.web.console.render import render

router = APIRouter()

#: Members shown on a segment's page.
SAMPLE_SIZE = 20


def _load_all(settings):
    out = []
    for path in segments.segment_files(settings):
        try:
            out.append((path.stem, segments.load(settings, path.stem), None))
        except SegmentError as exc:
            out.append((path.stem, None, str(exc)))
    return out


@router.get("/segments", include_in_schema=False)
def segment_list(request: Request, user: Annotated[ConsoleUser, Depends(require("segments"))]):
    m = request.app.state.mailer
    rows = []
    with m.session() as s:
        for name, seg, error in _load_all(m.settings):
            count = segments.count(s, m.settings, seg) if seg is not None else None
            rows.append({"name": name, "seg": seg, "error": error, "count": count,
                         "words": segments.describe(seg.conditions) if seg is not None else ""})
    return render(request, user, "console/segments/list.html", {"rows": rows})


@router.get("/segments/{name}", include_in_schema=False)
def segment_page(request: Request, name: str, user: Annotated[ConsoleUser, Depends(require("segments"))]):
    m = request.app.state.mailer
    known = {p.stem for p in segments.segment_files(m.settings)}
    if name not in known:
        return render(request, user, "console/segments/show.html", {"name": name, "missing": True}, status_code=404)
    ctx: dict = {"name": name, "missing": False, "error": None}
    try:
        seg = segments.load(m.settings, name)
        with m.session() as s:
            ctx.update({"seg": seg, "count": segments.count(s, m.settings, seg),
                        "locales": segments.locales(s, m.settings, seg),
                        "sample": segments.sample(s, m.settings, seg, SAMPLE_SIZE),
                        "words": segments.describe(seg.conditions)})
    except SegmentError as exc:
        ctx["error"] = str(exc)
    return render(request, user, "console/segments/show.html", ctx, status_code=422 if ctx["error"] else 200)
