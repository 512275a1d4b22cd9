"""Sampling a worker with py-spy while a benchmark runs, and summarizing where its CPU went.

:class:`Recorder` attaches ``py-spy record --gil --format raw`` (collapsed stacks of the thread
holding the GIL, i.e. where the Python CPU goes) to a process
tree and stops it with SIGINT when the measured part is over; :func:`summarize` prints
the functions with the most samples, inclusive (anywhere on the stack) and self (leaf).
py-spy is not a dependency of mailer: ``pip install py-spy``.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
from pathlib import Path

#: Samples per second.
RATE_HZ = 200


class Recorder:
    def __init__(self, pid: int, out: Path, *, rate: int = RATE_HZ):
        if shutil.which("py-spy") is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self.out = out
        self.proc = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--subprocesses", "--format", "raw",
                                      "--rate", str(rate), "--gil", "--output", str(out)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> Path:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.out


def _frame_name(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if "mailer" in parts or "bench" in parts else Path(path).name
    return f"{name} ({short})"


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append(([_frame_name(f) for f in stack.split(";")], int(count)))
    return stacks


def summarize(path: Path, *, top: int = 25, focus: tuple[str, ...] = ()) -> str:
    """Inclusive and self sample shares; ``focus``: only frames whose name contains one of these."""
    stacks = load(path)
    total = sum(c for _, c in stacks) or 1
    inclusive: collections.Counter = collections.Counter()
    self_: collections.Counter = collections.Counter()
    for frames, count in stacks:
        for name in set(frames):
            inclusive[name] += count
        self_[frames[-1]] += count
    lines = [f"   py-spy: {total} samples ({path})"]
    lines.append("   inclusive (share of all samples with the function on the stack):")
    shown = 0
    for name, count in inclusive.most_common():
        if focus and not any(f in name for f in focus):
            continue
        lines.append(f"     {count / total * 100:5.1f}%  {name}")
        shown += 1
        if shown >= top:
            break
    lines.append("   self (leaf frames):")
    for name, count in self_.most_common(top):
        lines.append(f"     {count / total * 100:5.1f}%  {name}")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(summarize(Path(sys.argv[1]), focus=tuple(sys.argv[2:])))
