"""Alembic's entry point for the decision log's migrations.

:func:`router.service.decision_log.upgrade` (the service at start, ``tierwise db upgrade``) passes its connection,
already in the transaction that holds the upgrade lock, as ``config.attributes["connection"]``. A developer writing a
new revision may instead give a URL: ``alembic -c /dev/null -x url=sqlite:///scratch.db revision --autogenerate``
run from this folder (``script_location`` set to it) compares a database migrated to head with ``schema.metadata``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from router.service.decision_log.schema import VERSION_TABLE, metadata

config = context.config


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        transactional_ddl=True,  # SQLite's DDL is transactional too: a failed upgrade leaves nothing half done
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("run the decision log's migrations with `tierwise db upgrade` (or give -x url=URL)")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()
