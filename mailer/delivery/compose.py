"""Composing one delivery into signed MIME bytes: render, headers, MIME, DKIM.

The pieces are pure functions of a :class:`~mailer.delivery.mail.MailContext` (the plain
value the send path loads in its own transactions) and the settings: nothing here reads
the database, and a retry composes exactly the same mail (same Message-ID, same tokens).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass
from email.utils import parseaddr

from mailer.addresses import ascii_form
from mailer.clock import utcnow
from mailer.delivery import personalize as header_hooks
from mailer.delivery.mail import MailContext, Recipient
from mailer.message.mime import MailParts, build
from mailer.models import Customer, Delivery
from mailer.rendering import TRANSACTIONAL, Rendered
from mailer.settings import Settings


@dataclass(frozen=True)
class Composed:
    envelope_from: str
    recipient: str
    message: bytes
    message_id: str
    rendered: Rendered


def from_address(settings: Settings, purpose: str | None = None) -> str:
    """The ``From`` of a stream: ``MAILER_MARKETING_FROM`` for marketing purposes,
    ``MAILER_TRANSACTIONAL_FROM`` for transactional mail, either falling back to
    ``MAILER_FROM_ADDRESS`` (``purpose`` None: that default)."""
    if purpose is None:
        return settings.from_address
    chosen = settings.transactional_from if purpose == TRANSACTIONAL else settings.marketing_from
    return chosen or settings.from_address


def from_parts(settings: Settings, purpose: str | None = None) -> tuple[str, str]:
    return _parse_from(from_address(settings, purpose))


@functools.lru_cache(maxsize=16)
def _parse_from(from_address: str) -> tuple[str, str]:
    # Parsed once per sender address, not three times per mail (bench/delivery_path.py).
    name, address = parseaddr(from_address)
    return name, address


def message_id(settings: Settings, delivery_id: int) -> str:
    """Deterministic Message-ID: the delivery id plus an HMAC so ids cannot be guessed."""
    _, address = from_parts(settings)
    domain = address.rpartition("@")[2] or "localhost"
    mac = hmac.new(settings.signing_keys[0].encode(), f"mid:{delivery_id}".encode(), hashlib.sha256).hexdigest()[:16]
    return f"<{delivery_id}.{mac}@{domain}>"


#: Hex characters of the HMAC in the ``X-Mailer-Delivery`` header (64 bits).
DELIVERY_HEADER_MAC_CHARS = 16


def _delivery_mac(key: str, delivery_id: int) -> str:
    return hmac.new(key.encode(), f"x-mailer-delivery:{delivery_id}".encode(),
                    hashlib.sha256).hexdigest()[:DELIVERY_HEADER_MAC_CHARS]


def delivery_header(settings: Settings, delivery_id: int) -> str:
    """The ``X-Mailer-Delivery`` value: ``<delivery id>.<HMAC>``, so a forged header names no delivery."""
    return f"{delivery_id}.{_delivery_mac(settings.signing_keys[0], delivery_id)}"


def verified_delivery_id(settings: Settings, value: str | None) -> int | None:
    """The delivery id of a signed ``X-Mailer-Delivery`` value, or None when its HMAC does not
    verify with any of ``MAILER_SIGNING_KEYS`` (so rotated keys still match older mail)."""
    head, _, mac = (value or "").strip().partition(".")
    if not (head.isdigit() and len(head) <= 18 and len(mac) == DELIVERY_HEADER_MAC_CHARS):
        return None
    delivery_id = int(head)
    if any(hmac.compare_digest(mac.lower(), _delivery_mac(key, delivery_id)) for key in settings.signing_keys):
        return delivery_id
    return None


def return_path(settings: Settings, delivery_id: int) -> str:
    """VERP envelope sender: bounces come back to ``bounces+<id>.<HMAC>@domain``.

    The HMAC is the ``X-Mailer-Delivery`` one, so a return path found in a report proves the
    delivery as the signed header does; a bare ``bounces+<id>@`` (guessable) proves nothing.
    The local part stays within RFC 5321's 64 octets (8 + 18 + 1 + 16)."""
    return f"bounces+{delivery_header(settings, delivery_id)}@{settings.bounce_domain}"


def render_context(settings: Settings, delivery: Delivery | MailContext,
                   customer: Customer | Recipient | None) -> dict:
    """What every template may use besides the delivery's own data (attribute reads only)."""
    ctx = {
        "first_name": (customer.first_name if customer else None) or "",
        "last_name": (customer.last_name if customer else None) or "",
        "email": delivery.to_address,
        "currency": (customer.currency if customer else None) or settings.default_currency,
        "delivery_id": delivery.id,
    }
    return ctx


def needs_smtputf8(settings: Settings, to_address: str, purpose: str | None = None) -> bool:
    """True when the recipient (after IDNA for the domain) or the sender is not ASCII."""
    return not (ascii_form(to_address).isascii() and from_parts(settings, purpose)[1].isascii())


def personalized(settings: Settings, renderer, mail: MailContext) -> tuple[Rendered, list[tuple[str, str]]]:
    """Render one mail as its recipient gets it, with the headers personalization adds."""
    context = render_context(settings, mail, mail.customer)
    extra_headers: list[tuple[str, str]] = [("X-Mailer-Delivery", delivery_header(settings, mail.id))]
    context, extra_headers = header_hooks.decorate(settings, mail, context, extra_headers)
    # Campaign mail renders with the campaign's data, subjects and compile cache key
    # (headers.render_args), and gets its open pixel after rendering (headers.after_render).
    data, options = header_hooks.render_args(settings, mail, context)
    rendered = renderer.render(mail.kind, mail.locale, data, context=context, **options)
    return header_hooks.after_render(context, rendered), extra_headers


def compose(settings: Settings, renderer, signer, mail: MailContext, *, utf8: bool | None = None) -> Composed:
    """Render and assemble the signed message for one delivery.

    ``utf8`` (RFC 6532 headers, sent with SMTPUTF8) defaults to what the addresses need:
    an internationalized local part cannot be written any other way.
    """
    if utf8 is None:
        utf8 = needs_smtputf8(settings, mail.to_address, mail.purpose)
    rendered, extra_headers = personalized(settings, renderer, mail)
    # What the mail is and its language (RFC 3282): the outbox index shows both.
    extra_headers = [*extra_headers, ("X-Mailer-Kind", mail.kind), ("Content-Language", rendered.locale)]
    from_name, from_addr = from_parts(settings, mail.purpose)
    to_addr = mail.to_address if utf8 else ascii_form(mail.to_address)
    mid = message_id(settings, mail.id)
    customer = mail.customer
    to_name = " ".join(p for p in ((customer.first_name, customer.last_name) if customer else ()) if p) or None
    raw = build(MailParts(from_name=from_name or None, from_address=from_addr, to_name=to_name,
                          to_address=to_addr, subject=rendered.subject, text=rendered.text,
                          html=rendered.html, message_id=mid, date=utcnow(), headers=extra_headers, utf8=utf8))
    return Composed(envelope_from=return_path(settings, mail.id), recipient=to_addr,
                    message=signer.sign(raw), message_id=mid, rendered=rendered)
