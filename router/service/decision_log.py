"""The decision log: every routing decision and every piece of feedback, in a SQLite file (WAL mode).

Writes never happen on the event loop: :meth:`DecisionLog.record_decision` and :meth:`DecisionLog.record_feedback`
put a row on a queue and a background thread writes rows in batches (one transaction per batch). Several worker
processes may share one file (WAL + a busy timeout). The writer never dies silently: a row the database refuses is
dropped and counted on its own (the rest of its batch is written), a failed transaction is retried and then counted,
and :meth:`DecisionLog.health` reports a stopped writer (restarting it) or failing writes, for ``/readyz``; while
writes fail and no row comes, the writer probes the database now and then, so the state clears once the problem
passes. ``record_feedback`` returns a future that resolves once the row is committed: the service's durable mode
answers only then, so a crash never loses acknowledged feedback. A client's ``feedback_id`` makes a retry
idempotent (a timed-out wait does not mean the row will not be committed later).

The ``catalogs`` table keeps the tier catalog of every router version the service loaded, so an export names the
catalog its rows were routed with.

Privacy: the prompt text is stored only when the operator opts in (``TIERWISE_STORE_PROMPTS=true``); otherwise only
its SHA-256 is kept. :func:`export_log` turns decisions + feedback into the canonical long log format that
``training.readers.read_log`` (and so ``tierwise train``) reads: one row per feedback. Training needs the text, so
the export contains only feedback whose decision stored its prompt, and says how many rows it left out.
:func:`export_for_training` (``tierwise decisions export``) also writes the catalog beside the output and refuses to
write a file nobody can train on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The bounds of a feedback row's numbers: the API refuses anything outside them with a 422, record_feedback with a
# ValueError, and the export skips legacy rows outside them.
from router.limits import ATTEMPT_LIMITS, attempt_number_problem

log = logging.getLogger("tierwise.service")

SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    request_id       TEXT PRIMARY KEY,
    created_at       TEXT NOT NULL,
    endpoint         TEXT NOT NULL,
    role             TEXT NOT NULL,
    tier             TEXT NOT NULL,
    tier_index       INTEGER NOT NULL,
    model            TEXT NOT NULL,
    threshold        REAL NOT NULL,
    reason           TEXT NOT NULL,
    p_acceptable     TEXT NOT NULL,
    prompt_hash      TEXT NOT NULL,
    prompt           TEXT,
    prompt_chars     INTEGER NOT NULL,
    router_version   TEXT NOT NULL,
    est_cost_usd     REAL,
    est_top_cost_usd REAL,
    latency_ms       REAL,
    task             TEXT,
    tenant           TEXT,
    metadata         TEXT
);
CREATE TABLE IF NOT EXISTS feedback (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id       TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    tier             TEXT,
    model            TEXT NOT NULL,
    score            REAL NOT NULL,
    acceptable       INTEGER,
    input_tokens     REAL,
    output_tokens    REAL,
    cost_usd         REAL,
    latency_ms       REAL,
    metadata         TEXT,
    feedback_id      TEXT
);
CREATE INDEX IF NOT EXISTS feedback_request_id ON feedback (request_id);
CREATE TABLE IF NOT EXISTS calls (
    request_id         TEXT PRIMARY KEY,
    created_at         TEXT NOT NULL,
    requested_model    TEXT NOT NULL,
    tier               TEXT,
    model              TEXT,
    upstream           TEXT,
    status             INTEGER NOT NULL,
    outcome            TEXT NOT NULL,
    stream             INTEGER NOT NULL,
    input_tokens       INTEGER,
    output_tokens      INTEGER,
    cost_usd           REAL,
    top_tier_cost_usd  REAL,
    latency_ms         REAL,
    upstream_ms        REAL,
    overhead_ms        REAL,
    attempts           TEXT NOT NULL,
    cache              TEXT NOT NULL,
    tenant             TEXT
);
CREATE TABLE IF NOT EXISTS tierwise_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS catalogs (
    router_version   TEXT PRIMARY KEY,
    catalog          TEXT NOT NULL,
    recorded_at      TEXT NOT NULL
);
"""
DECISION_COLUMNS = (
    "request_id",
    "created_at",
    "endpoint",
    "role",
    "tier",
    "tier_index",
    "model",
    "threshold",
    "reason",
    "p_acceptable",
    "prompt_hash",
    "prompt",
    "prompt_chars",
    "router_version",
    "est_cost_usd",
    "est_top_cost_usd",
    "latency_ms",
    "task",
    "tenant",
    "metadata",
)
FEEDBACK_COLUMNS = (
    "request_id",
    "created_at",
    "tier",
    "model",
    "score",
    "acceptable",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "latency_ms",
    "metadata",
    "feedback_id",
)
CALL_COLUMNS = (
    "request_id",
    "created_at",
    "requested_model",
    "tier",
    "model",
    "upstream",
    "status",
    "outcome",
    "stream",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "top_tier_cost_usd",
    "latency_ms",
    "upstream_ms",
    "overhead_ms",
    "attempts",
    "cache",
    "tenant",
)
_INSERT_CALL = (
    f"INSERT OR REPLACE INTO calls ({', '.join(CALL_COLUMNS)}) VALUES ({', '.join('?' for _ in CALL_COLUMNS)})"
)
_INSERT_DECISION = (
    f"INSERT OR REPLACE INTO decisions ({', '.join(DECISION_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in DECISION_COLUMNS)})"
)
# A client's retry of the same feedback (same feedback_id) is written once: the first one stays.
_INSERT_FEEDBACK = (
    f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) VALUES ({', '.join('?' for _ in FEEDBACK_COLUMNS)}) "
    "ON CONFLICT (feedback_id) DO NOTHING"
)
_KIND_NAMES = {"d": "decision", "f": "feedback", "c": "gateway call"}
_INSERTS = {"d": _INSERT_DECISION, "f": _INSERT_FEEDBACK, "c": _INSERT_CALL}


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


