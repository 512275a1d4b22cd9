"""``POST /webhooks/{ses,sendgrid,mailgun,postmark}``: ESP bounce and complaint webhooks.

Thin HTTP door over :mod:`mailer.delivery.webhooks` (signatures, mapping, once-only effect):
a wrong or missing signature is 401 with nothing stored, a body that is not the provider's
JSON is 400, otherwise 200 with what each event did.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from mailer.delivery import webhooks
from mailer.errors import ValidationError

log = logging.getLogger("mailer.web")

router = APIRouter(tags=["webhooks"])

_PROBLEM = {"content": {"application/problem+json": {"schema": {"type": "object"}}}}
#: What every webhook endpoint answers besides 200 (the body is the provider's JSON, read raw).
_RESPONSES = {
    400: {"description": "The body is not the provider's JSON.", **_PROBLEM},
    401: {"description": "Signature, token or basic auth not valid: nothing stored.", **_PROBLEM},
    413: {"description": "Body over MAILER_MAX_BODY_BYTES."},
}


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse({"type": "about:blank", "title": title, "status": status, "detail": detail},
                        status_code=status, media_type="application/problem+json")


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValidationError(f"body is not JSON: {exc}", field="body") from exc


def _answer(results) -> JSONResponse:
    return JSONResponse({"events": [{"event": r.source, "outcome": r.outcome, "reason": r.reason or None,
                                     "delivery_id": r.delivery_id} for r in results]})


async def _handle(request: Request, provider: str) -> JSONResponse:
    app = request.app.state.mailer
    settings = app.settings
    raw = await request.body()
    try:
        if provider == "postmark":
            webhooks.verify_postmark(settings, request.headers.get("authorization"))
            body = _json(raw)
            if not isinstance(body, dict):
                raise ValidationError("Postmark posts one JSON object", field="body")
            events = webhooks.postmark_events(body)
        elif provider == "sendgrid":
            webhooks.verify_sendgrid(settings, request.headers.get("x-twilio-email-event-webhook-signature"),
                                     request.headers.get("x-twilio-email-event-webhook-timestamp"), raw)
            events = webhooks.sendgrid_events(_json(raw))
        elif provider == "mailgun":
            body = _json(raw)
            if not isinstance(body, dict):
                raise ValidationError("Mailgun posts one JSON object", field="body")
            webhooks.verify_mailgun(settings, body)
            events = webhooks.mailgun_events(body)
        else:
            msg = _json(raw)
            if not isinstance(msg, dict):
                raise ValidationError("SNS posts one JSON object", field="body")
            webhooks.verify_sns(settings, msg)
            if msg.get("Type") != "Notification":
                r = await run_in_threadpool(webhooks.subscription, app, msg)
                return _answer([r])
            events = webhooks.ses_events(msg)
    except webhooks.SignatureError as exc:
        log.warning("webhook %s refused: %s", provider, exc)
        return _problem(401, "Unauthorized", f"{provider} webhook signature not valid")
    except ValidationError as exc:
        return _problem(400, "Bad Request", str(exc))
    return _answer(await run_in_threadpool(webhooks.receive, app, provider, events))


@router.post("/webhooks/ses", responses=_RESPONSES, summary="Amazon SES notifications through SNS (signature verified)")
async def ses(request: Request) -> JSONResponse:
    return await _handle(request, "ses")


@router.post("/webhooks/sendgrid", responses=_RESPONSES, summary="SendGrid Event Webhook (ECDSA signature verified)")
async def sendgrid(request: Request) -> JSONResponse:
    return await _handle(request, "sendgrid")


@router.post("/webhooks/mailgun", responses=_RESPONSES, summary="Mailgun webhooks (HMAC signature verified)")
async def mailgun(request: Request) -> JSONResponse:
    return await _handle(request, "mailgun")


@router.post("/webhooks/postmark", responses=_RESPONSES, summary="Postmark bounce and spam complaint webhooks (basic auth)")
async def postmark(request: Request) -> JSONResponse:
    return await _handle(request, "postmark")
