"""``/console/campaigns``: list, create, preview, test send, send / pause / resume / cancel, progress, report.

Every rule is the campaign service's (:mod:`mailer.campaigns.service`, the same code as
``mailer campaign ...``): creation validates subjects, preheaders and template text in the
sandbox and errors name their field; sending, pausing, resuming and cancelling go through
``service.send/pause/resume/cancel`` and the fan-out's ``start`` / ``enqueue_queued``, after
a confirmation page that states how many mails the action concerns. Each change is written
to the audit log (``mailer.audit.record``) in the same transaction.

A campaign's page shows its A/B test (state, each variant's figures, the decision and its
interval, "no winner" said plainly) and, when a brake paused it, which brake and the figures;
resuming such a campaign needs the marketer to tick that they have read why (the
``acknowledge_brake`` field), and the audit entry records the brake and its figures. The
report adds the attributed orders, revenue per currency, conversion rate and revenue per
recipient, per A/B variant too, the pauses and resumes, and the unsubscribe latency.

Preview frames are served under ``/console/frames/`` (raw mail HTML, its own CSP, shown in
``<iframe sandbox>``), so the mail's inline styles never loosen the console's own CSP.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from markupsafe import escape

from mailer import audit, segments
from mailer.campaigns import abtest, fanout, progress, reports
from mailer.campaigns import service as campaigns
from mailer.delivery import brakes
from mailer.errors import InvalidState, MailerError, NotFound, TemplateError, ValidationError
from mailer.models import CampaignStatus
from mailer.rendering.kinds import SUPPORTED_LOCALES
from mailer.web.console import charts, i18n
from mailer.web.console.auth import ConsoleUser, client_ip, require
from mailer.web.console.render import render

router = APIRouter()

#: ``variant[2].subject[*]`` / ``variant[1]`` / ``variant``: an A/B error's field, from the parser.
_VARIANT_FIELD = re.compile(r"^variant(?:\[(\d+)\])?(?:\.(subject|preheader|template))?")

#: Recipients shown as a segment's sample on the create form.
SAMPLE_SIZE = 5
#: Seconds between htmx polls of a sending campaign's progress.
POLL_INTERVAL_S = 2
#: Widths of the preview frames, CSS pixels (a phone, and the usual mail column).
FRAME_WIDTHS_PX = (375, 600)
#: Most characters kept of any one form field (everything else is bounded by the service).
MAX_FIELD_CHARS = 2000
#: The A/B form's variant rows (the service allows 2-4; the first is the default).
AB_LABELS = abtest.LABELS
#: What the form proposes before the marketer changes it: test share (percent), wait, confidence.
AB_DEFAULTS = {"test_share": "20", "winner_metric": "opens", "test_wait": "4h", "confidence": "0.95"}
#: The actions behind a confirmation, with the states they are offered in.
ACTIONS = {"send": (CampaignStatus.draft,), "pause": (CampaignStatus.running, CampaignStatus.scheduled),
           "resume": (CampaignStatus.paused,),
           "cancel": (CampaignStatus.draft, CampaignStatus.running, CampaignStatus.scheduled, CampaignStatus.paused)}


def _mailer(request: Request):
    return request.app.state.mailer


def _field(value) -> str:
    return (value if isinstance(value, str) else "")[:MAX_FIELD_CHARS]


def _newsletters(renderer) -> list[str]:
    return [k for k in renderer.kinds() if k.startswith("newsletter/")]


def _segment_names(settings) -> list[str]:
    return [p.stem for p in segments.segment_files(settings)]


def _per_locale(form, prefix: str) -> dict[str, str]:
    """``subject_*`` / ``subject_pl`` ... form fields -> {locale: text} (empty ones left out)."""
    out = {}
    for loc in ("*", *SUPPORTED_LOCALES):
        text = _field(form.get(f"{prefix}_{loc}")).strip()
        if text:
            if "\n" in text or "\r" in text:
                raise ValidationError(f"the {prefix} must be one line", field=f"{prefix}[{loc}]")
            out[loc] = text
    return out


def segment_panel(request: Request, segment_name: str, template: str, subjects: dict[str, str]) -> dict:
    """The create form's segment panel: live count, a sample, locales with their fallback flags."""
    m = _mailer(request)
    panel: dict = {"segment": segment_name, "error": None, "count": None, "sample": [], "plan": [],
                   "fallbacks": []}
    if not segment_name:
        return panel
    try:
        seg = segments.load(m.settings, segment_name)
        with m.session() as s:
            panel["count"] = segments.count(s, m.settings, seg)
            panel["sample"] = segments.sample(s, m.settings, seg, SAMPLE_SIZE)
            present = segments.locales(s, m.settings, seg)
        panel["description"] = seg.description
        panel["words"] = segments.describe(seg.conditions)
        panel["purpose"] = seg.purpose
        if template in _newsletters(m.renderer):
            plan = campaigns.locale_plan(m.renderer, template, subjects, present)
            panel["plan"] = plan
            panel["fallbacks"] = [p for p in plan if p.fallback]
    except ValidationError as exc:
        panel["error"] = str(exc)
    return panel


