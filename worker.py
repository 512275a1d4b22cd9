"""Dramatiq entry point: ``dramatiq worker`` (or ``mailer worker``) runs mailer's actors.

Builds the Redis broker from ``MAILER_BROKER_URL`` (default redis://127.0.0.1:6379/0),
sets it as Dramatiq's broker and imports ``mailer.actors``.  See mailer/boot.py.
"""

from mailer.boot import broker  # noqa: F401

import mailer.actors  # noqa: F401,E402
