"""E-mail addresses: validation, normalization and the salted hash kept after erasure."""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

from mailer.errors import InvalidAddress


@lru_cache(maxsize=65536)
def normalize(address: str, *, check_deliverability: bool = False) -> str:
    """Validate syntax (no DNS by default) and return the normalized address.

    The whole address is lower-cased (the domain IDNA-decoded to Unicode).  RFC 5321
    allows case-sensitive local parts, but no mailbox provider our shops meet uses
    them, while shops export the same customer with different casing; like listmonk
    and Klaviyo we treat addresses case-insensitively, so one person is one customer.
    """
    if not isinstance(address, str) or not address.strip():
        raise InvalidAddress("e-mail address is empty", field="email")
    raw = address.strip()
    if any(c in raw for c in "\r\n\x00"):
        raise InvalidAddress(f"e-mail address {raw!r} contains a line break or NUL", field="email")
    try:
        info = validate_email(raw, check_deliverability=check_deliverability, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise InvalidAddress(f"invalid e-mail address {raw!r}: {exc}", field="email") from exc
    local, _, domain = info.normalized.rpartition("@")
    return f"{local.lower()}@{domain.lower()}"


def ascii_form(address: str) -> str:
    """The address with an IDNA (punycode) domain when the local part is ASCII; unchanged otherwise."""
    local, _, domain = address.rpartition("@")
    if local.isascii() and not domain.isascii():
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    return address


def email_hash(address: str, salt: bytes) -> str:
    """Salted HMAC-SHA256 of the case-folded address: the tombstone and consent-chain subject."""
    return hmac.new(salt, address.strip().casefold().encode("utf-8"), hashlib.sha256).hexdigest()
