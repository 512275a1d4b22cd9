"""How errors become responses: a 422 whose ``detail[]`` lists every problem (``loc``, ``msg``, ``type``, ``field``)."""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from mailer import limits
from mailer.errors import (
    Busy,
    ConsentError,
    InvalidState,
    MailerError,
    NotFound,
    TemplateError,
    TokenError,
    ValidationError,
)

log = logging.getLogger("mailer.web")


def _field_loc(field: str | None) -> list[str]:
    if not field:
        return ["body"]
    if field == "Idempotency-Key":
        return ["header", field]
    return ["body", *field.split(".")]


def _problem(field: str | None, msg: str, type_: str = "value_error") -> dict:
    return {"loc": _field_loc(field), "msg": msg, "type": type_, "field": field}


def _validation_response(exc: ValidationError | TemplateError) -> JSONResponse:
    if isinstance(exc, ValidationError) and exc.problems:
        return JSONResponse({"detail": [_problem(f, msg) for f, msg in exc.problems]}, status_code=422)
    field = exc.field
    if isinstance(exc, TemplateError) and not field:
        field = "data"
    return JSONResponse({"detail": [_problem(field, str(exc))]}, status_code=422)


def _dotted(loc: tuple | list) -> str | None:
    """``("body", "data", "items", 3, "name")`` as ``data.items[3].name``."""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "header", "query", "path") else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _request_validation_response(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, without echoing the input (it may hold NaN, which JSON cannot carry), plus data limits."""
    detail = []
    for err in exc.errors():
        loc = [p if isinstance(p, (str, int)) else str(p) for p in err.get("loc", ())]
        detail.append({"loc": loc, "msg": str(err.get("msg", "invalid")), "type": str(err.get("type", "value_error")),
                       "field": _dotted(loc)})
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and "data" in body and not any(d["field"] and d["field"].startswith("data")
                                                             for d in detail):
        detail.extend(_problem(f, msg) for f, msg in limits.check(body["data"]))
    return JSONResponse({"detail": detail}, status_code=422)


def _mailer_error_response(_request: Request, exc: MailerError) -> JSONResponse:
    if isinstance(exc, (ValidationError, TemplateError)):
        return _validation_response(exc)
    if isinstance(exc, Busy):
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after_s)})
    status = 404 if isinstance(exc, (NotFound, TokenError)) else 409 if isinstance(
        exc, (InvalidState, ConsentError)) else 500
    return JSONResponse({"detail": str(exc)}, status_code=status)


async def _http_error_response(request: Request, exc: StarletteHTTPException):
    """Starlette's HTTP errors, with a 405's ``Allow`` naming every method of the path.

    A path served by two routes (``GET`` and ``POST /u/{token}``) would otherwise answer
    405 with the ``Allow`` of the first route only (RFC 9110 15.5.6: list them all)."""
    if exc.status_code != 405:
        return await http_exception_handler(request, exc)
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
    return JSONResponse({"detail": exc.detail}, status_code=405, headers=headers)
