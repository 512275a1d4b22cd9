"""DKIM signing (RFC 6376 rsa-sha256, RFC 8463 ed25519-sha256) through OpenSSL via ``cryptography``.

Every mail leaves signed when ``MAILER_DKIM_DOMAIN`` and at least one key are set:

* ``MAILER_DKIM_RSA_KEY``      PEM file of an RSA key (2048 bits recommended, 1024 minimum),
                               published under ``MAILER_DKIM_SELECTOR``.
* ``MAILER_DKIM_ED25519_KEY``  PEM file of an Ed25519 key, published under
                               ``MAILER_DKIM_ED25519_SELECTOR``.

Both keys set means dual signing: two independent ``DKIM-Signature`` headers, so a
receiver that does not know Ed25519 still finds a valid RSA signature.  Canonicalization
is relaxed/relaxed.  The signature covers :data:`SIGNED_HEADERS` that the mail has
(From, To, Subject, Date, Message-ID, the MIME headers, List-Unsubscribe and
List-Unsubscribe-Post, ...), and names the identity headers once more than they occur
("over-signing") so a header added in transit breaks the signature instead of slipping in.

dkimpy does RSA in pure Python (about 8 ms per message); here the private-key operation
is one OpenSSL call (well under a millisecond for Ed25519, about 1 ms for RSA-2048).
Tests verify every signature with dkimpy as an independent implementation.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from mailer.errors import ConfigurationError
from mailer.settings import Settings

#: Headers signed when present, in this order (lower case, as they appear in ``h=``).
SIGNED_HEADERS: tuple[str, ...] = (
    "from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id",
    "in-reply-to", "references", "mime-version", "content-type", "content-transfer-encoding",
    "list-id", "list-unsubscribe", "list-unsubscribe-post", "feedback-id",
)
#: Headers listed once more than they occur, so an extra copy added later fails verification.
OVERSIGNED: frozenset[str] = frozenset({"from", "reply-to", "to", "cc", "subject", "date", "message-id",
                                        "list-unsubscribe", "list-unsubscribe-post"})
#: RFC 8301: verifiers must reject RSA keys below 1024 bits.
MIN_RSA_BITS = 1024

_WSP_RUN = re.compile(rb"[ \t]+")
_CRLF_WSP = re.compile(rb"\r\n(?=[ \t])")
_TRAILING_WSP = re.compile(rb"[ \t]+\r\n")


# -- canonicalization (RFC 6376 section 3.4, relaxed) ----------------------------------------
def relaxed_header(name: bytes, value: bytes) -> bytes:
    """``name:value`` canonicalized: lower-case name, unfolded, runs of WSP as one SP, trimmed."""
    value = _CRLF_WSP.sub(b"", value)
    value = value.replace(b"\r\n", b"")
    value = _WSP_RUN.sub(b" ", value).strip(b" ")
    return name.strip().lower() + b":" + value


#: Spaces :func:`_may_change` looks at one by one before it searches for the two-byte patterns.
SPACE_PROBES = 64


def _may_change(body: bytes) -> bool:
    """False only when the body has no tab, no double space and no space before a CR.

    The base64 bodies we sign have a handful of spaces (in their part headers) and none
    elsewhere, so looking at the byte after each space (single-byte ``find``, memchr
    speed) answers in about 1 us, where the substring searches for ``b"  "`` and
    ``b" \r\n"`` took about 90 us on a 40 KB mail (bench/compose.py).  A body with many
    spaces falls back to those searches after :data:`SPACE_PROBES` of them.
    """
    if b"\t" in body:
        return True
    at = body.find(b" ")
    for _ in range(SPACE_PROBES):
        if at < 0:
            return False
        if body[at + 1:at + 2] in (b" ", b"\r"):
            return True
        at = body.find(b" ", at + 1)
    return b"  " in body or b" \r" in body


def relaxed_body(body: bytes) -> bytes:
    """Body canonicalized: WSP runs as one SP, no WSP at line ends, no trailing empty lines."""
    # Fast path (bench/campaign_throughput.py: 0.64 ms -> 0.02 ms on a 40 KB mail, the
    # largest single cost of a campaign mail): without a tab, a double space or a space
    # before a line end, both substitutions would change nothing; :func:`_may_change`
    # says so.  Our base64 bodies only have single spaces in their part headers, so they
    # always take it.
    if _may_change(body):
        body = _WSP_RUN.sub(b" ", body)
        body = _TRAILING_WSP.sub(b"\r\n", body)
    # Trailing WSP of the last line and all empty lines at the end are ignored.
    body = body.rstrip(b" \t\r\n")
    return body + b"\r\n" if body else b""


def split_message(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The header fields as (name, raw value incl. folding) and the body."""
    head, sep, body = message.partition(b"\r\n\r\n")
    if not sep:
        head, body = message, b""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            raise ValueError(f"not a header line: {line[:60]!r}")
        fields.append((name, value))
    return fields, body


