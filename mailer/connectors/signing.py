"""Which secret signs a shop's webhooks, and the check: base64 HMAC-SHA256 of the raw body.

Secrets come from ``MAILER_SHOPIFY_SECRETS`` / ``MAILER_WOOCOMMERCE_SECRETS``
(comma-separated ``shop=secret`` pairs; they win) or from ``connector_shops`` (``mailer
connect``; stored sealed, see :func:`mailer.instance_secrets.seal`).  The comparison is constant time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer import instance_secrets
from mailer.errors import ConfigurationError
from mailer.models import ConnectorShop
from mailer.settings import Settings

PLATFORMS = ("shopify", "woocommerce")
#: Longest shop name kept (connector_shops.shop is VARCHAR(255)).
MAX_SHOP_CHARS = 255
_SHOPIFY_DOMAIN = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}\.myshopify\.com$")
_STORE_URL = re.compile(r"^https?://[^\s/?#]{1,200}(/[^\s?#]{0,200})?$")


def normalize_shop(platform: str, value: str | None) -> str | None:
    """The shop's name as mailer keys it, or None when it is not a valid one.

    Shopify: the ``*.myshopify.com`` domain, lower case.  WooCommerce: the store URL
    (``X-WC-Webhook-Source``), lower-case scheme and host, without a trailing slash.
    """
    text = (value or "").strip()
    if not text or len(text) > MAX_SHOP_CHARS:
        return None
    if platform == "shopify":
        text = text.lower()
        return text if _SHOPIFY_DOMAIN.match(text) else None
    if not _STORE_URL.match(text):
        return None
    scheme, rest = text.split("://", 1)
    host, _, path = rest.partition("/")
    path = path.rstrip("/")
    return f"{scheme.lower()}://{host.lower()}" + (f"/{path}" if path else "")


def parse_pairs(platform: str, text: str, setting: str) -> dict[str, str]:
    """``shop=secret,shop2=secret2`` as a dict; a malformed pair is a ConfigurationError naming it."""
    out: dict[str, str] = {}
    for i, pair in enumerate(p.strip() for p in (text or "").split(",")):
        if not pair:
            continue
        shop, sep, secret = pair.rpartition("=") if platform == "woocommerce" else pair.partition("=")
        name = normalize_shop(platform, shop)
        if not sep or name is None or not secret.strip():
            raise ConfigurationError(f"{setting}: pair {i + 1} is not shop=secret with a valid "
                                     f"{'*.myshopify.com domain' if platform == 'shopify' else 'store URL'}")
        out[name] = secret.strip()
    return out


@functools.lru_cache(maxsize=32)
def _pairs(platform: str, text: str) -> dict[str, str]:
    setting = "MAILER_SHOPIFY_SECRETS" if platform == "shopify" else "MAILER_WOOCOMMERCE_SECRETS"
    return parse_pairs(platform, text, setting)


def env_secrets(settings: Settings, platform: str) -> dict[str, str]:
    """The secrets the environment gives (parsed once per distinct setting value)."""
    return dict(_pairs(platform, settings.shopify_secrets if platform == "shopify" else settings.woocommerce_secrets))


def secret_for(session: Session | None, settings: Settings, platform: str, shop: str) -> str | None:
    """The secret for ``shop``: the environment's, else the one ``mailer connect`` stored (needs ``session``)."""
    secret = _pairs(platform, settings.shopify_secrets if platform == "shopify" else settings.woocommerce_secrets
                    ).get(shop)
    if secret or session is None:
        return secret
    # One lookup on uq_connector_shops_platform_shop.
    stored = session.execute(select(ConnectorShop.secret).where(ConnectorShop.platform == platform,
                                                                ConnectorShop.shop == shop)).scalar_one_or_none()
    if not stored:
        return None
    # Stored sealed (mailer connect): opened here, kept in clear only in this call.
    return instance_secrets.unseal(settings, stored, platform=platform, shop=shop, column="secret")


def sign(secret: str, raw: bytes) -> str:
    """The signature a shop sends: base64 of HMAC-SHA256(secret, body)."""
    return base64.b64encode(hmac.new(secret.encode("utf-8"), raw, hashlib.sha256).digest()).decode("ascii")


def valid(secret: str | None, raw: bytes, given: str | None) -> bool:
    """Is ``given`` the signature of ``raw`` under ``secret``? Constant-time comparison."""
    if not secret or not given:
        return False
    return hmac.compare_digest(sign(secret, raw).encode("ascii"), given.strip().encode("ascii", "replace"))
