"""Per-delivery headers and template links: unsubscribe, preferences, tracking.

Every mail gets a ``Feedback-ID`` (``campaign:kind:type:sender``, the Gmail Postmaster
format; the sender is the domain of the stream's From: ``MAILER_MARKETING_FROM`` or
``MAILER_TRANSACTIONAL_FROM``, falling back to ``MAILER_FROM_ADDRESS``).  Marketing mail (any purpose other than ``transactional``) also gets:

* ``List-Unsubscribe: <https://.../u/TOKEN>, <mailto:unsubscribe@...?subject=...>`` and
  ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058; DKIM signs both);
* ``List-Id: "Store purpose" <purpose.domain>`` (RFC 2919);
* the template context ``unsubscribe_url`` and ``preferences_url`` as real signed links,
  which the footer shows, localized, next to the store's postal address.

Campaign mail with tracking on (and, when ``MAILER_TRACKING_REQUIRES_CONSENT`` is set,
the customer's consent for the ``tracking`` purpose) also gets ``wrap_link(url)`` for
click tracking (the renderer rewrites every http(s) link through it) and an open pixel
(``open_pixel_url``; :func:`after_render` inserts it before ``</body>`` when the
template does not place it itself).  Campaign links to ``MAILER_SHOP_DOMAINS`` get UTM
parameters first (:mod:`mailer.delivery.utm`), tracked or not.  A marketing mail of an
automation rule is decorated the same way, with the rule's name as ``utm_campaign``
(slugged), so a click on it, and the order after it, are attributed to the rule.

Everything here is a pure function of the :class:`~mailer.delivery.mail.MailContext`
and the settings: it reads no database (the send path loaded the campaign options and
the tracking permission beforehand), so a retried delivery gets exactly the same links.
"""

from __future__ import annotations

import re
from dataclasses import replace

from mailer.delivery import utm
from mailer.delivery.mail import MailContext
from mailer.rendering import TRANSACTIONAL
from mailer.settings import Settings
from mailer.tracking import service as tracking

#: The header value RFC 8058 requires for one-click unsubscribe.
ONE_CLICK = "List-Unsubscribe=One-Click"


def sender_domain(settings: Settings, purpose: str | None = None) -> str:
    """The domain of the stream's From (MAILER_MARKETING_FROM / MAILER_TRANSACTIONAL_FROM / MAILER_FROM_ADDRESS)."""
    if purpose is None:
        address = settings.from_address
    else:
        address = (settings.transactional_from if purpose == TRANSACTIONAL else settings.marketing_from) \
            or settings.from_address
    return address.rpartition("@")[2].rstrip(">").strip() or "localhost"


def list_id(settings: Settings, purpose: str) -> str:
    """``"Northwind Shop newsletter" <newsletter.example.com>``: one list per consent purpose (the
    stream every campaign and marketing automation of that purpose belongs to), on the stream's
    From domain."""
    label = re.sub(r"[^a-z0-9-]+", "-", purpose.lower()).strip("-") or "list"
    phrase = f"{settings.store_name} {purpose}"
    value = f"<{label}.{sender_domain(settings, purpose)}>"
    if phrase.isascii() and re.fullmatch(r"[\x20-\x7e]+", phrase):
        phrase = phrase.replace("\\", "").replace('"', "")
        value = f'"{phrase}" {value}'
    return value


