"""mailer's own Prometheus metrics, and how a worker exposes them with Dramatiq's.

``mailer_deliveries_total{outcome, queue, kind}`` counts what happened to deliveries:
``sent``, ``failed``, ``retried``, ``rate_limited``, ``bounced`` (hard bounce at send
time or from a DSN), ``soft_bounced``, ``complained``, ``suppressed`` (blocked by the
suppression list) and ``skipped`` (no consent, frequency cap).

``mailer_worker{worker, host}`` is 1 per running worker process, named by
``MAILER_WORKER_NAME``; ``mailer_workers_reaped_total`` and ``mailer_messages_requeued_total``
count the silent workers whose taken messages a sweeper put back (issue 22).

``mailer_sender_refusals_total{relay, reason}`` counts refusals that are about *us*,
not the recipient (message too large, content refused as spam, our IP blocked, sender
authentication failed, relaying denied, our sender refused, rate limited; the
``reason`` is the row's reason in :data:`mailer.smtp_codes.OUTCOMES`, a fixed set), by
the relay that reported them (``dsn`` for a later delivery status notification whose
relay is not known).  Alert on it: each one is a mail that did not go out through no
fault of the customer.

Dramatiq runs several worker processes per ``dramatiq`` command, so a worker uses
Prometheus' multiprocess mode: :mod:`mailer.worker.boot` points ``PROMETHEUS_MULTIPROC_DIR``
at Dramatiq's metrics directory *before* this module is imported, every process
writes its counters there, and one exposition server per ``dramatiq`` command
(:func:`serve`, forked by :class:`ExposedPrometheus`) serves the sum of all of them,
Dramatiq's ``dramatiq_*`` metrics included, on ``MAILER_METRICS_PORT``.  Outside a
worker (tests, ``mailer serve``) the counters live in the ordinary in-process registry.
"""

from __future__ import annotations

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import prometheus_client as prom
from dramatiq.middleware.prometheus import DB_PATH, Prometheus
from prometheus_client import Counter, Gauge, multiprocess

from mailer.settings import Settings

DELIVERIES = Counter("mailer_deliveries_total", "Delivery outcomes", ["outcome", "queue", "kind"])
SENDER_REFUSALS = Counter("mailer_sender_refusals_total",
                          "Refusals about our side (message, IP, domain, authentication, rate), not the recipient",
                          ["relay", "reason"])

#: 1 per running worker process, labelled with its MAILER_WORKER_NAME and host ("liveall": a
#: dead process's series goes away), so every series can be told apart by machine.
WORKER = Gauge("mailer_worker", "This worker process, by MAILER_WORKER_NAME and host", ["worker", "host"],
               multiprocess_mode="liveall")
WORKERS_REAPED = Counter("mailer_workers_reaped_total",
                         "Workers found silent for a lease whose taken messages were put back in their queues")
MESSAGES_REQUEUED = Counter("mailer_messages_requeued_total",
                            "Dramatiq messages of silent workers put back in their queues")


def name_worker(worker: str, host: str) -> None:
    """Label this process's metrics with its name (``MAILER_WORKER_NAME``) and host."""
    WORKER.labels(worker=worker, host=host).set(1)


def count_reaped(messages: int) -> None:
    WORKERS_REAPED.inc()
    MESSAGES_REQUEUED.inc(messages)


def count(outcome: str, *, queue: str, kind: str, amount: float = 1) -> None:
    DELIVERIES.labels(outcome=outcome, queue=queue, kind=kind).inc(amount)


def count_sender_refusal(*, relay: str, reason: str) -> None:
    SENDER_REFUSALS.labels(relay=relay or "unknown", reason=reason).inc()


def sender_refusals(*, relay: str, reason: str) -> float:
    """This process's count of sender-side refusals (tests)."""
    return SENDER_REFUSALS.labels(relay=relay or "unknown", reason=reason)._value.get()


def value(outcome: str, *, queue: str, kind: str) -> float:
    """This process's count (tests)."""
    return DELIVERIES.labels(outcome=outcome, queue=queue, kind=kind)._value.get()


def exposition() -> tuple[bytes, str]:
    """The text exposition (body, content type): all processes' metrics in multiprocess mode."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        registry = prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return prom.generate_latest(registry), prom.CONTENT_TYPE_LATEST
    return prom.generate_latest(prom.REGISTRY), prom.CONTENT_TYPE_LATEST


def serve() -> int:
    """Serve :func:`exposition` over HTTP on ``MAILER_METRICS_PORT`` until terminated.

    Runs as the Dramatiq fork process of a worker command (see :mod:`mailer.worker.boot`).
    """
    settings = Settings.from_env()
    directory = os.environ.get("dramatiq_prom_db") or _dramatiq_db_path()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.split("?")[0] not in ("/", "/metrics"):
                self.send_error(404)
                return
            body, ctype = exposition()
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):  # keep the worker's log clean
            pass

    server = ThreadingHTTPServer((settings.metrics_host, settings.metrics_port), Handler)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _dramatiq_db_path() -> str:
    return DB_PATH


def make_middleware():
    """Dramatiq's Prometheus middleware, with its exposition server replaced by :func:`serve`."""
    class ExposedPrometheus(Prometheus):
        """Dramatiq's metrics plus mailer's, served on MAILER_METRICS_PORT by one fork per command."""

        @property
        def forks(self):
            return [serve]

    return ExposedPrometheus()