def _form_context(request: Request, values: dict, errors: dict[str, str] | None = None) -> dict:
    m = _mailer(request)
    subjects = values.get("subjects", {})
    return {"templates": _newsletters(m.renderer), "segment_names": _segment_names(m.settings),
            "locales": SUPPORTED_LOCALES, "values": values, "errors": errors or {},
            "ab_labels": AB_LABELS, "ab_metrics": abtest.METRICS,
            "panel": segment_panel(request, values.get("segment", ""), values.get("template", ""), subjects)}


# -- list -------------------------------------------------------------------------------------
@router.get("/campaigns", include_in_schema=False)
def campaign_list(request: Request, user: Annotated[ConsoleUser, Depends(require("campaigns"))], page: int = 1):
    with _mailer(request).session() as s:
        rows = progress.overview(s, page=max(1, min(page, 10_000)))
    return render(request, user, "console/campaigns/list.html", {"rows": rows, "page": page,
                                                                  "page_size": progress.PAGE_SIZE})


# -- create -----------------------------------------------------------------------------------
@router.get("/campaigns/new", include_in_schema=False)
def campaign_new(request: Request, user: Annotated[ConsoleUser, Depends(require("campaigns", write=True))],
                 template: str = "", segment: str = ""):
    m = _mailer(request)
    templates = _newsletters(m.renderer)
    values = {"template": _field(template) or (templates[0] if templates else ""), "segment": _field(segment),
              "subjects": {}, "preheaders": {}, "when": "now", "tracking": True, "name": "",
              "ab": False, "variants": {}, **AB_DEFAULTS}
    return render(request, user, "console/campaigns/new.html", _form_context(request, values))


@router.get("/campaigns/new/segment", include_in_schema=False)
def campaign_new_segment(request: Request, user: Annotated[ConsoleUser, Depends(require("campaigns"))]):
    """The segment panel alone (htmx swaps it in when the segment, template or a subject changes)."""
    q = request.query_params
    try:
        subjects = _per_locale(q, "subject")
    except ValidationError:
        subjects = {}
    panel = segment_panel(request, _field(q.get("segment")), _field(q.get("template")), subjects)
    return render(request, user, "console/campaigns/_segment_panel.html", {"panel": panel})


