"""The double opt-in mail: request a confirmation in the ledger, then send the ``confirm_subscription`` notice.

The ledger side (the ``consent_requests`` row, the signed link, the grant on confirm)
is :mod:`mailer.consent.ledger`; this module is the part that sends mail, so it sits
above both the ledger and the notice trigger.
"""

from __future__ import annotations

from mailer.consent.ledger import CONFIRM_KIND, PendingConfirmation, Proof, request_double_opt_in
from mailer.models import ConsentSource, LawfulBasis
from mailer.notices.trigger import trigger


def send_confirmation(app, pending: PendingConfirmation) -> int | None:
    """Store and enqueue the ``confirm_subscription`` mail for a committed request.

    The idempotency key is the request id, so calling this twice sends one mail.
    Returns the delivery id (None when there was nothing to send).
    """
    if not pending.created or pending.already_granted:
        return None
    result = trigger(app, CONFIRM_KIND, customer_id=pending.customer_id, data={"confirm_url": pending.url},
                     key=f"confirm:{pending.request_id}")
    return result.delivery_id


def double_opt_in(app, *, email: str, purpose: str, source: ConsentSource | str = ConsentSource.signup_form,
                  basis: LawfulBasis | str = LawfulBasis.consent, proof: Proof | None = None,
                  locale: str | None = None) -> tuple[PendingConfirmation, int | None]:
    """Request (committed) and mail a double opt-in confirmation; returns (request, delivery id)."""
    with app.session() as s:
        pending = request_double_opt_in(s, app.settings, email=email, purpose=purpose, source=source, basis=basis,
                                        proof=proof, locale=locale)
    return pending, send_confirmation(app, pending)
