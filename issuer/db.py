"""Database engine, sessions and schema migrations (Alembic, applied programmatically on start).

SQLite is the default (WAL, foreign keys, busy timeout); PostgreSQL through psycopg 3 for fleets.

Only `serve` and `migrate` may create a database. Every other command opens an existing one with
`open_existing()`: a `token create` pointed at the wrong place must fail and say so, not make a
fresh empty database whose token the running issuer will never accept.

    DatabaseError
    ├── DatabaseUnreachable   cannot connect / not a database (message from the driver, no password)
    ├── NoSuchDatabase        the file does not exist, or holds no Tripkey schema
    └── SchemaMismatch        a Tripkey schema at another revision than this code's
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Arbitrary constant: several replicas starting at once take turns migrating a PostgreSQL database.
_PG_MIGRATION_LOCK = 0x7472_6970_6B65_79
# Alembic keeps its running context in module globals: one migration at a time per process.
_ALEMBIC_LOCK = threading.Lock()


class DatabaseError(Exception):
    """The database cannot be used; the message says which one and what to do."""


class DatabaseUnreachable(DatabaseError):
    """Cannot connect, or the file is not a database."""


class NoSuchDatabase(DatabaseError):
    """There is no database there, or it holds no Tripkey schema (and this command must not create one)."""


class SchemaMismatch(DatabaseError):
    """The database's schema is at another revision than this version of the issuer expects."""


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL (None for PostgreSQL and in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).expanduser()


def create_db_engine(url: str, *, echo: bool = False, create: bool = True) -> Engine:
    """An engine for `url`; SQLite files get their parent directory (0700) created first.

    With `create=False` nothing is created: the caller has checked that the file exists.
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo, "future": True}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if create and database and database != ":memory:":
            path = Path(database).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # The registry says which host holds which key: owner-only. SQLite gives the -wal and
            # -shm files the database file's mode.
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # Objects stay readable after commit: routers serialise them after the transaction ends.
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(engine: Engine | None = None) -> Config:
    """Alembic configured in code (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """Several processes on one SQLite file take turns (PostgreSQL uses an advisory lock)."""
    database = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: the in-process lock is all we have
        yield
        return
    with open(f"{database}.migrate-lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to `revision` (idempotent; safe with several replicas and processes)."""
    config = alembic_config(engine)
    with _ALEMBIC_LOCK, _sqlite_file_lock(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    log.info("database schema at revision %s", current_revision(engine))


def downgrade(engine: Engine, revision: str) -> None:
    config = alembic_config(engine)
    with _ALEMBIC_LOCK, _sqlite_file_lock(engine), engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


class Database:
    """Engine + session factory for one URL (`create=False`: never create the SQLite file)."""

    def __init__(self, url: str, *, echo: bool = False, create: bool = True) -> None:
        self.url = url
        self.engine = create_db_engine(url, echo=echo, create=create)
        self.sessionmaker = make_sessionmaker(self.engine)

    def migrate(self) -> None:
        upgrade(self.engine)

    def session(self) -> Session:
        return self.sessionmaker()

    def dispose(self) -> None:
        self.engine.dispose()


@dataclasses.dataclass(frozen=True)
class DatabaseState:
    """What is at a database URL, found without creating or changing anything."""

    exists: bool
    revision: str | None  # None: no Tripkey schema (or nothing there)
    head: str

    @property
    def current(self) -> bool:
        return self.exists and self.revision == self.head

    @property
    def known_revision(self) -> bool:
        return self.revision is not None and self.revision in _all_revisions()


def _all_revisions() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def _driver_message(exc: Exception) -> str:
    # The driver's first line says what happened ("connection refused", "database x does not exist",
    # "file is not a database"); the rest is SQLAlchemy's boilerplate and the statement.
    original = getattr(exc, "orig", None) or exc
    return (str(original).strip().splitlines() or [type(original).__name__])[0]


def inspect_database(url: str) -> DatabaseState:
    """Exists? Which schema revision? Never creates the SQLite file. Raises DatabaseUnreachable."""
    head = head_revision()
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        return DatabaseState(exists=False, revision=None, head=head)
    engine = create_db_engine(url, create=False)
    try:
        revision = current_revision(engine)
    except SQLAlchemyError as exc:
        raise DatabaseUnreachable(_driver_message(exc)) from exc
    finally:
        engine.dispose()
    return DatabaseState(exists=True, revision=revision, head=head)


def open_existing(url: str, shown_as: str) -> Database:
    """The database at `url`, only if it exists with this version's schema (`shown_as`: for messages).

    The fix named in each error is what an operator most likely needs: the `--db`/`--config` that
    `serve` runs with, or `tripkey-issuer migrate` on purpose.
    """
    state = inspect_database(url)
    same_as_serve = "pass the --db URL or --config FILE that `tripkey-issuer serve` uses"
    if not state.exists:
        raise NoSuchDatabase(
            f"there is no issuer database at {shown_as}; {same_as_serve} (or create a new one on purpose "
            "with `tripkey-issuer migrate`)"
        )
    if state.revision is None:
        raise NoSuchDatabase(
            f"{shown_as} holds no Tripkey issuer schema; {same_as_serve} (or run `tripkey-issuer migrate` "
            "to set this one up)"
        )
    if not state.known_revision:
        raise SchemaMismatch(
            f"{shown_as} has schema revision {state.revision}, which this tripkey-issuer does not know "
            f"(a newer version wrote it); use the tripkey-issuer version that `serve` runs"
        )
    if not state.current:
        raise SchemaMismatch(
            f"{shown_as} has schema revision {state.revision}, this tripkey-issuer expects {state.head}: "
            "run `tripkey-issuer migrate` with the same --db/--config (or restart `serve`, which migrates)"
        )
    return Database(url, create=False)
