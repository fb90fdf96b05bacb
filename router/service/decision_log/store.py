"""Where the decision log lives: a SQLite file (the embedded default) or a PostgreSQL database, through SQLAlchemy.

A *target* is what the settings and the CLI accept: a file path (``~/.tierwise/decisions.db``) or a SQLAlchemy URL
(``sqlite:///decisions.db``, ``postgresql+psycopg://user:password@host:5432/tierwise``; ``postgresql://`` uses
psycopg, the driver tierwise installs). SQLite runs in WAL mode with a busy timeout, so several worker processes share
one file; every write transaction is ``BEGIN IMMEDIATE`` (it takes the write lock at once, so two writers queue on
the busy timeout instead of failing on a lock upgrade). PostgreSQL connections taken from the pool are checked first
(``pool_pre_ping``), so one the server dropped meanwhile is replaced, not failed on (the writer, which keeps its
connection between batches, replaces a lost one on its next attempt).

Credentials never leave this module in clear: :func:`describe` is how a target appears in logs, errors and
``/readyz`` (the password replaced by ``***``), and engines hide SQL parameters in their exceptions (prompts).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, IntegrityError

SUPPORTED_BACKENDS = ("sqlite", "postgresql")
DEFAULT_DRIVERS = {"postgresql": "postgresql+psycopg"}  # a URL without a driver names the one tierwise installs
CONNECT_TIMEOUT_S = 10  # PostgreSQL: how long opening a connection may take (a URL's connect_timeout wins)
APPLICATION_NAME = "tierwise-decision-log"  # PostgreSQL: how the log's connections show in pg_stat_activity


class DecisionLogUnavailable(RuntimeError):
    """The decision log's database cannot be opened or reached (the message names it, credentials hidden, and says
    what to check)."""


def describe(target: str | os.PathLike[str] | URL) -> str:
    """``target`` as it may be shown: a path as is, a URL with its password replaced by ``***``."""
    from router.service.errors import redact  # the one redaction of URI credentials (tracking URIs too)

    if isinstance(target, URL):
        target = target.render_as_string(hide_password=False)
    return redact(os.fspath(target))


def is_url(target: str | os.PathLike[str]) -> bool:
    return not isinstance(target, os.PathLike) and "://" in target


def resolve(target: str | os.PathLike[str]) -> URL:
    """The SQLAlchemy URL of a target: a path is a SQLite file (``~`` expanded, made absolute); ValueError for a
    URL that is malformed, in memory, or of a database other than SQLite and PostgreSQL."""
    if not is_url(target):
        text = os.fspath(target).strip()
        if not text:
            raise ValueError("decision log: an empty path; give a file path or a database URL")
        return URL.create("sqlite", database=str(Path(text).expanduser().absolute()))
    text = str(target).strip()
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ValueError(
            f"decision log: {describe(text)!r} is not a database URL (e.g. sqlite:///PATH or "
            "postgresql+psycopg://USER:PASSWORD@HOST:5432/DATABASE)"
        ) from None
    backend = url.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise ValueError(
            f"decision log: {describe(text)} is a {backend} URL; the decision log runs on SQLite (a file) or "
            "PostgreSQL (postgresql+psycopg://...)"
        )
    if backend == "sqlite":
        if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
            raise ValueError(
                f"decision log: {describe(text)} names no file (an in-memory log would be lost at exit and unseen by "
                "other processes); use sqlite:///PATH"
            )
        return url.set(database=str(Path(url.database).expanduser().absolute()))
    if url.drivername in DEFAULT_DRIVERS:
        url = url.set(drivername=DEFAULT_DRIVERS[url.drivername])
    return url


def sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL (from :func:`resolve`), None for a server database."""
    return Path(url.database) if url.get_backend_name() == "sqlite" and url.database else None


