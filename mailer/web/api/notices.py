"""``POST /v1/notices``: other services trigger a notice (bearer API key, Idempotency-Key); ``GET /healthz``."""

from __future__ import annotations

import hashlib
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from mailer import limits
from mailer.app import App
from mailer.errors import (
    InvalidData,
    NotFound,
    ValidationError,
)
from mailer.models import ApiKey
from mailer.notices import trigger as notices
from mailer.rendering import i18n
from mailer.web import idempotency
from mailer.web import security as web_security
from mailer.web.deps import (
    Problem,
    get_mailer,
    idempotent,
    require_scope,
)

log = logging.getLogger("mailer.web")


router = APIRouter(route_class=web_security.StrictJSONRoute)


class NoticeIn(BaseModel):
    """A notice to send: the kind, one recipient (address or customer id), the template data."""

    # Exactly one of email and customer_id (what _create_notice enforces), said in the schema.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [
        {"required": ["email"], "properties": {"email": {"type": "string"}, "customer_id": {"type": "null"}}},
        {"required": ["customer_id"], "properties": {"customer_id": {"type": "integer"}, "email": {"type": "null"}}},
    ]})

    kind: str = Field(min_length=1, max_length=100, description="Notice kind, e.g. order_delayed.")
    email: str | None = Field(default=None, max_length=320, description="Recipient address.")
    customer_id: int | None = Field(default=None, ge=1, le=2**63 - 1, description="Or a known customer's id.")
    data: dict[str, Any] = Field(default_factory=dict, description="Template data (see the kind's schema).")
    # The rule of mailer.i18n.is_valid_locale (the CLI's --locale checks the same one).
    locale: str | None = Field(default=None, max_length=i18n.MAX_LOCALE_CHARS, pattern=i18n.LOCALE_PATTERN,
                               description="Override the customer's locale, e.g. pl or zh-TW.")


class NoticeAccepted(BaseModel):
    delivery_id: int
    kind: str
    queue: str
    status: str = "accepted"


def _create_notice(m: App, api_key: ApiKey, body: NoticeIn, idem_key: str | None) -> notices.Enqueued:
    problems = limits.check(body.data)
    if (body.email is None) == (body.customer_id is None):
        problems.insert(0, ("email", "give exactly one of email or customer_id"))
    if problems:
        raise InvalidData.listing(problems)
    spec = m.renderer.validate(body.kind, body.data)
    if len(notices.purpose_for(spec.purpose, body.data)) > 100:
        raise ValidationError("data makes the consent purpose longer than 100 characters", field="data")
    # The delivery key is derived from the caller's key (scoped to the API key, hashed to a
    # fixed length), so the same Idempotency-Key can never produce a second delivery.
    key = None
    if idem_key is not None:
        key = f"api{api_key.id}:" + hashlib.sha256(idem_key.encode("utf-8")).hexdigest()[:40]
    for attempt in (1, 2):
        try:
            return notices.create(m, body.kind, to=body.email, customer_id=body.customer_id, data=body.data,
                                  locale=body.locale, key=key)
        except NotFound as exc:
            raise ValidationError(str(exc), field="customer_id") from exc
        except IntegrityError:
            # A concurrent request created the same new customer first; the retry finds it.
            if attempt == 2:
                raise
        except (TypeError, ValueError, ArithmeticError) as exc:
            # Data of the wrong shape for the template (a number where a list belongs...).
            raise ValidationError(f"data does not fit the {body.kind} template: {exc}", field="data") from exc
    raise AssertionError("unreachable")


@router.post("/v1/notices", tags=["notices"], status_code=202, response_model=NoticeAccepted,
             responses={401: {"model": Problem, "description": "No API key or a wrong one."},
                        422: {"model": Problem, "description": "Invalid request; `detail[].loc` names the field."}})
def post_notice(body: NoticeIn, request: Request, api_key: Annotated[ApiKey, Depends(require_scope("notices"))],
                idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None
                ) -> JSONResponse:
    """Trigger a notice: 202 with the delivery id. The same Idempotency-Key gives the same delivery."""
    m = get_mailer(request)

    def work() -> idempotency.Response:
        result = notices.enqueue(_create_notice(m, api_key, body, idempotency_key))
        return idempotency.Response(202, NoticeAccepted(delivery_id=result.delivery_id, kind=body.kind,
                                                        queue=result.queue).model_dump())

    return idempotent(request, api_key, "notices", idempotency_key, body.model_dump(mode="json"), work)



@router.get("/healthz", tags=["ops"])
def healthz(request: Request) -> dict:
    """Liveness: the app is up and the database answers."""
    with get_mailer(request).session() as s:
        s.execute(text("SELECT 1"))
    return {"status": "ok"}