def decorate(settings: Settings, mail: MailContext, context: dict,
             headers: list[tuple[str, str]]) -> tuple[dict, list[tuple[str, str]]]:
    """Add the links templates need and the headers the mail must carry."""
    marketing = mail.purpose != TRANSACTIONAL
    campaign = f"c{mail.campaign_id}" if mail.campaign_id else mail.kind.replace(":", "-")
    headers.append(("Feedback-ID", f"{campaign}:{mail.kind.replace(':', '-')}:"
                                   f"{'marketing' if marketing else 'transactional'}:"
                                   f"{sender_domain(settings, mail.purpose)}"))
    customer_id = mail.customer_id or (mail.customer.id if mail.customer is not None else None)
    prefs = tracking.preferences_url(settings, customer_id, mail)
    context["preferences_url"] = prefs
    if not marketing:
        # Transactional mail has nothing to unsubscribe from; the link leads to the preferences.
        context.setdefault("unsubscribe_url", prefs)
        return context, headers
    unsubscribe, mailto = tracking.unsubscribe_links(settings, mail)
    context["unsubscribe_url"] = unsubscribe
    headers.append(("List-Unsubscribe", f"<{unsubscribe}>, <{mailto}>"))
    headers.append(("List-Unsubscribe-Post", ONE_CLICK))
    headers.append(("List-Id", list_id(settings, mail.purpose)))
    options = mail.campaign if mail.campaign_id else None
    # The campaign's options, or the automation rule (no campaign): both decorate their links.
    rule = mail.automation if not mail.campaign_id else None
    tag = _utm_tagger(settings, mail, options, rule)
    tracks = (options.tracking if options is not None else bool(rule))
    if tracks and mail.id and mail.tracking_allowed:
        context["wrap_link"] = lambda url, _m=mail: tracking.click_url(settings, _m, tag(url))
        context["open_pixel_url"] = tracking.open_url(settings, mail)
    elif (options is not None or rule) and settings.shop_domains:
        context["wrap_link"] = tag
    return context, headers


def _utm_tagger(settings: Settings, mail: MailContext, options, rule: str | None = None):
    """Campaign (or automation rule) links to MAILER_SHOP_DOMAINS get their UTM parameters (mailer/delivery/utm.py)."""
    if (options is None and not rule) or not settings.shop_domains:
        return lambda url: url
    if options is not None:
        name = options.slug or f"campaign-{options.id}"
    else:
        name = utm.slug(rule, 0).replace("campaign-0", "automation")
    return lambda url: utm.tag(url, domains=settings.shop_domains, source=mail.purpose, campaign=name)


def render_args(settings: Settings, mail: MailContext, context: dict) -> tuple[dict, dict]:
    """The data and extra ``Renderer.render`` arguments for one delivery.

    Campaign deliveries store no data of their own: the campaign's data (the same for
    every recipient, read once per process by the send path) is merged in here, so a
    million deliveries do not each carry a copy of the newsletter's content.  Campaign
    mail also renders with the campaign's per-locale subjects and a compile cache of
    its own (and its per-locale preheaders, when it has any); an A/B test's mail the subjects
    and preheaders of its variant.
    """
    options = mail.campaign if mail.campaign_id else None
    if options is None:
        return mail.data, {}
    # The campaign's own data object when the delivery adds none: the renderer validates
    # and normalizes it once per campaign (Renderer._checked_data), not once per mail.
    data = {**options.data, **mail.data} if mail.data else options.data
    extra: dict = {"cache_key": f"campaign:{mail.campaign_id}"}
    # An A/B variant's subjects and preheaders override the campaign's, locale by locale.
    variant = options.variants.get(mail.variant) if mail.variant and options.variants else None
    subjects = {**options.subjects, **variant.get("subjects", {})} if variant else options.subjects
    if subjects:
        extra["subject"] = subjects
    preheaders = {**options.preheaders, **variant.get("preheaders", {})} if variant else options.preheaders
    if preheaders:
        extra["preheader"] = preheaders
    return data, extra


_BODY_END = re.compile(r"</body\s*>", re.I)


def pixel_html(url: str) -> str:
    return (f'<img src="{url}" width="1" height="1" alt="" '
            'style="display:block;width:1px;height:1px;border:0;opacity:0" />')


def after_render(context: dict, rendered):
    """Insert the open pixel before ``</body>`` unless the template already shows it."""
    url = context.get("open_pixel_url")
    if not url or url in rendered.html:
        return rendered
    html = rendered.html
    match = _last_body_end(html)
    html = html[:match.start()] + pixel_html(url) + html[match.start():] if match else html + pixel_html(url)
    return replace(rendered, html=html)


def _last_body_end(html: str) -> re.Match | None:
    """The last ``</body>`` (any case, spaces before ``>``), as a scan of the whole HTML finds it.

    Compiled templates end in a lower-case ``</body>``: ``rfind`` from the end finds it at
    once, and only the few characters after it are scanned for a later variant (the regex
    over a 40 KB mail took 40 us per mail, bench/compose.py).  Otherwise, the whole scan.
    """
    at = html.rfind("</body")
    match = _BODY_END.match(html, at) if at >= 0 else None
    start = at + 1 if match else 0
    for later in _BODY_END.finditer(html, start):  # the loop leaves the last match in `match`
        match = later
    return match
