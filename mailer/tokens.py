"""Signed tokens for links in mail: open pixel, click, unsubscribe, preferences, confirm.

A token is ``base64url(payload) "." base64url(HMAC-SHA256(key, purpose || payload))``
where the payload is compact JSON of ids (never an address or a name) and an expiry
(Unix seconds).  Each token *purpose* ("o", "c", "u", "p", "confirm", "csat") signs
with its own derived key, so a token minted for one link is refused by another.
Forged, tampered, truncated or expired tokens raise :class:`~mailer.errors.TokenError`.
Parsing is strict: only the canonical unpadded base64url text of each part is accepted
(no ``=`` padding, no stray or trailing characters, no non-zero unused bits), so one
token has exactly one spelling.

Key rotation: ``secret`` may be one key or a sequence of keys, newest first
(``Settings.signing_keys``).  :func:`sign` uses the newest; :func:`verify` accepts a
token signed with any of them, so links already sent keep working until their key
is removed from the list.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import re
import time
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii
from typing import Any

from mailer.errors import ConfigurationError, TokenError

#: Length of the MAC kept in a token, bytes (128 bits).
MAC_BYTES = 16

#: One key, or several newest first.
Keys = str | Sequence[str]


def _keys(secret: Keys) -> tuple[str, ...]:
    keys = (secret,) if isinstance(secret, str) else tuple(secret)
    if not keys:
        raise ConfigurationError("no secret key configured for tokens (MAILER_SECRET_KEYS is empty)")
    return keys


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def _b64d(text: str) -> bytes:
    """Decode canonical unpadded base64url; anything else (padding, junk, slack bits) is a TokenError."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise TokenError("token is not canonical base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise TokenError("token is not valid base64") from exc
    if _b64e(raw) != text:
        raise TokenError("token is not canonical base64url")
    return raw


def _strict_constant(name: str):
    raise ValueError(f"{name} is not allowed in a token")


@functools.lru_cache(maxsize=256)
def _key(secret: str, purpose: str) -> bytes:
    # One HMAC per (key, purpose) per process instead of one per token: a campaign mail
    # signs about 18 links (bench/delivery_path.py).
    return hmac.new(secret.encode("utf-8"), b"mailer-token:" + purpose.encode("ascii"), hashlib.sha256).digest()


@functools.lru_cache(maxsize=256)
def _mac_base(secret: str, purpose: str) -> hmac.HMAC:
    # The keyed HMAC state (inner and outer pads hashed) once per (key, purpose); each token
    # copies it and hashes only its payload: one HMAC per link (bench/compose.py).
    return hmac.new(_key(secret, purpose), digestmod=hashlib.sha256)


def _compact_json(body: dict[str, Any]) -> str:
    """``json.dumps(body, separators=(",", ":"), sort_keys=True)``, byte for byte.

    Token payloads are flat objects of ints and strings (ids, a URL, the expiry): those are
    written directly with the JSON module's own C string escaper, without the encoder's
    generic machinery (half the CPU of a token, bench/compose.py).  Anything else (a
    bool, None, a float, a nested value) goes through ``json.dumps``.
    """
    parts = []
    for name in sorted(body):
        value = body[name]
        kind = type(value)
        if type(name) is not str:
            break
        if kind is int:
            parts.append(f"{encode_basestring_ascii(name)}:{int.__repr__(value)}")
        elif kind is str:
            parts.append(f"{encode_basestring_ascii(name)}:{encode_basestring_ascii(value)}")
        else:
            break
    else:
        return "{" + ",".join(parts) + "}"
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def sign(secret: Keys, purpose: str, payload: dict[str, Any], *, ttl_s: int | None = None,
         now: float | None = None) -> str:
    """Mint a token for ``purpose`` carrying ``payload`` (ids only), valid ``ttl_s`` seconds."""
    body = dict(payload)
    if ttl_s is not None:
        body["x"] = int((now if now is not None else time.time()) + ttl_s)
    raw = _compact_json(body).encode("utf-8")
    mac = _mac_base(_keys(secret)[0], purpose).copy()
    mac.update(raw)
    return _b64e(raw) + "." + _b64e(mac.digest()[:MAC_BYTES])


def verify(secret: Keys, purpose: str, token: str, *, now: float | None = None) -> dict[str, Any]:
    """Check a token's MAC and expiry; return its payload (without the expiry)."""
    if not isinstance(token, str) or token.count(".") != 1 or len(token) > 2048:
        raise TokenError("malformed token")
    body_b64, mac_b64 = token.split(".")
    raw, mac = _b64d(body_b64), _b64d(mac_b64)
    if len(mac) != MAC_BYTES:
        raise TokenError("token signature has the wrong length")
    matches = [hmac.compare_digest(mac, hmac.new(_key(key, purpose), raw, hashlib.sha256).digest()[:MAC_BYTES])
               for key in _keys(secret)]  # every key is tried, so timing does not tell which one matched
    if not any(matches):
        raise TokenError("token signature does not match (forged or tampered)")
    try:
        body = json.loads(raw, parse_constant=_strict_constant)
    except ValueError as exc:  # pragma: no cover - only reachable with the right key
        raise TokenError("token payload is not JSON") from exc
    if not isinstance(body, dict):
        raise TokenError("token payload is not an object")
    expiry = body.pop("x", None)
    if expiry is not None and (now if now is not None else time.time()) > expiry:
        raise TokenError("token expired")
    return body
