"""mailer: consent-checked campaigns and transactional notices over Dramatiq, MJML and SMTP.

The public Python API:

* :func:`mailer.notify` enqueues a transactional or marketing notice.
* :mod:`mailer.events` ``publish`` reports a shop event to the automations.
"""

from __future__ import annotations

__version__ = "0.1.0"


def notify(kind: str, *, to: str | None = None, customer_id: int | None = None, data: dict | None = None,
           locale: str | None = None, idempotency_key: str | None = None, settings=None):
    """Validate and enqueue notice ``kind`` for one recipient; return the delivery id.

    Raises :class:`mailer.errors.ValidationError` (unknown kind, missing field, invalid
    address) before anything is stored or enqueued.
    """
    from mailer.notices import notify as _notify

    return _notify(kind, to=to, customer_id=customer_id, data=data or {}, locale=locale,
                   idempotency_key=idempotency_key, settings=settings)


__all__ = ["notify", "__version__"]
