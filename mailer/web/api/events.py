"""``POST /v1/events``: shops report what happened; the automations decide what to send.

Same bearer API keys as ``POST /v1/notices`` (:func:`mailer.web.require_api_key`) and
the same durable ``Idempotency-Key`` handling (:func:`mailer.web.idempotent`): a retry
with the same key and body gets the first response again and applies nothing twice;
the event itself is also stored under the key (``shop_events.idempotency_key``), so a
crash between applying it and storing the response still applies it once.

A bad event is refused with 422 naming every bad field (``detail[].field`` such as
``data.items[0].quantity``, one entry per problem) and nothing is stored.  :mod:`mailer.web` includes this
router when the module exists.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from mailer.automations.publish import publish
from mailer.events import schemas as events
from mailer.models import ApiKey
from mailer.web import idempotency
from mailer.web import security as web_security
from mailer.web.deps import get_mailer, idempotent, require_scope

router = APIRouter(route_class=web_security.StrictJSONRoute)


class EventIn(BaseModel):
    """A shop event: its type and its fields (see docs/automations.md for each type's schema)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"type": "order_delayed", "data": {"email": "alice@example.com", "order_number": "1001",
                                           "new_eta": "2026-12-01"}}]})
    # The enum is what publish() enforces (an unknown type is a 422 naming the known ones).
    type: str = Field(description=f"One of: {', '.join(events.SHOP_EVENT_TYPES)}.", max_length=50,
                      json_schema_extra={"enum": list(events.SHOP_EVENT_TYPES)})
    data: dict[str, Any] = Field(default_factory=dict, description="The event's fields.")


class ActionOut(BaseModel):
    automation: str
    kind: str
    outcome: str = Field(description="queued, scheduled, merged, cancelled, deduplicated, skipped or failed")
    customer_id: int | None = None
    delivery_id: int | None = None
    send_after: str | None = Field(None, description="When a scheduled send is due (ISO 8601, UTC).")
    detail: str = ""


class EventAccepted(BaseModel):
    event_id: int
    type: str
    duplicate: bool = Field(description="True when this event was received before under the same key.")
    customer_id: int | None = None
    actions: list[ActionOut]
    failures: int = Field(description="How many automations could not send (e.g. a reward pool ran out).")


class Problem(BaseModel):
    detail: Any


@router.post("/v1/events", tags=["events"], status_code=202, response_model=EventAccepted,
             responses={401: {"model": Problem, "description": "No API key or a wrong one."},
                        422: {"model": Problem, "description": "Invalid event; `detail[].field` names the field."}})
def post_event(body: EventIn, request: Request, api_key: Annotated[ApiKey, Depends(require_scope("events"))],
               idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None
               ) -> JSONResponse:
    """Accept a shop event: 202 with what the automations did (queued, scheduled, cancelled, ...)."""
    m = get_mailer(request)

    def work() -> idempotency.Response:
        # The event's own key is scoped to the API key, so two shops cannot collide.
        key = f"api:{api_key.id}:{idempotency_key}" if idempotency_key else None
        result = publish(body.type, body.data, idempotency_key=key, app=m)
        return idempotency.Response(202, result.as_dict())

    return idempotent(request, api_key, "events", idempotency_key, body.model_dump(mode="json"), work)
