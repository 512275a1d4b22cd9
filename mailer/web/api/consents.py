"""``POST /v1/consents`` (grant or withdraw with proof, Idempotency-Key) and ``GET /v1/customers/{email}/consents``.

Scope ``consents``.  The proof is the customer's, as the shop's backend saw it: ``ip`` and
``user_agent`` come from the body, never from this request's socket (that is the shop's
server).  A grant names a wording and its version (:mod:`mailer.consent.wordings`); the
ledger stores that exact text and its SHA-256 on the event.  ``double_opt_in: true``
stores a pending request and mails the confirmation link instead of granting
(:mod:`mailer.notices.confirmation`).  Every problem in a body is reported at once (422,
``detail[].field``) and nothing is stored.
"""

from __future__ import annotations

import ipaddress
import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer import limits
from mailer.addresses import normalize
from mailer.clock import utcnow
from mailer.consent import ledger, wordings
from mailer.errors import ConsentError, InvalidAddress, NotFound, ValidationError
from mailer.models import ApiKey, ConsentEvent, ConsentSource, ConsentState, Customer
from mailer.notices import confirmation
from mailer.rendering import i18n
from mailer.web import idempotency
from mailer.web import security as web_security
from mailer.web.deps import Problem, get_mailer, path_address, require_scope

log = logging.getLogger("mailer.web")

router = APIRouter(route_class=web_security.StrictJSONRoute)

#: Most purposes in one request.
MAX_PURPOSES = 20
#: Longest address, characters (RFC 5321 path limit).
MAX_EMAIL_CHARS = 320
#: Longest user agent kept as proof, characters.
MAX_USER_AGENT_CHARS = 1000
#: Longest IP text (an IPv6 address with a zone), characters.
MAX_IP_CHARS = 64
#: How far in the future an occurred_at may lie (clock skew between shop and mailer), seconds.
MAX_CLOCK_SKEW_S = 300
#: Earliest occurred_at accepted.
EARLIEST_OCCURRED_AT = datetime(2000, 1, 1, tzinfo=UTC)
#: Sources a shop may name over HTTP.
GRANT_SOURCES = (ConsentSource.checkout, ConsentSource.signup_form, ConsentSource.api)
WITHDRAW_SOURCES = GRANT_SOURCES + (ConsentSource.preference_centre,)

Email = Annotated[str, Path(min_length=3, max_length=MAX_EMAIL_CHARS, description="The customer's address.")]
Purpose = Annotated[str, Field(min_length=1, max_length=100,
                               description="A configured purpose (MAILER_PURPOSES) or restock:<sku>.")]


class _ConsentCommon(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=MAX_EMAIL_CHARS, description="The customer's address.")
    purposes: list[Purpose] = Field(min_length=1, max_length=MAX_PURPOSES, description="One or more purposes.")
    form_id: str | None = Field(default=None, max_length=200, description="Which form or checkbox collected it.")
    ip: str | None = Field(default=None, max_length=MAX_IP_CHARS,
                           description="The customer's IP as the shop's backend saw it (proof).")
    user_agent: str | None = Field(default=None, max_length=MAX_USER_AGENT_CHARS,
                                   description="The customer's browser user agent (proof).")
    locale: str | None = Field(default=None, max_length=i18n.MAX_LOCALE_CHARS, pattern=i18n.LOCALE_PATTERN,
                               description="The locale the customer saw, e.g. pl; picks the wording's locale.")
    occurred_at: AwareDatetime | None = Field(default=None, description="When it happened (default: now); "
                                              "with a time zone, not in the future.")


class ConsentGrantIn(_ConsentCommon):
    """Record a grant (or, with double_opt_in, mail a confirmation link) for each purpose."""

    action: Literal["grant"]
    source: Literal["checkout", "signup_form", "api"] = Field(default="api", description="Where it was given.")
    wording_id: str = Field(min_length=1, max_length=wordings.MAX_WORDING_ID_CHARS,
                            pattern=wordings.WORDING_ID_PATTERN, description="The wording shown: wordings/<id>.toml.")
    wording_version: str = Field(min_length=1, max_length=wordings.MAX_VERSION_CHARS,
                                 pattern=wordings.VERSION_PATTERN, description="The version shown.")
    double_opt_in: bool = Field(default=False, description="Mail a confirmation link instead of granting.")