def connect(path: str | Path, *, readonly: bool = False, busy_seconds: float = 10.0) -> sqlite3.Connection:
    """A connection with WAL, a busy timeout (how long a write waits for another writer's lock) and the schema."""
    p = Path(path)
    if readonly:
        if not p.is_file():
            raise FileNotFoundError(f"decision log not found: {p}")
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, timeout=10, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn
    p.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(p), timeout=busy_seconds, check_same_thread=False, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_seconds * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(SCHEMA)
        _add_feedback_id(conn)
        conn.execute(
            "INSERT OR IGNORE INTO tierwise_meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
        )
    except BaseException:
        conn.close()  # e.g. the file is locked: the writer retries with a new connection
        raise
    return conn


def _add_feedback_id(conn: sqlite3.Connection) -> None:
    """Logs written before feedback ids gain the column (NULL for old rows) and its unique index."""
    if "feedback_id" not in {r[1] for r in conn.execute("PRAGMA table_info(feedback)")}:
        try:
            conn.execute("ALTER TABLE feedback ADD COLUMN feedback_id TEXT")
        except sqlite3.OperationalError as exc:  # another worker added it a moment ago
            if "duplicate column" not in str(exc):
                raise
    # NULLs never collide: feedback without an id is never merged
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS feedback_feedback_id ON feedback (feedback_id)")


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


