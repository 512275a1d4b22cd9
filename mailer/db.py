"""Database access: engines, sessions, migrations, and the one PostgreSQL-or-SQLite INSERT switch.

One engine per URL per process; one session per unit of work, opened by the
caller (CLI command, actor, HTTP request) with :func:`session_scope`, never
inside service functions, which take the session as an argument.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, Float, create_engine, event, literal
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.functions import FunctionElement

from mailer.models import UTCDateTime
from mailer.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def dialect_insert(bind: Session | Connection | str, table: Any) -> postgresql.Insert | sqlite.Insert:
    """``INSERT`` into ``table`` in the dialect of ``bind``'s database, so that ``on_conflict_do_*`` works.

    The only place that chooses between PostgreSQL's and SQLite's insert construct (both
    speak ``ON CONFLICT``); ``table`` is a mapped class or a ``Table``; ``bind`` may also be
    the dialect's name (a statement built once per process and dialect).
    """
    if isinstance(bind, str):
        name = bind
    else:
        name = (bind.get_bind().dialect if isinstance(bind, Session) else bind.dialect).name
    return (postgresql.insert if name == "postgresql" else sqlite.insert)(table)


def insert_or_ignore(bind: Session | Connection, table: Any,
                     values: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None, *,
                     index_elements: Iterable[str]) -> postgresql.Insert | sqlite.Insert:
    """``INSERT ... ON CONFLICT (index_elements) DO NOTHING`` on either database (the statement; execute it).

    ``values`` is one row, a list of rows (one multi-row INSERT), or ``None`` to pass rows
    to ``execute`` (executemany). A row that collides with an existing one on the unique
    ``index_elements`` is skipped; ``rowcount`` / ``returning`` count only the rows added.
    """
    stmt = dialect_insert(bind, table)
    if values is not None:
        stmt = stmt.values(values)
    return stmt.on_conflict_do_nothing(index_elements=list(index_elements))


class db_now(FunctionElement):
    """The database's clock, in SQL: its current UTC time plus ``plus_s`` seconds (a number or
    a bind parameter; default 0), for leases, heartbeats and the sweeper (docs/delivery.md,
    "Running on many machines"): every worker compares against the same clock, whatever
    its own says.

    PostgreSQL: ``statement_timestamp()`` (the statement's start, the same for every row of
    it). SQLite: ``strftime('%Y-%m-%d %H:%M:%f', 'now')`` (the same for the whole statement)
    with six fraction digits, the text SQLAlchemy stores a ``DateTime`` as, so it compares
    with stored values as text does. The result reads back as an aware UTC datetime.
    """

    type = UTCDateTime()
    inherit_cache = True
    name = "db_now"

    def __init__(self, plus_s=0.0):
        super().__init__(plus_s if hasattr(plus_s, "compile") else literal(float(plus_s), Float()))


@compiles(db_now, "postgresql")
def _db_now_pg(element, compiler, **kw):
    return f"(statement_timestamp() + ({compiler.process(element.clauses, **kw)}) * interval '1 second')"


@compiles(db_now, "sqlite")
def _db_now_sqlite(element, compiler, **kw):
    # strftime's %f is SS.SSS; '000' pads it to the six digits of SQLAlchemy's storage format.
    return (f"(strftime('%Y-%m-%d %H:%M:%f', 'now', ({compiler.process(element.clauses, **kw)}) || ' seconds')"
            " || '000')")


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the HTTP app read while a worker writes; busy_timeout waits (ms) instead of failing.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


#: SQLite: how long a writer waits for the database's one write lock, seconds; then it fails
#: with "database is locked" (a bounded wait, never a hang).
SQLITE_BUSY_TIMEOUT_S = 30
#: Keepalive probes sent before a silent PostgreSQL peer is declared gone.
KEEPALIVE_PROBES = 3

_worker_sessions = [False]


def worker_sessions() -> None:
    """Mark this process as a worker: its PostgreSQL sessions get ``statement_timeout``
    (``MAILER_DB_WORKER_STATEMENT_TIMEOUT_S``), its SQLite connections a page cache of
    ``MAILER_DB_WORKER_SQLITE_CACHE_KIB``. Call before the first engine is made
    (:mod:`mailer.worker.boot` does); the web app and the CLI run long exports and counts,
    so theirs have none."""
    _worker_sessions[0] = True


def _pg_session_settings(settings: Settings | None) -> dict[str, str]:
    """What each new PostgreSQL connection SETs: bounds on what a partitioned or stuck
    session can hold (docs/delivery.md, "Running on many machines")."""
    s = settings or Settings()
    out = {}
    if s.db_idle_in_transaction_s > 0:
        out["idle_in_transaction_session_timeout"] = f"{s.db_idle_in_transaction_s * 1000}"
    if _worker_sessions[0] and s.db_worker_statement_timeout_s > 0:
        out["statement_timeout"] = f"{s.db_worker_statement_timeout_s * 1000}"
    return out


def _pg_connect_args(settings: Settings | None) -> dict:
    s = settings or Settings()
    if s.db_keepalive_s <= 0:
        return {}
    # libpq's TCP keepalives: a peer behind a cut link is noticed in about
    # idle + probes x interval seconds, instead of the kernel's two hours.
    return {"keepalives": 1, "keepalives_idle": s.db_keepalive_s,
            "keepalives_interval": max(1, s.db_keepalive_s // KEEPALIVE_PROBES),
            "keepalives_count": KEEPALIVE_PROBES}


def make_engine(url: str, settings: Settings | None = None) -> Engine:
    """A new engine for ``url`` with mailer's connection settings (keepalives and timeouts from ``settings``)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        cache_kib = (settings or Settings()).db_worker_sqlite_cache_kib if _worker_sessions[0] else 0
        if cache_kib > 0:
            def _cache(dbapi_conn, _record) -> None:
                # A worker's pooled connections each keep a page cache; another connection's
                # commit makes it reread the pages anyway (WAL), so a small one costs little.
                dbapi_conn.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
            event.listen(engine, "connect", _cache)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10,
                               connect_args=_pg_connect_args(settings))
        session_settings = _pg_session_settings(settings)
        if session_settings:
            def _set(dbapi_conn, _record) -> None:
                # Once per new connection (not per checkout): SET outside any transaction,
                # committed at once, so a later ROLLBACK keeps it.
                autocommit = dbapi_conn.autocommit
                dbapi_conn.autocommit = True
                with dbapi_conn.cursor() as cur:
                    for name, value in session_settings.items():
                        cur.execute(f"SET {name} = {int(value)}")  # nosec B608 - names are ours, values ints
                dbapi_conn.autocommit = autocommit
            event.listen(engine, "connect", _set)
    return engine


