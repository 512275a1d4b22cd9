"""Bounce classification throughput: messages classified per second over the bounce corpus.

Usage: ``python bench/bounces.py [CORPUS_DIR] [--rounds N]``.  Reads every ``*.eml`` of the
corpus (default ../shared/corpora/bounces/messages) into memory, then classifies them all
N times with mailer.bouncekit and prints the figures: messages per second of process CPU
time (what a shared machine's load does not change much) and of wall time, and, when the
corpus has its ``expected.json``, the reason agreement with the reference (all entries, and
without the files tests/test_bounce_corpus.py excludes with a stated reason).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from mailer.bouncekit import classify

_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))


def agreement(corpus: Path, excluded: frozenset[str]) -> tuple[int, int]:
    """(agreeing, total) recipients of ``expected.json``, scored as the corpus test does."""
    expected = json.loads((corpus.parent / "expected.json").read_text())
    total = agree = 0
    for name, entries in sorted(expected.items()):
        if name in excluded:
            continue
        report = classify((corpus / name).read_bytes())
        by_addr = {r.address: r for r in report.recipients}
        for e in entries:
            total += 1
            want = (e["recipient"] or "").lower()
            got = by_addr.get(want)
            if got is None and (not want or want.endswith(".invalid")) and report.recipients:
                got = report.recipients[0]
            agree += got is not None and got.reason == e["reason"]
    return agree, total


def main() -> None:
    ap = argparse.ArgumentParser()
    default = next((p for p in (_REPO.parent / "shared/corpora/bounces/messages",
                                _REPO.parent.parent / "shared/corpora/bounces/messages") if p.is_dir()),
                   _REPO.parent / "shared/corpora/bounces/messages")
    ap.add_argument("corpus", nargs="?", type=Path, default=default)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    raws = [p.read_bytes() for p in sorted(args.corpus.glob("*.eml"))]
    if not raws:
        raise SystemExit(f"no *.eml under {args.corpus}")
    total_bytes = sum(map(len, raws))
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(args.rounds):
        for raw in raws:
            classify(raw)
    elapsed_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    n = len(raws) * args.rounds
    print(f"python {platform.python_version()} on {platform.machine()}: {len(raws)} messages "
          f"({total_bytes / 1024:.0f} KiB) x {args.rounds} rounds; load average {os.getloadavg()[0]:.2f}")
    print(f"{n / cpu_s:.0f} messages/s of CPU time ({cpu_s / n * 1000:.2f} ms/message); "
          f"{n / elapsed_s:.0f} messages/s of wall time")
    if (args.corpus.parent / "expected.json").is_file():
        try:
            from tests.test_bounce_corpus import EXCLUDED
        except ImportError:  # an older checkout: no exclusions
            EXCLUDED = {}
        a, t = agreement(args.corpus, frozenset())
        ae, te = agreement(args.corpus, frozenset(EXCLUDED))
        print(f"reason agrees with the reference: {a}/{t} = {a / t:.1%} of all recipients; "
              f"{ae}/{te} = {ae / te:.1%} without the {len(EXCLUDED)} files excluded with a stated reason")


if __name__ == "__main__":
    main()
