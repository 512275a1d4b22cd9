"""The worker process's C allocator: how many glibc malloc arenas its threads share.

glibc gives threads that allocate at the same time separate *arenas* (up to eight per
core), and each arena keeps the pages it once used: a worker with 24 sending threads
(``MAILER_SMTP_CONNECTIONS``) holds the high-water mark of every one of them.  Python's
own small objects do not go through malloc; what does is what is larger than 512 bytes:
the composed messages (40 KB each), SMTP socket buffers, SQLite's page caches.

:func:`limit_arenas` caps the arenas with ``mallopt(M_ARENA_MAX, n)``
(``MAILER_MALLOC_ARENAS``), the same as ``MALLOC_ARENA_MAX`` in the environment but
applied by the process itself, so ``mailer worker`` and ``dramatiq mailer.worker.boot``
both get it.  It must run before the process's threads first allocate (arenas are made
lazily, and one that exists is never given back): :mod:`mailer.worker.boot` calls it
first thing.  A ``MALLOC_ARENA_MAX`` already in the environment wins (glibc read it at
start).  Not glibc (musl, macOS): nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("mailer.worker.malloc")

#: glibc's mallopt() parameter number for the arena cap (malloc.h: ``#define M_ARENA_MAX -8``).
M_ARENA_MAX = -8


def limit_arenas(n: int, *, environ=os.environ, libc=None) -> bool:
    """Cap this process's malloc arenas at ``n`` (0 = leave glibc's default); True if applied."""
    if n <= 0 or "MALLOC_ARENA_MAX" in environ:
        return False
    if libc is None:
        name = ctypes.util.find_library("c")
        if not name:
            return False
        try:
            libc = ctypes.CDLL(name)
        except OSError:
            return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:  # not glibc
        return False
    if not mallopt(M_ARENA_MAX, int(n)):  # mallopt returns 1 on success, 0 on error
        log.warning("mallopt(M_ARENA_MAX, %d) failed; the worker keeps glibc's arena count", n)
        return False
    return True
