"""The service's writer: decisions, feedback and gateway calls go on a queue, and one background thread writes them
in batches (one transaction per batch); never on the event loop.

The writer never dies silently. A row the database refuses (a number out of range, a string it cannot store) is
dropped and counted on its own while the rest of its batch is written. A failing database (locked, unreachable, a
connection lost mid-run) is retried with a fresh connection, for at least three attempts and ``retry_seconds``,
before the batch is dropped and counted; :meth:`DecisionLog.health` reports a stopped writer (restarting it) or
failing writes, for ``/readyz``, and while writes fail and no row comes the writer probes the database now and then,
so the state clears once the problem passes. ``record_feedback`` returns a future that resolves once the row is
committed: the service's durable mode answers only then (on PostgreSQL as on SQLite), so a crash never loses
acknowledged feedback. A client's ``feedback_id`` makes a retry idempotent (a timed-out wait does not mean the row
will not be committed later). With ``retention_days`` the writer also deletes old rows, a bounded batch at a time
between its writes (:mod:`router.service.decision_log.retention`).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

# The bounds of a feedback row's numbers: the API refuses anything outside them with a 422, record_feedback with a
# ValueError, and the export skips legacy rows outside them.
from router.limits import attempt_number_problem
from router.service.decision_log import migrate, retention, store
from router.service.decision_log.schema import (
    CALL_COLUMNS,
    DECISION_COLUMNS,
    FEEDBACK_COLUMNS,
    calls,
    catalogs,
    decisions,
    feedback,
)

log = logging.getLogger("tierwise.service")

_KIND_NAMES = {"d": "decision", "f": "feedback", "c": "gateway call"}
_COLUMNS = {"d": DECISION_COLUMNS, "f": FEEDBACK_COLUMNS, "c": CALL_COLUMNS}


def prompt_hash(text: str) -> str:
    """SHA-256 of the routed text (hex). Its first 16 digits are the exported ``prompt_id``."""
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str, allow_nan=False)  # ensure_ascii: safe for any input


def _json(value: Any) -> str | None:
    if value is None:
        return None
    return _ENCODER.encode(value)


def _inserts(dialect: str) -> dict[str, Any]:
    """The idempotent insert of each kind of row in ``dialect``: a decision, call or catalog written again replaces
    the row (same request id / router version); a feedback whose ``feedback_id`` is in the log already is not
    written (the first one stays; feedback without an id never collides)."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert

    def upsert(table: sa.Table) -> Any:
        stmt = insert(table)
        keys = [c.name for c in table.primary_key.columns]
        return stmt.on_conflict_do_update(
            index_elements=keys, set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
        )

    return {
        "d": upsert(decisions),
        "c": upsert(calls),
        "f": insert(feedback).on_conflict_do_nothing(index_elements=["feedback_id"]),
        "catalog": upsert(catalogs),
    }


def _driver_inserts(dialect: sa.Dialect) -> dict[str, tuple[str, bool]]:
    """The inserts of the writer's rows compiled once for ``dialect``: (SQL, positional). Run with
    ``exec_driver_sql``, a row's values go to the driver as they are (a tuple in column order when the dialect's
    parameters are positional, as SQLite's): the hot path skips SQLAlchemy's per-row parameter processing, which
    cost three times SQLite's own insert per decision row. The types here need no bind processing."""
    stmts = _inserts(dialect.name)
    out = {}
    for kind, columns in _COLUMNS.items():
        compiled = stmts[kind].compile(dialect=dialect, column_keys=list(columns))
        if compiled.positional and tuple(compiled.positiontup or ()) != columns:
            raise AssertionError(f"{_KIND_NAMES[kind]} insert binds {compiled.positiontup}, rows hold {columns}")
        out[kind] = (str(compiled), compiled.positional)
    return out


