"""The decision log: every routing decision and every piece of feedback, in a SQLite file (WAL mode).

Writes never happen on the event loop: :meth:`DecisionLog.record_decision` and :meth:`DecisionLog.record_feedback`
put a row on a queue and a background thread writes rows in batches (one transaction per batch). Several worker
processes may share one file (WAL + a busy timeout).

Privacy: the prompt text is stored only when the operator opts in (``TIERWISE_STORE_PROMPTS=true``); otherwise only
its SHA-256 is kept. :func:`export_log` turns decisions + feedback into the canonical long log format that
``training.readers.read_log`` (and so ``tierwise train``) reads: one row per feedback. Training needs the text, so
the export contains only feedback whose decision stored its prompt, and says how many rows it left out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
    metadata         TEXT
);
CREATE INDEX IF NOT EXISTS feedback_request_id ON feedback (request_id);
CREATE TABLE IF NOT EXISTS tierwise_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
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
)
_INSERT_DECISION = (
    f"INSERT OR REPLACE INTO decisions ({', '.join(DECISION_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in DECISION_COLUMNS)})"
)
_INSERT_FEEDBACK = (
    f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) VALUES ({', '.join('?' for _ in FEEDBACK_COLUMNS)})"
)


def prompt_hash(text: str) -> str:
    """SHA-256 of the routed text (hex). Its first 16 digits are the exported ``prompt_id``."""
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)  # ensure_ascii: safe for any input


def _json(value: Any) -> str | None:
    if value is None:
        return None
    return _ENCODER.encode(value)


def connect(path: str | Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection with WAL, a busy timeout and the schema in place."""
    p = Path(path)
    if readonly:
        if not p.is_file():
            raise FileNotFoundError(f"decision log not found: {p}")
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, timeout=10, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn
    p.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(p), timeout=10, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(SCHEMA)
    conn.execute("INSERT OR IGNORE INTO tierwise_meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
    return conn


@dataclass
class _Flush:
    done: threading.Event


class DecisionLog:
    """Asynchronous, batched writer plus a few synchronous reads (call those from a thread, not the event loop)."""

    def __init__(
        self,
        path: str | Path,
        *,
        store_prompts: bool = False,
        max_queue: int = 100_000,
        batch_rows: int = 1024,
        flush_seconds: float = 0.02,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.store_prompts = store_prompts
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.on_drop = on_drop
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._read_lock = threading.Lock()
        # Open (and create) the file now so a bad path fails at start-up, not on the first write.
        self._reader = connect(self.path)

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> DecisionLog:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tierwise-decision-log", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None
        with self._read_lock:
            self._reader.close()

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every row queued so far is written (True) or ``timeout`` passes (False)."""
        if self._thread is None:
            return True
        marker = _Flush(threading.Event())
        self._queue.put(marker)
        return marker.done.wait(timeout)

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
        self._put(("d", row))

    def record_feedback(
        self,
        *,
        request_id: str,
        tier: str | None,
        model: str,
        score: float,
        acceptable: bool | None,
        input_tokens: float | None = None,
        output_tokens: float | None = None,
        cost_usd: float | None = None,
        latency_ms: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        row = (
            request_id,
            utc_now(),
            tier,
            model,
            float(score),
            None if acceptable is None else int(acceptable),
            input_tokens,
            output_tokens,
            cost_usd,
            latency_ms,
            _json(metadata),
        )
        self._put(("f", row))

    def _put(self, item: tuple[str, tuple[Any, ...]]) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            log.error("decision log queue full: dropping a %s row", "decision" if item[0] == "d" else "feedback")
            if self.on_drop:
                self.on_drop(1)

    def _run(self) -> None:
        conn = connect(self.path)
        try:
            while True:
                item = self._queue.get()
                items = [item]
                if item is not None and not isinstance(item, _Flush) and self._queue.qsize() < self.batch_rows:
                    time.sleep(self.flush_seconds)  # let rows accumulate: one transaction per interval
                while len(items) < self.batch_rows:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = self._write(conn, items)
                if stop:
                    return
        finally:
            conn.close()

    def _write(self, conn: sqlite3.Connection, items: list[Any]) -> bool:
        decisions = [row for kind, row in (i for i in items if isinstance(i, tuple)) if kind == "d"]
        feedback = [row for kind, row in (i for i in items if isinstance(i, tuple)) if kind == "f"]
        if decisions or feedback:
            for attempt in range(3):
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    if decisions:
                        conn.executemany(_INSERT_DECISION, decisions)
                    if feedback:
                        conn.executemany(_INSERT_FEEDBACK, feedback)
                    conn.execute("COMMIT")
                    break
                except sqlite3.Error as exc:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                    if attempt == 2:
                        n = len(decisions) + len(feedback)
                        log.error("decision log write failed, %d row(s) dropped: %s", n, exc)
                        if self.on_drop:
                            self.on_drop(n)
                    else:
                        time.sleep(0.05 * (attempt + 1))
        for i in items:
            if isinstance(i, _Flush):
                i.done.set()
        return any(i is None for i in items)

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


def _str_or_none(v: Any) -> str | None:
    return None if v is None else str(v)


# --------------------------------------------------------------------------------------------------------------
# export for training
# --------------------------------------------------------------------------------------------------------------
@dataclass
class ExportSummary:
    feedback_rows: int
    exported_rows: int
    without_prompt: int
    without_decision: int

    def describe(self) -> str:
        parts = [f"exported {self.exported_rows} of {self.feedback_rows} feedback row(s)"]
        if self.without_prompt:
            parts.append(
                f"{self.without_prompt} left out because their decision stored no prompt text (the service stores only "
                "a hash unless TIERWISE_STORE_PROMPTS=true; training needs the text)"
            )
        if self.without_decision:
            parts.append(f"{self.without_decision} left out because their request_id has no logged decision")
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


def export_rows(path: str | Path) -> tuple[list[dict[str, Any]], ExportSummary]:
    """Feedback joined with its decision, one dict per feedback row, in the canonical long format (+ extras)."""
    conn = connect(path, readonly=True)
    try:
        total = conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
        orphan = conn.execute(
            "SELECT COUNT(*) FROM feedback f LEFT JOIN decisions d ON d.request_id = f.request_id "
            "WHERE d.request_id IS NULL"
        ).fetchone()[0]
        cur = conn.execute(
            "SELECT d.prompt_hash, d.prompt, f.model, f.score, f.cost_usd, f.input_tokens, f.output_tokens, "
            "f.latency_ms, d.task, d.role, f.created_at, f.request_id, f.tier, d.tier, d.tenant, d.router_version "
            "FROM feedback f JOIN decisions d ON d.request_id = f.request_id ORDER BY f.id"
        )
        rows: list[dict[str, Any]] = []
        no_prompt = 0
        for r in cur:
            if r[1] is None:
                no_prompt += 1
                continue
            rec = dict(zip(EXPORT_COLUMNS, r, strict=True))
            rec["prompt_id"] = str(r[0])[:16]
            rows.append(rec)
    finally:
        conn.close()
    return rows, ExportSummary(int(total), len(rows), no_prompt, int(orphan))


def export_log(path: str | Path, out: str | Path | None = None) -> tuple[Any, ExportSummary]:
    """Export to a pandas DataFrame (and write it to ``out``: .csv, .jsonl or .parquet, atomically)."""
    import pandas as pd

    rows, summary = export_rows(path)
    frame = pd.DataFrame(rows, columns=list(EXPORT_COLUMNS))
    if out is not None:
        from router.atomic_io import write_frame_atomic

        write_frame_atomic(frame, Path(out))
    return frame, summary


def iter_decisions(path: str | Path) -> Iterable[dict[str, Any]]:
    """All decisions (for analysis), oldest first."""
    conn = connect(path, readonly=True)
    try:
        for r in conn.execute(f"SELECT {', '.join(DECISION_COLUMNS)} FROM decisions ORDER BY created_at"):
            yield dict(zip(DECISION_COLUMNS, r, strict=True))
    finally:
        conn.close()
