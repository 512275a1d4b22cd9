"""Bounce classification throughput: messages classified per second over the bounce corpus.

Usage: ``python bench/bounces.py [CORPUS_DIR] [--rounds N]``.  Reads every ``*.eml`` of the
corpus (default ../shared/corpora/bounces/messages) into memory, then classifies them all
N times with mailer.bouncekit and prints the figures.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from mailer.bouncekit import classify

_REPO = Path(__file__).resolve().parents[1]


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
    start = time.perf_counter()
    for _ in range(args.rounds):
        for raw in raws:
            classify(raw)
    elapsed_s = time.perf_counter() - start
    n = len(raws) * args.rounds
    print(f"python {platform.python_version()} on {platform.machine()}: {len(raws)} messages "
          f"({total_bytes / 1024:.0f} KiB) x {args.rounds} rounds")
    print(f"{n / elapsed_s:.0f} messages/s, {elapsed_s / n * 1000:.2f} ms/message")


if __name__ == "__main__":
    main()
