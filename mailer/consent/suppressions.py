"""The suppression list: addresses we never write to again (for a scope).

Rows are keyed by the salted address hash so a tombstone survives erasure and an
erased address re-imported later stays suppressed.  Scopes:

* ``all``: every mail, transactional included (hard bounce, complaint, erasure, manual).
* ``marketing``: every marketing purpose.
* a purpose name: only that purpose.
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from mailer.db import insert_or_ignore
from mailer.models import Suppression, SuppressionReason
from mailer.rendering import TRANSACTIONAL

#: Which scope each reason applies to.
REASON_SCOPE = {
    SuppressionReason.hard_bounce: "all",
    SuppressionReason.soft_bounce: "all",
    SuppressionReason.complaint: "all",
    SuppressionReason.erased: "all",
    SuppressionReason.manual: "all",
    SuppressionReason.unsubscribe: "marketing",
}


def suppression_for(session: Session, address_hash: str, purpose: str) -> Suppression | None:
    """The suppression that stops a mail of ``purpose`` to this address, if any."""
    scopes = ["all"] if purpose == TRANSACTIONAL else ["all", "marketing", purpose]
    # Indexed by email_hash; a handful of rows per address at most.
    return session.execute(select(Suppression).where(Suppression.email_hash == address_hash,
                                                     or_(*(Suppression.scope == s for s in scopes)))
                           .order_by(Suppression.id).limit(1)).scalar_one_or_none()


def suppress(session: Session, *, address_hash: str, email: str | None, reason: SuppressionReason | str,
             detail: str | None = None, scope: str | None = None) -> None:
    """Add a suppression; adding the same (hash, reason, scope) again changes nothing."""
    reason = SuppressionReason(reason)
    values = dict(email_hash=address_hash, email=email, reason=reason.value,
                  scope=scope or REASON_SCOPE[reason], detail=detail)
    session.execute(insert_or_ignore(session, Suppression, values, index_elements=["email_hash", "reason", "scope"]))
