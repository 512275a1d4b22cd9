"""Structured log lines name the machine and the process, so several hosts' logs can be told apart."""

from __future__ import annotations

import io
import json
import logging
import os
import socket

from mailer import logs


def test_json_line_carries_host_and_pid():
    # Given mailer's handler on a logger of its own
    stream = io.StringIO()
    logger = logging.getLogger("mailer.test_logs")
    handler = logs.make_handler(stream, fmt="json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        # When something is logged inside a delivery's context
        with logs.log_context(delivery_id=7):
            logger.info("hello")
    finally:
        logger.removeHandler(handler)
    # Then the line names this host and this process, with the delivery id
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["host"] == socket.gethostname()
    assert line["pid"] == os.getpid()
    assert line["delivery_id"] == 7 and line["message"] == "hello"
