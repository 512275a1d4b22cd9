"""Test keys and a stub DNS so dkimpy can verify mailer's DKIM signatures independently."""

from __future__ import annotations

from pathlib import Path

import dkim as dkimpy

from mailer.message.dkim import Signer, generate_keys, load_key

DOMAIN = "example.com"
RSA_SELECTOR = "mailer"
ED_SELECTOR = "mailer-ed"

_cache: dict[str, tuple[Path, Path]] = {}


def key_files(tmp_root: Path) -> tuple[Path, Path]:
    """(rsa.pem, ed25519.pem), generated once per test session directory."""
    key = str(tmp_root)
    if key not in _cache:
        _cache[key] = generate_keys(tmp_root / "dkim")
    return _cache[key]


def dkim_settings(tmp_root: Path, *, rsa: bool = True, ed25519: bool = True) -> dict:
    rsa_path, ed_path = key_files(tmp_root)
    return dict(dkim_domain=DOMAIN, dkim_selector=RSA_SELECTOR, dkim_ed25519_selector=ED_SELECTOR,
                dkim_rsa_key=str(rsa_path) if rsa else "", dkim_ed25519_key=str(ed_path) if ed25519 else "")


def signer(tmp_root: Path, *, rsa: bool = True, ed25519: bool = True) -> Signer:
    rsa_path, ed_path = key_files(tmp_root)
    keys = []
    if ed25519:
        keys.append(load_key(ed_path, algorithm="ed25519-sha256", selector=ED_SELECTOR, setting="test"))
    if rsa:
        keys.append(load_key(rsa_path, algorithm="rsa-sha256", selector=RSA_SELECTOR, setting="test"))
    return Signer(DOMAIN, keys)


def stub_dns(tmp_root: Path):
    """A dnsfunc for dkimpy answering the TXT records of both test keys (and nothing else)."""
    records = dict(signer(tmp_root).dns_records())

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name.decode("ascii").rstrip("."), "").encode("ascii")

    return dnsfunc


def verify_all(message: bytes, tmp_root: Path) -> list[tuple[str, bool]]:
    """[(algorithm, verified)] for every DKIM-Signature in the message, checked by dkimpy."""
    d = dkimpy.DKIM(message)
    dns = stub_dns(tmp_root)
    out = []
    count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    sigs = [value for name, value in d.headers if name.lower() == b"dkim-signature"]
    for i in range(count):
        algo = dkimpy.util.parse_tag_value(sigs[i]).get(b"a", b"?").decode()
        try:
            ok = bool(dkimpy.DKIM(message).verify(idx=i, dnsfunc=dns))
        except dkimpy.ValidationError:  # e.g. "body hash mismatch"
            ok = False
        out.append((algo, ok))
    return out


def signed_header_names(message: bytes, algorithm: str) -> list[str]:
    d = dkimpy.DKIM(message)
    for name, value in d.headers:
        if name.lower() == b"dkim-signature":
            tags = dkimpy.util.parse_tag_value(value)
            if tags[b"a"].decode() == algorithm:
                return tags[b"h"].decode().replace(" ", "").split(":")
    raise AssertionError(f"no {algorithm} signature")
