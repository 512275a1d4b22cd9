"""Bounce reading (mailer.bouncekit) against flufl.bounce's corpus of real bounces, vendored
in tests/data/flufl_bounce/ (Apache-2.0; its README says where it comes from)."""

from __future__ import annotations

import json
from pathlib import Path

from mailer.bouncekit import classify

DATA = Path(__file__).parent / "data" / "flufl_bounce"
#: Issue 18's target: share of flufl.bounce's real bounces read with their expected address.
RECOGNIZED_MIN = 0.90


def test_flufl_bounces_are_recognized_with_the_expected_address():
    """Given flufl.bounce's 111 real bounces and the addresses its own tests expect
    When each is classified
    Then >= 90% are a bounce or a delay whose recipients include every expected address
    (the misses are printed)."""
    expected = json.loads((DATA / "expected.json").read_text())
    recognized, misses = 0, []
    for name, entry in sorted(expected.items()):
        report = classify((DATA / "messages" / name).read_bytes())
        got = {(r.address or "").lower() for r in report.recipients}
        want = {a.lower() for a in entry["addresses"]}
        if report.type in ("bounce", "delay") and want <= got:
            recognized += 1
        else:
            misses.append((name, report.type, sorted(want), sorted(got)))
    print(f"\nflufl.bounce: recognized {recognized}/{len(expected)} = {recognized / len(expected):.1%}")
    for m in misses:
        print("  not recognized:", *m)
    assert len(expected) == 111
    assert recognized / len(expected) >= RECOGNIZED_MIN


def test_a_warning_is_a_delay_not_a_bounce():
    """Given flufl.bounce's warnings (its tests read them as temporary failures)
    When classified
    Then none of them suppresses anybody."""
    expected = json.loads((DATA / "expected.json").read_text())
    warnings = [n for n, e in expected.items() if e["temporary"]]
    assert warnings
    for name in warnings:
        report = classify((DATA / "messages" / name).read_bytes())
        assert all(r.action != "suppress" for r in report.recipients), (name, report)