@router.post("/campaigns", include_in_schema=False)
async def campaign_create(request: Request, user: Annotated[ConsoleUser, Depends(require("campaigns", write=True))]):
    m = _mailer(request)
    form = await request.form()
    values = {"name": _field(form.get("name")), "template": _field(form.get("template")),
              "segment": _field(form.get("segment")), "when": _field(form.get("when")) or "now",
              "send_at": _field(form.get("send_at")), "local_time": _field(form.get("local_time")),
              "tracking": form.get("tracking") == "on", "subjects": {}, "preheaders": {},
              "ab": form.get("ab") == "on", "variants": _variant_fields(form),
              **{k: _field(form.get(k)).strip() for k in AB_DEFAULTS}}
    errors: dict[str, str] = {}
    try:
        values["subjects"] = _per_locale(form, "subject")
        values["preheaders"] = _per_locale(form, "preheader")
        variants, ab = _ab_test(values) if values["ab"] else (None, None)
        send_at = local_time = None
        if values["when"] == "at":
            if not values["send_at"]:
                raise ValidationError("give the date and time to send at", field="send_at")
            send_at = campaigns.parse_send_at(values["send_at"], m.settings)
        elif values["when"] == "local":
            if not values["local_time"]:
                raise ValidationError("give the local time (HH:MM) to deliver at", field="local_time")
            local_time = values["local_time"]
        with m.session() as s:
            c = campaigns.create(s, m.settings, m.renderer, name=values["name"], template=values["template"],
                                 segment=values["segment"], subjects=values["subjects"],
                                 preheaders=values["preheaders"], send_at=send_at, local_time=local_time,
                                 tracking=values["tracking"], variants=variants, ab=ab)
            detail = {"name": c.name, "template": c.template, "segment": c.segment,
                      "subjects": dict(values["subjects"]), "send_at": values["send_at"] or None,
                      "local_time": local_time, "tracking": values["tracking"]}
            if ab is not None:
                detail["ab_test"] = {"variants": len(variants), "test_share_percent": ab.test_share_percent,
                                     "winner_metric": ab.winner_metric, "wait_s": ab.wait_s,
                                     "confidence": ab.confidence}
            audit.record(s, actor=user.email, action="campaign.create", target=f"campaign:{c.id}",
                         detail=detail, ip=client_ip(request))
            cid = c.id
    except ValidationError as exc:
        errors[_error_field(exc.field)] = str(exc)
    except TemplateError as exc:
        errors["template"] = str(exc)
    if errors:
        return render(request, user, "console/campaigns/new.html", _form_context(request, values, errors),
                      status_code=422)
    return RedirectResponse(f"/console/campaigns/{cid}?created=1", status_code=303)


def _variant_fields(form) -> dict[str, dict[str, str]]:
    """The A/B rows of the form: {label: {"subject", "preheader", "template"}} (empty rows kept empty)."""
    return {label: {what: _field(form.get(f"variant_{label}_{what}")).strip() for what in abtest.FIELDS}
            for label in AB_LABELS}


def _ab_test(values: dict) -> tuple[list[dict], abtest.Settings]:
    """The form's A/B test as the service takes it: the filled rows, in order, through the same
    parser as ``--variant`` (so the bounds and messages are the CLI's), and its settings."""
    rows = [row for row in values["variants"].values() if any(row.values())]
    specs: list[str] = []
    for row in rows:
        # The first field given starts the variant (FIELD=TEXT); the others add to it for every
        # locale (*:FIELD=TEXT). A template has no locale prefix, so it goes first when given.
        given = sorted(((w, t) for w, t in row.items() if t), key=lambda wt: wt[0] != "template")
        specs += [f"{w}={t}" if i == 0 else f"*:{w}={t}" for i, (w, t) in enumerate(given)]
    if not MIN_AB <= len(rows) <= MAX_AB:
        raise ValidationError(f"an A/B test has {MIN_AB}-{MAX_AB} variants; fill in {MIN_AB} to {MAX_AB} rows "
                              f"(got {len(rows)})", field="variant")
    variants = abtest.parse_variants(specs)
    try:
        share = float(values["test_share"])
    except ValueError:
        raise ValidationError("the test share is a percentage such as 20", field="test_share") from None
    try:
        confidence = float(values["confidence"])
    except ValueError:
        raise ValidationError("the confidence is a number such as 0.95", field="confidence") from None
    if values["winner_metric"] not in abtest.METRICS:
        raise ValidationError(f"the winning metric is one of {', '.join(abtest.METRICS)}", field="winner_metric")
    ab = abtest.Settings(test_share_percent=share, winner_metric=values["winner_metric"],
                         wait_s=abtest.parse_wait(values["test_wait"] or AB_DEFAULTS["test_wait"]),
                         confidence=confidence)
    ab.check()
    return variants, ab


MIN_AB, MAX_AB = abtest.MIN_VARIANTS, abtest.MAX_VARIANTS


