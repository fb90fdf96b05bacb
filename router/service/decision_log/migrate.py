"""Schema migrations of the decision log (Alembic, shipped in ``migrations/``; no ``alembic.ini`` needed).

:func:`upgrade` brings a log to the newest schema; the service runs it at start (every worker, every replica) and
``tierwise db upgrade`` runs it on demand. A log written before migrations existed (its tables, no version table)
is adopted by the baseline revision, which checks its tables first. Concurrent upgrades are serialised: on
PostgreSQL by an advisory lock held for the upgrade's transaction, on SQLite by the write lock (``BEGIN
IMMEDIATE``, waited for while another process migrates); whoever comes second finds the schema current and does
nothing. A log whose schema is newer than this tierwise is refused (the revision is named).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from router.service.decision_log.schema import VERSION_TABLE

if TYPE_CHECKING:  # alembic is imported when a migration runs (0.3 s: not for every import of the log)
    from alembic.config import Config
    from alembic.script import ScriptDirectory

log = logging.getLogger("tierwise.service")

MIGRATIONS = Path(__file__).resolve().with_name("migrations")
# PostgreSQL: the advisory lock every upgrader takes (a fixed key of our own, held until its transaction ends)
ADVISORY_LOCK_KEY = 0x5A1F9B3C4E2D7A61
LOCK_WAIT_SECONDS = 600.0  # SQLite: how long an upgrade waits for another process's migration (busy retries)


class SchemaError(RuntimeError):
    """The log's schema cannot be brought to this tierwise's (newer than it, or tables that are not a log's)."""


def _config(connection: sa.Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def head() -> str:
    """The newest revision this tierwise knows."""
    rev = script().get_current_head()
    assert rev is not None
    return rev


def current(conn: sa.Connection) -> str | None:
    """The revision the database is at; None for a log that never ran a migration (empty or written before)."""
    from alembic.runtime.migration import MigrationContext

    ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return ctx.get_current_revision()


def _check_known(rev: str | None) -> None:
    if rev is None:
        return
    try:
        known = script().get_revision(rev)
    except Exception:  # noqa: BLE001 - alembic raises several kinds for an unknown id
        known = None
    if known is None:
        raise SchemaError(
            f"the decision log's schema is at revision {rev!r}, which this tierwise does not know (it is newer: "
            f"this tierwise's newest is {head()!r}); upgrade tierwise, or use another log"
        )


def upgrade(engine: Engine, *, lock_wait_seconds: float = LOCK_WAIT_SECONDS) -> tuple[str | None, str]:
    """Upgrade the log to :func:`head`; (revision before, revision after). Safe to run from many processes at
    once: the second waits for the first (on SQLite up to ``lock_wait_seconds``) and finds nothing to do."""
    target = head()
    deadline = time.monotonic() + lock_wait_seconds
    while True:
        try:
            return _upgrade(engine, target)
        except OperationalError as exc:  # SQLite: another process holds the lock longer than the busy timeout
            if "locked" not in str(exc.orig) or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def _upgrade(engine: Engine, target: str) -> tuple[str | None, str]:
    with engine.connect() as conn:
        before = current(conn)
        conn.rollback()
    _check_known(before)
    if before == target:  # the usual case at start-up: no lock taken
        return before, target
    with engine.connect() as conn, conn.begin():  # SQLite: BEGIN IMMEDIATE, one upgrader at a time
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))
        before = current(conn)  # another process may have upgraded while this one waited
        _check_known(before)
        if before != target:
            from alembic import command

            log.info("decision log: migrating the schema from %s to %s", before or "an unversioned log", target)
            command.upgrade(_config(conn), "head")
    return before, target
