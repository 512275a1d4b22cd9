"""Tracking and the recipient's own links: tokens, opens, clicks, unsubscribe, preferences, CSAT.

Every link a recipient may follow carries a token from :mod:`mailer.tokens`: ids only
(delivery, customer, purpose, order number), signed with a key of its own per link
kind, and expiring ``token_ttl_days`` after the delivery was created.  The expiry is
counted from the delivery's creation, not from "now", so a retried delivery composes
exactly the same links.

Token kinds and payloads:

=========  ==========================================  ===============================
purpose    payload                                      link
=========  ==========================================  ===============================
``o``      ``{"d": delivery}``                          ``/t/o/<token>.gif`` open pixel
``c``      ``{"d": delivery, "u": url}``                ``/t/c/<token>`` click redirect
``u``      ``{"d": delivery, "c": customer, "p": p}``   ``/u/<token>`` unsubscribe
``p``      ``{"c": customer}``                          ``/preferences/<token>``
``csat``   ``{"o": order, "c": customer, "r": 1..5}``   ``/csat/<token>`` survey rating
=========  ==========================================  ===============================

Machine opens: an open fetched by a privacy proxy (Apple Mail Privacy Protection,
Gmail's and Yahoo's image proxies), by a mail-security scanner, or within
``machine_open_window_s`` seconds of the SMTP accept is recorded as ``machine_open``
and left out of unique-open figures.

IP addresses are stored truncated (IPv4 /24, IPv6 /48): enough to tell proxies apart,
not enough to locate a person.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from urllib.parse import quote, urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer import tokens
from mailer.clock import utcnow
from mailer.consent import ledger as consent
from mailer.db import dialect_insert
from mailer.errors import TokenError
from mailer.models import (
    ConsentAction,
    ConsentSource,
    ConsentState,
    CsatRating,
    Customer,
    Delivery,
    TrackingEvent,
    TrackingKind,
)
from mailer.settings import Settings

#: Token purposes (each signs with its own derived key).
OPEN, CLICK, UNSUBSCRIBE, PREFERENCES, CSAT = "o", "c", "u", "p", "csat"

#: Ratings a CSAT link may carry.
CSAT_RATINGS = range(1, 6)

#: User agents of image proxies and scanners that fetch images without a person looking.
MACHINE_USER_AGENTS = re.compile(
    r"GoogleImageProxy|ggpht\.com|YahooMailProxy|Barracuda|Mimecast|Proofpoint|Zscaler|"
    r"bot\b|crawler|spider|python-requests|curl/|Go-http-client|HeadlessChrome",
    re.I,
)
#: Apple Mail Privacy Protection fetches with exactly this user agent.
APPLE_MPP_USER_AGENT = "Mozilla/5.0"
#: Networks of known privacy proxies (Apple's 17.0.0.0/8 egress).
MACHINE_NETWORKS = tuple(ipaddress.ip_network(n) for n in ("17.0.0.0/8",))

#: Longest URL a click token may carry, characters.
MAX_URL_CHARS = 1500


# -- tokens ----------------------------------------------------------------------------------
def _ttl_s(settings: Settings) -> int:
    return settings.token_ttl_days * 86_400


def _base(delivery: Delivery | None) -> float | None:
    """Expiry base: the delivery's creation time, so a retry composes identical tokens."""
    created = getattr(delivery, "created_at", None) if delivery is not None else None
    return created.timestamp() if created is not None else None


def _url(settings: Settings, path: str) -> str:
    return settings.base_url.rstrip("/") + path


def open_url(settings: Settings, delivery: Delivery) -> str:
    token = tokens.sign(settings.signing_keys, OPEN, {"d": delivery.id}, ttl_s=_ttl_s(settings),
                        now=_base(delivery))
    return _url(settings, f"/t/o/{token}.gif")