def _error_field(field: str | None) -> str:
    """The form field an error names (``subject[pl]`` -> ``subject_pl``), else the form as a whole."""
    if not field:
        return "form"
    m = _VARIANT_FIELD.match(field)
    if m:
        label = AB_LABELS[int(m.group(1)) - 1] if m.group(1) and 1 <= int(m.group(1)) <= len(AB_LABELS) else None
        return f"variant_{label}_{m.group(2)}" if label and m.group(2) else "variant"
    if field in ("test_wait", "wait"):
        return "test_wait"
    for prefix in ("subject", "preheader"):
        if field.startswith(prefix + "[") and field.endswith("]"):
            return f"{prefix}_{field[len(prefix) + 1:-1]}"
    return field


# -- one campaign -----------------------------------------------------------------------------
def _campaign_context(request: Request, cid: int) -> dict:
    m = _mailer(request)
    with m.session() as s:
        p = progress.progress(s, m.settings, cid)
        c = campaigns.get(s, cid)
        ab = reports.ab_summary(s, cid)
        s.expunge(c)
    return {"c": c, "p": p, "poll_s": POLL_INTERVAL_S, "ab": ab,
            "metric_names": reports.METRIC_NAMES, "ab_amount": reports.amount_text, "brake": _brake(c),
            "actions": [a for a, states in ACTIONS.items() if c.status in states]}


def _brake(c) -> dict | None:
    """The brake that paused ``c`` and its figures, for the pages (None: no brake acted)."""
    if not c.brake or c.status is not CampaignStatus.paused:
        return None
    d = dict(c.brake_detail or {})
    return {"name": c.brake, "complaints": d.get("complaints", 0), "hard_bounces": d.get("hard_bounces", 0),
            "sent": d.get("sent", 0), "complaint_rate": d.get("complaint_rate", 0.0),
            "hard_bounce_rate": d.get("hard_bounce_rate", 0.0),
            "max_complaint_rate": d.get("max_complaint_rate", 0.0),
            "max_hard_bounce_rate": d.get("max_hard_bounce_rate", 0.0), "min_sent": d.get("min_sent")}


def _get_or_404(request: Request, user, cid: int):
    try:
        return _campaign_context(request, cid)
    except NotFound:
        return None


def _not_found(request: Request, user, cid: int) -> HTMLResponse:
    return render(request, user, "console/campaigns/not_found.html", {"cid": cid}, status_code=404)


@router.get("/campaigns/{cid}", include_in_schema=False)
def campaign_page(request: Request, cid: int, user: Annotated[ConsoleUser, Depends(require("campaigns"))]):
    ctx = _get_or_404(request, user, cid)
    if ctx is None:
        return _not_found(request, user, cid)
    q = request.query_params
    ctx.update({"created": q.get("created") == "1", "done": _field(q.get("done")), "tested": _field(q.get("tested")),
                "locales": SUPPORTED_LOCALES, "seed_error": None, "seeds": ""})
    return render(request, user, "console/campaigns/show.html", ctx)


@router.get("/campaigns/{cid}/progress", include_in_schema=False)
def campaign_progress(request: Request, cid: int, user: Annotated[ConsoleUser, Depends(require("campaigns"))]):
    ctx = _get_or_404(request, user, cid)
    if ctx is None:
        return _not_found(request, user, cid)
    return render(request, user, "console/campaigns/_progress.html", ctx)


# -- preview ----------------------------------------------------------------------------------
def _preview_target(request: Request, cid: int, locale: str, email: str) -> tuple[str, str]:
    """(locale, email) to preview as: the chosen recipient, or a sample member of that locale."""
    m = _mailer(request)
    locale = locale if locale in SUPPORTED_LOCALES else m.settings.default_locale
    if email:
        return locale, email
    with m.session() as s:
        c = campaigns.get(s, cid)
        try:
            seg = segments.load(m.settings, c.segment)
            members = segments.sample(s, m.settings, seg, 50)
        except ValidationError:
            members = []
    same = [r for r in members if (r.locale or m.settings.default_locale) == locale]
    pick = (same or members or [None])[0]
    return locale, pick.email if pick else "sample@example.com"


