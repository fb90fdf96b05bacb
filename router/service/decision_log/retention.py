"""Retention: delete what is older than a cut-off, in bounded batches (``tierwise decisions prune``, and the
service's writer every hour with ``TIERWISE_DECISION_RETENTION_DAYS``).

Which time decides: a request's *decision* time. A decision older than the cut goes with all of its feedback, even
feedback recorded after the cut (feedback for an old decision arrives late; kept alone it could never be exported,
since the export joins feedback to its decision). A gateway call goes by its own time (the call and its routing
decision are logged together). Feedback older than the cut whose decision is not in the log goes too. Catalogs are
kept (one row per router version; the export needs them for the rows that remain).

Each batch is one short transaction of at most ``batch_rows`` requests per table, so writers (other replicas, the
service's own writer) wait for one batch at most, never for the whole prune. On PostgreSQL a batch holds an advisory
lock for its transaction: replicas sharing a log take turns, and a replica's hourly batch is skipped while another
process is pruning (it would find the same rows), instead of every replica deleting the same batch at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from router.service.decision_log import store
from router.service.decision_log.schema import calls, decisions, feedback

BATCH_ROWS = 500  # requests per table per transaction
PRUNE_LOCK_KEY = 0x5A1F9B3C4E2D7A62  # PostgreSQL advisory lock of a prune batch (next to migrate's key)


@dataclass
class PruneCounts:
    """Rows deleted (or, in a dry run, that would be)."""

    decisions: int = 0
    feedback: int = 0
    calls: int = 0

    def __add__(self, other: PruneCounts) -> PruneCounts:
        return PruneCounts(self.decisions + other.decisions, self.feedback + other.feedback, self.calls + other.calls)

    @property
    def total(self) -> int:
        return self.decisions + self.feedback + self.calls

    def describe(self) -> str:
        return f"{self.decisions} decision(s), {self.feedback} feedback row(s), {self.calls} gateway call(s)"


def utc_iso(when: str | datetime, option: str = "since") -> str:
    """A date or time (naive = UTC) as the log's timestamps are written, so a string comparison orders it."""
    if isinstance(when, str):
        try:
            t = datetime.fromisoformat(when.strip())
        except ValueError:
            raise ValueError(
                f"{option}: {when!r} is not an ISO date or time (e.g. 2026-11-01 or 2026-11-01T08:00)"
            ) from None
    else:
        t = when
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).isoformat(timespec="milliseconds")


def cutoff_days(days: float, now: datetime | None = None) -> str:
    return utc_iso((now or datetime.now(UTC)) - timedelta(days=days))


def prune_batch(
    conn: sa.Connection, cut: str, batch_rows: int = BATCH_ROWS, *, wait: bool = True
) -> PruneCounts | None:
    """Delete one batch of rows older than ``cut`` (a :func:`utc_iso` time) in the caller's transaction. On
    PostgreSQL under the prune lock: ``wait`` for it, or (``wait=False``) return None at once when another process
    holds it."""
    if conn.dialect.name == "postgresql":
        if wait:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(PRUNE_LOCK_KEY)))
        elif not conn.execute(sa.select(sa.func.pg_try_advisory_xact_lock(PRUNE_LOCK_KEY))).scalar_one():
            return None
    n = PruneCounts()
    old = (
        conn.execute(sa.select(decisions.c.request_id).where(decisions.c.created_at < cut).limit(batch_rows))
        .scalars()
        .all()
    )
    if old:
        n.feedback += conn.execute(sa.delete(feedback).where(feedback.c.request_id.in_(old))).rowcount
        n.decisions += conn.execute(sa.delete(decisions).where(decisions.c.request_id.in_(old))).rowcount
    old_calls = (
        conn.execute(sa.select(calls.c.request_id).where(calls.c.created_at < cut).limit(batch_rows)).scalars().all()
    )
    if old_calls:
        n.calls += conn.execute(sa.delete(calls).where(calls.c.request_id.in_(old_calls))).rowcount
    orphans = (
        conn.execute(sa.select(feedback.c.id).where(feedback.c.created_at < cut, ~_has_decision()).limit(batch_rows))
        .scalars()
        .all()
    )
    if orphans:
        n.feedback += conn.execute(sa.delete(feedback).where(feedback.c.id.in_(orphans))).rowcount
    return n


def _has_decision() -> sa.Exists:
    return sa.exists().where(decisions.c.request_id == feedback.c.request_id)


def count_prunable(conn: sa.Connection, cut: str) -> PruneCounts:
    """What :func:`prune` would delete at ``cut``."""
    old = sa.select(decisions.c.request_id).where(decisions.c.created_at < cut)
    count = sa.select(sa.func.count())
    return PruneCounts(
        decisions=conn.execute(count.select_from(decisions).where(decisions.c.created_at < cut)).scalar_one(),
        feedback=conn.execute(
            count.select_from(feedback).where(
                sa.or_(feedback.c.request_id.in_(old), sa.and_(feedback.c.created_at < cut, ~_has_decision()))
            )
        ).scalar_one(),
        calls=conn.execute(count.select_from(calls).where(calls.c.created_at < cut)).scalar_one(),
    )


def prune(
    target: str | os.PathLike[str],
    before: str | datetime,
    *,
    dry_run: bool = False,
    batch_rows: int = BATCH_ROWS,
    now: datetime | None = None,
) -> PruneCounts:
    """Delete the decisions (with all their feedback) and the gateway calls older than ``before`` from the log at
    ``target`` (a path or URL), in transactions of at most ``batch_rows`` requests per table; the counts. ``dry_run``
    only counts. ValueError for a cut-off in the future (it would delete what is being written now)."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    cut = utc_iso(before, "before")
    if cut > utc_iso(now or datetime.now(UTC)):
        raise ValueError(f"before: {before} is in the future; prune deletes rows older than a past date")
    url = store.resolve(target)
    engine = store.make_engine(url, readonly=dry_run, create=False)
    try:
        if dry_run:
            with engine.connect() as conn:
                return count_prunable(conn, cut)
        total = PruneCounts()
        while True:
            with engine.begin() as conn:
                n = prune_batch(conn, cut, batch_rows)
            assert n is not None  # it waited for the lock
            total = total + n
            if n.total == 0:
                return total
    finally:
        engine.dispose()
