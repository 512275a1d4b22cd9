"""Secrets that belong to the database, not to the configuration: the address-hash salt.

E-mail addresses are kept after erasure, in the consent chain and in access exports
only as ``HMAC-SHA256(salt, address)`` (see :func:`mailer.addresses.email_hash`).  The
salt must therefore live exactly as long as the hashes do, so it is generated once,
when the database is created (Alembic migration 0003), and stored in the
``instance_secrets`` table.  It no longer derives from ``MAILER_SECRET_KEY``, so
rotating the secret key leaves every stored hash matching.

``MAILER_HASH_SALT``, when set, *seeds* the stored salt of a new database and from
then on must equal it: a mismatch is a :class:`~mailer.errors.ConfigurationError`,
never a silent switch to hashes that match nothing.

The salt is read once per database URL and process (cached until
:func:`mailer.db.dispose_engines` or a migration changes :func:`mailer.db.generation`), never per hash.
"""

from __future__ import annotations

import threading

import sqlalchemy as sa

from mailer import db
from mailer.errors import ConfigurationError
from mailer.settings import Settings

#: ``instance_secrets.name`` of the address-hash salt.
ADDRESS_HASH_SALT = "address_hash_salt"

#: database URL -> (db.generation() when read, salt)
_salts: dict[str, tuple[int, bytes]] = {}
_lock = threading.Lock()


def _stored(settings: Settings) -> bytes | None:
    engine = db.get_engine(settings)
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("instance_secrets"):
            return None
        value = conn.execute(sa.text("SELECT value FROM instance_secrets WHERE name = :name"),
                             {"name": ADDRESS_HASH_SALT}).scalar_one_or_none()
    return bytes(value) if value is not None else None


def address_hash_salt(settings: Settings) -> bytes:
    """The salt of the database ``settings`` point at (read once, then cached)."""
    url = settings.database_url
    gen = db.generation()
    with _lock:
        entry = _salts.get(url)
        cached = entry[1] if entry is not None and entry[0] == gen else None
        if cached is None:
            cached = _stored(settings)
            if cached is None:  # not migrated (or no database at all): only an explicit salt will do
                return _explicit(settings)
            _salts[url] = (gen, cached)
    if settings.hash_salt and settings.hash_salt.encode("utf-8") != cached:
        raise ConfigurationError("MAILER_HASH_SALT does not match the address-hash salt stored in the "
                                 "database (table instance_secrets); unset MAILER_HASH_SALT or set it to "
                                 "the stored value")
    return cached


def _explicit(settings: Settings) -> bytes:
    if settings.hash_salt:
        return settings.hash_salt.encode("utf-8")
    raise ConfigurationError("the database has no address-hash salt (table instance_secrets): "
                             "run `mailer db upgrade`")


def forget() -> None:
    """Drop the cached salts (tests); a dispose or migration also invalidates them via :func:`mailer.db.generation`."""
    with _lock:
        _salts.clear()