def get_engine(settings_or_url: Settings | str) -> Engine:
    """The process-wide engine for a URL (created once, with the first caller's settings)."""
    settings = None if isinstance(settings_or_url, str) else settings_or_url
    url = settings_or_url if settings is None else settings.database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url, settings)
        return engine


_generation = [0]


def _bump_generation() -> None:
    _generation[0] += 1


def generation() -> int:
    """Changes whenever engines are disposed or the schema is migrated: caches of values read
    from the database (the address-hash salt, :mod:`mailer.instance_secrets`) key on it."""
    return _generation[0]


def dispose_engines() -> None:
    """Close every pooled connection (tests, forked processes) and forget cached salts."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
    _bump_generation()


def session_factory(settings_or_url: Settings | str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(settings_or_url), expire_on_commit=False)


@contextlib.contextmanager
def session_scope(settings_or_url: Settings | str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with session_factory(settings_or_url).begin() as session:
        yield session


def all_or_nothing(settings_or_url: Settings | str, work, *, keep) -> object:
    """Run ``work(session)`` in one transaction; commit only when ``keep(result)`` is true.

    For imports that must leave no trace when they reject their input (codes, strict
    customer imports); an exception rolls back too.
    """
    session = session_factory(settings_or_url)()
    try:
        result = work(session)
        if keep(result):
            session.commit()
        else:
            session.rollback()
        return result
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str, settings: Settings | None = None):
    """Alembic's config for ``url``; migration 0003 reads the keys it needs from ``settings``."""
    cfg = Config()
    cfg.attributes["mailer_settings"] = settings
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(settings_or_url: Settings | str, revision: str = "head") -> None:
    """Create or migrate the schema to ``revision`` with Alembic."""
    if isinstance(settings_or_url, str):
        url, settings = settings_or_url, None
    else:
        url, settings = settings_or_url.database_url, settings_or_url
    command.upgrade(alembic_config(url, settings), revision)

    _bump_generation()  # the upgrade may have stored the salt: values cached from the old schema are stale


def downgrade(settings_or_url: Settings | str, revision: str) -> None:
    url = settings_or_url if isinstance(settings_or_url, str) else settings_or_url.database_url
    command.downgrade(alembic_config(url), revision)

    _bump_generation()


def current_revision(settings_or_url: Settings | str) -> str | None:
    with get_engine(settings_or_url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
