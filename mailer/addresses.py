"""E-mail addresses: validation, normalization and the salted hash kept after erasure."""

from __future__ import annotations

import hashlib
import hmac
import re
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

from mailer.errors import InvalidAddress

#: RFC 5322 dot-atom local part: the common case that needs no full parse.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
#: RFC 5321 limits, characters.
MAX_LOCAL = 64
MAX_ADDRESS = 254


@lru_cache(maxsize=4096)
def _domain(domain: str) -> str:
    """Validate a domain once (email-validator's IDNA/UTS-46 checks are the costly part)."""
    try:
        info = validate_email(f"a@{domain}", check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise InvalidAddress(str(exc), field="email") from exc
    return info.domain.lower()


def normalize(address: str, *, check_deliverability: bool = False) -> str:
    """Validate and normalize one address (see :func:`_normalize`)."""
    if isinstance(address, str) and not check_deliverability:
        local, at, domain = address.strip().rpartition("@")
        if at and len(local) <= MAX_LOCAL and len(address.strip()) <= MAX_ADDRESS and _DOT_ATOM.fullmatch(local):
            # Fast path: plain ASCII local part; the domain is validated once per domain.
            try:
                return f"{local.lower()}@{_domain(domain)}"
            except InvalidAddress as exc:
                raise InvalidAddress(f"invalid e-mail address {address.strip()!r}: {exc}", field="email") from exc
    return _normalize(address, check_deliverability=check_deliverability)


@lru_cache(maxsize=65536)
def _normalize(address: str, *, check_deliverability: bool = False) -> str:
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