def trackable(url: str) -> bool:
    """Only absolute http(s) links are wrapped; mailto:, tel:, anchors stay as they are."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and len(url) <= MAX_URL_CHARS


def click_url(settings: Settings, delivery: Delivery, url: str) -> str:
    """The tracking URL for ``url``; the target is signed into the token (no open redirect)."""
    if not trackable(url):
        return url
    token = tokens.sign(settings.signing_keys, CLICK, {"d": delivery.id, "u": url}, ttl_s=_ttl_s(settings),
                        now=_base(delivery))
    return _url(settings, f"/t/c/{token}")


def unsubscribe_token(settings: Settings, delivery: Delivery) -> str:
    return tokens.sign(settings.signing_keys, UNSUBSCRIBE,
                       {"d": delivery.id, "c": delivery.customer_id, "p": delivery.purpose},
                       ttl_s=_ttl_s(settings), now=_base(delivery))


def unsubscribe_url(settings: Settings, delivery: Delivery) -> str:
    return _url(settings, f"/u/{unsubscribe_token(settings, delivery)}")


def preferences_url(settings: Settings, customer_id: int | None, delivery: Delivery | None = None) -> str:
    token = tokens.sign(settings.signing_keys, PREFERENCES, {"c": customer_id}, ttl_s=_ttl_s(settings),
                        now=_base(delivery))
    return _url(settings, f"/preferences/{token}")


def csat_urls(settings: Settings, order_number: str, customer_id: int | None) -> dict:
    """``rating_urls`` (five links, rating 1..5) and ``comment_url`` for a CSAT survey mail.

    Ratings are keyed by order number: the last rating followed for an order wins.
    """
    def one(rating: int | None) -> str:
        payload = {"o": str(order_number), "c": customer_id}
        if rating is not None:
            payload["r"] = rating
        return _url(settings, "/csat/" + tokens.sign(settings.signing_keys, CSAT, payload,
                                                      ttl_s=_ttl_s(settings)))

    return {"rating_urls": [one(r) for r in CSAT_RATINGS], "comment_url": one(None)}


def unsubscribe_mailto(settings: Settings, delivery: Delivery) -> str:
    """``mailto:`` form of the unsubscribe link; the token travels in the subject, which
    survives relays that fold the case of local parts (see ``mailer unsubscribe ingest``)."""
    return _mailto(settings, unsubscribe_token(settings, delivery))


def _mailto(settings: Settings, token: str) -> str:
    return f"mailto:unsubscribe@{settings.bounce_domain}?subject={quote('unsubscribe ' + token)}"


def unsubscribe_links(settings: Settings, delivery: Delivery) -> tuple[str, str]:
    """(:func:`unsubscribe_url`, :func:`unsubscribe_mailto`) from one token: a marketing
    mail needs both and the token is the same, so it is signed once."""
    token = unsubscribe_token(settings, delivery)
    return _url(settings, f"/u/{token}"), _mailto(settings, token)


@dataclass(frozen=True)
class Link:
    """A verified token's meaning."""

    delivery_id: int | None
    customer_id: int | None = None
    purpose: str | None = None
    url: str | None = None
    order_number: str | None = None
    rating: int | None = None


def _int_or_none(value) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TokenError("token payload has a non-integer id")
    return value


def read(settings: Settings, purpose: str, token: str) -> Link:
    """Verify a token for ``purpose`` and return what it points at (TokenError otherwise)."""
    body = tokens.verify(settings.signing_keys, purpose, token)
    if purpose == CLICK:
        url = body.get("u")
        if not isinstance(url, str) or not trackable(url):
            raise TokenError("click token has no valid target URL")
        return Link(_int_or_none(body.get("d")), url=url)
    if purpose == CSAT:
        order = body.get("o")
        rating = body.get("r")
        if not isinstance(order, str) or (rating is not None and rating not in CSAT_RATINGS):
            raise TokenError("csat token payload is invalid")
        return Link(None, customer_id=_int_or_none(body.get("c")), order_number=order, rating=rating)
    purpose_name = body.get("p")
    if purpose_name is not None and not isinstance(purpose_name, str):
        raise TokenError("token purpose is not text")
    return Link(_int_or_none(body.get("d")), customer_id=_int_or_none(body.get("c")), purpose=purpose_name)


# -- machine opens ---------------------------------------------------------------------------
def anonymize_ip(ip: str | None) -> str | None:
    """Truncate an address to its /24 (IPv4) or /48 (IPv6) network."""
    if not ip:
        return None
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False).network_address)


def is_machine(settings: Settings, *, user_agent: str | None, ip: str | None, sent_at: datetime | None,
               now: datetime) -> str | None:
    """Why an open looks automated (proxy, scanner, too soon after delivery), or None."""
    ua = (user_agent or "").strip()
    if not ua:
        return "no user agent"
    if ua == APPLE_MPP_USER_AGENT:
        return "Apple Mail Privacy Protection"
    if MACHINE_USER_AGENTS.search(ua):
        return "image proxy or scanner user agent"
    if ip:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            addr = None
        if addr is not None and any(addr in net for net in MACHINE_NETWORKS):
            return "privacy proxy network"
    if sent_at is not None and now - sent_at < timedelta(seconds=settings.machine_open_window_s):
        return f"within {settings.machine_open_window_s} s of delivery"
    return None