# -- keys ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Key:
    """One signing key and where its public half is published."""

    algorithm: str                 # "rsa-sha256" or "ed25519-sha256"
    selector: str
    private_key: object

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey"

    def public_txt(self) -> str:
        """The TXT record value to publish at ``<selector>._domainkey.<domain>``."""
        pub = self.private_key.public_key()  # type: ignore[attr-defined]
        if self.algorithm == "ed25519-sha256":
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode("ascii")
        der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")

    def sign_digest_input(self, data: bytes) -> bytes:
        """Sign the canonicalized header data the way the algorithm says."""
        if self.algorithm == "ed25519-sha256":
            # RFC 8463: PureEdDSA over the SHA-256 hash of the data.
            return self.private_key.sign(hashlib.sha256(data).digest())  # type: ignore[attr-defined]
        return self.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[attr-defined]


def load_key(path: str | Path, *, algorithm: str, selector: str, setting: str) -> Key:
    """Load a PEM private key, checking it is the kind the setting promises."""
    p = Path(path).expanduser()
    try:
        pem = p.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{setting}: cannot read DKIM key file {str(p)!r}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"{setting}: {str(p)!r} is not an unencrypted PEM private key ({exc})") from exc
    if algorithm == "rsa-sha256":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigurationError(f"{setting}: {str(p)!r} holds a {type(key).__name__}, not an RSA key")
        if key.key_size < MIN_RSA_BITS:
            raise ConfigurationError(f"{setting}: RSA key {str(p)!r} has {key.key_size} bits; "
                                     f"DKIM needs at least {MIN_RSA_BITS} (2048 recommended)")
    elif not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigurationError(f"{setting}: {str(p)!r} holds a {type(key).__name__}, not an Ed25519 key")
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?", selector or ""):
        raise ConfigurationError(f"DKIM selector {selector!r} is not a valid DNS label sequence")
    return Key(algorithm, selector, key)