@router.get("/campaigns/{cid}/preview", include_in_schema=False)
def campaign_preview(request: Request, cid: int, user: Annotated[ConsoleUser, Depends(require("campaigns"))],
                     locale: str = "", email: str = ""):
    m = _mailer(request)
    ctx = _get_or_404(request, user, cid)
    if ctx is None:
        return _not_found(request, user, cid)
    loc, who = _preview_target(request, cid, _field(locale), _field(email).strip())
    error = None
    p = None
    try:
        with m.session() as s:
            p = campaigns.preview(s, m.settings, m.renderer, cid, who, locale=loc)
    except (ValidationError, TemplateError) as exc:
        error = str(exc)
    ctx.update({"locale": loc, "email": who, "preview": p, "error": error, "widths": FRAME_WIDTHS_PX,
                "locales": SUPPORTED_LOCALES, "chosen_email": _field(email).strip()})
    return render(request, user, "console/campaigns/preview.html", ctx, status_code=422 if error else 200)


@router.get("/frames/campaigns/{cid}", include_in_schema=False)
def campaign_frame(request: Request, cid: int, user: Annotated[ConsoleUser, Depends(require("campaigns"))],
                   locale: str = "", email: str = ""):
    """The mail's HTML alone, for the preview's ``<iframe sandbox>``."""
    m = _mailer(request)
    loc, who = _preview_target(request, cid, _field(locale), _field(email).strip())
    try:
        with m.session() as s:
            p = campaigns.preview(s, m.settings, m.renderer, cid, who, locale=loc)
    except NotFound:
        return HTMLResponse("not found", status_code=404)
    except (ValidationError, TemplateError) as exc:
        return HTMLResponse(f"<p>{escape(str(exc))}</p>", status_code=422)
    return HTMLResponse(p.html)


# -- test send --------------------------------------------------------------------------------
@router.post("/campaigns/{cid}/test-send", include_in_schema=False)
async def campaign_test_send(request: Request, cid: int,
                             user: Annotated[ConsoleUser, Depends(require("campaigns", write=True))]):
    m = _mailer(request)
    form = await request.form()
    seeds_text = _field(form.get("seeds"))
    locale = _field(form.get("locale")) or m.settings.default_locale
    try:
        seeds = campaigns.parse_seeds(seeds_text)
        with m.session() as s:
            ids = campaigns.test_send(s, m.settings, m.renderer, cid, seeds, locale=locale)
            audit.record(s, actor=user.email, action="campaign.test_send", target=f"campaign:{cid}",
                         detail={"seeds": seeds, "locale": locale, "deliveries": ids}, ip=client_ip(request))
    except NotFound:
        return _not_found(request, user, cid)
    except (ValidationError, InvalidState) as exc:
        ctx = _campaign_context(request, cid)
        ctx.update({"created": False, "done": "", "tested": "", "locales": SUPPORTED_LOCALES,
                    "seed_error": str(exc), "seeds": seeds_text, "test_locale": locale})
        return render(request, user, "console/campaigns/show.html", ctx, status_code=422)
    campaigns.enqueue_test_sends(ids)
    return RedirectResponse(f"/console/campaigns/{cid}?tested={len(ids)}", status_code=303)


# -- send / pause / resume / cancel -----------------------------------------------------------
@router.get("/campaigns/{cid}/confirm/{action}", include_in_schema=False)
def campaign_confirm(request: Request, cid: int, action: str,
                     user: Annotated[ConsoleUser, Depends(require("campaigns", write=True))]):
    m = _mailer(request)
    ctx = _get_or_404(request, user, cid)
    if ctx is None or action not in ACTIONS:
        return _not_found(request, user, cid)
    try:
        with m.session() as s:
            count = campaigns.confirmation_count(s, m.settings, cid, action)
    except ValidationError as exc:
        count, ctx["error"] = 0, str(exc)
    ctx.update({"action": action, "count": count, "allowed": ctx["c"].status in ACTIONS[action]})
    return render(request, user, "console/campaigns/confirm.html", ctx)