def make_engine(
    url: URL, *, readonly: bool = False, busy_seconds: float = 10.0, create: bool = True, write_lock: bool = True
) -> Engine:
    """An engine for the log at ``url`` (from :func:`resolve`).

    SQLite: WAL, ``synchronous=NORMAL``, a busy timeout of ``busy_seconds`` (how long a write waits for another
    process's lock) and ``BEGIN IMMEDIATE`` transactions (plain ``BEGIN`` with ``write_lock=False``: for reads,
    which must not queue for the write lock); ``readonly`` opens the file read-only; FileNotFoundError when the
    file does not exist and ``readonly`` or not ``create``. PostgreSQL: connections checked before use, a
    connect timeout."""
    path = sqlite_file(url)
    if path is not None:
        return _sqlite_engine(
            path, readonly=readonly, busy_seconds=busy_seconds, create=create, write_lock=write_lock and not readonly
        )
    connect_args: dict[str, Any] = {"application_name": APPLICATION_NAME}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    return sa.create_engine(
        url,
        pool_pre_ping=True,  # a connection the server closed (restart, failover, idle kill) is replaced on checkout
        pool_size=4,
        max_overflow=4,
        hide_parameters=True,  # no row values (prompts) in exception messages
        connect_args=connect_args,
    )


def _sqlite_engine(path: Path, *, readonly: bool, busy_seconds: float, create: bool, write_lock: bool) -> Engine:
    if readonly or not create:
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no decision log there (tierwise serve writes it; or give --db PATH or URL)"
            )
    if readonly:
        url = URL.create("sqlite", database=path.resolve().as_uri(), query={"mode": "ro", "uri": "true"})
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        url = URL.create("sqlite", database=str(path))
    engine = sa.create_engine(
        url,
        connect_args={"timeout": busy_seconds, "check_same_thread": False},
        hide_parameters=True,
    )
    busy_ms = int(busy_seconds * 1000)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, record: Any) -> None:
        # SQLAlchemy emits BEGIN (below), not the driver: savepoints and BEGIN IMMEDIATE work as documented
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
            if not readonly:
                cur.execute("PRAGMA journal_mode = WAL")
                cur.execute("PRAGMA synchronous = NORMAL")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        # a writer takes the write lock at once; readers never block writers (WAL)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write_lock else "BEGIN")

    return engine


def reader_engine(url: URL, writer: Engine, *, busy_seconds: float = 10.0) -> Engine:
    """The engine a live log reads with: SQLite's deferred transactions (a read must not take the write lock), or
    the writer's own engine for a server database."""
    if sqlite_file(url) is None:
        return writer
    return make_engine(url, busy_seconds=busy_seconds, write_lock=False)


def is_database_error(exc: BaseException) -> bool:
    """True when the database failed (unreachable, connection lost, locked, full, a table missing, no permission)
    rather than one row's values (a number out of range, a string the database cannot store, a NOT NULL)."""
    if isinstance(exc, (DataError, IntegrityError)):
        return False
    return isinstance(exc, DBAPIError)


def reason(exc: BaseException) -> str:
    """``Type: first line`` of an error, the driver's own error unwrapped, at most 200 characters, URI credentials
    hidden (a row's values never appear: engines hide SQL parameters)."""
    from router.service.errors import redact

    inner: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    first = (str(inner).strip().splitlines() or [""])[0][:200]
    return redact(f"{type(inner).__name__}: {first}" if first else type(inner).__name__)


def unavailable(target: str | os.PathLike[str], exc: BaseException) -> DecisionLogUnavailable:
    """The error for a log that cannot be opened: what failed, then what to check."""
    server = is_url(target) and not os.fspath(target).lstrip().lower().startswith("sqlite")
    if server:
        hint = (
            "check that the database server is running and reachable from here, and the URL's host, port, database "
            "name (create it first: createdb NAME), user and password (TIERWISE_DECISION_LOG or --db)"
        )
    else:
        hint = "check that the path is a writable file in a directory that exists or can be created"
    return DecisionLogUnavailable(f"{reason(exc)}; {hint}")
