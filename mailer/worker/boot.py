"""Worker bootstrap: build the broker from settings, set it, import the actors.

Importing this module is what ``dramatiq worker`` needs (``worker.py`` at the top of
the repository imports it; ``mailer worker`` runs ``dramatiq mailer.worker.boot``).  Every
worker process gets the settings from the environment, an :class:`~mailer.app.App`,
the Redis broker with mailer's middleware, the sweeper thread, the heartbeat thread
(:mod:`mailer.delivery.heartbeats`), first of all its malloc arena cap
(:mod:`mailer.worker.malloc`, ``MAILER_MALLOC_ARENAS``) and, with
``MAILER_WARM_TEMPLATES=1``, the notice templates' warm-up.

Metrics: with ``MAILER_METRICS_PORT`` set, Dramatiq's Prometheus middleware is added
and one fork process per ``dramatiq`` command serves Dramatiq's and mailer's metrics
from all its worker processes (see :mod:`mailer.metrics`).  Prometheus' multiprocess
directory has to be known before ``prometheus_client`` is first imported, so it is set
here, first thing; ``dramatiq_prom_db`` chooses it (one directory per worker command).
"""

from __future__ import annotations

import os
import tempfile

from mailer.settings import Settings
from mailer.worker.malloc import limit_arenas

settings = Settings.from_env()
# Before any thread of this process allocates: arenas are made lazily and never given back.
limit_arenas(settings.malloc_arenas)
if settings.metrics_port:
    _metrics_dir = os.environ.get("dramatiq_prom_db") or os.path.join(tempfile.gettempdir(), "dramatiq-prometheus")
    os.makedirs(_metrics_dir, exist_ok=True)
    os.environ["dramatiq_prom_db"] = _metrics_dir
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir

import logging  # noqa: E402

from mailer import db, metrics  # noqa: E402
from mailer.app import App, get_app, set_app  # noqa: E402
from mailer.logs import HOST, set_worker_name, worker_name  # noqa: E402
from mailer.logs import configure as configure_logging  # noqa: E402
from mailer.queue.broker import setup  # noqa: E402
from mailer.worker import actors  # noqa: E402
from mailer.worker.middleware import (  # noqa: E402
    HeartbeatMiddleware,
    NoticeLaneMiddleware,
    SweeperMiddleware,
    TemplateWarmupMiddleware,
)

configure_logging()
set_worker_name(settings.worker_name)
metrics.name_worker(worker_name(), HOST)
db.worker_sessions()  # statement_timeout on this process's PostgreSQL sessions
set_app(App(settings))
broker = setup(settings, prometheus=bool(settings.metrics_port))
broker.add_middleware(SweeperMiddleware(get_app, settings.sweep_interval_s))
if settings.heartbeat_s > 0:
    broker.add_middleware(HeartbeatMiddleware(get_app, settings.heartbeat_s))
broker.add_middleware(NoticeLaneMiddleware(settings.notice_threads))
if settings.warm_templates:
    broker.add_middleware(TemplateWarmupMiddleware(get_app))
actors.bind(broker)

# A bad DKIM key (missing file, wrong type) stops the worker here, not at the first send.
if not get_app().signer.enabled:
    logging.getLogger("mailer").warning("DKIM signing is off: set MAILER_DKIM_DOMAIN and MAILER_DKIM_RSA_KEY "
                                        "and/or MAILER_DKIM_ED25519_KEY (see docs/delivery.md)")

logging.getLogger("mailer").info("worker ready: broker %s, database %s, transport %s", settings.broker_url,
                                 settings.database_url.split("@")[-1], settings.smtp_url.split("@")[-1])
