"""Console: customers (compliance and admin): search, profile, access export, erasure, suppressions.

* ``GET  /console/customers?q=``                  search by e-mail or name prefix (mailer.compliance.search).
* ``GET  /console/customers/{id}``                the profile (mailer.compliance.profile).
* ``POST /console/customers/{id}/export``         download the GDPR access export: the very JSON of
                                                  ``mailer gdpr export`` (audit ``gdpr.export``).
* ``POST /console/customers/{id}/erase``          erase, confirmed by typing the address: the service of
                                                  ``mailer gdpr erase`` (audit ``gdpr.erase``).
* ``POST /console/customers/{id}/suppressions``   add a manual suppression with a reason (``suppression.add``).
* ``POST /console/customers/{id}/suppressions/{sid}/remove``  lift one, with a reason (``suppression.remove``).

Every action and its audit row commit in one transaction: nothing is done unrecorded.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from mailer import audit
from mailer.addresses import normalize
from mailer.compliance import profile as profile_view
from mailer.compliance import search as customer_search
from mailer.consent import suppressions
from mailer.customers import predictions
from mailer.errors import InvalidAddress, NotFound, ValidationError
from mailer.gdpr import requests as gdpr
from mailer.models import Customer
from mailer.web.console import i18n
from mailer.web.console.auth import ConsoleUser, require
from mailer.web.console.render import render
from mailer.web.deps import client_ip, get_mailer

router = APIRouter()

#: Removable suppression reasons, for the page (the service decides).
REMOVABLE = {r.value for r in suppressions.REMOVABLE_REASONS}


@router.get("/customers")
def search_page(request: Request, *, q: str | None = None, user: Annotated[ConsoleUser, Depends(require("customers"))]):
    hits, error = [], None
    if q is not None:
        try:
            with get_mailer(request).session() as s:
                hits = customer_search.search(s, q)
        except ValidationError as exc:
            error, hits = str(exc), []
    return render(request, user, "console/customers/search.html",
                  {"q": q or "", "hits": hits, "error": error, "searched": q is not None,
                   "max_rows": customer_search.RESULTS_DEFAULT_ROWS},
                  status_code=422 if error else 200)


def _profile_page(request: Request, user: ConsoleUser, customer_id: int, *, error: str | None = None,
                  done: str | None = None, status_code: int = 200):
    with get_mailer(request).session() as s:
        try:
            p = profile_view.load(s, customer_id)
        except NotFound:
            return render(request, user, "console/customers/not_found.html", {"customer_id": customer_id},
                          status_code=404)
        # The prediction figures in words (mailer predict show): history, the model's reading, why;
        # texts and values apart, so the template translates each line into the user's language.
        reasons = (predictions.explain_reasons(s, get_mailer(request).settings, p.customer.email)
                   if p.customer.email and p.customer.erased_at is None else [])
        _ = i18n.translator(user.locale)
        # A value that is a word of the catalogs ("high", "low") is translated too; numbers and dates stay.
        why = [_(r.text, **{k: _(v) for k, v in r.values.items()}) for r in reasons]
        return render(request, user, "console/customers/profile.html",
                      {"p": p, "c": p.customer, "error": error, "done": done, "removable": REMOVABLE, "why": why,
                       "shop_currency": get_mailer(request).settings.default_currency},
                      status_code=status_code)


@router.get("/customers/{customer_id}")
def profile_page(request: Request, *, customer_id: int, done: str | None = None,
                 user: Annotated[ConsoleUser, Depends(require("customers"))]):
    return _profile_page(request, user, customer_id, done=done if done in DONE_MESSAGES else None)


#: ?done= values the profile shows after an action (anything else is ignored).
DONE_MESSAGES = {"erased", "suppressed", "unsuppressed"}


def _customer(session, customer_id: int) -> Customer | None:
    return session.get(Customer, customer_id)


@router.post("/customers/{customer_id}/export")
def export_download(request: Request, *, customer_id: int, user: Annotated[ConsoleUser, Depends(require("gdpr", write=True))]):
    mailer_app = get_mailer(request)
    with mailer_app.session() as s:
        c = _customer(s, customer_id)
        if c is None or c.email is None:
            return _profile_page(request, user, customer_id, status_code=404 if c is None else 409,
                                 error=i18n.translator(user.locale)("This customer has no address any more (erased): there is nothing to export "
                                       "by address."))
        doc = gdpr.export(s, mailer_app.settings, c.email)
        audit.record(s, actor=user.email, action="gdpr.export", target=f"customer:{c.id}",
                     detail={"email_hash": c.email_hash, "deliveries": len(doc["deliveries"]),
                             "consent_events": len(doc["consent"]["events"])}, ip=client_ip(request))
    body = gdpr.export_json(doc).encode("utf-8")
    return Response(body, media_type="application/json; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="gdpr-export-customer-{customer_id}.json"',
                             "Cache-Control": "no-store"})


@router.post("/customers/{customer_id}/erase")
def erase(request: Request, *, customer_id: int, confirm: Annotated[str, Form(max_length=400)] = "",
          user: Annotated[ConsoleUser, Depends(require("gdpr", write=True))]):
    mailer_app = get_mailer(request)
    with mailer_app.session() as s:
        c = _customer(s, customer_id)
        if c is None:
            return _profile_page(request, user, customer_id, status_code=404)
        if c.email is None:
            return _profile_page(request, user, customer_id, status_code=409, error=i18n.translator(user.locale)("Already erased."))
        try:
            typed = normalize(confirm)
        except InvalidAddress:
            typed = None
        if typed != c.email:
            return _profile_page(request, user, customer_id, status_code=422,
                                 error=i18n.translator(user.locale)("To erase, type the customer's e-mail address exactly (field confirm)."))
        report = gdpr.erase(s, mailer_app.settings, c.email)
        audit.record(s, actor=user.email, action="gdpr.erase", target=f"customer:{customer_id}",
                     detail={k: v for k, v in report.as_dict().items() if v}, ip=client_ip(request))
    return RedirectResponse(f"/console/customers/{customer_id}?done=erased", status_code=303)


@router.post("/customers/{customer_id}/suppressions")
def add_suppression(request: Request, *, customer_id: int, reason: Annotated[str, Form(max_length=2000)] = "",
                    scope: Annotated[str, Form(max_length=200)] = "all",
                    user: Annotated[ConsoleUser, Depends(require("suppressions", write=True))]):
    mailer_app = get_mailer(request)
    try:
        with mailer_app.session() as s:
            c = _customer(s, customer_id)
            if c is None:
                return _profile_page(request, user, customer_id, status_code=404)
            row = suppressions.add_manual(s, address_hash=c.email_hash, email=c.email, reason=reason, scope=scope)
            audit.record(s, actor=user.email, action="suppression.add", target=f"customer:{customer_id}",
                         detail={"suppression_id": row.id, "scope": row.scope, "reason": row.detail,
                                 "email_hash": c.email_hash}, ip=client_ip(request))
    except ValidationError as exc:
        return _profile_page(request, user, customer_id, status_code=422, error=str(exc))
    return RedirectResponse(f"/console/customers/{customer_id}?done=suppressed", status_code=303)


@router.post("/customers/{customer_id}/suppressions/{suppression_id}/remove")
def remove_suppression(request: Request, *, customer_id: int, suppression_id: int,
                       reason: Annotated[str, Form(max_length=2000)] = "",
                       user: Annotated[ConsoleUser, Depends(require("suppressions", write=True))]):
    mailer_app = get_mailer(request)
    try:
        with mailer_app.session() as s:
            c = _customer(s, customer_id)
            if c is None:
                return _profile_page(request, user, customer_id, status_code=404)
            row = suppressions.remove(s, suppression_id=suppression_id, address_hash=c.email_hash, reason=reason)
            audit.record(s, actor=user.email, action="suppression.remove", target=f"customer:{customer_id}",
                         detail={"suppression_id": suppression_id, "suppression_reason": row.reason.value,
                                 "scope": row.scope, "reason": " ".join(reason.split()),
                                 "email_hash": c.email_hash}, ip=client_ip(request))
    except NotFound:
        return _profile_page(request, user, customer_id, status_code=404, error=i18n.translator(user.locale)("No such suppression of this customer."))
    except ValidationError as exc:
        return _profile_page(request, user, customer_id, status_code=422, error=str(exc))
    return RedirectResponse(f"/console/customers/{customer_id}?done=unsuppressed", status_code=303)