class ConsentWithdrawIn(_ConsentCommon):
    """Record a withdrawal for each purpose."""

    action: Literal["withdraw"]
    source: Literal["checkout", "signup_form", "api", "preference_centre"] = Field(default="api")
    wording_id: str | None = Field(default=None, max_length=wordings.MAX_WORDING_ID_CHARS,
                                   pattern=wordings.WORDING_ID_PATTERN)
    wording_version: str | None = Field(default=None, max_length=wordings.MAX_VERSION_CHARS,
                                        pattern=wordings.VERSION_PATTERN)


ConsentIn = Annotated[ConsentGrantIn | ConsentWithdrawIn, Field(discriminator="action")]


class ConsentOutcome(BaseModel):
    purpose: str
    status: Literal["granted", "withdrawn", "confirmation_sent", "confirmation_pending", "already_granted"]
    event_id: int | None = None
    hash: str | None = Field(default=None, description="The event's chain hash.")
    wording_sha256: str | None = None


class ConsentRecorded(BaseModel):
    email: str
    action: Literal["grant", "withdraw"]
    results: list[ConsentOutcome]


class ConsentCurrent(BaseModel):
    purpose: str
    granted: bool
    basis: str
    event_id: int
    since: datetime


class ConsentHistoryEvent(BaseModel):
    seq: int
    purpose: str
    action: str
    basis: str
    source: str
    occurred_at: datetime
    recorded_at: datetime
    form_id: str | None
    wording_version: str | None
    wording_sha256: str | None
    confirmed_at: datetime | None
    prev_hash: str
    hash: str


class ConsentHistory(BaseModel):
    email: str
    current: list[ConsentCurrent]
    history: list[ConsentHistoryEvent]


def _check(m, body: ConsentGrantIn | ConsentWithdrawIn) -> tuple[str, list[tuple[str, str]]]:
    """The normalized address and every problem of the body the schema cannot express."""
    settings = m.settings
    problems: list[tuple[str, str]] = []
    address = ""
    try:
        address = normalize(body.email)
    except InvalidAddress as exc:
        problems.append(("email", str(exc)))
    seen: set[str] = set()
    for i, purpose in enumerate(body.purposes):
        try:
            ledger.purpose_ok(settings, purpose)
        except ConsentError as exc:
            problems.append((f"purposes[{i}]", str(exc)))
        if purpose in seen:
            problems.append((f"purposes[{i}]", f"{purpose!r} is named twice"))
        seen.add(purpose)
    if body.ip is not None:
        try:
            ipaddress.ip_address(body.ip)
        except ValueError:
            problems.append(("ip", "not an IPv4 or IPv6 address"))
    for name in ("user_agent", "form_id"):
        value = getattr(body, name)
        if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
            problems.append((name, "contains a control character"))
    if body.occurred_at is not None:
        try:
            if body.occurred_at.astimezone(UTC) > utcnow() + timedelta(seconds=MAX_CLOCK_SKEW_S):
                problems.append(("occurred_at", "lies in the future"))
            elif body.occurred_at.astimezone(UTC) < EARLIEST_OCCURRED_AT:
                problems.append(("occurred_at", f"before {EARLIEST_OCCURRED_AT:%Y-%m-%d}"))
        except OverflowError:
            problems.append(("occurred_at", "out of range"))
    if (body.wording_id is None) != (body.wording_version is None):
        problems.append(("wording_version" if body.wording_id else "wording_id",
                         "give wording_id and wording_version together"))
    elif body.wording_id is not None:
        try:
            with m.session() as s:
                wordings.resolve(s, settings, body.wording_id, body.wording_version, body.locale)
        except ValidationError as exc:
            problems.append((exc.field or "wording_id", str(exc)))
    return address, problems


