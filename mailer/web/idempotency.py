"""``Idempotency-Key`` for the HTTP API, honoured durably (in the database).

The first request with a key runs; its response (status and JSON body) is stored under
``(scope, key)``.  A later request with the same key and the same body gets the stored
response again, without running anything; the same key with a *different* body is
refused (422), so a client bug cannot silently swallow a different request.

The work itself must be idempotent under the key as well (notices use a delivery
idempotency key derived from it), which closes the window between doing the work and
storing the response: a crash there, or two requests racing, still yield one delivery
and one stored response.

Work with no natural key of its own (consent events) uses :func:`run_atomic`: the work
and the stored response commit in one transaction, so of two requests racing with one
key exactly one commits and the other replays it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailer.db import insert_or_ignore
from mailer.errors import ValidationError
from mailer.models import IdempotencyRecord

#: Longest Idempotency-Key accepted, characters.
MAX_KEY_CHARS = 200
_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


@dataclass(frozen=True)
class Response:
    status_code: int
    body: dict[str, Any]
    replayed: bool = False


def check_key(key: str) -> str:
    if not _KEY.match(key or ""):
        raise ValidationError(f"Idempotency-Key must be 1-{MAX_KEY_CHARS} printable ASCII characters without "
                              "spaces", field="Idempotency-Key")
    return key


def fingerprint(body: Any) -> str:
    """SHA-256 of the canonical JSON of a request body."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str,
                                     ensure_ascii=False).encode("utf-8")).hexdigest()


def stored(app, scope: str, key: str) -> IdempotencyRecord | None:
    with app.session() as s:
        # (scope, key) is UNIQUE: one indexed lookup.
        row = s.execute(select(IdempotencyRecord).where(IdempotencyRecord.scope == scope,
                                                        IdempotencyRecord.key == key)).scalar_one_or_none()
        if row is not None:
            s.expunge(row)
        return row


def run(app, scope: str, key: str | None, body: Any, work: Callable[[], Response]) -> Response:
    """Run ``work`` once per (scope, key); replay its stored response afterwards.

    Without a key, ``work`` simply runs.  Only successful (2xx) responses are stored, so
    a request that failed validation can be corrected and retried with the same key.
    """
    if key is None:
        return work()
    check_key(key)
    digest = fingerprint(body)
    previous = stored(app, scope, key)
    if previous is not None:
        return _replay(previous, digest)
    response = work()
    if not 200 <= response.status_code < 300:
        return response
    with app.session() as s:
        # Two requests with one key racing: the first stored response wins; the loser
        # replays it (its work was idempotent under the same key, so it did nothing new).
        res = s.execute(insert_or_ignore(s, IdempotencyRecord,
                                         dict(scope=scope, key=key, request_sha256=digest,
                                              status_code=response.status_code, response=response.body),
                                         index_elements=["scope", "key"]))
        if res.rowcount == 1:
            return response
    return _replay(stored(app, scope, key), digest)


def run_atomic(app, scope: str, key: str | None, body: Any, work: Callable[[Session], Response]) -> Response:
    """Like :func:`run`, with ``work`` and the stored response in one transaction (all or nothing)."""
    if key is not None:
        check_key(key)
        digest = fingerprint(body)
        previous = stored(app, scope, key)
        if previous is not None:
            return _replay(previous, digest)
    try:
        with app.session() as s:
            response = work(s)
            if key is not None and 200 <= response.status_code < 300:
                s.add(IdempotencyRecord(scope=scope, key=key, request_sha256=digest,
                                        status_code=response.status_code, response=response.body))
                s.flush()
    except IntegrityError:
        # A request with the same key committed first (uq_idempotency_records_scope_key);
        # this one's work rolled back with it, so it replays the winner.
        winner = stored(app, scope, key) if key is not None else None
        if winner is None:
            raise
        return _replay(winner, digest)
    return response


def _replay(record: IdempotencyRecord, digest: str) -> Response:
    if record.request_sha256 != digest:
        raise ValidationError("this Idempotency-Key was already used with a different request body; "
                              "use a new key for a new request", field="Idempotency-Key")
    return Response(record.status_code, dict(record.response), replayed=True)