def _no_nul(params: dict[str, Any]) -> dict[str, Any]:
    """PostgreSQL's text cannot hold NUL characters: they are stored as U+FFFD (the prompt's hash is of the text as
    it came; SQLite stores them as they are)."""
    if not any(isinstance(v, str) and "\x00" in v for v in params.values()):
        return params
    return {k: v.replace("\x00", "\ufffd") if isinstance(v, str) else v for k, v in params.items()}


class DecisionLogError(RuntimeError):
    """A row was not written (queue full, refused by the database, or the log is closed)."""


@dataclass
class _Flush:
    done: threading.Event


@dataclass
class _Row:
    kind: str  # "d" (decision), "f" (feedback) or "c" (a gateway call's outcome)
    values: tuple[Any, ...]
    future: Future[bool] | None = None
    urgent: bool = False  # someone waits for the commit: no batching pause
    settled: bool = False  # committed, or counted as dropped: never counted (again) when the writer dies
    inserted: bool = True  # False: a feedback row whose feedback_id was already in the log (not written again)
    request_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.request_id = str(self.values[0])

    @property
    def params(self) -> dict[str, Any]:
        return dict(zip(_COLUMNS[self.kind], self.values, strict=True))


def _check_number(name: str, value: Any) -> None:
    """ValueError unless ``value`` is None or within the bounds of :data:`router.limits.ATTEMPT_LIMITS`."""
    problem = attempt_number_problem(name, value)
    if problem is not None:
        raise ValueError(problem)


def _require_finite(**values: float | None) -> None:
    """ValueError naming the first of ``values`` that is set but not a finite number (None passes)."""
    for name, value in values.items():
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")


