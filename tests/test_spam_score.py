"""Every shipped mail scores below 0.5 in SpamAssassin's local rules (no penalty points).

Every notice kind x locale and every newsletter x locale is rendered with its sample data
and the preview recipient, assembled as the real MIME message (with the marketing
headers), and scored by Debian's ``spamassassin -L -t`` (local tests only, no network,
no Bayes).  The messages go through in two mbox batches, one per core, so SpamAssassin
starts twice instead of ~70 times.  A failure names each mail and the rules it hit.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest

from mailer.message.mime import MailParts, build
from mailer.rendering import PREVIEW_UNSUBSCRIBE, Renderer, preview_context
from tests.conftest import REQUIRE, make_settings

#: Highest score a shipped mail may reach, SpamAssassin points (exclusive).
MAX_SCORE_POINTS = 0.5
#: Longest one SpamAssassin batch may take, seconds (a hang is a failure, not a threshold).
BATCH_TIMEOUT_S = 600
_STATUS = re.compile(r"^X-Spam-Status: (.*?)(?=\n\S)", re.M | re.S)
_MSGID = re.compile(r"^Message-ID: <([^>]+)>", re.M | re.I)


def _spamassassin() -> str:
    path = shutil.which("spamassassin")
    if path is None:
        msg = "needs-service: spamassassin (apt-get install spamassassin)"
        if REQUIRE:
            pytest.fail(msg + " (MAILER_REQUIRE_SERVICES=1)")
        pytest.skip(msg)
    return path


def _messages() -> dict[str, tuple[str, bytes]]:
    """Message-ID -> ("kind [locale]", the assembled message), for every shipped kind and locale."""
    renderer = Renderer(make_settings())
    out: dict[str, tuple[str, bytes]] = {}
    for n, kind in enumerate(renderer.kinds()):
        spec = renderer.spec(kind)
        sample = renderer.sample(kind)
        for m, loc in enumerate(sorted(spec.locales)):
            mail = renderer.render(kind, loc, sample, context=preview_context(renderer.settings, loc))
            headers = [("X-Mailer-Kind", kind), ("Content-Language", mail.locale)]
            if not spec.transactional:
                headers += [("List-Unsubscribe", f"<{PREVIEW_UNSUBSCRIBE}>"),
                            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
            mid = f"{n}.{m}.spamcheck@example.com"
            out[mid] = f"{kind} [{loc}]", build(MailParts(
                from_name="Northwind Shop", from_address="shop@example.com", to_name=None,
                to_address="preview@example.com", subject=mail.subject, text=mail.text, html=mail.html,
                message_id=f"<{mid}>", date=datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc), headers=headers))
    return out


def _mbox(messages: list[bytes]) -> bytes:
    parts = []
    for raw in messages:
        body = raw.replace(b"\r\n", b"\n")
        parts.append(b"From MAILER-DAEMON Mon Mar  2 09:30:00 2026\n"
                     + re.sub(rb"^(>*From )", rb">\1", body, flags=re.M) + b"\n")
    return b"".join(parts)


def _score(binary: str, home: str, mbox: bytes) -> str:
    res = subprocess.run([binary, "-L", "-t", "--mbox", "--cf=use_bayes 0", "--cf=bayes_auto_learn 0"],
                         input=mbox, capture_output=True, timeout=BATCH_TIMEOUT_S,
                         env={**os.environ, "HOME": home})
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-2000:]
    return res.stdout.decode("utf-8", errors="replace")


def test_every_kind_and_newsletter_in_every_locale_scores_below_half_a_point(tmp_path):
    # Given SpamAssassin and every shipped mail, rendered and assembled
    binary = _spamassassin()
    built = _messages()
    names = {mid: name for mid, (name, _raw) in built.items()}
    mails = {mid: raw for mid, (_name, raw) in built.items()}
    assert len(mails) >= 60
    # When SpamAssassin scores them (two batches, one per core)
    ids = sorted(mails)
    batches = [ids[0::2], ids[1::2]]
    with ThreadPoolExecutor(max_workers=2) as pool:
        outputs = list(pool.map(lambda b: _score(binary, str(tmp_path), _mbox([mails[i] for i in b])), batches))
    scores: dict[str, tuple[float, str]] = {}
    for out in outputs:
        for chunk in re.split(r"(?m)^From MAILER-DAEMON ", out):
            mid, status = _MSGID.search(chunk), _STATUS.search(chunk)
            if mid and status:
                text = re.sub(r",\s+", ",", " ".join(status.group(1).split()))  # unfold the rule list
                points = float(re.search(r"score=(-?[\d.]+)", text).group(1))
                rules = re.search(r"tests=(\S*)", text)
                scores[mid.group(1)] = (points, rules.group(1) if rules else "")
    # Then every mail was scored
    assert set(scores) == set(mails), f"not scored: {sorted(names[m] for m in set(mails) - set(scores))}"
    assert all("HTML_MESSAGE" in rules for _points, rules in scores.values())  # the report was read
    # And each scores below 0.5 (a failure shows the rules it hit)
    over = [f"{names[m]}: {points} ({rules})" for m, (points, rules) in sorted(scores.items())
            if points >= MAX_SCORE_POINTS]
    assert over == [], "mails at or over the spam-score budget:\n" + "\n".join(over)
