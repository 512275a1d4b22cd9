"""Probe renders and previews: a delivery that is never stored (id 0) and the context it renders with.

Three places render a mail before (or instead of) storing it: a notice fails early when
its template does not render for the locale and data (mailer.notices.trigger), an
automation renders once per (kind, locale) so a broken template fails the event, not the
worker (mailer.automations.sends), and a campaign preview shows the mail as one
recipient would get it (mailer.campaigns.service). All three build their probe and its
context here, so the context a template sees is the one :func:`compose.render_context`
gives a real delivery.
"""

from __future__ import annotations

from typing import Any

from mailer.clock import utcnow
from mailer.delivery import personalize
from mailer.delivery.compose import render_context
from mailer.models import Customer, Delivery
from mailer.settings import Settings

#: What a probe render puts where the per-delivery links go (no token is signed for id 0).
PLACEHOLDER_LINK = "#"


def probe(customer: Customer | None, *, kind: str, to_address: str | None, locale: str, data: dict[str, Any],
          purpose: str, campaign_id: int | None = None, to_hash: str | None = None) -> Delivery:
    """The delivery ``customer`` would get, not added to any session (id 0)."""
    return Delivery(id=0, kind=kind, campaign_id=campaign_id, customer_id=customer.id if customer else None,
                    to_address=to_address, to_hash=to_hash, locale=locale, data=data, purpose=purpose,
                    created_at=utcnow())


def probe_context(settings: Settings, delivery: Delivery, customer: Customer | None, *,
                  links: bool = False) -> dict[str, Any]:
    """The template context for a probe: :func:`render_context`, plus the links.

    ``links=False`` (a render that only checks the template works): ``unsubscribe_url``
    and ``preferences_url`` are :data:`PLACEHOLDER_LINK`. ``links=True`` (a preview):
    the links a real delivery gets (:func:`personalize.decorate`, headers dropped).
    """
    context = render_context(settings, delivery, customer)
    if not links:
        return context | {"unsubscribe_url": PLACEHOLDER_LINK, "preferences_url": PLACEHOLDER_LINK}
    context, _ = personalize.decorate(settings, delivery, customer, context, [])
    return context
