"""Baseline: the decision log as tierwise wrote it before migrations existed (``tierwise_meta`` schema_version 1).

On an empty database it creates those tables. On a log written before migrations (tables, no version table) it
adopts them in place, after checking that each one has the columns of a tierwise log, and adds what older logs
lack: the ``calls`` and ``catalogs`` tables and the ``feedback_id`` column with its unique index (what the service
used to add when it opened a log).

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_Real = sa.Double


def _tables() -> list[sa.Table]:
    """The tables as of this revision (frozen here: later revisions change them, not this list)."""
    md = sa.MetaData()
    return [
        sa.Table(
            "decisions",
            md,
            sa.Column("request_id", sa.Text, primary_key=True),
            sa.Column("created_at", sa.Text, nullable=False),
            sa.Column("endpoint", sa.Text, nullable=False),
            sa.Column("role", sa.Text, nullable=False),
            sa.Column("tier", sa.Text, nullable=False),
            sa.Column("tier_index", sa.Integer, nullable=False),
            sa.Column("model", sa.Text, nullable=False),
            sa.Column("threshold", _Real, nullable=False),
            sa.Column("reason", sa.Text, nullable=False),
            sa.Column("p_acceptable", sa.Text, nullable=False),
            sa.Column("prompt_hash", sa.Text, nullable=False),
            sa.Column("prompt", sa.Text),
            sa.Column("prompt_chars", sa.Integer, nullable=False),
            sa.Column("router_version", sa.Text, nullable=False),
            sa.Column("est_cost_usd", _Real),
            sa.Column("est_top_cost_usd", _Real),
            sa.Column("latency_ms", _Real),
            sa.Column("task", sa.Text),
            sa.Column("tenant", sa.Text),
            sa.Column("metadata", sa.Text),
        ),
        sa.Table(
            "feedback",
            md,
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
            sa.Column("request_id", sa.Text, nullable=False),
            sa.Column("created_at", sa.Text, nullable=False),
            sa.Column("tier", sa.Text),
            sa.Column("model", sa.Text, nullable=False),
            sa.Column("score", _Real, nullable=False),
            sa.Column("acceptable", sa.Integer),
            sa.Column("input_tokens", _Real),
            sa.Column("output_tokens", _Real),
            sa.Column("cost_usd", _Real),
            sa.Column("latency_ms", _Real),
            sa.Column("metadata", sa.Text),
            sa.Column("feedback_id", sa.Text),
            sqlite_autoincrement=True,
        ),
        sa.Table(
            "calls",
            md,
            sa.Column("request_id", sa.Text, primary_key=True),
            sa.Column("created_at", sa.Text, nullable=False),
            sa.Column("requested_model", sa.Text, nullable=False),
            sa.Column("tier", sa.Text),
            sa.Column("model", sa.Text),
            sa.Column("upstream", sa.Text),
            sa.Column("status", sa.Integer, nullable=False),
            sa.Column("outcome", sa.Text, nullable=False),
            sa.Column("stream", sa.Integer, nullable=False),
            sa.Column("input_tokens", sa.Integer),
            sa.Column("output_tokens", sa.Integer),
            sa.Column("cost_usd", _Real),
            sa.Column("top_tier_cost_usd", _Real),
            sa.Column("latency_ms", _Real),
            sa.Column("upstream_ms", _Real),
            sa.Column("overhead_ms", _Real),
            sa.Column("attempts", sa.Text, nullable=False),
            sa.Column("cache", sa.Text, nullable=False),
            sa.Column("tenant", sa.Text),
        ),
        sa.Table(
            "catalogs",
            md,
            sa.Column("router_version", sa.Text, primary_key=True),
            sa.Column("catalog", sa.Text, nullable=False),
            sa.Column("recorded_at", sa.Text, nullable=False),
        ),
    ]


# columns a table may lack in a log this revision adopts (it adds them)
_ADDED_LATER = {"feedback": {"feedback_id"}}
# (name, table, columns, unique)
_INDEXES = [
    ("feedback_request_id", "feedback", ["request_id"], False),
    ("feedback_feedback_id", "feedback", ["feedback_id"], True),  # NULLs never collide: feedback without an id
]


def upgrade() -> None:
    bind = op.get_bind()
    insp = sa.inspect(bind)
    existing = set(insp.get_table_names())
    tables = _tables()
    for table in tables:  # check everything before changing anything
        if table.name in existing:
            have = {c["name"] for c in insp.get_columns(table.name)}
            later = _ADDED_LATER.get(table.name, set())
            missing = [c.name for c in table.columns if c.name not in have | later]
            if missing:
                raise RuntimeError(
                    f"the database's table {table.name!r} is not a tierwise decision log's: it has no column(s) "
                    f"{', '.join(missing)}; point TIERWISE_DECISION_LOG at a log or an empty database"
                )
    if "tierwise_meta" in existing:
        version = bind.execute(sa.text("SELECT value FROM tierwise_meta WHERE key = 'schema_version'")).scalar()
        if version not in (None, "1"):
            raise RuntimeError(f"the decision log's tierwise_meta says schema_version {version!r}; expected '1'")
    for table in tables:
        if table.name not in existing:
            table.create(bind)  # the frozen definition above (op.create_table would take copies of its columns)
        elif table.name == "feedback" and "feedback_id" not in {c["name"] for c in insp.get_columns("feedback")}:
            op.add_column("feedback", sa.Column("feedback_id", sa.Text))
    have_indexes = {i["name"] for i in insp.get_indexes("feedback")} if "feedback" in existing else set()
    for name, table_name, columns, unique in _INDEXES:
        if name not in have_indexes:
            op.create_index(name, table_name, columns, unique=unique)


def downgrade() -> None:
    raise NotImplementedError("the baseline is the oldest schema: there is nothing to downgrade it to")
