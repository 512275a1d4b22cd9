"""What bounds a worker process's memory: its malloc arena cap (``MAILER_MALLOC_ARENAS``,
:mod:`mailer.worker.malloc`) and its SQLite connections' page cache
(``MAILER_DB_WORKER_SQLITE_CACHE_KIB``, :mod:`mailer.db`).

A worker process with many sending threads keeps every glibc arena its threads ever
used; the cap is applied when the worker boots, before its threads start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import text

from mailer import db
from mailer.settings import Settings
from mailer.worker.malloc import M_ARENA_MAX, limit_arenas

ROOT = Path(__file__).resolve().parent.parent
#: A hang guard for the child process, seconds (not a timing assertion).
CHILD_TIMEOUT_S = 120


class FakeLibc:
    def __init__(self, ok: int = 1):
        self.calls: list[tuple[int, int]] = []
        self.ok = ok

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.ok


def test_the_cap_is_set_with_mallopt():
    # Given a C library with mallopt and no MALLOC_ARENA_MAX in the environment
    libc = FakeLibc()
    # When the worker limits its arenas to 2
    applied = limit_arenas(2, environ={}, libc=libc)
    # Then glibc's M_ARENA_MAX is set to 2
    assert applied
    assert libc.calls == [(M_ARENA_MAX, 2)]


def test_malloc_arena_max_in_the_environment_wins_and_0_keeps_the_default():
    # Given an operator's MALLOC_ARENA_MAX, or MAILER_MALLOC_ARENAS=0
    libc = FakeLibc()
    # When the worker boots
    by_env = limit_arenas(2, environ={"MALLOC_ARENA_MAX": "4"}, libc=libc)
    by_zero = limit_arenas(0, environ={}, libc=libc)
    # Then mallopt is not called: glibc keeps what it read from the environment, or its default
    assert not by_env and not by_zero
    assert libc.calls == []


def test_a_c_library_without_mallopt_or_a_failing_one_is_not_an_error():
    # Given a C library without mallopt (not glibc), and one whose mallopt fails
    # When the worker limits its arenas
    # Then it goes on without the cap
    assert not limit_arenas(2, environ={}, libc=object())
    assert not limit_arenas(2, environ={}, libc=FakeLibc(ok=0))


_CHILD = textwrap.dedent("""
    import ctypes, ctypes.util, os, re, sys, threading
    import mailer.worker.boot  # noqa: F401  (what `dramatiq mailer.worker.boot` imports first)

    def allocate():
        blocks.append(bytes(200_000))  # above pymalloc's limit: from this thread's malloc arena
        together.wait()  # every thread is alive with its allocation: none hands its arena on

    blocks = []
    together = threading.Barrier(6)
    threads = [threading.Thread(target=allocate) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    out = sys.argv[1]
    f = libc.fopen(out.encode(), b"w")
    libc.malloc_info(0, f)
    libc.fclose(f)
    print(len(re.findall(r'<heap nr="', open(out).read())))
""")


def _arenas_after_boot(tmp_path: Path, arenas: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    env.update(MAILER_MALLOC_ARENAS=arenas, MAILER_DATABASE_URL=f"sqlite:///{tmp_path / 'm.db'}",
               MAILER_BROKER_URL=f"redis://127.0.0.1:6379/{os.environ.get('MAILER_TEST_REDIS_DB', '7')}",
               PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / f"info-{arenas}.xml")], env=env,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_info")
def test_a_booted_worker_keeps_its_threads_to_the_configured_arenas(tmp_path):
    # Given a worker process booted with MAILER_MALLOC_ARENAS=1, and one booted with 0 (glibc's default)
    # When six of its threads allocate at the same time
    capped = _arenas_after_boot(tmp_path, "1")
    default = _arenas_after_boot(tmp_path, "0")
    # Then the capped process has one arena for all of them; glibc alone makes more
    assert capped == 1
    assert default > 1


def _cache_size(url: str, settings: Settings) -> int:
    engine = db.make_engine(url, settings)
    try:
        with engine.connect() as conn:
            return conn.execute(text("PRAGMA cache_size")).scalar_one()
    finally:
        engine.dispose()


def test_a_worker_s_sqlite_connections_get_the_worker_page_cache(tmp_path, monkeypatch):
    # Given MAILER_DB_WORKER_SQLITE_CACHE_KIB=256 and a SQLite database
    url = f"sqlite:///{tmp_path / 'c.db'}"
    settings = Settings.from_env({}, database_url=url, db_worker_sqlite_cache_kib=256)
    # When the CLI or web app connects (not a worker process)
    monkeypatch.setattr(db, "_worker_sessions", [False])
    elsewhere = _cache_size(url, settings)
    # And when a worker process connects
    monkeypatch.setattr(db, "_worker_sessions", [True])
    in_worker = _cache_size(url, settings)
    # Then only the worker's connection has the 256 KiB cache (negative = KiB in SQLite)
    assert in_worker == -256
    assert elsewhere != -256


def test_a_booted_worker_has_not_imported_scipy(tmp_path):
    # Given a worker process's environment
    env = dict(os.environ, MAILER_DATABASE_URL=f"sqlite:///{tmp_path / 'b.db'}",
               MAILER_BROKER_URL=f"redis://127.0.0.1:6379/{os.environ.get('MAILER_TEST_REDIS_DB', '7')}",
               PYTHONPATH=str(ROOT))
    # When it boots (what `dramatiq mailer.worker.boot` imports)
    done = subprocess.run([sys.executable, "-c", "import sys, mailer.worker.boot; print('scipy' in sys.modules)"],
                          env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, cwd=tmp_path)
    # Then SciPy (~60 MB of RSS with NumPy) is not loaded: the prediction models and the
    # revenue A/B test import it when they run
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "False"
