"""The process-wide context the actors and the web app work in.

An :class:`App` holds the settings and the long-lived things built from them (engine,
transport, renderer), each built once on first use.  Actors take ids, ask
:func:`get_app` for the context, open a session per unit of work and call services.
Tests and ``worker.py`` install their own with :func:`set_app`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from functools import cached_property

from sqlalchemy.orm import Session, sessionmaker

from mailer import db
from mailer.message.dkim import Signer
from mailer.rendering import Renderer
from mailer.settings import Settings
from mailer.transport.pool import RelayPool


class App:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return db.session_factory(self.settings)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work: commit on success, roll back on error."""
        with self.sessions.begin() as session:
            yield session

    @cached_property
    def transport(self):
        return RelayPool.from_settings(self.settings)

    @cached_property
    def renderer(self):
        return Renderer(self.settings)

    @cached_property
    def signer(self):
        return Signer.from_settings(self.settings)

    def close(self) -> None:
        if "transport" in self.__dict__:
            self.transport.close()


_app: App | None = None
_app_lock = threading.Lock()


def get_app() -> App:
    """The installed App, or one built from the environment on first use."""
    global _app
    with _app_lock:
        if _app is None:
            _app = App(Settings.from_env())
        return _app


def set_app(app: App | None) -> App | None:
    """Install ``app`` as the process-wide context; return the previous one."""
    global _app
    with _app_lock:
        previous, _app = _app, app
        return previous