@router.post("/campaigns/{cid}/{action}", include_in_schema=False)
async def campaign_action(request: Request, cid: int, action: str,
                          user: Annotated[ConsoleUser, Depends(require("campaigns", write=True))]):
    m = _mailer(request)
    if action not in ACTIONS:
        return _not_found(request, user, cid)
    form = await request.form()
    stated = _field(form.get("count"))
    actor = f"console:{user.email}"[:100]  # campaign_actions.actor is 100 characters
    try:
        with m.session() as s:
            detail: dict = {"confirmed_count": int(stated) if stated.isdigit() else None}
            if action == "send":
                c = campaigns.send(s, m.settings, cid)
                detail["status"] = c.status.value
            elif action == "pause":
                detail["held"] = campaigns.pause(s, cid, actor=actor)
            elif action == "resume":
                braked = _brake(campaigns.get(s, cid))
                if braked is not None:
                    # Resuming what a brake stopped is a deliberate act: the marketer ticks that they
                    # read which brake acted and its figures; both go into the audit entry.
                    if form.get("acknowledge_brake") != "on":
                        raise ValidationError("tick that you have read why the brake paused this campaign "
                                              "before resuming it", field="acknowledge_brake")
                    detail["brake"] = braked
                c = campaigns.resume(s, cid, actor=actor)
                detail["status"], fanout_done = c.status.value, c.fanout_done
            else:
                detail["cancelled"] = campaigns.cancel(s, cid)
            audit.record(s, actor=user.email, action=f"campaign.{action}", target=f"campaign:{cid}",
                         detail=detail, ip=client_ip(request))
    except NotFound:
        return _not_found(request, user, cid)
    except ValidationError as exc:
        ctx = _campaign_context(request, cid)
        try:
            with m.session() as s:
                count = campaigns.confirmation_count(s, m.settings, cid, action)
        except ValidationError:
            count = 0
        ctx.update({"action": action, "count": count, "allowed": ctx["c"].status in ACTIONS[action],
                    "error": str(exc), "error_field": exc.field})
        return render(request, user, "console/campaigns/confirm.html", ctx, status_code=422)
    except InvalidState as exc:
        ctx = _campaign_context(request, cid)
        ctx.update({"action": action, "count": 0, "allowed": False, "error": str(exc)})
        return render(request, user, "console/campaigns/confirm.html", ctx, status_code=409)
    # After commit, as `mailer campaign send/resume` do: the fan-out and the released deliveries.
    try:
        if action == "send":
            fanout.start(m, cid)
        elif action == "resume":
            fanout.enqueue_queued(m, cid)
            if not fanout_done:
                fanout.start(m, cid)
    except MailerError:
        pass  # broker down: the committed state stands and the worker's sweeper restarts the fan-out
    return RedirectResponse(f"/console/campaigns/{cid}?done={action}", status_code=303)


# -- report -----------------------------------------------------------------------------------
@router.get("/campaigns/{cid}/report", include_in_schema=False)
def campaign_report(request: Request, cid: int, user: Annotated[ConsoleUser, Depends(require("reports"))]):
    m = _mailer(request)
    ctx = _get_or_404(request, user, cid)
    if ctx is None:
        return _not_found(request, user, cid)
    _ = i18n.translator(user.locale)
    with m.session() as s:
        tl = reports.timeline(s, cid)
        links = reports.top_links(s, cid)
        locales = progress.by_locale(s, cid)
        unsubs = progress.unsubscribes(s, cid)
        comps = progress.complaints(s, cid)
        history = brakes.actions(s, cid)
        for a in history:
            s.expunge(a)
        latency = brakes.unsubscribe_latency(s, campaign_id=cid)
        variant_money = reports.variant_revenue(s, cid) if ctx["ab"] else {}
    ctx.update({
        "history": history, "latency": latency, "latency_limit_days": brakes.UNSUBSCRIBE_LIMIT_S // 86400,
        "variant_money": variant_money,
        "f": ctx["p"].figures, "links": links, "by_locale": locales, "unsubscribes": unsubs, "complaints": comps,
        "timeline_svg": charts.timeline_chart(
            tl, label=_("Opens and clicks over time (UTC)"),
            series_labels=[_("Opens (people)"), _("Machine opens"), _("Clicks")]),
        "bucket": tl.bucket,
        "locale_svg": charts.bar_chart([(r.locale, r.sent, str(r.sent)) for r in locales],
                                       label=_("Mails sent by locale")),
        "open_svg": charts.bar_chart([(r.locale, r.open_rate, f"{r.open_rate * 100:.1f}%") for r in locales],
                                     label=_("Open rate by locale"), colour="#1d6b3a"),
    })
    return render(request, user, "console/campaigns/report.html", ctx)

