"""DKIM signing (RFC 6376, RFC 8463) through OpenSSL via ``cryptography``.

Placeholder signer for the foundation: returns the message unchanged when no key is
configured.  The delivery issue replaces this with rsa-sha256 + ed25519-sha256 signing.
"""

from __future__ import annotations

from mailer.settings import Settings


class Signer:
    def __init__(self, keys: list | None = None):
        self.keys = keys or []

    @classmethod
    def from_settings(cls, settings: Settings) -> "Signer":
        return cls([])

    def sign(self, message: bytes) -> bytes:
        return message
