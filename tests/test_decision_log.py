"""The decision log on its own (real SQLite, no server): a writer that never dies silently, bounded numbers,
durable-feedback futures, stored catalogs and the training export (issue 11); a log written before migrations
upgrading in place (issue 14; PostgreSQL and both stores side by side: test_decision_log_postgres.py)."""

from __future__ import annotations

import math
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from router.catalog import Catalog, Tier
from router.limits import MAX_TOKENS
from router.service.decision_log import (
    CatalogMismatch,
    DecisionLog,
    DecisionLogError,
    NothingToExport,
    connect,
    export_for_training,
    export_log,
)


class Counts:
    """The on_drop / on_error callbacks, as the service's metrics would see them."""

    def __init__(self) -> None:
        self.dropped = 0
        self.errors: list[str] = []

    def drop(self, n: int) -> None:
        self.dropped += n

    def error(self, kind: str) -> None:
        self.errors.append(kind)


def _log(path: Path, counts: Counts | None = None, **kw) -> DecisionLog:
    c = counts or Counts()
    return DecisionLog(path, store_prompts=True, on_drop=c.drop, on_error=c.error, **kw).start()


def _decision(
    dlog: DecisionLog,
    rid: str,
    *,
    text: str = "a prompt",
    version: str = "svc/1",
    model: str = "m-a",
    tier_index: int = 0,
    task: str | None = None,
) -> None:
    dlog.record_decision(
        request_id=rid,
        endpoint="/v1/route",
        text=text,
        role="single",
        tier="a",
        tier_index=tier_index,
        model=model,
        threshold=0.5,
        reason="best_expected_utility",
        probabilities={"a": 0.9, "b": 0.95},
        router_version=version,
        est_cost_usd=0.001,
        est_top_cost_usd=0.01,
        latency_ms=2.0,
        metadata={"task": task} if task else None,
    )


def _feedback(dlog: DecisionLog, rid: str, *, model: str = "m-a", score: float = 1.0, **kw):
    return dlog.record_feedback(request_id=rid, tier="a", model=model, score=score, acceptable=True, **kw)


def _ids(path: Path, table: str) -> list[str]:
    conn = connect(path, readonly=True)
    try:
        return [r[0] for r in conn.execute(f"SELECT request_id FROM {table} ORDER BY rowid")]
    finally:
        conn.close()


CAT_A = Catalog(name="cat-a", tiers=[Tier(name="a", model="m-a"), Tier(name="b", model="m-b")])
CAT_B = Catalog(name="cat-b", tiers=[Tier(name="a", model="m-a"), Tier(name="b", model="m-b2")])


# --------------------------------------------------------------------------------------------------------------
# the writer
# --------------------------------------------------------------------------------------------------------------
def test_rows_the_database_refuses_are_dropped_and_counted_and_the_writer_goes_on(tmp_path: Path) -> None:
    """Issue 11: an integer beyond 64 bits (OverflowError) or a lone surrogate (UnicodeEncodeError) is not a
    sqlite3.Error; it used to kill the writer thread, after which nothing was written. Now only that row goes."""
    counts = Counts()
    dlog = _log(tmp_path / "log.db", counts, flush_seconds=0.2)  # one batch holds all rows below
    _decision(dlog, "good-1")
    _decision(dlog, "overflow", tier_index=2**70)
    _decision(dlog, "surrogate", task="bad \ud800 task")
    done = _feedback(dlog, "good-1")
    assert dlog.flush()
    assert done.result(5) is True
    assert _ids(tmp_path / "log.db", "decisions") == ["good-1"]
    assert _ids(tmp_path / "log.db", "feedback") == ["good-1"]
    assert counts.dropped == 2 and counts.errors == ["row", "row"]
    assert dlog.health() is None  # refused rows are bad data, not a broken writer
    # ... and the writer is alive: later rows are written
    _decision(dlog, "good-2")
    assert _feedback(dlog, "good-2").result(5) is True
    assert _ids(tmp_path / "log.db", "feedback") == ["good-1", "good-2"]
    dlog.close()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("input_tokens", 10**20),
        ("input_tokens", 10**400),
        ("input_tokens", MAX_TOKENS + 1),
        ("output_tokens", -1),
        ("output_tokens", 2.5),
        ("cost_usd", math.inf),
        ("cost_usd", math.nan),
        ("latency_ms", 1e400),
        ("latency_ms", True),
        ("score", 1.5),
    ],
)
def test_record_feedback_refuses_absurd_numbers(tmp_path: Path, field: str, value: object) -> None:
    dlog = _log(tmp_path / "log.db")
    kw = {"score": 1.0, field: value}
    with pytest.raises(ValueError, match=field):
        dlog.record_feedback(request_id="r", tier="a", model="m-a", acceptable=True, **kw)
    dlog.close()


