"""``POST /v1/restock-requests``: a product page's "notify me" from the shop's backend.

Scope ``consents``.  Records a ``restock:<sku>`` consent for the address (source ``api``),
which the back-in-stock automation (``audience = "restock_requests"``) mails when the
product's ``product_restocked`` event comes.  With ``double_opt_in: true`` in the body, or
``MAILER_RESTOCK_DOUBLE_OPT_IN`` and no ``double_opt_in`` in the body, it mails a
confirmation link instead and records nothing until it is followed.  The same
``Idempotency-Key`` twice records once.  Bad input is a 422 naming every bad field.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from mailer import limits
from mailer.addresses import normalize
from mailer.consent import forms, ledger
from mailer.errors import InvalidAddress
from mailer.models import ApiKey, ConsentSource, Customer
from mailer.notices import confirmation
from mailer.rendering import i18n
from mailer.web import idempotency
from mailer.web import security as web_security
from mailer.web.deps import Problem, get_mailer, require_scope

router = APIRouter(route_class=web_security.StrictJSONRoute)

#: Longest address, characters.
MAX_EMAIL_CHARS = 320


class RestockRequestIn(BaseModel):
    """Ask to be mailed when one product is back in stock."""

    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=MAX_EMAIL_CHARS, description="The customer's address.")
    sku: str = Field(min_length=1, max_length=100, pattern=forms.SKU_PATTERN,
                     description="The product's SKU, as in the product_restocked event.")
    locale: str | None = Field(default=None, max_length=i18n.MAX_LOCALE_CHARS, pattern=i18n.LOCALE_PATTERN,
                               description="The customer's locale, e.g. pl (the mail's language).")
    double_opt_in: bool | None = Field(default=None, description="Mail a confirmation link first "
                                       "(default: MAILER_RESTOCK_DOUBLE_OPT_IN).")
    form_id: str | None = Field(default=None, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$",
                                description="Which button collected it.")
    ip: str | None = Field(default=None, max_length=64, description="The customer's IP as the shop saw it (proof).")
    user_agent: str | None = Field(default=None, max_length=1000, pattern=r"^[^\x00-\x1f\x7f]*$",
                                   description="The customer's user agent (proof).")


class RestockRequestOut(BaseModel):
    email: str
    purpose: str = Field(description="restock:<sku>")
    status: Literal["granted", "confirmation_sent", "confirmation_pending", "already_granted"]
    event_id: int | None = None
    hash: str | None = Field(default=None, description="The consent event's chain hash.")


def _record(s: Session, m, body: RestockRequestIn, address: str, double: bool,
            pending: list[ledger.PendingConfirmation]) -> idempotency.Response:
    settings = m.settings
    purpose = f"restock:{body.sku}"
    proof = ledger.Proof(ip=body.ip, user_agent=body.user_agent, form_id=body.form_id)
    if double:
        p = ledger.request_double_opt_in(s, settings, purpose=purpose, source=ConsentSource.api, email=address,
                                         proof=proof, locale=body.locale)
        pending.append(p)
        status = "already_granted" if p.already_granted else "confirmation_sent" if p.created \
            else "confirmation_pending"
        out = RestockRequestOut(email=address, purpose=purpose, status=status)
    else:
        ev = ledger.grant(s, settings, purpose=purpose, source=ConsentSource.api, email=address, proof=proof)
        customer = s.get(Customer, ev.customer_id)
        if body.locale and customer is not None and not customer.locale:
            customer.locale = body.locale
        out = RestockRequestOut(email=address, purpose=purpose, status="granted", event_id=ev.id, hash=ev.hash)
    return idempotency.Response(200, out.model_dump(mode="json"))


@router.post("/v1/restock-requests", tags=["consents"], response_model=RestockRequestOut,
             responses={401: {"model": Problem, "description": "No API key or a wrong one."},
                        403: {"model": Problem, "description": "The key lacks the consents scope."},
                        422: {"model": Problem, "description": "Invalid request; `detail[].field` names each field."}})
def post_restock_request(body: RestockRequestIn, request: Request,
                         api_key: Annotated[ApiKey, Depends(require_scope("consents"))],
                         idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None
                         ) -> JSONResponse:
    """Record a ``restock:<sku>`` request (or mail its confirmation link first)."""
    m = get_mailer(request)
    problems: list[tuple[str, str]] = []
    address = ""
    try:
        address = normalize(body.email)
    except InvalidAddress as exc:
        problems.append(("email", str(exc)))
    if body.ip is not None:
        try:
            ipaddress.ip_address(body.ip)
        except ValueError:
            problems.append(("ip", "not an IPv4 or IPv6 address"))
    if problems:
        raise limits.InvalidData.listing(problems)
    double = m.settings.restock_double_opt_in if body.double_opt_in is None else body.double_opt_in
    pending: list[ledger.PendingConfirmation] = []
    result = idempotency.run_atomic(m, f"restock:key{api_key.id}", idempotency_key, body.model_dump(mode="json"),
                                    lambda s: _record(s, m, body, address, double, pending))
    for p in pending:  # committed: now the mail (keyed by its request, so sent once)
        confirmation.send_confirmation(m, p)
    headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
    return JSONResponse(result.body, status_code=result.status_code, headers=headers)
