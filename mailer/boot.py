"""Worker bootstrap: build the broker from settings, set it, import the actors.

Importing this module is what ``dramatiq worker`` needs (``worker.py`` at the top of
the repository imports it; ``mailer worker`` runs ``dramatiq mailer.boot``).  Every
worker process gets the settings from the environment, an :class:`~mailer.app.App`,
the Redis broker with mailer's middleware, and the sweeper thread.
"""

from __future__ import annotations

import logging
import os

from mailer.app import App, get_app, set_app
from mailer.broker import setup
from mailer.logs import configure as configure_logging
from mailer.settings import Settings
from mailer.sweeper import SweeperMiddleware

settings = Settings.from_env()
configure_logging()
set_app(App(settings))
broker = setup(settings, prometheus=os.environ.get("MAILER_PROMETHEUS", "1") not in ("0", "false"))
broker.add_middleware(SweeperMiddleware(get_app, settings.sweep_interval_s))

import mailer.actors  # noqa: E402,F401  (registers every actor on the broker)

logging.getLogger("mailer").info("worker ready: broker %s, database %s, transport %s", settings.broker_url,
                                 settings.database_url.split("@")[-1], settings.smtp_url.split("@")[-1])