def test_a_failing_database_is_counted_reported_and_recovered_from(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    counts = Counts()
    dlog = _log(db, counts, retry_seconds=0.2, probe_seconds=0.2)
    _decision(dlog, "r1")
    assert _feedback(dlog, "r1").result(5) is True
    # someone moves the feedback table away: every transaction with feedback now fails (a database error, retried)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("ALTER TABLE feedback RENAME TO feedback_away")
    lost = _feedback(dlog, "r1")
    with pytest.raises(DecisionLogError, match="no such table: feedback"):
        lost.result(10)
    assert dlog.flush()
    assert counts.dropped == 1 and counts.errors == ["batch"]
    assert "writes are failing" in (dlog.health() or "")
    # the table is back: the writer's probe sees it without new rows, and the next batch commits
    other.execute("ALTER TABLE feedback_away RENAME TO feedback")
    other.close()
    assert _wait_healthy(dlog) is None
    assert _feedback(dlog, "r1").result(10) is True
    assert counts.dropped == 1 and counts.errors == ["batch"]
    dlog.close()


def test_a_stopped_writer_is_reported_and_restarted(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    calls = []

    def fatal_once(n: int) -> None:  # the first drop report ends the thread (as a fatal error would)
        calls.append(n)
        if len(calls) == 1:
            raise SystemExit("simulated fatal error")

    dlog = DecisionLog(db, store_prompts=True, on_drop=fatal_once, flush_seconds=0.2).start()
    _decision(dlog, "r1")
    written = _feedback(dlog, "r1")
    refused = dlog.record_feedback(request_id="r1", tier="\udc00", model="m-a", score=1.0, acceptable=True)
    assert written.result(5) is True  # committed before the writer stopped
    with pytest.raises(DecisionLogError, match="writer stopped"):
        refused.result(5)  # whoever waited is told, not left hanging
    assert "simulated fatal error" in _restart(dlog)
    _decision(dlog, "r2")
    assert _feedback(dlog, "r2").result(5) is True
    assert dlog.health() is None
    assert _ids(db, "feedback") == ["r1", "r2"]
    dlog.close()


def _restart(dlog: DecisionLog, seconds: float = 10.0) -> str:
    """Check health() as a /readyz probe loop would until a check restarts the stopped writer; that check's answer.
    A dying writer may take longer than health()'s one-second wait to end (its last garbage collection, slow on a
    busy machine with a big heap): that check says it is restarted on the next one."""
    deadline = time.monotonic() + seconds
    while True:
        problem = dlog.health()
        assert problem is not None and "stopped" in problem, problem
        if "was restarted" in problem or time.monotonic() > deadline:
            assert "was restarted" in problem, problem
            return problem
        assert "restarted on the next check" in problem, problem
        time.sleep(0.1)


def _writers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "tierwise-decision-log"}


def _writers_ended(writers: set[threading.Thread], seconds: float = 10.0) -> None:
    """Wait until these writer threads have ended (a dying one finishes its cleanup)."""
    for t in writers:
        t.join(seconds)
        assert not t.is_alive()


def _wait_healthy(dlog: DecisionLog, seconds: float = 10.0) -> str | None:
    deadline = time.monotonic() + seconds
    while (problem := dlog.health()) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    return problem


def test_writes_failing_on_a_held_lock_recover_once_it_is_released_without_new_rows(tmp_path: Path) -> None:
    """A lock held longer than the retries left health failing until a later row committed; with no traffic (and
    /readyz taking the worker out of rotation, so no traffic comes) it never recovered. The writer now probes."""
    db = tmp_path / "log.db"
    counts = Counts()
    dlog = _log(db, counts, busy_seconds=0.1, retry_seconds=0.0, probe_seconds=0.2)
    _decision(dlog, "r1")
    assert _feedback(dlog, "r1").result(5) is True
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    lost = _feedback(dlog, "r1")
    with pytest.raises(DecisionLogError, match="locked"):
        lost.result(10)
    assert counts.dropped == 1 and counts.errors == ["batch"]
    time.sleep(1.0)  # several probes while the lock is held: they fail, and the state stays failing
    assert "writes are failing" in (dlog.health() or "") and "locked" in (dlog.health() or "")
    other.execute("ROLLBACK")
    other.close()
    assert _wait_healthy(dlog) is None  # no row was queued meanwhile: the probe cleared it
    assert counts.dropped == 1 and counts.errors == ["batch"]  # probes are not counted as write errors
    assert _feedback(dlog, "r1").result(5) is True
    assert _ids(db, "feedback") == ["r1", "r1"]
    dlog.close()


class _Fatal:
    """A value whose binding raises a BaseException inside the transaction, before the commit (as a
    KeyboardInterrupt or an interpreter shutdown would): sqlite3 asks it to ``__conform__``."""

    def __conform__(self, protocol: object) -> None:
        raise SystemExit("simulated fatal error")


def test_rows_of_the_batch_a_dying_writer_held_are_counted(tmp_path: Path) -> None:
    """The writer's last-resort path failed the futures of its batch but never counted the rows: the decisions in
    it (they have no future) vanished without a trace in the dropped-rows metric."""
    db = tmp_path / "log.db"
    counts = Counts()
    dlog = _log(db, counts, flush_seconds=0.3)  # the three rows below share one batch
    _decision(dlog, "d1")
    _decision(dlog, "d2")
    fatal = dlog.record_feedback(request_id="d1", tier=_Fatal(), model="m-a", score=1.0, acceptable=True)
    with pytest.raises(DecisionLogError, match="writer stopped: SystemExit"):
        fatal.result(5)
    assert counts.dropped == 3 and _ids(db, "decisions") == []
    _restart(dlog)
    _decision(dlog, "d3")
    assert _feedback(dlog, "d3").result(5) is True
    assert counts.dropped == 3 and _ids(db, "decisions") == ["d3"]  # nothing counted twice
    dlog.close()


def test_concurrent_health_checks_restart_a_stopped_writer_once(tmp_path: Path) -> None:
    """health() reported (and counted) a restart whenever it saw a stopped writer, even when another check had
    already started the new one; now only the check that started a thread says so."""
    counts = Counts()
    others = _writers()
    dlog = _log(tmp_path / "log.db", counts, flush_seconds=0.05)
    ours = _writers() - others
    assert len(ours) == 1
    fatal = dlog.record_feedback(request_id="r1", tier=_Fatal(), model="m-a", score=1.0, acceptable=True)
    with pytest.raises(DecisionLogError, match="writer stopped"):
        fatal.result(5)
    _writers_ended(ours)  # every check below then finds it stopped and ended: exactly one may start the new one
    start = threading.Barrier(8)
    answers: list[str | None] = []

    def check() -> None:
        start.wait()
        answers.append(dlog.health())

    threads = [threading.Thread(target=check) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    restarted = [a for a in answers if a is not None and "restarted" in a and "next check" not in a]
    assert len(answers) == 8 and len(restarted) == 1, answers
    assert counts.errors == ["writer"]
    assert dlog.health() is None
    assert len(_writers() - others) == 1  # the new writer, and only it
    dlog.close()


def test_durable_future_resolves_only_after_commit_and_a_closed_log_refuses(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    dlog = _log(db, flush_seconds=5.0)  # non-durable rows would wait 5 s for company; durable ones do not
    _decision(dlog, "r1")
    done = _feedback(dlog, "r1", durable=True)
    assert done.result(2) is True  # well before the 5 s batching interval
    assert _ids(db, "feedback") == ["r1"]  # visible to another connection: committed
    dlog.close()
    after = _feedback(dlog, "r1")
    with pytest.raises(DecisionLogError, match="closed"):
        after.result(1)


def test_a_retried_feedback_id_is_written_once(tmp_path: Path) -> None:
    """A durable 503 after a timeout can be followed by the row's late commit: a client that retries with the same
    feedback_id must not record the feedback twice (in one batch or in two), and feedback without ids never merge."""
    db = tmp_path / "log.db"
    dlog = _log(db, flush_seconds=0.2)
    _decision(dlog, "r1")
    same_batch = [_feedback(dlog, "r1", feedback_id="fb-1", score=s) for s in (1.0, 0.0)]
    anonymous = [_feedback(dlog, "r1") for _ in range(2)]
    # each future says whether its row was written: the retry of fb-1 in the same batch was not
    assert [f.result(5) for f in same_batch + anonymous] == [True, False, True, True]
    assert _feedback(dlog, "r1", feedback_id="fb-1", durable=True).result(5) is False  # a later batch
    assert _feedback(dlog, "r1", feedback_id="fb-2", durable=True).result(5) is True
    dlog.close()
    conn = connect(db, readonly=True)
    rows = conn.execute("SELECT feedback_id, score FROM feedback ORDER BY id").fetchall()
    conn.close()
    assert rows == [("fb-1", 1.0), (None, 1.0), (None, 1.0), ("fb-2", 1.0)]  # the first of fb-1 stays


def test_queue_full_fails_the_future(tmp_path: Path) -> None:
    counts = Counts()
    dlog = DecisionLog(tmp_path / "log.db", max_queue=1, on_drop=counts.drop)  # not started: nothing drains
    first = _feedback(dlog, "r1")
    second = _feedback(dlog, "r2")
    with pytest.raises(DecisionLogError, match="queue full"):
        second.result(0)
    assert not first.done() and counts.dropped == 1
    dlog.close()
    with pytest.raises(DecisionLogError):
        first.result(0)  # never written: closing says so


# --------------------------------------------------------------------------------------------------------------
# catalogs and the training export
# --------------------------------------------------------------------------------------------------------------
def test_an_old_log_gains_the_catalogs_table(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE decisions (request_id TEXT PRIMARY KEY, created_at TEXT NOT NULL, endpoint TEXT NOT NULL, "
        "role TEXT NOT NULL, tier TEXT NOT NULL, tier_index INTEGER NOT NULL, model TEXT NOT NULL, threshold REAL "
        "NOT NULL, reason TEXT NOT NULL, p_acceptable TEXT NOT NULL, prompt_hash TEXT NOT NULL, prompt TEXT, "
        "prompt_chars INTEGER NOT NULL, router_version TEXT NOT NULL, est_cost_usd REAL, est_top_cost_usd REAL, "
        "latency_ms REAL, task TEXT, tenant TEXT, metadata TEXT);"
        "CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, created_at TEXT NOT "
        "NULL, tier TEXT, model TEXT NOT NULL, score REAL NOT NULL, acceptable INTEGER, input_tokens REAL, "
        "output_tokens REAL, cost_usd REAL, latency_ms REAL, metadata TEXT);"
        "INSERT INTO decisions VALUES ('old', '2026-01-01T00:00:00.000+00:00', '/v1/route', 'single', 'a', 0, 'm-a', "
        "0.5, 'r', '{}', 'ab', 'old prompt', 10, 'svc/0', NULL, NULL, 1.0, NULL, NULL, NULL);"
        "INSERT INTO feedback (request_id, created_at, model, score) VALUES ('old', '2026-01-01', 'm-a', 1.0);"
    )
    conn.close()
    # an export of an old log (no catalogs table) asks for the catalog instead of guessing
    with pytest.raises(CatalogMismatch, match=r"no catalog for router version\(s\) svc/0.*--catalog"):
        export_for_training(db, tmp_path / "fb.csv")
    assert not (tmp_path / "fb.csv").exists()
    CAT_A.save(tmp_path / "cat.yaml")
    frame, summary = export_for_training(db, tmp_path / "fb.csv", catalog=tmp_path / "cat.yaml")
    assert summary.exported_rows == 1 and Catalog.from_yaml(tmp_path / "fb.catalog.yaml") == CAT_A
    # the service opens it, adds the table (and the feedback_id column) and stores catalogs
    dlog = _log(db)
    dlog.record_catalog("svc/1", CAT_A.to_yaml())
    assert [_feedback(dlog, "old", feedback_id="fb-1").result(5) for _ in range(2)] == [True, False]
    dlog.close()
    conn = connect(db, readonly=True)
    assert conn.execute("SELECT router_version FROM catalogs").fetchall() == [("svc/1",)]
    assert conn.execute("SELECT feedback_id FROM feedback ORDER BY id").fetchall() == [(None,), ("fb-1",)]
    conn.close()


def test_export_writes_the_catalog_beside_the_log_and_refuses_mixed_catalogs(tmp_path: Path) -> None:
    from training.readers import read_log

    db = tmp_path / "log.db"
    dlog = _log(db)
    dlog.record_catalog("svc/1", CAT_A.to_yaml())
    dlog.record_catalog("svc/2", CAT_A.to_yaml())  # same catalog, new version
    dlog.record_catalog("svc/3", CAT_B.to_yaml())  # a different catalog
    for i, version in enumerate(["svc/1", "svc/2", "svc/3"]):
        _decision(dlog, f"r{i}", text=f"prompt {i}", version=version)
        _feedback(dlog, f"r{i}", input_tokens=100, output_tokens=20, cost_usd=0.001)
    _feedback(dlog, "r2", model="m-b2")
    _feedback(dlog, "r0", model="m-b2").result(5)  # recorded after a reload to cat-b: not a model of cat-a
    dlog.close()

    out = tmp_path / "feedback.csv"
    with pytest.raises(CatalogMismatch, match=r"'cat-a': svc/1, svc/2; 'cat-b': svc/3.*--router-version"):
        export_for_training(db, out)
    assert not out.exists() and not (tmp_path / "feedback.catalog.yaml").exists()

    frame, summary = export_for_training(db, out, router_version="svc/3")
    assert summary.exported_rows == 2 and summary.router_versions == ["svc/3"]
    assert Catalog.from_yaml(tmp_path / "feedback.catalog.yaml") == CAT_B
    log = read_log(out)
    assert len(log) == 2 and set(log["model"]) == {"m-a", "m-b2"}

    frame, summary = export_for_training(db, tmp_path / "v1.jsonl", router_version="svc/1")
    assert frame["request_id"].tolist() == ["r0"] and frame["model"].tolist() == ["m-a"]
    assert summary.unknown_model == 1 and "not in the exported catalog" in summary.describe()
    assert Catalog.from_yaml(tmp_path / "v1.catalog.yaml") == CAT_A
    assert "v1.catalog.yaml" in summary.describe()


def test_export_skips_legacy_non_finite_rows_and_never_writes_inf(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    dlog = _log(db)
    dlog.record_catalog("svc/1", CAT_A.to_yaml())
    for rid in ("ok", "inf-cost", "big-latency"):
        _decision(dlog, rid, text=f"prompt {rid}")
    _feedback(dlog, "ok", cost_usd=0.5, latency_ms=800.0).result(5)
    dlog.close()
    # rows written before the API refused them (the old service accepted cost_usd: Infinity and latency_ms: 1e400)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(
        "INSERT INTO feedback (request_id, created_at, model, score, cost_usd) VALUES ('inf-cost', ?, 'm-a', 1, ?)",
        ("2026-01-01T00:00:00.000+00:00", math.inf),
    )
    conn.execute(
        "INSERT INTO feedback (request_id, created_at, model, score, latency_ms) VALUES ('big-latency', ?, 'm-a', 1, "
        "1e300)",
        ("2026-01-01T00:00:00.000+00:00",),
    )
    conn.close()
    frame, summary = export_log(db, tmp_path / "all.csv")
    assert frame["request_id"].tolist() == ["ok"] and summary.invalid_numbers == 2
    assert "non-finite or out-of-range" in summary.describe()
    text = (tmp_path / "all.csv").read_text()
    assert "inf" not in text.lower() and "1e+300" not in text
    frame, summary = export_for_training(db, tmp_path / "train.csv")
    assert frame["request_id"].tolist() == ["ok"] and summary.invalid_numbers == 2


def test_nothing_trainable_is_an_error_not_an_empty_file(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    dlog = DecisionLog(db, store_prompts=False).start()
    dlog.record_catalog("svc/1", CAT_A.to_yaml())
    with pytest.raises(NothingToExport, match="has no feedback"):
        export_for_training(db, tmp_path / "fb.csv")
    _decision(dlog, "r1")
    _feedback(dlog, "r1").result(5)
    dlog.close()
    with pytest.raises(NothingToExport, match=r"only a SHA-256.*TIERWISE_STORE_PROMPTS=true"):
        export_for_training(db, tmp_path / "fb.csv")
    assert not (tmp_path / "fb.csv").exists() and not (tmp_path / "fb.catalog.yaml").exists()


def test_record_catalog_keeps_the_newest_catalog_of_a_version(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    dlog = _log(db)
    dlog.record_catalog("local-dir", CAT_A.to_yaml())
    dlog.record_catalog("local-dir", CAT_A.to_yaml())
    dlog.record_catalog("local-dir", CAT_B.to_yaml())
    dlog.close()
    conn = connect(db, readonly=True)
    rows = conn.execute("SELECT router_version, catalog FROM catalogs").fetchall()
    conn.close()
    assert len(rows) == 1 and Catalog.from_dict(yaml.safe_load(rows[0][1])) == CAT_B


# --------------------------------------------------------------------------------------------------------------
# migrations: a log written before them, and one from a newer tierwise
# --------------------------------------------------------------------------------------------------------------
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "decisions-v1.db"


def test_a_log_written_before_migrations_upgrades_in_place_and_exports_the_same_rows(tmp_path: Path) -> None:
    """tests/fixtures/decisions-v1.db was written by the decision log before SQLAlchemy and Alembic (schema_version
    1 in tierwise_meta, no version table): 6 decisions, 5 feedback rows (two with feedback ids), 3 gateway calls and
    a catalog. It upgrades in place and reads back exactly as the code that wrote it exported it."""
    from typer.testing import CliRunner

    from router.service.decision_log import head, iter_calls, iter_decisions, iter_feedback, stored_catalogs
    from training.cli import app

    db = tmp_path / "decisions.db"
    shutil.copy(FIXTURE, db)
    readers = (iter_decisions, iter_feedback, iter_calls, stored_catalogs)
    before = [list(read(db)) if read is not stored_catalogs else read(db) for read in readers]
    frame_before, _ = export_log(db)  # readers read an old log as it is, without migrating it
    # what the code before migrations exported from it
    assert frame_before["request_id"].tolist() == ["req-0", "req-1", "req-2", "req-3", "req-1"]
    assert frame_before["model"].tolist() == ["m-small"] * 4 + ["m-large"]
    assert frame_before["score"].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]
    assert frame_before["timestamp"].tolist()[-1] == "2026-04-01T00:00:00.000+00:00"
    assert frame_before["prompt"][0] == "fixture prompt 0" and frame_before["input_tokens"][0] == 100.0

    runner = CliRunner()
    res = runner.invoke(app, ["db", "current", "--decision-log", str(db)])
    assert res.exit_code == 1 and "none (never migrated)" in res.output, res.output
    res = runner.invoke(app, ["db", "upgrade", "--decision-log", f"sqlite:///{db}"])
    assert res.exit_code == 0 and f"schema upgraded from none to {head()}" in res.output, res.output
    conn = connect(db, readonly=True)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert conn.execute("SELECT version_num FROM tierwise_alembic_version").fetchall() == [(head(),)]
    conn.close()
    assert "tierwise_meta" not in tables and {"decisions", "feedback", "calls", "catalogs"} <= tables

    frame_after, summary = export_log(db)
    pd.testing.assert_frame_equal(frame_before, frame_after)
    assert summary.exported_rows == 5
    assert [list(read(db)) if read is not stored_catalogs else read(db) for read in readers] == before
    # the service writes on: a feedback id the old log holds is still recorded once
    dlog = _log(db)
    assert _feedback(dlog, "req-0", feedback_id="fb-0").result(5) is False
    assert _feedback(dlog, "req-0", feedback_id="fb-new").result(5) is True
    dlog.close()


def test_a_log_from_a_newer_tierwise_is_refused(tmp_path: Path) -> None:
    from router.service.decision_log import SchemaError

    db = tmp_path / "log.db"
    DecisionLog(db).close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("UPDATE tierwise_alembic_version SET version_num = '9999'")
    conn.close()
    with pytest.raises(SchemaError, match="revision '9999', which this tierwise does not know"):
        DecisionLog(db)
