"""Structured logs: one JSON object per line, carrying the delivery id when there is one.

Every record gets time, level, logger, message, host, pid and worker (``MAILER_WORKER_NAME``,
by default ``hostname:pid``), so the lines of several machines can be told apart even when
their hostnames are the same (containers).  The ids of what is being
worked on (``delivery_id``, ``campaign_id``, ``customer_id``, ``event_id``) come from
``extra={...}`` at the call site or, for everything logged inside
``with log_context(delivery_id=...)`` (the send path wraps each delivery in one), from
a context variable, so a transport or a library deep in the call stack logs the
delivery id without being told.  ``MAILER_LOG_FORMAT=text`` switches to plain lines
for people; ``MAILER_LOG_LEVEL`` sets the level (INFO by default).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from types import MappingProxyType

_FIELDS = ("delivery_id", "campaign_id", "customer_id", "event_id")
#: The machine's name, read once per process (the JSON lines' ``host``).
HOST = socket.gethostname()

#: Longest worker name kept, characters (lease owners hold 100: name, thread id and a random part).
MAX_WORKER_NAME_CHARS = 60
_worker_name = [""]


def set_worker_name(name: str) -> None:
    """Name this process (``MAILER_WORKER_NAME``); empty = ``hostname:pid``."""
    _worker_name[0] = (name or "").strip()[:MAX_WORKER_NAME_CHARS]


def worker_name() -> str:
    """This process's name in lease owners and in each JSON line's ``worker``."""
    return _worker_name[0] or f"{HOST}:{os.getpid()}"


_context: contextvars.ContextVar[Mapping] = contextvars.ContextVar("mailer_log_context", default=MappingProxyType({}))


@contextlib.contextmanager
def log_context(**ids) -> Iterator[None]:
    """Attach ids to every record logged in this block (nested blocks add to the outer ones)."""
    token = _context.set({**_context.get(), **{k: v for k, v in ids.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict:
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Copies the ids of the current :func:`log_context` onto each record (explicit extra wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "message": record.getMessage(), "host": HOST, "pid": record.process,
               "worker": worker_name()}
        for f in _FIELDS:
            value = getattr(record, f, None)
            if value is None:
                value = _context.get().get(f)
            if value is not None:
                out[f] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def make_handler(stream=None, *, fmt: str | None = None) -> logging.Handler:
    """A stream handler with mailer's formatter and context filter."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if (fmt or os.environ.get("MAILER_LOG_FORMAT", "json")) == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    return handler


def configure(level: str | None = None) -> None:
    """Install the formatter on the ``mailer`` logger once."""
    logger = logging.getLogger("mailer")
    if getattr(logger, "_mailer_configured", False):
        return
    logger.addHandler(make_handler())
    logger.setLevel(level or os.environ.get("MAILER_LOG_LEVEL", "INFO"))
    logger.propagate = False
    logger._mailer_configured = True  # type: ignore[attr-defined]
