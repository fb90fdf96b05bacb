"""Retention: an index on created_at of decisions, feedback and calls (``tierwise decisions prune`` and the
service's retention select old rows by it); ``tierwise_meta`` goes, since Alembic's version table now says which
schema a log has.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_INDEXES = [("decisions_created_at", "decisions"), ("feedback_created_at", "feedback"), ("calls_created_at", "calls")]


def upgrade() -> None:
    for name, table in _INDEXES:
        op.create_index(name, table, ["created_at"])
    if sa.inspect(op.get_bind()).has_table("tierwise_meta"):
        op.drop_table("tierwise_meta")


def downgrade() -> None:
    for name, table in _INDEXES:
        op.drop_index(name, table_name=table)
    # what tierwise wrote before migrations: such a version opens the log again
    meta = op.create_table(
        "tierwise_meta", sa.Column("key", sa.Text, primary_key=True), sa.Column("value", sa.Text, nullable=False)
    )
    op.bulk_insert(meta, [{"key": "schema_version", "value": "1"}])