class DecisionLog:
    """Asynchronous, batched writer plus a few synchronous reads (call those from a thread, not the event loop).

    ``target``: a SQLite file path or a database URL (:func:`router.service.decision_log.store.resolve`); the
    schema is migrated to the newest revision on construction (``migrate_schema=False`` skips that), and a database that
    cannot be reached raises :class:`~router.service.decision_log.store.DecisionLogUnavailable` naming what to check.

    ``on_drop(n)`` is called for every ``n`` rows that were not written; ``on_error(kind)`` for every write problem
    (one of :data:`ERROR_KINDS`: ``row``: the database refused one row, ``batch``: a transaction failed after
    retries, ``writer``: the writer thread had stopped and was restarted, ``prune``: a retention batch failed).
    Both are for metrics; problems are also logged (never a prompt). ``busy_seconds``: how long one SQLite write
    waits for another process's lock. ``retry_seconds``: how long a failing database is retried (three attempts at
    least) before a batch is dropped. ``probe_seconds``: while writes fail and no row arrives, the writer probes the
    database this often, so a passing problem (a lock held longer than the retries, a database restarted) clears
    ``health`` without waiting for traffic. ``retention_days``: delete decisions (with their feedback) and calls
    older than this, every ``prune_every_seconds``, ``prune_batch_rows`` requests per transaction (None: keep all).
    """

    ERROR_KINDS = ("row", "batch", "writer", "prune")

    def __init__(
        self,
        target: str | os.PathLike[str],
        *,
        store_prompts: bool = False,
        max_queue: int = 100_000,
        batch_rows: int = 1024,
        flush_seconds: float = 0.02,
        on_drop: Callable[[int], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        busy_seconds: float = 10.0,
        retry_seconds: float = 10.0,
        probe_seconds: float = 2.0,
        retention_days: float | None = None,
        prune_every_seconds: float = 3600.0,
        prune_batch_rows: int = retention.BATCH_ROWS,
        migrate_schema: bool = True,
    ) -> None:
        if retention_days is not None and not retention_days > 0:
            raise ValueError(f"retention_days must be a positive number of days, got {retention_days!r}")
        self.url = store.resolve(target)
        self.where = store.describe(target)  # how the log is named in logs and errors (no password)
        file = store.sqlite_file(self.url)
        self.path: Path | None = file  # the SQLite file; None for a server database
        self.busy_seconds = busy_seconds
        self.retry_seconds = retry_seconds
        self.probe_seconds = probe_seconds
        self.store_prompts = store_prompts
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.on_drop = on_drop
        self.on_error = on_error
        self.retention_days = retention_days
        self.prune_every_seconds = prune_every_seconds
        self.prune_batch_rows = prune_batch_rows
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._urgent = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._life_lock = threading.Lock()  # start / restart: concurrent /readyz probes must not start two writers
        self._failing: str | None = None  # why the last transaction failed (None: the last one committed)
        self._stopped: str | None = None  # why the writer thread ended other than by close()
        self._conn: sa.Connection | None = None  # the writer thread's connection, kept between batches
        self._next_prune = time.monotonic()  # the first retention pass runs once the writer starts
        # Open the log (create, migrate) now, so a bad path or an unreachable database fails at start-up.
        self._engine = store.make_engine(self.url, busy_seconds=busy_seconds)
        self._reader = store.reader_engine(self.url, self._engine, busy_seconds=busy_seconds)
        self.dialect = self._engine.dialect.name
        self._upsert_catalog = _inserts(self.dialect)["catalog"]
        self._sql = _driver_inserts(self._engine.dialect)
        self._clean: Callable[[dict[str, Any]], dict[str, Any]] = (
            _no_nul if self.dialect == "postgresql" else (lambda p: p)
        )
        try:
            if migrate_schema:
                migrate.upgrade(self._engine)
            else:  # still fail now, not on the first write, when the database cannot be reached
                with self._engine.connect():
                    pass
        except migrate.SchemaError:
            self._dispose()
            raise
        except Exception as exc:
            self._dispose()
            if isinstance(exc, sa.exc.DBAPIError):
                raise store.unavailable(target, exc) from exc
            raise

    def _dispose(self) -> None:
        for engine in {id(self._engine): self._engine, id(self._reader): self._reader}.values():
            with contextlib.suppress(Exception):
                engine.dispose()

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> DecisionLog:
        self._start_writer()
        return self

    def _start_writer(self) -> bool:
        """Start a writer thread unless one runs; True when this call started one."""
        with self._life_lock:
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return False
            self._stopped = None
            thread = threading.Thread(target=self._run, name="tierwise-decision-log", daemon=True)
            thread.start()
            self._thread = thread  # only once started: health() may read it from another thread meanwhile
            return True

    def close(self, timeout: float = 10.0) -> None:
        self._closed = True
        if self._thread is not None:
            if self._thread.is_alive():
                self._queue.put(None)
                self._thread.join(timeout)
            self._thread = None
        # rows still queued (the writer stopped early) are not written: fail their futures, count them
        self._fail_rows(self._drain(), "the decision log is closed")
        self._dispose()

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every row queued so far is written (True) or ``timeout`` passes (False)."""
        if self._thread is None or not self._thread.is_alive():
            return self._queue.empty()
        marker = _Flush(threading.Event())
        self._queue.put(marker)
        return marker.done.wait(timeout)

    def health(self) -> str | None:
        """None when the writer runs and its last transaction (or probe) committed; else why not (for ``/readyz``).

        A writer thread that stopped is restarted here, and only the check that started the new thread reports (and
        counts) the restart. It may wait up to a second for a dying writer: call it from a thread, not the event loop.
        """
        thread = self._thread
        if self._closed or thread is None:
            return "the decision log is not running"
        why = self._stopped
        if why is not None or not thread.is_alive():
            why = why or "unknown reason"
            thread.join(1.0)  # it set _stopped and is on its way out (failing its batch's rows)
            if thread.is_alive():
                return f"the decision-log writer stopped ({why}); it is restarted on the next check"
            if not self._start_writer():  # closed meanwhile, or a concurrent probe restarted it
                return "the decision log is not running" if self._closed else None
            log.error("decision log writer had stopped (%s); restarted it", why)
            self._event("writer")
            return f"the decision-log writer had stopped ({why}) and was restarted"
        if self._failing is not None:
            return f"decision-log writes are failing: {self._failing}"
        return None

    # --- writes ------------------------------------------------------------------------------------------------
    def record_decision(
        self,
        *,
        request_id: str,
        endpoint: str,
        text: str,
        role: str,
        tier: str,
        tier_index: int,
        model: str,
        threshold: float,
        reason: str,
        probabilities: dict[str, float],
        router_version: str,
        est_cost_usd: float | None,
        est_top_cost_usd: float | None,
        latency_ms: float,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        _require_finite(
            threshold=threshold, est_cost_usd=est_cost_usd, est_top_cost_usd=est_top_cost_usd, latency_ms=latency_ms
        )
        meta = metadata or {}
        row = (
            request_id,
            utc_now(),
            endpoint,
            role,
            tier,
            tier_index,
            model,
            float(threshold),
            reason,
            _json(probabilities),
            prompt_hash(text),
            text if self.store_prompts else None,
            len(text),
            router_version,
            est_cost_usd,
            est_top_cost_usd,
            latency_ms,
            _str_or_none(meta.get("task")),
            _str_or_none(meta.get("tenant")),
            _json(meta) if meta else None,
        )
        self._put(_Row("d", row))

    def record_feedback(
        self,
        *,
        request_id: str,
        tier: str | None,
        model: str,
        score: float,
        acceptable: bool | None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cost_usd: float | None = None,
        latency_ms: float | None = None,
        metadata: dict[str, Any] | None = None,
        durable: bool = False,
        feedback_id: str | None = None,
    ) -> Future[bool]:
        """Queue one feedback row; the returned future resolves once it is committed, to True when the row was
        written and False when a row with its ``feedback_id`` was there already (or fails with
        :class:`DecisionLogError` when it was not written). ``durable``: the caller waits for that, so the writer
        commits at once instead of pausing for more rows. ``feedback_id``: the client's id of this feedback; a
        second row with the same id is not written (its future resolves: the first one is committed), so a client
        may retry a feedback whose answer it did not get. ValueError for numbers outside the bounds above."""
        bounded = {
            "score": score,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cost_usd": cost_usd,
            "latency_ms": latency_ms,
        }
        for name, value in bounded.items():
            _check_number(name, value)
        row = (
            request_id,
            utc_now(),
            tier,
            model,
            float(score),
            None if acceptable is None else int(acceptable),
            None if input_tokens is None else int(input_tokens),
            None if output_tokens is None else int(output_tokens),
            None if cost_usd is None else float(cost_usd),
            None if latency_ms is None else float(latency_ms),
            _json(metadata),
            feedback_id,
        )
        future: Future[bool] = Future()
        self._put(_Row("f", row, future, durable))
        return future

    def record_call(
        self,
        *,
        request_id: str,
        requested_model: str,
        tier: str | None,
        model: str | None,
        upstream: str | None,
        status: int,
        outcome: str,
        stream: bool,
        input_tokens: int | None,
        output_tokens: int | None,
        cost_usd: float | None,
        top_tier_cost_usd: float | None,
        latency_ms: float,
        upstream_ms: float | None,
        overhead_ms: float | None,
        attempts: list[dict[str, Any]],
        cache: str,
        tenant: str | None = None,
    ) -> None:
        """Queue the outcome of one gateway call (``/v1/chat/completions``): who answered, the tokens and USD the
        upstream's usage says, the all-top-tier counterfactual, timings and every attempt. No text is stored."""
        for name, value in (
            ("input_tokens", input_tokens),
            ("output_tokens", output_tokens),
            ("cost_usd", cost_usd),
            ("latency_ms", latency_ms),
        ):
            _check_number(name, value)
        _require_finite(top_tier_cost_usd=top_tier_cost_usd, upstream_ms=upstream_ms, overhead_ms=overhead_ms)
        row = (
            request_id,
            utc_now(),
            requested_model,
            tier,
            model,
            upstream,
            int(status),
            outcome,
            int(stream),
            input_tokens,
            output_tokens,
            cost_usd,
            top_tier_cost_usd,
            latency_ms,
            upstream_ms,
            overhead_ms,
            _json(attempts) or "[]",
            cache,
            tenant,
        )
        self._put(_Row("c", row))

    def record_catalog(self, router_version: str, catalog_yaml: str) -> None:
        """Store the catalog a router version routes with (synchronous: call it from a thread)."""
        with self._engine.begin() as conn:
            stored = conn.execute(
                sa.select(catalogs.c.catalog).where(catalogs.c.router_version == router_version)
            ).scalar_one_or_none()
            if stored == catalog_yaml:
                return
            if stored is not None:
                # registry versions never change; a local directory retrained in place can
                log.warning(
                    "router version %s now routes with a different catalog; the log keeps the new one", router_version
                )
            conn.execute(
                self._upsert_catalog,
                self._clean({"router_version": router_version, "catalog": catalog_yaml, "recorded_at": utc_now()}),
            )

    def _put(self, item: _Row) -> None:
        try:
            if self._closed:
                raise queue.Full
            self._queue.put_nowait(item)
            if item.urgent:
                self._urgent.set()
        except queue.Full:
            what = _KIND_NAMES[item.kind]
            why = "the decision log is closed" if self._closed else "decision log queue full"
            log.error("%s: dropping a %s row (request %s)", why, what, item.request_id)
            self._fail_rows([item], why)

    def _event(self, kind: str) -> None:
        if self.on_error is not None:
            try:
                self.on_error(kind)
            except Exception:  # noqa: BLE001 - a metrics problem must never stop the writer
                log.exception("decision log on_error callback failed")

    def _fail_rows(self, rows: list[_Row], why: str) -> None:
        """Count ``rows`` as dropped and fail their futures (nobody may be told they were written)."""
        rows = [r for r in rows if not r.settled]
        if not rows:
            return
        for r in rows:
            r.settled = True
        if self.on_drop is not None:
            try:
                self.on_drop(len(rows))
            except Exception:  # noqa: BLE001
                log.exception("decision log on_drop callback failed")
        for r in rows:
            _settle(r.future, DecisionLogError(why))

    def _drain(self) -> list[_Row]:
        rows: list[_Row] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return rows
            if isinstance(item, _Row):
                rows.append(item)
            elif isinstance(item, _Flush):
                item.done.set()

    def _wait_seconds(self) -> float | None:
        """How long the writer may wait for a row: until the next probe (writes failing) or retention pass."""
        waits = []
        if self._failing is not None:
            waits.append(self.probe_seconds)
        if self.retention_days is not None:
            waits.append(max(0.0, self._next_prune - time.monotonic()))
        return min(waits) if waits else None

    def _run(self) -> None:
        items: list[Any] = []
        try:
            while True:
                try:
                    # while writes fail, wake up now and then to see whether the database is back
                    item = self._queue.get(timeout=self._wait_seconds())
                except queue.Empty:
                    if self._failing is not None:
                        self._probe()
                    self._prune_if_due()
                    continue
                items = [item]
                # Let rows accumulate (one transaction per interval), unless someone waits for this commit:
                # durable feedback commits at once, and whatever arrived meanwhile shares the transaction.
                if isinstance(item, _Row) and not item.urgent and self._queue.qsize() < self.batch_rows:
                    self._urgent.wait(self.flush_seconds)  # a durable row cuts the pause short
                self._urgent.clear()
                while len(items) < self.batch_rows:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                rows = [i for i in items if isinstance(i, _Row)]
                try:
                    if rows:
                        self._write(rows)
                except Exception as exc:  # noqa: BLE001 - the writer must outlive any error: count, log, go on
                    self._batch_failed(rows, exc)
                finally:
                    for i in items:
                        if isinstance(i, _Flush):
                            i.done.set()
                if any(i is None for i in items):
                    return
                items = []
                self._prune_if_due()
        except BaseException as exc:
            self._stopped = store.reason(exc)
            why = f"the decision-log writer stopped: {self._stopped}"
            log.critical("%s", why)
            in_hand = [i for i in items if isinstance(i, _Row)]
            try:
                # the batch in hand is lost: count its unwritten rows (decisions have no future to tell)
                self._fail_rows(in_hand, why)
            finally:
                # whoever waits must not be told the rows were written, even when counting them failed too
                for i in items:
                    if isinstance(i, _Row):
                        _settle(i.future, DecisionLogError(why))
                    elif isinstance(i, _Flush):
                        i.done.set()
            # the thread ends here (logged above); health() reports it and starts a new one
        finally:
            self._release()
        # The dead batch's connection is held by the exception's traceback (a reference cycle): collect it now, or
        # SQLite keeps its transaction, and so the write lock, open until some later collection.
        gc.collect()

    def _release(self) -> None:
        """Give the writer's connection back (closed for good when it failed: the pool opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate()
                conn.close()

    def _probe(self) -> None:
        """Take the write lock and touch the tables, then roll back: when that works, writes work again."""
        try:
            with self._engine.connect() as conn, conn.begin() as trans:
                for table in (decisions, feedback, calls):
                    conn.execute(sa.delete(table).where(sa.false()))
                trans.rollback()
        except Exception as exc:  # noqa: BLE001 - still failing: keep the newest reason, try again later
            self._failing = store.reason(exc)
            return
        log.warning("decision log writes work again (was: %s)", self._failing)
        self._failing = None

    def _prune_if_due(self) -> None:
        """One retention batch when one is due (the next one at once while old rows remain, else in an hour)."""
        if self.retention_days is None or time.monotonic() < self._next_prune or self._failing is not None:
            return
        cut = retention.cutoff_days(self.retention_days)
        try:
            with self._engine.begin() as conn:
                n = retention.prune_batch(conn, cut, self.prune_batch_rows, wait=False)
        except Exception as exc:  # noqa: BLE001 - retention is retried at the next interval; writes go on
            log.error(
                "decision log retention failed (tried again in %.0f s): %s", self.prune_every_seconds, store.reason(exc)
            )
            self._event("prune")
            self._next_prune = time.monotonic() + self.prune_every_seconds
            return
        if n is None:  # another replica is pruning the shared log: its turn, ours in an hour
            self._next_prune = time.monotonic() + self.prune_every_seconds
            return
        if n.total:
            log.info("decision log retention (older than %s): deleted %s", cut, n.describe())
        # a full batch: more old rows may remain, so the next batch follows the next write batch (or idle moment)
        full = max(n.decisions, n.calls) >= self.prune_batch_rows or n.feedback >= self.prune_batch_rows
        self._next_prune = time.monotonic() + (0.0 if full else self.prune_every_seconds)

    def _batch_failed(self, rows: list[_Row], exc: BaseException) -> None:
        self._failing = store.reason(exc)
        log.error("decision log write failed, %d row(s) dropped: %s", len(rows), self._failing)
        self._event("batch")
        self._fail_rows(rows, f"decision log write failed: {self._failing}")

    def _write(self, rows: list[_Row]) -> None:
        """Write ``rows`` in one transaction on the writer's connection; retry a failing database (with a fresh
        connection: a lost one is replaced) for three attempts and ``retry_seconds`` at least; drop (and count) rows
        it refuses."""
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                if self._conn is None:
                    self._conn = self._engine.connect()
                rejected = self._transaction(self._conn, rows)
                break
            except Exception as exc:
                if not store.is_database_error(exc):
                    raise
                self._release()  # the next attempt takes a fresh (checked) connection: a lost one is replaced
                attempt += 1
                why = store.reason(exc)
                if attempt >= 2:  # not a connection lost once (the usual case, retried at once): /readyz says so
                    self._failing = why
                if attempt >= 3 and time.monotonic() - start >= self.retry_seconds:
                    raise
                log.warning("decision log write failed (attempt %d, retrying): %s", attempt, why)
                time.sleep(min(1.0, 0.05 * 2 ** (attempt - 1)))
        if self._failing is not None:
            log.warning("decision log writes work again (was: %s)", self._failing)
        self._failing = None
        bad = {id(r) for r, _ in rejected}
        for r in rows:  # committed: tell the waiters first
            if id(r) in bad:
                continue
            r.settled = True
            _settle(r.future, result=r.inserted)
        for r, why in rejected:
            log.error(
                "decision log refused a %s row (request %s), dropped: %s",
                _KIND_NAMES[r.kind],
                r.request_id,
                why,
            )
            self._event("row")
        self._fail_rows([r for r, _ in rejected], "the decision log refused the row")

    def _params(self, r: _Row) -> Any:
        return r.values if self._sql[r.kind][1] else self._clean(r.params)

    def _transaction(self, conn: sa.Connection, rows: list[_Row]) -> list[tuple[_Row, str]]:
        """Insert ``rows`` in one transaction; when one row's values are refused, redo the batch row by row (each in
        a savepoint) so only the bad rows are dropped. The rows refused, with why."""
        sql = self._sql
        try:
            with conn.begin():
                for kind in ("d", "c"):
                    batch = [self._params(r) for r in rows if r.kind == kind]
                    if batch:
                        conn.exec_driver_sql(sql[kind][0], batch)
                for r in rows:  # one by one (feedback is rare): a retried feedback_id inserts nothing, and says so
                    if r.kind == "f":
                        r.inserted = conn.exec_driver_sql(sql["f"][0], self._params(r)).rowcount > 0
            return []
        except Exception as exc:  # noqa: BLE001
            if store.is_database_error(exc):
                raise
            # One row's values were refused (an integer beyond 64 bits, a lone surrogate, ...)
        rejected: list[tuple[_Row, str]] = []
        with conn.begin():
            for r in rows:
                try:
                    with conn.begin_nested():
                        cur = conn.exec_driver_sql(sql[r.kind][0], self._params(r))
                except Exception as row_exc:  # noqa: BLE001
                    if store.is_database_error(row_exc):
                        raise
                    rejected.append((r, store.reason(row_exc)))
                else:
                    r.inserted = r.kind != "f" or cur.rowcount > 0
        return rejected

    # --- reads -------------------------------------------------------------------------------------------------
    def get_decision(self, request_id: str) -> dict[str, Any] | None:
        cols = [decisions.c[c] for c in ("request_id", "role", "tier", "model", "router_version")]
        with self._reader.connect() as conn:
            row = conn.execute(sa.select(*cols).where(decisions.c.request_id == request_id)).first()
        return None if row is None else dict(row._mapping)

    def counts(self) -> dict[str, int]:
        with self._reader.connect() as conn:
            d = conn.execute(sa.select(sa.func.count()).select_from(decisions)).scalar_one()
            f = conn.execute(sa.select(sa.func.count()).select_from(feedback)).scalar_one()
        return {"decisions": int(d), "feedback": int(f)}


def _settle(future: Future[bool] | None, error: BaseException | None = None, result: bool = True) -> None:
    """Resolve a row's future, unless it is done already: a waiter that gave up (a timed-out durable feedback)
    cancels it, possibly at this very moment, and that must never look like a failed write."""
    if future is None or future.done():
        return
    with contextlib.suppress(InvalidStateError):
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


def _str_or_none(v: Any) -> str | None:
    return None if v is None else str(v)
