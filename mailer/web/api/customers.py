"""Customers over HTTP: ``PUT/GET /v1/customers/{email}`` (scope ``customers``) and the GDPR requests
``DELETE /v1/customers/{email}`` and ``GET /v1/customers/{email}/export`` (scope ``gdpr``).

``PUT`` creates or updates one customer with exactly the CSV import's fields and rules
(:func:`mailer.customers.records.parse_record`, the same upsert); like an import row it
replaces every field.  ``DELETE`` is ``mailer gdpr erase`` and ``export`` is ``mailer gdpr
export`` (:mod:`mailer.gdpr.requests`), byte for byte the same document.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from mailer import limits
from mailer.customers import records
from mailer.gdpr import requests as gdpr
from mailer.models import ApiKey, Customer, CustomerTag
from mailer.rendering import i18n
from mailer.web import security as web_security
from mailer.web.deps import Problem, get_mailer, path_address, require_scope

router = APIRouter(route_class=web_security.StrictJSONRoute)

#: Most tags on one customer.
MAX_TAGS = 100

Email = Annotated[str, Path(min_length=3, max_length=320, description="The customer's address.")]
_AUTH = {401: {"model": Problem, "description": "No API key or a wrong one."},
         422: {"model": Problem, "description": "Invalid request; `detail[].field` names each field."}}


class CustomerIn(BaseModel):
    """The CSV import's columns (docs/http-api.md); omitted fields are cleared, as an import row would."""

    model_config = ConfigDict(extra="forbid")

    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    locale: str | None = Field(default=None, max_length=i18n.MAX_LOCALE_CHARS, pattern=i18n.LOCALE_PATTERN)
    timezone: str | None = Field(default=None, max_length=64, description="IANA zone, e.g. Europe/Warsaw.")
    country: str | None = Field(default=None, max_length=2, description="ISO 3166 alpha-2, e.g. PL.")
    tags: list[Annotated[str, Field(max_length=100)]] = Field(default_factory=list, max_length=MAX_TAGS)
    total_spent: str | int | float | None = Field(
        default=None, description="Non-negative amount, at most 2 decimal places, e.g. \"129.90\".")
    currency: str | None = Field(default=None, max_length=3, description="ISO 4217, e.g. PLN.")
    orders_count: int | None = Field(default=None, ge=0, le=records.MAX_ORDERS_COUNT)
    last_order_at: str | None = Field(default=None, max_length=40, description="ISO 8601 date or date-time.")
    predicted_spend_tier: Literal["high", "medium", "low"] | None = None
    attributes: dict[Annotated[str, Field(min_length=1, max_length=100)], Annotated[str, Field(max_length=1000)]] = (
        Field(default_factory=dict, max_length=records.MAX_ATTRIBUTES,
              description="Other columns, kept in customers.attributes."))


class CustomerOut(BaseModel):
    email: str
    first_name: str | None
    last_name: str | None
    locale: str | None
    timezone: str | None
    country: str | None
    tags: list[str]
    total_spent: Decimal
    currency: str | None
    orders_count: int
    last_order_at: datetime | None
    predicted_spend_tier: Literal["high", "medium", "low"] | None
    attributes: dict[str, str]
    created_at: datetime
    updated_at: datetime


def _out(s, c: Customer) -> CustomerOut:
    tags = s.execute(select(CustomerTag.tag).where(CustomerTag.customer_id == c.id).order_by(CustomerTag.tag)).scalars()
    return CustomerOut(email=c.email, first_name=c.first_name, last_name=c.last_name, locale=c.locale,
                       timezone=c.timezone, country=c.country, tags=list(tags), total_spent=c.total_spent,
                       currency=c.currency, orders_count=c.orders_count, last_order_at=c.last_order_at,
                       predicted_spend_tier=c.predicted_spend_tier.value if c.predicted_spend_tier else None,
                       attributes={str(k): str(v) for k, v in (c.attributes or {}).items()},
                       created_at=c.created_at, updated_at=c.updated_at)


def _cells(address: str, body: CustomerIn) -> dict[str, str]:
    """The body as the CSV row an import would read."""
    row = {k: ("" if v is None else str(v)) for k, v in body.model_dump(exclude={"tags", "attributes"}).items()}
    row["email"] = address
    row["tags"] = ";".join(body.tags)
    row.update(body.attributes)
    return row


@router.put("/v1/customers/{email}", tags=["customers"], response_model=CustomerOut,
            responses=_AUTH | {201: {"model": CustomerOut, "description": "Created."},
                               403: {"model": Problem, "description": "Lacks the customers scope."}})
def put_customer(email: Email, body: CustomerIn, request: Request,
                 _key: Annotated[ApiKey, Depends(require_scope("customers"))]) -> JSONResponse:
    """Create (201) or update (200) one customer, with the CSV import's fields and validation."""
    address = path_address(email)
    clash = sorted(k for k in body.attributes if k in records.COLUMNS)
    if clash:
        raise limits.InvalidData.listing([(f"attributes.{k}", f"{k} is a field of its own; set it there") for k in clash])
    values = records.parse_record(_cells(address, body))
    m = get_mailer(request)
    with m.session() as s:
        customer, created = records.upsert_record(s, m.settings, values)
        out = _out(s, customer)
    return JSONResponse(out.model_dump(mode="json"), status_code=201 if created else 200)


@router.get("/v1/customers/{email}", tags=["customers"], response_model=CustomerOut,
            responses=_AUTH | {403: {"model": Problem, "description": "Lacks the customers scope."},
                               404: {"model": Problem, "description": "No customer with this address."}})
def get_customer(email: Email, request: Request,
                 _key: Annotated[ApiKey, Depends(require_scope("customers"))]) -> CustomerOut:
    """One customer, as stored."""
    address = path_address(email)
    with get_mailer(request).session() as s:
        return _out(s, records.by_email(s, address))


class ErasureOut(BaseModel):
    """What the erasure changed, in rows (the report of ``mailer gdpr erase``)."""

    email_hash: str
    customers: int
    withdrawals: int
    evidence: int
    consent_requests: int
    deliveries: int
    deliveries_cancelled: int
    tracking_events: int
    suppressions: int
    bounces: int
    shop_events: int
    csat_ratings: int


@router.delete("/v1/customers/{email}", tags=["gdpr"], response_model=ErasureOut,
               responses=_AUTH | {403: {"model": Problem, "description": "Lacks the gdpr scope."}})
def delete_customer(email: Email, request: Request,
                    _key: Annotated[ApiKey, Depends(require_scope("gdpr"))]) -> JSONResponse:
    """GDPR erasure (Art. 17), exactly ``mailer gdpr erase``: personal data gone, a salted-hash tombstone keeps
    the address suppressed. Safe to repeat."""
    address = path_address(email)
    m = get_mailer(request)
    with m.session() as s:
        report = gdpr.erase(s, m.settings, address)
    return JSONResponse(report.as_dict())


@router.get("/v1/customers/{email}/export", tags=["gdpr"],
            responses=_AUTH | {403: {"model": Problem, "description": "Lacks the gdpr scope."},
                               404: {"model": Problem, "description": "Nothing is held about this address."}})
def export_customer(email: Email, request: Request,
                    _key: Annotated[ApiKey, Depends(require_scope("gdpr"))]) -> JSONResponse:
    """GDPR access and portability export (Art. 15, 20): the document ``mailer gdpr export`` writes."""
    address = path_address(email)
    m = get_mailer(request)
    with m.session() as s:
        doc = gdpr.export(s, m.settings, address)
    return JSONResponse(doc)
