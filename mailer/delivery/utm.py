"""UTM parameters on campaign links to the shop's own domains, so the shop's analytics agree with mailer's.

A link whose host is one of ``MAILER_SHOP_DOMAINS`` (or a subdomain of one) gets
``utm_source`` (the campaign's consent purpose, e.g. ``newsletter``), ``utm_medium=email``
and ``utm_campaign`` (the campaign's slug, :func:`slug`) — each only when the link does
not carry that parameter already.  Other links are left exactly as they are.  Applied
before click tracking, so the URL signed into the click token (and the redirect) is
the tagged one.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: Longest slug, characters.
MAX_SLUG_CHARS = 80


def slug(name: str, campaign_id: int) -> str:
    """``Spring Sale 2026!`` -> ``spring-sale-2026``; a name with no ASCII letters -> ``campaign-<id>``."""
    ascii_name = unicodedata.normalize("NFKD", (name or "").replace("ß", "ss")).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:MAX_SLUG_CHARS].strip("-")
    return text or f"campaign-{campaign_id}"


def is_shop_link(host: str | None, domains: tuple[str, ...]) -> bool:
    host = (host or "").lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in (x.lower().strip().lstrip(".") for x in domains) if d)


def tag(url: str, *, domains: tuple[str, ...], source: str, campaign: str) -> str:
    """``url`` with the missing UTM parameters when it points at a shop domain; otherwise ``url``.

    Cached: a campaign's mails carry the same links, so each is parsed once per process.
    """
    return _tag(url, tuple(domains), source, campaign)


#: Distinct (url, domains, source, campaign) kept by :func:`tag`'s cache, entries.
TAG_CACHE_ENTRIES = 4096


@functools.lru_cache(maxsize=TAG_CACHE_ENTRIES)
def _tag(url: str, domains: tuple[str, ...], source: str, campaign: str) -> str:
    if not domains:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.scheme not in ("http", "https") or not is_shop_link(parts.hostname, domains):
        return url
    present = {k for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
    wanted = [(k, v) for k, v in (("utm_source", source), ("utm_medium", "email"), ("utm_campaign", campaign))
              if k not in present]
    if not wanted:
        return url
    query = parts.query + ("&" if parts.query else "") + urlencode(wanted)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
