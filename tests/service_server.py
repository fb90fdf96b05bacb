"""Helpers for the service tests: run ``tierwise serve`` as a real subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    """A loopback port free now. Another process (an outgoing connection's local port, in the same ephemeral range)
    may take it before a server binds it: servers started on it retry on a new one (:func:`lost_its_port`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PORT_ATTEMPTS = 5


def lost_its_port(log_tail: str) -> bool:
    """Whether a server that exited did so because its port was taken between :func:`free_port` and its bind."""
    return "address already in use" in log_tail.lower()


def closed_port_uri() -> str:
    """An http tracking URI where nothing listens (a registry that is down)."""
    return f"http://127.0.0.1:{free_port()}"


REPO = Path(__file__).resolve().parent.parent


class ServerProcess:
    """``python -m training.cli serve`` with the given TIERWISE_* environment; logs go to a file.

    Also used by ``benchmarks/latency.py``. ``DEFAULT_ENV`` is added unless the caller's environment sets it: the
    tests make MLflow give up on an unreachable registry at once.
    """

    DEFAULT_ENV: dict[str, str] = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}

    def __init__(self, env: dict[str, str], log_path: Path, extra_args: list[str] | None = None) -> None:
        self.log_path = log_path
        self._env = {**self.DEFAULT_ENV, **os.environ, **env}
        self._extra_args = extra_args or []
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._attempts = 0
        self._launch()

    def _launch(self) -> None:
        """Start the server on a new free port (``url`` follows it); the log file keeps every attempt's output."""
        self._attempts += 1
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_start = self._log.tell()
        args = [sys.executable, "-m", "training.cli", "serve", "--port", str(self.port), "--no-access-log"]
        self.proc = subprocess.Popen(
            args + self._extra_args, env=self._env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO
        )

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 180.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if lost_its_port(self.log()[self._log_start :]) and self._attempts < PORT_ATTEMPTS:
                    self._launch()  # the port was taken before the server bound it: another one
                    continue
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                r = httpx.get(f"{self.url}/readyz", timeout=2)
                if r.status_code == 200:
                    return r.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()[-4000:]}")

    def wait_exit(self, timeout: float = 120.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run (a crash, an OOM kill, a power cut of the process)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(20)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@contextmanager
def running_server(env: dict[str, str], log_path: Path) -> Iterator[ServerProcess]:
    """A ready :class:`ServerProcess`, stopped when the block ends (a module fixture's body)."""
    srv = ServerProcess(env, log_path)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@contextmanager
def http_client(srv: ServerProcess, timeout: float = 60) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, timeout=timeout) as c:
        yield c


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` on the server's ``/metrics`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(client.get("/metrics").text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total
