"""Milliseconds per message for DKIM signing: mailer (OpenSSL via cryptography) vs dkimpy.

Run: python bench/dkim_sign.py [messages]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import dkim as dkimpy

from mailer.clock import utcnow
from mailer.message.dkim import Signer, generate_keys, load_key
from mailer.message.mime import MailParts, build


def main(n: int = 300) -> None:
    root = Path(tempfile.mkdtemp())
    rsa_path, ed_path = generate_keys(root)
    html = "<html><body>" + "<p>Spring sale on linen shirts and summer dresses.</p>" * 120 + "</body></html>"
    raw = build(MailParts(from_name="Northwind Shop", from_address="shop@example.com", to_name="Zoë",
                          to_address="zoe@example.org", subject="Spring sale", text=html, html=html,
                          message_id="<1.a@example.com>", date=utcnow(),
                          headers=[("List-Unsubscribe", "<https://shop.example.com/u/x>"),
                                   ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]))
    rsa = Signer("example.com", [load_key(rsa_path, algorithm="rsa-sha256", selector="s", setting="bench")])
    dual = Signer("example.com", [load_key(ed_path, algorithm="ed25519-sha256", selector="e", setting="bench"),
                                  load_key(rsa_path, algorithm="rsa-sha256", selector="s", setting="bench")])
    pem = rsa_path.read_bytes()

    def timed(label, fn):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        ms = (time.perf_counter() - start) / n * 1000
        print(f"{label:<40} {ms:7.3f} ms/message")
        return ms

    print(f"message size {len(raw)} bytes, {n} messages")
    ours = timed("mailer rsa-sha256 (OpenSSL)", lambda: rsa.sign(raw))
    timed("mailer ed25519-sha256 + rsa-sha256", lambda: dual.sign(raw))
    theirs = timed("dkimpy rsa-sha256 (pure Python RSA)", lambda: dkimpy.sign(
        raw, b"s", b"example.com", pem, canonicalize=(b"relaxed", b"relaxed")))
    print(f"dkimpy / mailer (rsa): {theirs / ours:.1f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
