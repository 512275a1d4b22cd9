"""One mail as plain frozen values: what composition may know about a delivery.

The send path (:mod:`mailer.delivery.process`) reads the delivery, its customer, its
campaign's options, the customer's tracking permission and the restock products still
wanted, inside its own transactions, and hands a :class:`MailContext` to
:mod:`mailer.delivery.compose` and :mod:`mailer.delivery.personalize`, which read no
database: composing is a pure function of this value, the settings, the renderer and
the signer.  Tests (and previews) build one with :meth:`MailContext.of` from unsaved
model objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from mailer.delivery import utm
from mailer.models import Campaign, Customer, Delivery


@dataclass(frozen=True)
class CampaignOptions:
    """The parts of a campaign that shape each of its mails (fixed once it is created)."""

    id: int
    tracking: bool
    subjects: dict
    data: dict
    preheaders: dict = field(default_factory=dict)
    #: ``utm_campaign`` of its shop links and its List-Id label (from the name; :func:`mailer.delivery.utm.slug`).
    slug: str = ""
    #: A/B variants by label: {"A": {"template", "subjects", "preheaders"}, ...}; empty without a test.
    variants: dict = field(default_factory=dict)

    @classmethod
    def of(cls, campaign: Campaign) -> CampaignOptions:
        return cls(id=campaign.id, tracking=bool(campaign.tracking), subjects=dict(campaign.subjects or {}),
                   data=dict(campaign.data or {}), preheaders=dict(campaign.preheaders or {}),
                   slug=utm.slug(campaign.name, campaign.id),
                   variants={v["label"]: dict(v) for v in (campaign.variants or ())})


@dataclass(frozen=True)
class Recipient:
    """What a mail shows of its customer: the name it greets and the currency of its prices."""

    id: int | None
    first_name: str | None = None
    last_name: str | None = None
    currency: str | None = None

    @classmethod
    def of(cls, customer: Customer | None) -> Recipient | None:
        if customer is None:
            return None
        return cls(id=customer.id, first_name=customer.first_name, last_name=customer.last_name,
                   currency=customer.currency)


@dataclass(frozen=True)
class MailContext:
    """Everything one mail is composed from, besides the settings.

    The attribute names follow :class:`mailer.models.Delivery` (``id``, ``kind``,
    ``customer_id``, ``purpose``, ``created_at``...), so the token helpers of
    :mod:`mailer.tracking.service` take a ``MailContext`` as they take a delivery.

    ``data`` is what this send carries (a merged back-in-stock mail lists only the
    products still wanted); ``campaign`` is ``None`` for a notice, or for a campaign
    that no longer exists; ``tracking_allowed`` says the customer permits open and
    click tracking (always true unless ``MAILER_TRACKING_REQUIRES_CONSENT``); links are
    tracked only when the campaign has tracking on as well, or when the mail is a marketing
    mail of an automation rule (``automation``), so its orders can be attributed.
    """

    id: int
    kind: str
    locale: str
    to_address: str
    purpose: str
    data: dict
    campaign_id: int | None = None
    customer_id: int | None = None
    created_at: datetime | None = None
    customer: Recipient | None = None
    campaign: CampaignOptions | None = None
    tracking_allowed: bool = False
    #: The campaign's A/B variant label this mail was assigned ("A".."D"), or None.
    variant: str | None = None
    #: The automation rule that sent this mail (``deliveries.automation``), or None.
    automation: str | None = None

    @classmethod
    def of(cls, delivery: Delivery, customer: Customer | Recipient | None = None, *,
           campaign: CampaignOptions | None = None, tracking_allowed: bool = False,
           data: dict | None = None) -> MailContext:
        """The plain value of ``delivery`` (attribute reads only; no database)."""
        recipient = customer if isinstance(customer, Recipient) or customer is None else Recipient.of(customer)
        return cls(id=delivery.id, kind=delivery.kind, locale=delivery.locale, to_address=delivery.to_address,
                   purpose=delivery.purpose, data=delivery.data if data is None else data,
                   campaign_id=delivery.campaign_id, customer_id=delivery.customer_id,
                   created_at=delivery.created_at, customer=recipient, campaign=campaign,
                   tracking_allowed=tracking_allowed, variant=getattr(delivery, "variant", None),
                   automation=getattr(delivery, "automation", None))
