"""A real ``mlflow server`` on PostgreSQL for the tests and benchmarks: the multi-machine registry of
docs/deployment.md, on loopback.

:func:`pg_database` creates a database of its own on the PostgreSQL server at ``TIERWISE_TEST_PG_URL`` (default
``postgresql://root@127.0.0.1:5432/postgres``, trust auth) and drops it afterwards; :class:`MlflowServer` runs
``mlflow server --backend-store-uri postgresql+psycopg://.../<that db> --artifacts-destination <dir>
--serve-artifacts`` as a process group that :meth:`MlflowServer.stop` ends (an outage, or the end of a module).
:func:`running_mlflow_server` is both, for a module fixture. A missing PostgreSQL is an error, never a skip.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from service_server import PORT_ATTEMPTS, free_port, lost_its_port
from sqlalchemy.engine import make_url
from sqlalchemy.engine.url import URL

PG_URL = os.environ.get("TIERWISE_TEST_PG_URL", "postgresql://root@127.0.0.1:5432/postgres")


def _admin_url() -> URL:
    return make_url(PG_URL).set(drivername="postgresql")


def _connect_admin():  # noqa: ANN202 - a psycopg.Connection (psycopg is imported lazily)
    import psycopg

    url = _admin_url()
    try:
        return psycopg.connect(url.render_as_string(hide_password=False), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # the project's machines run PostgreSQL; .ci/run starts it
        raise RuntimeError(
            f"these tests need the PostgreSQL server at {url.render_as_string(hide_password=True)} "
            f"(set TIERWISE_TEST_PG_URL): {str(exc).strip()}"
        ) from exc


def database_url(name: str) -> str:
    """SQLAlchemy URL (``postgresql+psycopg://``) of database ``name`` on the test server."""
    return make_url(PG_URL).set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)


@contextmanager
def pg_database(prefix: str) -> Iterator[str]:
    """A new, empty database ``<prefix>_<random>``: its ``postgresql+psycopg://`` URL; dropped (connections and
    all) when the block ends."""
    from psycopg import sql

    name = f"{re.sub(r'[^a-z0-9_]+', '_', prefix.lower())[:40]}_{uuid.uuid4().hex[:8]}"
    with _connect_admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_url(name)
    finally:
        with _connect_admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def database_exists(url: str) -> bool:
    """Whether the database of ``url`` exists on the test server (the clean-up check)."""
    with _connect_admin() as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (make_url(url).database,)).fetchone()
    return row is not None


def query(url: str, statement: str, params: tuple[object, ...] = ()) -> list[tuple]:
    """Rows of one SQL ``statement`` run on the database of ``url`` (to look at what the servers stored)."""
    import psycopg

    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, connect_timeout=5) as conn:
        return conn.execute(statement, params).fetchall()  # type: ignore[arg-type]


def register_again(tracking_uri: str, name: str, version: str) -> str:
    """A new version of ``name`` registered from the logged model behind ``version`` (a second registration of the
    same artifacts, as a rollback or a re-promotion makes one); the new version number."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mv = client.get_model_version(name, version)
    source = str(mv.source)
    # MLflow 3 sources are ``models:/<model id>``; the server wants that id again (the entity leaves model_id unset)
    model_id = mv.model_id or (source.removeprefix("models:/") if source.startswith("models:/m-") else None)
    return str(client.create_model_version(name, source=source, run_id=mv.run_id, model_id=model_id).version)


class _PortTaken(Exception):
    """The server exited because its port was taken between :func:`free_port` and its bind."""


class MlflowServer:
    """``mlflow server`` on ``backend_uri`` with its artifacts proxied (``--serve-artifacts``) from ``workdir /
    'artifacts'``; logs to ``workdir / 'mlflow-server.log'``. :meth:`start` waits for ``/health``."""

    def __init__(self, backend_uri: str, workdir: Path, workers: int = 1) -> None:
        self.backend_uri = backend_uri
        self.workdir = workdir
        self.artifacts = workdir / "artifacts"
        self.log_path = workdir / "mlflow-server.log"
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> MlflowServer:
        """Start the server and wait for ``/health``; on a new port when its port was taken before it bound it."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                return self._start_once(timeout)
            except _PortTaken:
                if attempt == PORT_ATTEMPTS:
                    raise RuntimeError(
                        f"mlflow server found its port taken {attempt} times:\n{self.log()[-3000:]}"
                    ) from None
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> MlflowServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_start = self.log_path.stat().st_size if self.log_path.is_file() else 0
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.artifacts),
            "--serve-artifacts",
        ]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if lost_its_port(self.log()[log_start:]):
                    self.proc = None
                    raise _PortTaken
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"mlflow server not healthy after {timeout:.0f} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.is_file() else ""

    def stop(self) -> None:
        """SIGTERM the server's process group (its workers too), SIGKILL after 30 s; the port is closed after."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextmanager
def running_mlflow_server(workdir: Path, db_prefix: str) -> Iterator[MlflowServer]:
    """A started :class:`MlflowServer` on a database of its own (``db_prefix``), both gone when the block ends.

    In-process ``train`` and ``Router.load`` point MLflow's global tracking URI (and ``MLFLOW_TRACKING_URI``, which
    subprocesses inherit) at the server; it is put back as it was when the block ends, so later test modules of the
    same worker never resolve a model against a server that is gone."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    with pg_database(db_prefix) as db:
        server = MlflowServer(db, workdir)
        try:
            yield server.start()
        finally:
            server.stop()
            mlflow.set_tracking_uri(before)  # type: ignore[arg-type]  # None unsets it
