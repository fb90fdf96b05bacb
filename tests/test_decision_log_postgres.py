"""The decision log on PostgreSQL (the real server on 127.0.0.1:5432, trust auth), side by side with SQLite (issue 14):
the same rows and exports from both stores, idempotent and durable feedback, two replicas writing one database,
migrations (from empty, concurrent, an old SQLite log in test_decision_log.py), prune and the writer's retention, and
the failures: a database unreachable at start, a connection lost mid-run, a database gone for good.

Each test that needs PostgreSQL makes a database of its own (``tierwise_t_<random>``) and drops it afterwards.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from mlflow_server import PG_URL, pg_database
from typer.testing import CliRunner

from router.service import decision_log as dl
from router.service.decision_log import (
    DecisionLog,
    DecisionLogError,
    DecisionLogUnavailable,
    export_log,
    iter_calls,
    iter_decisions,
    iter_feedback,
    stored_catalogs,
)
from router.service.decision_log.schema import calls, decisions, feedback
from training.cli import app

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "decisions-v1.db"
SECRET = "pw-never-shown"


class Counts:
    """The on_drop / on_error callbacks, as the service's metrics would see them."""

    def __init__(self) -> None:
        self.dropped = 0
        self.errors: list[str] = []

    def drop(self, n: int) -> None:
        self.dropped += n

    def error(self, kind: str) -> None:
        self.errors.append(kind)


