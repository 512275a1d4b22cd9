"""Structured logs: one JSON object per line, carrying the delivery id when there is one.

Call sites pass ``extra={"delivery_id": ...}``; every record gets time, level, logger
and message.  ``MAILER_LOG_FORMAT=text`` switches to plain lines for people.
"""

from __future__ import annotations

import json
import logging
import os
import sys

_FIELDS = ("delivery_id", "campaign_id", "customer_id", "event_id")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "message": record.getMessage(), "pid": record.process}
        for f in _FIELDS:
            if hasattr(record, f):
                out[f] = getattr(record, f)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(level: str | None = None) -> None:
    """Install the formatter on the ``mailer`` logger once."""
    logger = logging.getLogger("mailer")
    if getattr(logger, "_mailer_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("MAILER_LOG_FORMAT", "json") == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(level or os.environ.get("MAILER_LOG_LEVEL", "INFO"))
    logger.propagate = False
    logger._mailer_configured = True  # type: ignore[attr-defined]