# -- recording -------------------------------------------------------------------------------
def _event(session: Session, delivery: Delivery | None, kind: TrackingKind, *, ip: str | None,
           user_agent: str | None, url: str | None = None, now: datetime | None = None) -> TrackingEvent:
    ev = TrackingEvent(delivery_id=delivery.id if delivery else None,
                       campaign_id=delivery.campaign_id if delivery else None,
                       customer_id=delivery.customer_id if delivery else None, kind=kind, url=url,
                       ip=anonymize_ip(ip), user_agent=(user_agent or "")[:500] or None,
                       occurred_at=now or utcnow())
    session.add(ev)
    return ev


def record_open(session: Session, settings: Settings, link: Link, *, ip: str | None, user_agent: str | None,
                now: datetime | None = None) -> TrackingKind | None:
    """Record an open (human or machine) for the token's delivery; None if it no longer exists."""
    now = now or utcnow()
    delivery = session.get(Delivery, link.delivery_id) if link.delivery_id else None
    if delivery is None:
        return None
    why = is_machine(settings, user_agent=user_agent, ip=ip, sent_at=delivery.sent_at, now=now)
    kind = TrackingKind.machine_open if why else TrackingKind.open
    _event(session, delivery, kind, ip=ip, user_agent=user_agent, now=now)
    return kind


def record_click(session: Session, settings: Settings, link: Link, *, ip: str | None, user_agent: str | None,
                 now: datetime | None = None) -> bool:
    """Record a click on the token's URL; False if the delivery no longer exists."""
    delivery = session.get(Delivery, link.delivery_id) if link.delivery_id else None
    if delivery is None:
        return False
    _event(session, delivery, TrackingKind.click, ip=ip, user_agent=user_agent, url=link.url, now=now)
    return True


def record_reported(session: Session, settings: Settings, delivery: Delivery, kind: str, *, url: str | None,
                    ip: str | None, user_agent: str | None, when: datetime | None,
                    machine: bool = False) -> TrackingKind:
    """Record an open or a click an ESP reported for ``delivery`` (its webhook), like our own:
    an open is a machine open when the provider says so or :func:`is_machine` finds it automated."""
    now = when or utcnow()
    if kind == "click":
        _event(session, delivery, TrackingKind.click, ip=ip, user_agent=user_agent, url=(url or "")[:2000] or None,
               now=now)
        return TrackingKind.click
    why = machine or is_machine(settings, user_agent=user_agent, ip=ip, sent_at=delivery.sent_at, now=now)
    found = TrackingKind.machine_open if why else TrackingKind.open
    _event(session, delivery, found, ip=ip, user_agent=user_agent, now=now)
    return found


@dataclass(frozen=True)
class Unsubscribed:
    customer: Customer | None
    purpose: str | None
    changed: bool


def target_of(session: Session, link: Link) -> tuple[Customer | None, str | None, Delivery | None]:
    """The customer and purpose an unsubscribe link is about."""
    delivery = session.get(Delivery, link.delivery_id) if link.delivery_id else None
    customer_id = link.customer_id or (delivery.customer_id if delivery else None)
    customer = session.get(Customer, customer_id) if customer_id else None
    purpose = link.purpose or (delivery.purpose if delivery else None)
    return customer, purpose, delivery


def unsubscribe(session: Session, settings: Settings, link: Link, *, ip: str | None, user_agent: str | None,
                source: ConsentSource = ConsentSource.unsubscribe_link) -> Unsubscribed:
    """Withdraw consent for the link's purpose (once; repeating changes nothing).

    Takes effect for every mail not yet sent: the delivery gate re-checks consent just
    before each marketing mail.
    """
    customer, purpose, delivery = target_of(session, link)
    if customer is None or customer.email is None or not purpose:
        return Unsubscribed(customer, purpose, False)  # erased or unknown: nothing left to withdraw
    if not _currently_granted(session, customer.id, purpose):
        return Unsubscribed(customer, purpose, False)
    consent.append(session, settings, customer=customer, purpose=purpose, action=ConsentAction.withdrawn,
                   source=source, proof=consent.Proof(ip=ip, user_agent=user_agent,
                                                      form_id="list-unsubscribe" if delivery else None))
    _event(session, delivery, TrackingKind.unsubscribe, ip=ip, user_agent=user_agent)
    return Unsubscribed(customer, purpose, True)