def generate_keys(directory: Path, *, rsa_bits: int = 2048) -> tuple[Path, Path]:
    """Write a new RSA and Ed25519 private key (PEM, mode 0600) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("dkim-rsa.pem", "dkim-ed25519.pem"):
        if (directory / name).exists():
            raise ConfigurationError(f"{directory / name} exists already; refusing to overwrite a key")
    out = []
    for name, key in (("dkim-rsa.pem", rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)),
                      ("dkim-ed25519.pem", ed25519.Ed25519PrivateKey.generate())):
        path = directory / name
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        path.touch(mode=0o600)
        path.write_bytes(pem)
        out.append(path)
    return out[0], out[1]


# -- signing ---------------------------------------------------------------------------------
class Signer:
    """Adds one DKIM-Signature per configured key; with no keys the message passes unchanged."""

    def __init__(self, domain: str = "", keys: list[Key] | None = None, *, clock=time.time):
        self.domain = domain
        self.keys = list(keys or [])
        self.clock = clock
        if self.keys and not re.fullmatch(r"[A-Za-z0-9.-]+", domain or ""):
            raise ConfigurationError(f"MAILER_DKIM_DOMAIN: {domain!r} is not a domain name")

    @classmethod
    def from_settings(cls, settings: Settings) -> Signer:
        keys: list[Key] = []
        if settings.dkim_ed25519_key:
            keys.append(load_key(settings.dkim_ed25519_key, algorithm="ed25519-sha256",
                                 selector=settings.dkim_ed25519_selector, setting="MAILER_DKIM_ED25519_KEY"))
        if settings.dkim_rsa_key:
            keys.append(load_key(settings.dkim_rsa_key, algorithm="rsa-sha256", selector=settings.dkim_selector,
                                 setting="MAILER_DKIM_RSA_KEY"))
        if keys and not settings.dkim_domain:
            raise ConfigurationError("MAILER_DKIM_DOMAIN is empty but DKIM keys are configured")
        return cls(settings.dkim_domain, keys)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def sign(self, message: bytes) -> bytes:
        """The message with a DKIM-Signature header per key prepended."""
        if not self.keys:
            return message
        fields, body = split_message(message)
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode("ascii")
        # DKIM takes header instances bottom-up; our mails carry each header once, but be exact.
        by_name: dict[bytes, list[bytes]] = {}
        for name, value in fields:
            by_name.setdefault(name.strip().lower(), []).append(value)
        names: list[str] = []
        hashed: list[bytes] = []
        for h in SIGNED_HEADERS:
            instances = by_name.get(h.encode("ascii"), [])
            for value in reversed(instances):
                names.append(h)
                hashed.append(relaxed_header(h.encode("ascii"), value) + b"\r\n")
            if h in OVERSIGNED:
                names.append(h)  # a missing instance hashes as nothing (RFC 6376 5.4.2)
        header_data = b"".join(hashed)
        timestamp = int(self.clock())
        signatures = []
        for key in self.keys:
            signatures.append(self._signature(key, names, body_hash, header_data, timestamp))
        return b"".join(signatures) + message

    def _signature(self, key: Key, names: list[str], body_hash: str, header_data: bytes, timestamp: int) -> bytes:
        tags = ["v=1", f"a={key.algorithm}", "c=relaxed/relaxed", f"d={self.domain}", f"s={key.selector}",
                f"t={timestamp}", "h=" + ":".join(names), f"bh={body_hash}"]
        # Fold between tags (CRLF TAB); relaxed canonicalization unfolds it again on both sides.
        lines: list[str] = []
        line = "DKIM-Signature:"
        for tag in tags:
            piece = " " + tag + ";"
            if len(line) + len(piece) > 76 and line != "DKIM-Signature:":
                lines.append(line)
                line = "\t" + piece.lstrip()
            else:
                line += piece
        lines.append(line)
        head = "\r\n".join(lines) + "\r\n\tb="
        name, _, value = head.partition(":")
        data = header_data + relaxed_header(name.encode("ascii"), value.encode("ascii"))
        sig = base64.b64encode(key.sign_digest_input(data)).decode("ascii")
        chunks = [sig[i:i + 70] for i in range(0, len(sig), 70)]
        return (head + "\r\n\t ".join(chunks) + "\r\n").encode("ascii")

    def dns_records(self) -> list[tuple[str, str]]:
        """(name, TXT value) to publish for every configured key."""
        return [(f"{k.dns_name}.{self.domain}", k.public_txt()) for k in self.keys]

    def zone_lines(self) -> list[str]:
        """The records as zone-file lines (``mailer dkim dns`` prints them; the console shows them)."""
        return [zone_line(name, value) for name, value in self.dns_records()]


#: TXT strings are limited to 255 characters: longer values are split into quoted chunks of this size.
TXT_CHUNK_CHARS = 250


def zone_line(name: str, value: str) -> str:
    """``name. IN TXT ( "chunk" "chunk" )``."""
    chunks = " ".join(f'"{value[i:i + TXT_CHUNK_CHARS]}"' for i in range(0, len(value), TXT_CHUNK_CHARS))
    return f"{name}. IN TXT ( {chunks} )"
