"""``/console/templates``: every kind and newsletter x locale, rendered, with the ``templates check`` result.

The check is :func:`mailer.rendering.check_templates` (the code of ``mailer templates
check``); previews render the kind's sample data with :func:`mailer.rendering.preview_context`
(as ``mailer preview`` does) and are served as raw HTML under ``/console/frames/templates``
for an ``<iframe sandbox>`` (see :mod:`mailer.web.console.campaigns` on frames).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from markupsafe import escape

from mailer.errors import TemplateError, ValidationError
from mailer.rendering import check_templates, preview_context
from mailer.rendering.kinds import SUPPORTED_LOCALES
from mailer.web.console.auth import ConsoleUser, require
from mailer.web.console.render import render

router = APIRouter()


def _render(renderer, settings, kind: str, locale: str):
    return renderer.render(kind, locale, renderer.sample(kind), context=preview_context(settings, locale))


@router.get("/templates", include_in_schema=False)
def template_list(request: Request, user: Annotated[ConsoleUser, Depends(require("templates"))],
                  kind: str = "", locale: str = "en"):
    m = request.app.state.mailer
    kinds = m.renderer.kinds()
    problems = check_templates(m.renderer)
    by_pair: dict[tuple[str, str | None], list] = {}
    for p in problems:
        by_pair.setdefault((p.kind, p.locale), []).append(p)
    rows = []
    for k in kinds:
        spec = m.renderer.spec(k)
        rows.append({"kind": k, "spec": spec, "locales": spec.locales,
                     "kind_problems": by_pair.get((k, None), []),
                     "problems": {loc: by_pair.get((k, loc), []) for loc in spec.locales}})
    selected = kind if kind in kinds else ""
    locale = locale if locale in SUPPORTED_LOCALES else "en"
    rendered, error = None, None
    if selected:
        try:
            rendered = _render(m.renderer, m.settings, selected, locale)
        except (TemplateError, ValidationError) as exc:
            error = str(exc)
    return render(request, user, "console/templates/list.html",
                  {"rows": rows, "problems": problems, "selected": selected, "locale": locale,
                   "rendered": rendered, "error": error, "pairs": sum(len(r["locales"]) for r in rows)})


@router.get("/frames/templates", include_in_schema=False)
def template_frame(request: Request, user: Annotated[ConsoleUser, Depends(require("templates"))],
                   kind: str = "", locale: str = "en"):
    """One kind in one locale with its sample data, as raw HTML for a sandboxed frame."""
    m = request.app.state.mailer
    if kind not in m.renderer.kinds():
        return HTMLResponse("<p>unknown template</p>", status_code=404)
    try:
        rendered = _render(m.renderer, m.settings, kind, locale if locale in SUPPORTED_LOCALES else "en")
    except (TemplateError, ValidationError) as exc:
        return HTMLResponse(f"<p>{escape(str(exc))}</p>", status_code=422)
    return HTMLResponse(rendered.html)