def _admin(statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement as the server's admin, outside any test database (autocommit)."""
    import psycopg

    url = sa.make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(statement, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def _with_password(url: str) -> str:
    """The URL with a password in it (trust auth ignores it): it must never be shown."""
    return sa.make_url(url).set(password=SECRET).render_as_string(hide_password=False)


def _kill_backends(url: str) -> int:
    """pg_terminate_backend every connection to the database of ``url`` (the writer's included)."""
    rows = _admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (sa.make_url(url).database,),
    )
    return len(rows)


@pytest.fixture(scope="module")
def pg_database_url() -> Iterator[str]:
    """The module's own database (creating and dropping one takes ~1.3 s: one per module, a schema per test)."""
    with pg_database("tierwise_t") as url:
        yield url


@contextmanager
def pg_schema(database_url: str) -> Iterator[str]:
    """A URL of the module's database whose connections work in a schema of their own (``search_path``), created
    empty and dropped afterwards: each test starts from nothing."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:10]}"
    plain = sa.make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")  # type: ignore[arg-type]
    try:
        url = sa.make_url(database_url).update_query_dict({"options": f"-csearch_path={name}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")  # type: ignore[arg-type]


@pytest.fixture
def pg(pg_database_url: str) -> Iterator[str]:
    with pg_schema(pg_database_url) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A decision log target in each store: a SQLite file, or a PostgreSQL URL of the test's own."""
    if request.param == "sqlite":
        yield str(tmp_path / "decisions.db")
    else:
        with pg_schema(request.getfixturevalue("pg_database_url")) as url:
            yield url


def _decision(dlog: DecisionLog, rid: str, *, text: str = "a prompt", version: str = "svc/1", **meta: Any) -> None:
    dlog.record_decision(
        request_id=rid,
        endpoint="/v1/route",
        text=text,
        role="single",
        tier="a",
        tier_index=0,
        model="m-a",
        threshold=0.5,
        reason="best_expected_utility",
        probabilities={"a": 0.9, "b": 0.95},
        router_version=version,
        est_cost_usd=0.001,
        est_top_cost_usd=0.01,
        latency_ms=2.0,
        metadata=meta or None,
    )


def _feedback(dlog: DecisionLog, rid: str, **kw: Any):  # noqa: ANN202 - a Future[bool]
    kw = {"tier": "a", "model": "m-a", "score": 1.0, "acceptable": True, **kw}
    return dlog.record_feedback(request_id=rid, **kw)


def _call(dlog: DecisionLog, rid: str) -> None:
    dlog.record_call(
        request_id=rid,
        requested_model="tierwise",
        tier="a",
        model="m-a",
        upstream="up",
        status=200,
        outcome="ok",
        stream=False,
        input_tokens=100,
        output_tokens=20,
        cost_usd=0.0002,
        top_tier_cost_usd=0.01,
        latency_ms=400.0,
        upstream_ms=390.0,
        overhead_ms=10.0,
        attempts=[{"model": "m-a", "status": 200}],
        cache="miss",
        tenant="acme",
    )


def _load_fixture(target: str) -> None:
    """The rows of tests/fixtures/decisions-v1.db (an old SQLite log) copied into ``target``, times and all."""
    engine = dl.make_engine(dl.resolve(target))
    try:
        dl.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(sa.insert(decisions), list(iter_decisions(FIXTURE)))
            conn.execute(sa.insert(feedback), list(iter_feedback(FIXTURE)))
            conn.execute(sa.insert(calls), list(iter_calls(FIXTURE)))
    finally:
        engine.dispose()


def _request_ids(target: str, table: str) -> list[str]:
    rows = {"decisions": iter_decisions, "feedback": iter_feedback, "calls": iter_calls}[table](target)
    return sorted(r["request_id"] for r in rows)


# --------------------------------------------------------------------------------------------------------------
# the same log in both stores
# --------------------------------------------------------------------------------------------------------------
def test_both_stores_hold_and_export_the_same_rows(tmp_path: Path, pg: str) -> None:
    from training.reports import read_decision_log

    targets = {"sqlite": str(tmp_path / "decisions.db"), "postgresql": pg}
    for target in targets.values():
        dlog = DecisionLog(target, store_prompts=True).start()
        dlog.record_catalog("svc/1", "name: cat\ntiers:\n- {name: a, model: m-a}\n- {name: b, model: m-b}\n")
        for i in range(5):
            _decision(dlog, f"r{i}", text=f"prompt {i}", task=f"t{i % 2}", tenant="acme")
            _call(dlog, f"r{i}")
        _decision(dlog, "r0", text="prompt 0 again", task="t9")  # logged again: the newest one stays
        for i in range(3):
            _feedback(dlog, f"r{i}", feedback_id=f"fb-{i}", input_tokens=10 + i, cost_usd=0.001)
        _feedback(dlog, "r1", feedback_id="fb-1", score=0.0)  # a retry: not written
        _feedback(dlog, "r3", model="m-b", score=0.25, acceptable=None)
        assert dlog.flush()
        dlog.close()

    def without_times(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows without their times, in a stable order (rows logged in the same millisecond tie on time)."""
        rows = [{k: v for k, v in r.items() if k not in ("created_at", "timestamp")} for r in rows]
        return sorted(rows, key=lambda r: (r["request_id"], str(r.get("feedback_id")), str(r.get("model"))))

    frames = {name: export_log(t)[0].drop(columns=["timestamp"]) for name, t in targets.items()}
    assert len(frames["sqlite"]) == 4 and frames["sqlite"]["request_id"].tolist() == ["r0", "r1", "r2", "r3"]
    pd.testing.assert_frame_equal(frames["sqlite"], frames["postgresql"])
    assert frames["postgresql"]["prompt"].tolist()[0] == "prompt 0 again" and frames["postgresql"]["task"][0] == "t9"
    for reader in (iter_decisions, iter_calls, iter_feedback):
        rows = {name: without_times(list(reader(t))) for name, t in targets.items()}
        assert rows["sqlite"] == rows["postgresql"] and rows["sqlite"], reader.__name__
    assert stored_catalogs(pg) == stored_catalogs(targets["sqlite"]) and list(stored_catalogs(pg)) == ["svc/1"]
    slices = {name: read_decision_log(t) for name, t in targets.items()}  # the savings report's reader
    assert len(slices["postgresql"].decisions) == 5 and len(slices["postgresql"].calls) == 5
    pd.testing.assert_frame_equal(*(slices[n].feedback.drop(columns="created_at") for n in ("sqlite", "postgresql")))
    # the CLI takes the URL too, and writes the same training log
    outs = {}
    for name, target in targets.items():
        outs[name] = tmp_path / f"{name}.csv"
        res = CliRunner().invoke(app, ["decisions", "export", "--decision-log", target, "--out", str(outs[name])])
        assert res.exit_code == 0 and "exported 4 of 4 feedback row(s)" in res.output, res.output

    pd.testing.assert_frame_equal(*(pd.read_csv(outs[n]).drop(columns="timestamp") for n in ("sqlite", "postgresql")))


def test_postgres_stores_nul_characters_as_replacement_characters(pg: str) -> None:
    """PostgreSQL's text cannot hold NUL: such a prompt is kept (as U+FFFD), not refused and dropped."""
    counts = Counts()
    dlog = DecisionLog(pg, store_prompts=True, on_drop=counts.drop).start()
    _decision(dlog, "nul", text="before\x00after", task="a\x00b")
    assert _feedback(dlog, "nul", durable=True).result(10) is True
    dlog.close()
    (row,) = list(iter_decisions(pg))
    assert row["prompt"] == "before\ufffdafter" and row["task"] == "a\ufffdb" and counts.dropped == 0
    assert row["prompt_hash"] == dl.prompt_hash("before\x00after")  # the hash is of the text as routed


def test_feedback_ids_are_idempotent_and_durable_feedback_is_committed(store: str) -> None:
    dlog = DecisionLog(store, store_prompts=True, flush_seconds=5.0).start()  # non-durable rows wait 5 s
    _decision(dlog, "r1")
    start = time.monotonic()
    durable = _feedback(dlog, "r1", feedback_id="fb-1", durable=True)
    assert durable.result(4) is True and time.monotonic() - start < 4  # committed at once, not after 5 s
    assert [r["feedback_id"] for r in iter_feedback(store)] == ["fb-1"]  # another connection sees it: committed
    same_batch = [_feedback(dlog, "r1", feedback_id=f, score=0.5) for f in ("fb-2", "fb-2", "fb-1")]
    anonymous = [_feedback(dlog, "r1", durable=True) for _ in range(2)]
    assert [f.result(10) for f in same_batch + anonymous] == [True, False, False, True, True]
    dlog.close()
    rows = [(r["feedback_id"], r["score"]) for r in iter_feedback(store)]
    assert rows == [("fb-1", 1.0), ("fb-2", 0.5), (None, 1.0), (None, 1.0)]


def test_two_replicas_write_one_postgres_store(pg: str) -> None:
    """Two services (two DecisionLogs) write one database at once; a feedback both send is recorded once; the
    export reads every row."""
    replicas = [DecisionLog(pg, store_prompts=True).start() for _ in range(2)]
    results: dict[int, list[bool]] = {}

    def serve(k: int) -> None:
        dlog = replicas[k]
        for i in range(150):
            _decision(dlog, f"{k}-{i}", text=f"replica {k} prompt {i}")
        futures = [_feedback(dlog, f"{k}-{i}", feedback_id=f"fb-{k}-{i}") for i in range(0, 150, 3)]
        futures += [_feedback(dlog, f"0-{i}", feedback_id=f"shared-{i}", durable=True) for i in range(20)]
        results[k] = [f.result(30) for f in futures]

    threads = [threading.Thread(target=serve, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for dlog in replicas:
        dlog.close()
    assert all(all(r[:50]) for r in results.values())  # each replica's own feedback: written
    assert sum(r[50:].count(True) for r in results.values()) == 20  # shared ids: one replica wrote each
    assert len(_request_ids(pg, "decisions")) == 300
    frame, summary = export_log(pg)
    assert summary.feedback_rows == 120 and len(frame) == 120 and set(frame["request_id"].str[0]) == {"0", "1"}


# --------------------------------------------------------------------------------------------------------------
# migrations
# --------------------------------------------------------------------------------------------------------------
def test_concurrent_upgrades_from_empty_build_exactly_the_schema(store: str) -> None:
    """Four "replicas" start on an empty database at the same moment: one migrates, the others wait and find it
    done; nobody fails, and the result is the schema the code defines (schema.metadata)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engines = [dl.make_engine(dl.resolve(store)) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    outcomes: list[Any] = []

    def start(engine: sa.Engine) -> None:
        barrier.wait()
        try:
            outcomes.append(dl.upgrade(engine))
        except Exception as exc:  # noqa: BLE001
            outcomes.append(exc)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    head = dl.head()
    assert sorted(outcomes, key=str) == sorted([(None, head)] + [(head, head)] * 3, key=str), outcomes
    with engines[0].connect() as conn:
        assert dl.current(conn) == head
        ctx = MigrationContext.configure(conn, opts={"version_table": "tierwise_alembic_version"})
        assert compare_metadata(ctx, dl.metadata) == []
    for e in engines:
        e.dispose()
    res = CliRunner().invoke(app, ["db", "current", "--decision-log", store])
    assert res.exit_code == 0 and f"schema {head} (the newest)" in res.output, res.output
    res = CliRunner().invoke(app, ["db", "upgrade", "--decision-log", store])
    assert res.exit_code == 0 and "nothing to do" in res.output, res.output


def test_db_upgrade_creates_the_log_and_refuses_foreign_tables(pg: str) -> None:
    url = _with_password(pg)
    res = CliRunner().invoke(app, ["db", "current", "--decision-log", url])
    assert res.exit_code == 1 and "none (never migrated)" in res.output and SECRET not in res.output, res.output
    res = CliRunner().invoke(app, ["db", "upgrade", "--decision-log", url])
    assert res.exit_code == 0, res.output
    assert f"schema upgraded from none to {dl.head()}" in res.output and ":***@" in res.output
    assert SECRET not in res.output
    # a table called decisions that is not a log's is never adopted
    with pg_schema(sa.make_url(pg).set(query={}).render_as_string(hide_password=False)) as other:
        engine = sa.create_engine(other)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE decisions (id integer)")
        engine.dispose()
        res = CliRunner().invoke(app, ["db", "upgrade", "--decision-log", other])
        assert res.exit_code == 2 and "not a tierwise decision log" in res.output, res.output


# --------------------------------------------------------------------------------------------------------------
# retention
# --------------------------------------------------------------------------------------------------------------
def test_prune_deletes_old_decisions_with_all_their_feedback_in_batches(store: str) -> None:
    """The fixture's log: decisions req-0..2 (and their calls) in January, req-3..5 in March; req-1 has a feedback
    recorded in April (after the cut): a decision's time decides, so it goes with its decision."""
    _load_fixture(store)
    engine = sa.create_engine(dl.resolve(store))
    with engine.begin() as conn:  # feedback whose decision is gone: an old one goes, a recent one stays
        for rid, when in (("gone-old", "2026-01-05T00:00:00.000+00:00"), ("gone-new", "2026-03-20T00:00:00.000+00:00")):
            conn.execute(sa.insert(feedback).values(request_id=rid, created_at=when, model="m", score=1.0))
    engine.dispose()
    runner = CliRunner()
    res = runner.invoke(app, ["decisions", "prune", "--before", "2026-02-01", "--db", store, "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "would delete 3 decision(s), 5 feedback row(s), 3 gateway call(s)" in res.output
    assert len(_request_ids(store, "decisions")) == 6  # a dry run deletes nothing
    res = runner.invoke(app, ["decisions", "prune", "--before", "2026-02-01", "--db", store, "--batch-rows", "2"])
    assert res.exit_code == 0 and "deleted 3 decision(s), 5 feedback row(s), 3 gateway call(s)" in res.output, (
        res.output
    )
    assert _request_ids(store, "decisions") == ["req-3", "req-4", "req-5"]
    assert _request_ids(store, "feedback") == ["gone-new", "req-3"] and _request_ids(store, "calls") == []
    frame, summary = export_log(store)
    assert frame["request_id"].tolist() == ["req-3"] and summary.without_decision == 1
    res = runner.invoke(app, ["decisions", "prune", "--before", "2026-02-01", "--db", store])
    assert res.exit_code == 0 and "deleted 0 decision(s), 0 feedback row(s), 0 gateway call(s)" in res.output
    for bad, why in (("2999-01-01", "in the future"), ("last tuesday", "not an ISO date")):
        res = runner.invoke(app, ["decisions", "prune", "--before", bad, "--db", store])
        assert res.exit_code == 2 and why in res.output, res.output


def test_the_writer_applies_the_retention_setting(store: str) -> None:
    """With retention_days the running writer deletes old rows itself, a bounded batch at a time between writes,
    and keeps what it writes now."""
    _load_fixture(store)
    days = (datetime.now(UTC) - datetime(2026, 2, 1, tzinfo=UTC)).days  # a cut at about 2026-02-01
    counts = Counts()
    dlog = DecisionLog(
        store,
        store_prompts=True,
        retention_days=days,
        prune_every_seconds=0.1,
        prune_batch_rows=1,
        on_drop=counts.drop,
        on_error=counts.error,
    ).start()
    _decision(dlog, "new")
    deadline = time.monotonic() + 20
    while _request_ids(store, "calls") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _request_ids(store, "decisions") == ["new", "req-3", "req-4", "req-5"]
    assert _request_ids(store, "feedback") == ["req-3"] and _request_ids(store, "calls") == []
    assert _feedback(dlog, "new", durable=True).result(10) is True
    assert dlog.health() is None and counts.dropped == 0 and counts.errors == []
    dlog.close()


def test_replicas_sharing_a_postgresql_log_take_turns_pruning(pg: str) -> None:
    """While one process holds the prune lock (a prune batch in progress), a replica's hourly batch is skipped, not
    run on the same rows at once, and ``tierwise decisions prune`` waits for its turn; both prune once it is free."""
    from router.service.decision_log import retention

    _load_fixture(pg)
    holder = sa.create_engine(dl.resolve(pg))
    days = (datetime.now(UTC) - datetime(2026, 2, 1, tzinfo=UTC)).days
    dlog = None
    try:
        with holder.begin() as held:
            held.execute(sa.select(sa.func.pg_advisory_xact_lock(retention.PRUNE_LOCK_KEY)))
            cut = retention.utc_iso("2026-02-01")
            other = sa.create_engine(dl.resolve(pg))
            with other.begin() as conn:
                assert retention.prune_batch(conn, cut, wait=False) is None
            other.dispose()
            dlog = DecisionLog(pg, retention_days=days, prune_every_seconds=0.1, prune_batch_rows=1).start()
            finished: list[str] = []
            cli = threading.Thread(
                target=lambda: finished.append(
                    CliRunner().invoke(app, ["decisions", "prune", "--before", "2026-02-01", "--db", pg]).output
                )
            )
            cli.start()
            _decision(dlog, "during")  # the writer skips its turn and keeps writing: it never waits for the lock
            deadline = time.monotonic() + 10
            while "during" not in _request_ids(pg, "decisions") and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)  # the writer had about 10 more chances to prune, the CLI was waiting all along
            assert len(_request_ids(pg, "decisions")) == 7 and not finished
        cli.join(30)
        assert finished and "deleted" in finished[0], finished
        assert _request_ids(pg, "decisions") == ["during", "req-3", "req-4", "req-5"]
    finally:
        if dlog is not None:
            dlog.close()
        holder.dispose()


# --------------------------------------------------------------------------------------------------------------
# failures
# --------------------------------------------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_database_at_start_is_a_clear_error_without_credentials(
    pg: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from router.service import StartupError, create_app
    from router.service.settings import ServiceSettings

    down = f"postgresql+psycopg://root:{SECRET}@127.0.0.1:{_closed_port()}/tierwise"
    with pytest.raises(DecisionLogUnavailable, match="check that the database server is running") as info:
        DecisionLog(down)
    assert SECRET not in str(info.value)
    with pytest.raises(StartupError) as err, TestClient(create_app(ServiceSettings(home=tmp_path, decision_log=down))):
        pass
    msg = str(err.value)
    assert "cannot open the decision log postgresql+psycopg://root:***@127.0.0.1:" in msg, msg
    assert "Connection refused" in msg and "host, port, database" in msg and SECRET not in msg, msg
    # a server that runs, a database that does not
    missing = sa.make_url(_with_password(pg)).set(database="tierwise_t_does_not_exist").render_as_string(False)
    with pytest.raises(DecisionLogUnavailable, match="does not exist.*createdb") as info:
        DecisionLog(missing)
    assert SECRET not in str(info.value)
    # `tierwise serve` exits with its start-up code (3) and says why, before it loads any model (in process: the
    # options it sets in the environment are put back by monkeypatch, its SIGTERM handler by hand)
    for key in ("TIERWISE_MODEL_URI", "TIERWISE_PORT", "TIERWISE_SERVE_STATE_DIR"):
        monkeypatch.setenv(key, "")
    monkeypatch.setenv("TIERWISE_HOME", str(tmp_path))
    monkeypatch.setenv("TIERWISE_DECISION_LOG", down)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        res = CliRunner().invoke(app, ["serve", "--port", str(_closed_port()), "--model-uri", str(tmp_path)])
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    assert res.exit_code == 3, res.output
    assert "error: start-up failed: cannot open the decision log postgresql+psycopg://root:***@" in res.output
    assert "check that the database server is running" in res.output and SECRET not in res.output
    res = CliRunner().invoke(app, ["decisions", "export", "--db", down, "--out", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "Connection refused" in res.output and SECRET not in res.output, res.output


def test_a_connection_lost_mid_run_loses_no_row(pg: str, caplog: pytest.LogCaptureFixture) -> None:
    """The server ends the writer's connection (pg_terminate_backend) between writes, three times: every row is
    written on a new connection, none is counted as dropped, and readiness stays green."""
    caplog.set_level("WARNING", logger="tierwise.service")
    counts = Counts()
    dlog = DecisionLog(pg, store_prompts=True, on_drop=counts.drop, on_error=counts.error).start()
    written: list[str] = []
    for round_ in range(4):
        for i in range(20):
            _decision(dlog, f"{round_}-{i}")
            written.append(f"{round_}-{i}")
        assert all(_feedback(dlog, f"{round_}-{i}", durable=True).result(30) for i in range(3))
        assert dlog.flush(30)
        if round_ < 3:
            assert _kill_backends(pg) >= 1  # the writer holds its connection between batches
    dlog.close()
    assert _request_ids(pg, "decisions") == sorted(written)
    assert len(_request_ids(pg, "feedback")) == 12
    assert counts.dropped == 0 and counts.errors == []
    retried = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retried) == 3, [r.getMessage() for r in caplog.records]  # each lost connection: one failed attempt
    assert all("OperationalError" in r.getMessage() for r in retried)


def test_a_database_gone_for_good_is_counted_and_reported_then_recovered(pg: str, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from router.service import Service
    from router.service.settings import ServiceSettings

    name = sa.make_url(pg).database
    url = _with_password(pg)
    counts = Counts()
    service = Service(ServiceSettings(home=tmp_path, decision_log=url))
    service.model = SimpleNamespace(  # type: ignore[assignment]
        degraded=False,
        source="local",
        uri="x",
        label="x/1",
        name="x",
        version="1",
        encoder="e",
        loaded_at="t",
        detail=None,
    )
    dlog = DecisionLog(
        url, store_prompts=True, on_drop=counts.drop, on_error=counts.error, retry_seconds=0.5, probe_seconds=0.2
    ).start()
    service.dlog = dlog
    _decision(dlog, "before")
    assert _feedback(dlog, "before", durable=True).result(10) is True
    _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        _kill_backends(pg)
        _decision(dlog, "lost-1")
        lost = _feedback(dlog, "before", durable=True)
        with pytest.raises(DecisionLogError, match="decision log write failed"):
            lost.result(30)
        assert counts.dropped == 2 and set(counts.errors) == {"batch"}
        status, body = service.ready()
        assert status == 503 and "decision-log writes are failing" in (body.decision_log or ""), body
        assert "not currently accepting connections" in (body.decision_log or "")
        assert SECRET not in body.model_dump_json()
    finally:
        _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    deadline = time.monotonic() + 15  # no new rows: the writer's probe finds the database back
    while service.ready()[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert service.ready()[0] == 200
    assert _feedback(dlog, "before", durable=True).result(10) is True
    dlog.close()
    assert _request_ids(pg, "decisions") == ["before"] and counts.dropped == 2


def test_urls_resolve_and_bad_ones_are_named(tmp_path: Path) -> None:
    assert dl.resolve("postgresql://u:p@h/db").drivername == "postgresql+psycopg"  # the driver tierwise installs
    assert dl.resolve(f"sqlite:///{tmp_path}/x.db").database == f"{tmp_path}/x.db"
    assert dl.resolve(tmp_path / "y.db").database == str(tmp_path / "y.db")
    for bad, why in (
        ("mysql://u:secret@h/db", "runs on SQLite"),
        ("sqlite://", "names no file"),
        ("sqlite:///:memory:", "names no file"),
        ("postgresql://u:secret@h:notaport/db", "not a database URL"),
        ("", "an empty path"),
    ):
        with pytest.raises(ValueError, match=why) as info:
            dl.resolve(bad)
        assert "secret" not in str(info.value)
    assert dl.describe("postgresql+psycopg://u:secret@h:5432/db") == "postgresql+psycopg://u:***@h:5432/db"