def _record(s: Session, m, body: ConsentGrantIn | ConsentWithdrawIn, address: str,
            pending: list[ledger.PendingConfirmation]) -> idempotency.Response:
    settings = m.settings
    wording = None
    if body.wording_id is not None:  # checked by _check; a file edited since then refuses here
        wording = wordings.resolve(s, settings, body.wording_id, body.wording_version, body.locale)
    proof = ledger.Proof(ip=body.ip, user_agent=body.user_agent, form_id=body.form_id,
                         wording=wording.text if wording else None,
                         wording_version=wording.version if wording else None)
    occurred_at = body.occurred_at.astimezone(UTC) if body.occurred_at else None
    results: list[ConsentOutcome] = []
    if body.action == "withdraw":
        try:
            customer = ledger.customer_by_email(s, address)
        except NotFound:
            raise NotFound("no customer with this address; nothing to withdraw") from None
        for purpose in body.purposes:
            ev = ledger.withdraw(s, settings, purpose=purpose, customer=customer, source=body.source,
                                 occurred_at=occurred_at, proof=proof)
            results.append(ConsentOutcome(purpose=purpose, status="withdrawn", event_id=ev.id, hash=ev.hash,
                                          wording_sha256=ev.wording_sha256))
    elif body.double_opt_in:
        for purpose in body.purposes:
            p = ledger.request_double_opt_in(s, settings, purpose=purpose, source=body.source, email=address,
                                             proof=proof, locale=body.locale)
            pending.append(p)
            status = ("already_granted" if p.already_granted else "confirmation_sent" if p.created
                      else "confirmation_pending")
            results.append(ConsentOutcome(purpose=purpose, status=status))
        # One mail whose link confirms every purpose newly requested (each keeps its own request).
        link = ledger.combine(s, settings, pending)
        pending[:] = [link] if link is not None else []
    else:
        for purpose in body.purposes:
            ev = ledger.grant(s, settings, purpose=purpose, source=body.source, email=address,
                              occurred_at=occurred_at, proof=proof)
            if body.locale:
                customer = s.get(Customer, ev.customer_id)
                if customer is not None and not customer.locale:
                    customer.locale = body.locale
            results.append(ConsentOutcome(purpose=purpose, status="granted", event_id=ev.id, hash=ev.hash,
                                          wording_sha256=ev.wording_sha256))
    out = ConsentRecorded(email=address, action=body.action, results=results)
    return idempotency.Response(200, out.model_dump(mode="json"))


@router.post("/v1/consents", tags=["consents"], response_model=ConsentRecorded,
             responses={401: {"model": Problem, "description": "No API key or a wrong one."},
                        403: {"model": Problem, "description": "The key lacks the consents scope."},
                        404: {"model": Problem, "description": "Withdrawal for an address mailer does not know."},
                        422: {"model": Problem, "description": "Invalid request; `detail[].field` names each field."}})
def post_consent(body: ConsentIn, request: Request, api_key: Annotated[ApiKey, Depends(require_scope("consents"))],
                 idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None
                 ) -> JSONResponse:
    """Record a grant or a withdrawal for one address and one or more purposes, with its proof.

    The same Idempotency-Key with the same body records once and replays the first answer.
    """
    m = get_mailer(request)
    address, problems = _check(m, body)
    if problems:
        raise limits.InvalidData.listing(problems)
    pending: list[ledger.PendingConfirmation] = []
    result = idempotency.run_atomic(m, f"consents:key{api_key.id}", idempotency_key, body.model_dump(mode="json"),
                                    lambda s: _record(s, m, body, address, pending))
    for p in pending:  # committed: now the mails (each keyed by its request, so sent once)
        confirmation.send_confirmation(m, p)
    headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
    return JSONResponse(result.body, status_code=result.status_code, headers=headers)


@router.get("/v1/customers/{email}/consents", tags=["consents"], response_model=ConsentHistory,
            responses={401: {"model": Problem}, 403: {"model": Problem, "description": "Lacks the consents scope."},
                       404: {"model": Problem, "description": "No customer with this address."},
                       422: {"model": Problem}})
def get_consents(email: Email, request: Request,
                 _key: Annotated[ApiKey, Depends(require_scope("consents"))]) -> ConsentHistory:
    """Current consent per purpose and the whole history, each event with its chain hash."""
    address = path_address(email)
    m = get_mailer(request)
    with m.session() as s:
        customer = ledger.customer_by_email(s, address)
        states = s.execute(select(ConsentState, ConsentEvent).join(ConsentEvent, ConsentEvent.id == ConsentState.event_id)
                           .where(ConsentState.customer_id == customer.id).order_by(ConsentState.purpose)).all()
        events = s.execute(select(ConsentEvent).where(ConsentEvent.customer_id == customer.id)
                           .order_by(ConsentEvent.seq)).scalars().all()
        granted = set(ledger.current_purposes(s, m.settings, customer.id))
        return ConsentHistory(
            email=address,
            current=[ConsentCurrent(purpose=st.purpose, granted=st.purpose in granted, basis=ev.basis.value,
                                    event_id=ev.id, since=ev.occurred_at) for st, ev in states],
            history=[ConsentHistoryEvent(seq=e.seq, purpose=e.purpose, action=e.action.value, basis=e.basis.value,
                                         source=e.source.value, occurred_at=e.occurred_at, recorded_at=e.recorded_at,
                                         form_id=e.form_id, wording_version=e.wording_version,
                                         wording_sha256=e.wording_sha256, confirmed_at=e.confirmed_at,
                                         prev_hash=e.prev_hash, hash=e.hash) for e in events])
