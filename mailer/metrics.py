"""mailer's own Prometheus counters (sent, failed, bounced, suppressed, ... by queue and kind).

Exposed alongside Dramatiq's Prometheus middleware in the worker, and at ``/metrics``
by ``mailer serve``.
"""

from __future__ import annotations

from prometheus_client import Counter

DELIVERIES = Counter("mailer_deliveries_total", "Delivery outcomes", ["outcome", "queue", "kind"])


def count(outcome: str, *, queue: str, kind: str) -> None:
    DELIVERIES.labels(outcome=outcome, queue=queue, kind=kind).inc()


def value(outcome: str, *, queue: str, kind: str) -> float:
    return DELIVERIES.labels(outcome=outcome, queue=queue, kind=kind)._value.get()
