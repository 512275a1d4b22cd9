"""Dramatiq entry point: ``dramatiq worker`` (or ``mailer worker``) runs mailer's actors.

Importing mailer.worker.boot builds the Redis broker from ``MAILER_BROKER_URL`` (default
redis://127.0.0.1:6379/0), sets it as Dramatiq's broker and declares the actors on it.
"""

from mailer.worker.boot import broker  # noqa: F401
