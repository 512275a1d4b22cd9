"""bench/memory.py --tracemalloc: Python's allocations in a worker process, by line.

Put on the worker's PYTHONPATH by bench/memory.py (never by mailer).  With
``BENCH_TRACEMALLOC_DIR`` set, every process started with it traces allocations
(``tracemalloc``, 1 frame) and, in each worker process forked from it, a thread writes
the top allocation sites to ``<dir>/tracemalloc-<pid>.txt`` whenever a file
``<dir>/dump`` appears (and leaves the file; the bench removes it).
"""

import os

_DIR = os.environ.get("BENCH_TRACEMALLOC_DIR")

#: How often the dump thread looks for the trigger file, seconds.
_POLL_S = 0.5
#: Allocation sites written per dump.
_TOP = 25


def _watch() -> None:
    import threading
    import time
    import tracemalloc

    def run() -> None:
        trigger = os.path.join(_DIR, "dump")
        done = None
        while True:
            time.sleep(_POLL_S)
            if not os.path.exists(trigger):
                done = None
                continue
            stamp = os.stat(trigger).st_mtime
            if stamp == done:
                continue
            done = stamp
            snap = tracemalloc.take_snapshot()
            stats = snap.statistics("lineno")
            current, peak = tracemalloc.get_traced_memory()
            lines = [f"traced now {current / 2**20:.1f} MB, traced peak {peak / 2**20:.1f} MB, "
                     f"threads {threading.active_count()}"]
            lines += [str(s) for s in stats[:_TOP]]
            with open(os.path.join(_DIR, f"tracemalloc-{os.getpid()}.txt"), "w") as fh:
                fh.write("\n".join(lines) + "\n")

    threading.Thread(target=run, name="bench-tracemalloc", daemon=True).start()


if _DIR:
    import tracemalloc

    tracemalloc.start(1)
    os.register_at_fork(after_in_child=_watch)