def _currently_granted(session: Session, customer_id: int, purpose: str) -> bool:
    # The current-state row, one primary-key lookup; regardless of basis (soft opt-in too).
    return bool(session.execute(select(ConsentState.granted).where(ConsentState.customer_id == customer_id,
                                                                   ConsentState.purpose == purpose))
                .scalar_one_or_none())


def current_preferences(session: Session, settings: Settings, customer: Customer) -> dict[str, bool]:
    """Purpose -> granted now, for the configured purposes plus the customer's restock requests."""
    # All state rows of one customer (primary key prefix): a handful at most.
    rows = dict(session.execute(select(ConsentState.purpose, ConsentState.granted)
                                .where(ConsentState.customer_id == customer.id)).all())
    prefs = {p: bool(rows.get(p)) and consent.has_consent(session, settings, customer.id, p)
             for p in settings.purposes}
    for purpose, granted in sorted(rows.items()):
        if purpose.startswith("restock:") and granted:
            prefs[purpose] = True
    return prefs


def set_preferences(session: Session, settings: Settings, customer: Customer, wanted: dict[str, bool], *,
                    ip: str | None, user_agent: str | None, wording: str | None = None) -> list[tuple[str, str]]:
    """Append one consent event per purpose whose state changes; return (purpose, action) pairs."""
    if customer.email is None:
        return []
    current = current_preferences(session, settings, customer)
    changes: list[tuple[str, str]] = []
    for purpose, want in wanted.items():
        if purpose not in current or current[purpose] == want:
            continue
        action = ConsentAction.granted if want else ConsentAction.withdrawn
        consent.append(session, settings, customer=customer, purpose=purpose, action=action,
                       source=ConsentSource.preference_centre,
                       proof=consent.Proof(ip=ip, user_agent=user_agent, form_id="preference-centre",
                                           wording=wording if want else None,
                                           wording_version="preferences-1" if want and wording else None))
        changes.append((purpose, action.value))
    return changes


def record_rating(session: Session, link: Link, *, rating: int | None = None, comment: str | None = None,
                  now: datetime | None = None) -> CsatRating | None:
    """Store the rating for the link's order; the last click (or comment) wins."""
    rating = rating if rating is not None else link.rating
    now = now or utcnow()
    existing = session.execute(select(CsatRating).where(CsatRating.order_number == link.order_number)
                               ).scalar_one_or_none()
    if existing is None:
        if rating is None:
            return None  # a comment before any rating: nothing to attach it to
        values = dict(order_number=link.order_number, customer_id=link.customer_id, rating=rating,
                      comment=comment, updated_at=now)
        # Two clicks racing for a new order: the upsert keeps one row, the later write wins.
        stmt = dialect_insert(session, CsatRating).values(**values)
        stmt = stmt.on_conflict_do_update(index_elements=["order_number"],
                                          set_=dict(rating=rating, updated_at=now))
        session.execute(stmt)
        return session.execute(select(CsatRating).where(CsatRating.order_number == link.order_number)
                               ).scalar_one()
    if rating is not None:
        existing.rating = rating
    if comment is not None:
        existing.comment = comment[:5000]
    existing.updated_at = now
    return existing


# -- mailto: unsubscribe ------------------------------------------------------------------------
_MAILTO_SUBJECT = re.compile(r"\bunsubscribe\s+([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)", re.I)


def token_from_subject(subject: str | None) -> str | None:
    """The token of an ``unsubscribe <token>`` subject (the List-Unsubscribe mailto form)."""
    m = _MAILTO_SUBJECT.search(subject or "")
    return m.group(1) if m else None


def unsubscribe_by_mail(session: Session, settings: Settings, raw: bytes) -> Unsubscribed | None:
    """Apply an unsubscribe request mailed to the List-Unsubscribe ``mailto:`` address.

    Returns None when the message carries no valid token (it changes nothing then).
    """
    try:
        msg = message_from_bytes(raw, policy=policy.default)
        subject = str(msg.get("Subject", ""))
    except Exception:
        return None
    token = token_from_subject(subject)
    if token is None:
        return None
    try:
        link = read(settings, UNSUBSCRIBE, token)
    except TokenError:
        return None
    if not link.purpose or link.purpose == "transactional":
        return None
    return unsubscribe(session, settings, link, ip=None, user_agent="mailto")
