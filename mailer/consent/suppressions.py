"""The suppression list: addresses we never write to again (for a scope).

Rows are keyed by the salted address hash so a tombstone survives erasure and an
erased address re-imported later stays suppressed.  Scopes:

* ``all``: every mail, transactional included (hard bounce, complaint, erasure, manual).
* ``marketing``: every marketing purpose.
* a purpose name: only that purpose.

People (the console's compliance staff) add ``manual`` suppressions with a reason
(:func:`add_manual`) and lift bounce and manual ones (:func:`remove`); erasure,
complaint and unsubscribe rows are never lifted by hand.
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from mailer.db import insert_or_ignore
from mailer.errors import NotFound, ValidationError
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


#: Longest reason a person gives for adding or removing a suppression, characters.
REASON_MAX_CHARS = 500
#: Reasons a person may lift: an erasure tombstone, a complaint and an unsubscribe are the
#: recipient's own word (only a new consent from them counts), so they are never removed by hand.
REMOVABLE_REASONS = frozenset({SuppressionReason.manual, SuppressionReason.hard_bounce,
                               SuppressionReason.soft_bounce})


def _reason_text(text: str | None) -> str:
    value = " ".join((text or "").split())
    if not value:
        raise ValidationError("reason: say why (it is kept with the suppression and in the audit log)",
                              field="reason")
    if len(value) > REASON_MAX_CHARS:
        raise ValidationError(f"reason: at most {REASON_MAX_CHARS} characters, got {len(value)}", field="reason")
    return value


def add_manual(session: Session, *, address_hash: str, email: str | None, reason: str,
               scope: str = "all") -> Suppression:
    """A person suppresses an address (scope ``all``, ``marketing`` or one purpose), saying why."""
    detail = _reason_text(reason)
    scope = (scope or "all").strip()
    if not scope or len(scope) > 100:
        raise ValidationError("scope: all, marketing or a purpose name (at most 100 characters)", field="scope")
    suppress(session, address_hash=address_hash, email=email, reason=SuppressionReason.manual, detail=detail,
             scope=scope)
    # The (hash, reason, scope) row, new or already there.
    return session.execute(select(Suppression).where(Suppression.email_hash == address_hash,
                                                     Suppression.reason == SuppressionReason.manual,
                                                     Suppression.scope == scope)).scalar_one()


def remove(session: Session, *, suppression_id: int, address_hash: str, reason: str) -> Suppression:
    """Lift one suppression of this address (``REMOVABLE_REASONS`` only); returns the removed row."""
    _reason_text(reason)
    row = session.get(Suppression, suppression_id)
    if row is None or row.email_hash != address_hash:
        raise NotFound(f"suppression {suppression_id} of this address")
    if row.reason not in REMOVABLE_REASONS:
        raise ValidationError(f"suppression_id: a suppression for {row.reason.value} cannot be lifted by hand "
                              "(only a new consent from the person counts)", field="suppression_id")
    session.delete(row)
    session.flush()
    return row


def for_address(session: Session, address_hash: str) -> list[Suppression]:
    """Every suppression of one address, oldest first (ix_suppressions_email_hash)."""
    return list(session.execute(select(Suppression).where(Suppression.email_hash == address_hash)
                                .order_by(Suppression.id)).scalars())
