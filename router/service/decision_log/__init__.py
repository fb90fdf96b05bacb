"""The decision log: every routing decision, every piece of feedback and every gateway call, in SQLite (a file, the
embedded default) or PostgreSQL (one store every replica writes to), through SQLAlchemy.

``TIERWISE_DECISION_LOG`` is a path (``~/.tierwise/decisions.db``) or a URL (``sqlite:///PATH``,
``postgresql+psycopg://USER:PASSWORD@HOST:5432/DATABASE``). One module per job:

* :mod:`~router.service.decision_log.schema`: the tables (SQLAlchemy Core; the one schema definition);
* :mod:`~router.service.decision_log.store`: targets, engines, errors (credentials never shown);
* :mod:`~router.service.decision_log.migrate` and ``migrations/``: Alembic migrations, run at service start and by
  ``tierwise db upgrade``; a log written before migrations is adopted in place;
* :mod:`~router.service.decision_log.writer`: :class:`DecisionLog`, the service's batched background writer;
* :mod:`~router.service.decision_log.retention`: ``tierwise decisions prune`` and the writer's retention;
* :mod:`~router.service.decision_log.export`: the training export and the readers for reports.

The ``catalogs`` table keeps the tier catalog of every router version the service loaded, so an export names the
catalog its rows were routed with.

Privacy: the prompt text is stored only when the operator opts in (``TIERWISE_STORE_PROMPTS=true``); otherwise only
its SHA-256 is kept. Prompts never appear in logs or errors (engines hide SQL parameters).
"""

from __future__ import annotations

from router.service.decision_log.export import (
    EXPORT_COLUMNS,
    CatalogMismatch,
    ExportSummary,
    NothingToExport,
    connect,
    export_for_training,
    export_log,
    export_rows,
    iter_calls,
    iter_decisions,
    iter_feedback,
    reading,
    stored_catalogs,
)
from router.service.decision_log.migrate import SchemaError, current, head, upgrade
from router.service.decision_log.retention import PruneCounts, prune
from router.service.decision_log.schema import (
    CALL_COLUMNS,
    DECISION_COLUMNS,
    FEEDBACK_COLUMNS,
    FEEDBACK_READ_COLUMNS,
    metadata,
)
from router.service.decision_log.store import DecisionLogUnavailable, describe, make_engine, resolve
from router.service.decision_log.writer import DecisionLog, DecisionLogError, prompt_hash, utc_now

__all__ = [
    "CALL_COLUMNS",
    "DECISION_COLUMNS",
    "EXPORT_COLUMNS",
    "FEEDBACK_COLUMNS",
    "FEEDBACK_READ_COLUMNS",
    "CatalogMismatch",
    "DecisionLog",
    "DecisionLogError",
    "DecisionLogUnavailable",
    "ExportSummary",
    "NothingToExport",
    "PruneCounts",
    "SchemaError",
    "connect",
    "current",
    "describe",
    "export_for_training",
    "export_log",
    "export_rows",
    "head",
    "iter_calls",
    "iter_decisions",
    "iter_feedback",
    "make_engine",
    "metadata",
    "prompt_hash",
    "prune",
    "reading",
    "resolve",
    "stored_catalogs",
    "upgrade",
    "utc_now",
]