def _database_error(exc: BaseException) -> bool:
    """True when the database (locked, full, corrupt, read-only) failed rather than one row's values."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def _reason(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class DecisionLog:
    """Asynchronous, batched writer plus a few synchronous reads (call those from a thread, not the event loop).

    ``on_drop(n)`` is called for every ``n`` rows that were not written; ``on_error(kind)`` for every write problem
    (one of :data:`ERROR_KINDS`: ``row``: the database refused one row, ``batch``: a transaction failed after
    retries, ``writer``: the writer thread had stopped and was restarted). Both are for metrics; problems are also
    logged (never a prompt). ``busy_seconds``: how long one write attempt waits for another process's lock.
    ``probe_seconds``: while writes fail and no row arrives, the writer probes the database this often, so a
    passing problem (a lock held longer than the retries) clears ``health`` without waiting for traffic.
    """

    ERROR_KINDS = ("row", "batch", "writer")

    def __init__(
        self,
        path: str | Path,
        *,
        store_prompts: bool = False,
        max_queue: int = 100_000,
        batch_rows: int = 1024,
        flush_seconds: float = 0.02,
        on_drop: Callable[[int], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        busy_seconds: float = 10.0,
        probe_seconds: float = 2.0,
    ) -> None:
        self.path = Path(path)
        self.busy_seconds = busy_seconds
        self.probe_seconds = probe_seconds
        self.store_prompts = store_prompts
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.on_drop = on_drop
        self.on_error = on_error
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._urgent = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._read_lock = threading.Lock()
        self._life_lock = threading.Lock()  # start / restart: concurrent /readyz probes must not start two writers
        self._failing: str | None = None  # why the last transaction failed (None: the last one committed)
        self._stopped: str | None = None  # why the writer thread ended other than by close()
        # Open (and create) the file now so a bad path fails at start-up, not on the first write.
        self._reader = connect(self.path, busy_seconds=busy_seconds)

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
        with self._read_lock:
            self._reader.close()

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
        bounded = {"score": score, "input_tokens": input_tokens, "output_tokens": output_tokens,
                   "cost_usd": cost_usd, "latency_ms": latency_ms}
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
        for name, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens),
                            ("cost_usd", cost_usd), ("latency_ms", latency_ms)):
            _check_number(name, value)
        _require_finite(top_tier_cost_usd=top_tier_cost_usd, upstream_ms=upstream_ms, overhead_ms=overhead_ms)
        row = (
            request_id, utc_now(), requested_model, tier, model, upstream, int(status), outcome, int(stream),
            input_tokens, output_tokens, cost_usd, top_tier_cost_usd, latency_ms, upstream_ms, overhead_ms,
            _json(attempts) or "[]", cache, tenant,
        )
        self._put(_Row("c", row))

    def record_catalog(self, router_version: str, catalog_yaml: str) -> None:
        """Store the catalog a router version routes with (synchronous: call it from a thread)."""
        with self._read_lock:
            cur = self._reader.execute("SELECT catalog FROM catalogs WHERE router_version = ?", (router_version,))
            row = cur.fetchone()
            if row is not None and row[0] == catalog_yaml:
                return
            if row is not None:
                # registry versions never change; a local directory retrained in place can
                log.warning("router version %s now routes with a different catalog; the log keeps the new one",
                            router_version)
            self._reader.execute(
                "INSERT OR REPLACE INTO catalogs (router_version, catalog, recorded_at) VALUES (?, ?, ?)",
                (router_version, catalog_yaml, utc_now()),
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

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        items: list[Any] = []
        try:
            while True:
                try:
                    # while writes fail, wake up now and then to see whether the database is back
                    item = self._queue.get(timeout=self.probe_seconds if self._failing is not None else None)
                except queue.Empty:
                    conn = self._probe(conn)
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
                        if conn is None:
                            conn = connect(self.path, busy_seconds=self.busy_seconds)
                        self._write(conn, rows)
                except Exception as exc:  # noqa: BLE001 - the writer must outlive any error: count, log, go on
                    self._batch_failed(rows, exc)
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()
                    conn = None  # reconnect for the next batch
                finally:
                    for i in items:
                        if isinstance(i, _Flush):
                            i.done.set()
                if any(i is None for i in items):
                    return
        except BaseException as exc:
            self._stopped = _reason(exc)
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
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def _probe(self, conn: sqlite3.Connection | None) -> sqlite3.Connection | None:
        """Take the write lock and touch both tables, then roll back: when that works, writes work again."""
        try:
            if conn is None:
                conn = connect(self.path, busy_seconds=self.busy_seconds)
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM decisions WHERE 0")
                conn.execute("DELETE FROM feedback WHERE 0")
            finally:
                conn.execute("ROLLBACK")
        except Exception as exc:  # noqa: BLE001 - still failing: keep the newest reason, try again later
            self._failing = _reason(exc)
            if conn is not None:
                _rollback(conn)
                with contextlib.suppress(Exception):
                    conn.close()
            return None
        log.warning("decision log writes work again (was: %s)", self._failing)
        self._failing = None
        return conn

    def _batch_failed(self, rows: list[_Row], exc: BaseException) -> None:
        self._failing = _reason(exc)
        log.error("decision log write failed, %d row(s) dropped: %s", len(rows), self._failing)
        self._event("batch")
        self._fail_rows(rows, f"decision log write failed: {self._failing}")

    def _write(self, conn: sqlite3.Connection, rows: list[_Row]) -> None:
        """Write ``rows`` in one transaction; retry a failing database twice; drop (and count) rows it refuses."""
        for attempt in range(3):
            try:
                rejected = self._transaction(conn, rows)
                break
            except Exception as exc:  # noqa: BLE001
                _rollback(conn)
                if attempt == 2 or not _database_error(exc):
                    raise
                time.sleep(0.05 * (attempt + 1))
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

    @staticmethod
    def _transaction(conn: sqlite3.Connection, rows: list[_Row]) -> list[tuple[_Row, str]]:
        conn.execute("BEGIN IMMEDIATE")
        decisions = [r.values for r in rows if r.kind == "d"]
        calls = [r.values for r in rows if r.kind == "c"]
        rejected: list[tuple[_Row, str]] = []
        try:
            if decisions:
                conn.executemany(_INSERT_DECISION, decisions)
            if calls:
                conn.executemany(_INSERT_CALL, calls)
            for r in rows:  # one by one (feedback is rare): a retried feedback_id inserts nothing, and says so
                if r.kind == "f":
                    r.inserted = conn.execute(_INSERT_FEEDBACK, r.values).rowcount > 0
        except Exception as exc:  # noqa: BLE001
            if _database_error(exc):
                raise
            # One row's values were refused (an integer beyond 64 bits, a lone surrogate, ...): redo the batch
            # row by row so only the bad rows are dropped.
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            for r in rows:
                try:
                    cur = conn.execute(_INSERTS[r.kind], r.values)
                    r.inserted = r.kind != "f" or cur.rowcount > 0
                except Exception as row_exc:  # noqa: BLE001
                    if _database_error(row_exc):
                        raise
                    rejected.append((r, _reason(row_exc)))
        conn.execute("COMMIT")
        return rejected

    # --- reads -------------------------------------------------------------------------------------------------
    def get_decision(self, request_id: str) -> dict[str, Any] | None:
        with self._read_lock:
            cur = self._reader.execute(
                "SELECT request_id, role, tier, model, router_version FROM decisions WHERE request_id = ?",
                (request_id,),
            )
            row = cur.fetchone()
        if row is None:
            return None
        return dict(zip(("request_id", "role", "tier", "model", "router_version"), row, strict=True))

    def counts(self) -> dict[str, int]:
        with self._read_lock:
            d = self._reader.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
            f = self._reader.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
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


def _rollback(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(Exception):
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _str_or_none(v: Any) -> str | None:
    return None if v is None else str(v)


# --------------------------------------------------------------------------------------------------------------
# export for training
# --------------------------------------------------------------------------------------------------------------
class NothingToExport(ValueError):
    """The selected feedback holds no row training could use (the message says why)."""


class CatalogMismatch(ValueError):
    """The exported rows cannot be tied to one catalog (none stored, or different ones)."""


@dataclass
class ExportSummary:
    feedback_rows: int
    exported_rows: int
    without_prompt: int
    without_decision: int
    invalid_numbers: int = 0
    unknown_model: int = 0
    router_versions: list[str] = field(default_factory=list)
    catalog_path: Path | None = None

    def describe(self) -> str:
        parts = [f"exported {self.exported_rows} of {self.feedback_rows} feedback row(s)"]
        if self.without_prompt:
            parts.append(
                f"{self.without_prompt} left out because their decision stored no prompt text (the service stores only "
                "a hash unless TIERWISE_STORE_PROMPTS=true; training needs the text)"
            )
        if self.without_decision:
            parts.append(f"{self.without_decision} left out because their request_id has no logged decision")
        if self.invalid_numbers:
            parts.append(
                f"{self.invalid_numbers} left out because they hold a non-finite or out-of-range number (score, "
                "tokens, cost or latency; written before the service refused them)"
            )
        if self.unknown_model:
            parts.append(f"{self.unknown_model} left out because their model is not in the exported catalog")
        if self.catalog_path is not None:
            parts.append(f"catalog of {', '.join(self.router_versions)} written to {self.catalog_path}")
        return "; ".join(parts)


EXPORT_COLUMNS = (
    "prompt_id",
    "prompt",
    "model",
    "score",
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "latency_ms",
    "task",
    "role",
    "timestamp",
    "request_id",
    "tier",
    "routed_tier",
    "tenant",
    "router_version",
)
def _valid_numbers(rec: dict[str, Any]) -> bool:
    return all(attempt_number_problem(col, rec[col]) is None for col in ATTEMPT_LIMITS)


def _since_iso(since: str | None) -> str | None:
    """``--since`` as the log's timestamp format (UTC ISO 8601), so a string comparison selects rows."""
    if since is None:
        return None
    try:
        t = datetime.fromisoformat(since.strip())
    except ValueError:
        raise ValueError(f"since: {since!r} is not an ISO date or time (e.g. 2026-11-01 or 2026-11-01T08:00)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).isoformat(timespec="milliseconds")


def export_rows(
    path: str | Path, *, router_version: str | None = None, since: str | None = None
) -> tuple[list[dict[str, Any]], ExportSummary]:
    """Feedback joined with its decision, one dict per feedback row, in the canonical long format (+ extras).

    ``router_version`` keeps only decisions of that version; ``since`` only feedback recorded at or after that
    time. Rows holding a non-finite or out-of-range number (logs written before the API refused them) are left out
    and counted: an export never carries ``inf``."""
    where, params = [], []
    if router_version is not None:
        where.append("d.router_version = ?")
        params.append(router_version)
    start = _since_iso(since)
    if start is not None:
        where.append("f.created_at >= ?")
        params.append(start)
    conn = connect(path, readonly=True)
    try:
        total = conn.execute(
            "SELECT COUNT(*) FROM feedback f LEFT JOIN decisions d ON d.request_id = f.request_id"
            + (" WHERE " + " AND ".join(where) if where else ""),
            params,
        ).fetchone()[0]
        orphan = conn.execute(
            "SELECT COUNT(*) FROM feedback f LEFT JOIN decisions d ON d.request_id = f.request_id "
            "WHERE d.request_id IS NULL" + ("".join(" AND " + w for w in where)),
            params,
        ).fetchone()[0]
        cur = conn.execute(
            "SELECT d.prompt_hash, d.prompt, f.model, f.score, f.cost_usd, f.input_tokens, f.output_tokens, "
            "f.latency_ms, d.task, d.role, f.created_at, f.request_id, f.tier, d.tier, d.tenant, d.router_version "
            "FROM feedback f JOIN decisions d ON d.request_id = f.request_id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY f.id",
            params,
        )
        rows: list[dict[str, Any]] = []
        no_prompt = invalid = 0
        for r in cur:
            if r[1] is None:
                no_prompt += 1
                continue
            rec = dict(zip(EXPORT_COLUMNS, r, strict=True))
            if not _valid_numbers(rec):
                invalid += 1
                continue
            rec["prompt_id"] = str(r[0])[:16]
            rows.append(rec)
    finally:
        conn.close()
    versions = sorted({str(r["router_version"]) for r in rows})
    return rows, ExportSummary(int(total), len(rows), no_prompt, int(orphan), invalid, 0, versions)


def export_log(path: str | Path, out: str | Path | None = None) -> tuple[Any, ExportSummary]:
    """Export to a pandas DataFrame (and write it to ``out``: .csv, .jsonl or .parquet, atomically)."""
    import pandas as pd

    rows, summary = export_rows(path)
    frame = pd.DataFrame(rows, columns=list(EXPORT_COLUMNS))
    if out is not None:
        from router.atomic_io import write_frame_atomic

        write_frame_atomic(frame, Path(out))
    return frame, summary


def stored_catalogs(path: str | Path) -> dict[str, str]:
    """Catalog YAML per router version, as the service stored them (empty for logs older than the table)."""
    conn = connect(path, readonly=True)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'catalogs'").fetchone() is None:
            return {}
        return {str(v): str(c) for v, c in conn.execute("SELECT router_version, catalog FROM catalogs")}
    finally:
        conn.close()


def _nothing_message(path: Path, summary: ExportSummary, filtered: bool) -> str:
    scope = " (with these --router-version / --since filters)" if filtered else ""
    if summary.feedback_rows == 0:
        return f"nothing to train on: the decision log {path} has no feedback{scope} (POST /v1/feedback records it)"
    if summary.without_prompt and summary.without_prompt + summary.without_decision >= summary.feedback_rows:
        return (
            f"nothing to train on: none of the {summary.feedback_rows} feedback row(s){scope} can be trained on, "
            "because their decisions stored only a SHA-256 of the prompt, not its text. Prompts stay private by "
            "default; to train on feedback, run the service with TIERWISE_STORE_PROMPTS=true and export the "
            "feedback collected after that"
        )
    return f"nothing to train on{scope}: {summary.describe()}"


def export_for_training(
    path: str | Path,
    out: str | Path,
    *,
    router_version: str | None = None,
    since: str | None = None,
    catalog: str | Path | None = None,
) -> tuple[Any, ExportSummary]:
    """``tierwise decisions export``: the training log at ``out`` plus the catalog it was routed with beside it
    (:func:`router.catalog.catalog_sidecar_path`), both written atomically.

    Raises :class:`NothingToExport` (and writes nothing) when no row can be trained on, and
    :class:`CatalogMismatch` when the rows span router versions whose catalogs differ or whose catalog the log does
    not hold (``catalog``: the catalog YAML to use for versions logged before the service stored catalogs)."""
    import pandas as pd
    import yaml

    from router.atomic_io import write_frame_atomic, write_text_atomic
    from router.catalog import Catalog, catalog_sidecar_path

    path, out = Path(path), Path(out)
    rows, summary = export_rows(path, router_version=router_version, since=since)
    filtered = router_version is not None or since is not None
    if not rows:
        raise NothingToExport(_nothing_message(path, summary, filtered))
    stored = stored_catalogs(path)
    given = Catalog.from_yaml(catalog) if catalog is not None else None
    by_version: dict[str, Catalog] = {}
    missing = []
    for v in summary.router_versions:
        if v in stored:
            by_version[v] = Catalog.from_dict(yaml.safe_load(stored[v]), source=f"{path}: catalog of {v}")
        elif given is not None:
            by_version[v] = given
        else:
            missing.append(v)
    if missing:
        raise CatalogMismatch(
            f"the decision log holds no catalog for router version(s) {', '.join(missing)} (logged before the "
            "service stored catalogs): pass the catalog the service routed with (--catalog PATH), or export other "
            "versions only (--router-version VERSION)"
        )
    groups: dict[str, list[str]] = {}
    first: dict[str, Catalog] = {}
    for v, cat in by_version.items():
        key = cat.to_yaml()
        groups.setdefault(key, []).append(v)
        first.setdefault(key, cat)
    if len(groups) > 1:
        shown = "; ".join(f"{first[k].name!r}: {', '.join(vs)}" for k, vs in groups.items())
        raise CatalogMismatch(
            f"the exported rows were routed with different catalogs ({shown}); train on one catalog at a time: "
            "export with --router-version VERSION (or --since DATE to keep only recent feedback)"
        )
    (cat,) = first.values()
    models = set(cat.models)
    kept = [r for r in rows if r["model"] in models]
    summary.unknown_model = len(rows) - len(kept)
    summary.exported_rows = len(kept)
    if not kept:
        raise NothingToExport(_nothing_message(path, summary, filtered))
    summary.catalog_path = catalog_sidecar_path(out)
    # the catalog first: a reader that finds the new log also finds its catalog
    write_text_atomic(summary.catalog_path, cat.to_yaml())
    frame = pd.DataFrame(kept, columns=list(EXPORT_COLUMNS))
    write_frame_atomic(frame, out)
    return frame, summary


def _iter_rows(path: str | Path, table: str, columns: Sequence[str], order: str) -> Iterable[dict[str, Any]]:
    conn = connect(path, readonly=True)
    try:
        for r in conn.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}"):
            yield dict(zip(columns, r, strict=True))
    finally:
        conn.close()


def iter_decisions(path: str | Path) -> Iterable[dict[str, Any]]:
    """All decisions (for analysis), oldest first."""
    return _iter_rows(path, "decisions", DECISION_COLUMNS, "created_at")


def iter_calls(path: str | Path) -> Iterable[dict[str, Any]]:
    """The gateway's calls (``/v1/chat/completions`` outcomes), oldest first; none in a log older than the gateway."""
    conn = connect(path, readonly=True)
    try:
        has = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'calls'").fetchone()
    finally:
        conn.close()
    return _iter_rows(path, "calls", CALL_COLUMNS, "created_at") if has else iter(())


FEEDBACK_READ_COLUMNS = tuple(c for c in FEEDBACK_COLUMNS if c != "metadata")


def iter_feedback(path: str | Path) -> Iterable[dict[str, Any]]:
    """All feedback rows without their metadata (for analysis), in the order they were written."""
    return _iter_rows(path, "feedback", FEEDBACK_READ_COLUMNS, "id")
