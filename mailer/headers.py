"""Per-delivery headers and template links (unsubscribe, preferences, tracking).

Transactional mail gets only a ``Feedback-ID``; marketing mail also gets RFC 8058
one-click unsubscribe headers and ``List-Id``.  The campaigns issue extends this with
signed tracking tokens.
"""

from __future__ import annotations

from mailer.models import Customer, Delivery
from mailer.rendering import TRANSACTIONAL
from mailer.settings import Settings


def decorate(settings: Settings, delivery: Delivery, customer: Customer | None, context: dict,
             headers: list[tuple[str, str]]) -> tuple[dict, list[tuple[str, str]]]:
    """Add the links templates need and the headers the mail must carry."""
    sender = settings.from_address.rpartition("@")[2].rstrip(">") or "localhost"
    campaign = f"c{delivery.campaign_id}" if delivery.campaign_id else delivery.kind
    headers.append(("Feedback-ID", f"{campaign}:{delivery.kind}:{'marketing' if delivery.purpose != TRANSACTIONAL else 'transactional'}:{sender}"))
    context.setdefault("unsubscribe_url", f"{settings.base_url.rstrip('/')}/u/")
    context.setdefault("preferences_url", f"{settings.base_url.rstrip('/')}/preferences/")
    return context, headers
