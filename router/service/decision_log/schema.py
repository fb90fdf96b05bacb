"""The decision log's tables: the one definition of its schema (SQLAlchemy Core), for SQLite and PostgreSQL alike.

The Alembic migrations in ``migrations/versions`` are the history that brings any database to this schema (a test
checks that migrating an empty database yields exactly these tables). Times are UTC ISO 8601 text with
milliseconds (``2026-11-28T17:38:06.123+00:00``, :func:`router.service.decision_log.writer.utc_now`), so comparing
them as strings orders them in time in every database.
"""

from __future__ import annotations

import sqlalchemy as sa

# Alembic's version table under a name of our own: a PostgreSQL database may also hold an MLflow tracking store,
# whose migrations use Alembic's default ``alembic_version``.
VERSION_TABLE = "tierwise_alembic_version"

metadata = sa.MetaData()

# REAL in SQLite, DOUBLE PRECISION in PostgreSQL (SQLAlchemy's Float there would be 4 bytes)
_Real = sa.Double

decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("request_id", sa.Text, primary_key=True),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("endpoint", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("tier", sa.Text, nullable=False),
    sa.Column("tier_index", sa.Integer, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("threshold", _Real, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("p_acceptable", sa.Text, nullable=False),  # JSON: P(acceptable) per tier
    sa.Column("prompt_hash", sa.Text, nullable=False),  # SHA-256 of the routed text
    sa.Column("prompt", sa.Text),  # only with TIERWISE_STORE_PROMPTS=true
    sa.Column("prompt_chars", sa.Integer, nullable=False),
    sa.Column("router_version", sa.Text, nullable=False),
    sa.Column("est_cost_usd", _Real),
    sa.Column("est_top_cost_usd", _Real),
    sa.Column("latency_ms", _Real),
    sa.Column("task", sa.Text),
    sa.Column("tenant", sa.Text),
    sa.Column("metadata", sa.Text),  # JSON
    sa.Index("decisions_created_at", "created_at"),
)

feedback = sa.Table(
    "feedback",
    metadata,
    # INTEGER PRIMARY KEY AUTOINCREMENT in SQLite (ids never reused: the export's order), BIGSERIAL in PostgreSQL
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("tier", sa.Text),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("score", _Real, nullable=False),
    sa.Column("acceptable", sa.Integer),  # 0 / 1 / NULL
    sa.Column("input_tokens", _Real),
    sa.Column("output_tokens", _Real),
    sa.Column("cost_usd", _Real),
    sa.Column("latency_ms", _Real),
    sa.Column("metadata", sa.Text),  # JSON
    sa.Column("feedback_id", sa.Text),  # the client's id: a retry with the same id is written once
    sa.Index("feedback_request_id", "request_id"),
    sa.Index("feedback_feedback_id", "feedback_id", unique=True),  # NULLs never collide
    sa.Index("feedback_created_at", "created_at"),
    sqlite_autoincrement=True,
)

calls = sa.Table(
    "calls",
    metadata,
    sa.Column("request_id", sa.Text, primary_key=True),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("requested_model", sa.Text, nullable=False),
    sa.Column("tier", sa.Text),
    sa.Column("model", sa.Text),
    sa.Column("upstream", sa.Text),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("stream", sa.Integer, nullable=False),  # 0 / 1
    sa.Column("input_tokens", sa.Integer),
    sa.Column("output_tokens", sa.Integer),
    sa.Column("cost_usd", _Real),
    sa.Column("top_tier_cost_usd", _Real),
    sa.Column("latency_ms", _Real),
    sa.Column("upstream_ms", _Real),
    sa.Column("overhead_ms", _Real),
    sa.Column("attempts", sa.Text, nullable=False),  # JSON
    sa.Column("cache", sa.Text, nullable=False),
    sa.Column("tenant", sa.Text),
    sa.Index("calls_created_at", "created_at"),
)

catalogs = sa.Table(
    "catalogs",
    metadata,
    sa.Column("router_version", sa.Text, primary_key=True),
    sa.Column("catalog", sa.Text, nullable=False),  # the catalog YAML the version routed with
    sa.Column("recorded_at", sa.Text, nullable=False),
)

TABLES = {t.name: t for t in (decisions, feedback, calls, catalogs)}

# The columns the writer fills, in the order of its rows (feedback's id is the database's)
DECISION_COLUMNS = tuple(c.name for c in decisions.columns)
FEEDBACK_COLUMNS = tuple(c.name for c in feedback.columns if c.name != "id")
CALL_COLUMNS = tuple(c.name for c in calls.columns)
FEEDBACK_READ_COLUMNS = tuple(c for c in FEEDBACK_COLUMNS if c != "metadata")
