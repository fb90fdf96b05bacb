"""The same train -> register -> load round trip through a real `mlflow server` (HTTP tracking URI)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from router.core import Router
from training import registry
from training.demo import demo_catalog, demo_log
from training.pipeline import TrainConfig, train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{d / 'server.db'}", "--artifacts-destination", str(d / "artifacts"),
    ]
    log = open(d / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(d / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise RuntimeError("mlflow server did not become healthy in 120 s")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_train_register_and_load_through_server(mlflow_server: str, tmp_path: Path) -> None:
    result = train(
        demo_log(n_prompts=600, seed=3), catalog=demo_catalog(), register="tierwise-remote",
        tracking_uri=mlflow_server, config=TrainConfig(n_estimators=40), progress=False,
    )
    assert result.tracking_uri == mlflow_server
    assert result.model_version == "1" and result.promoted
    assert registry.alias_version("tierwise-remote", "champion", mlflow_server) == "1"
    router = Router.load("models:/tierwise-remote@champion", tracking_uri=mlflow_server)
    assert router.ref.version == "1"
    d = router.route("Classify the sentiment of: 'the update broke everything'")
    assert d.tier in demo_catalog().tier_names
    # nothing was written to the local default store
    assert not (Path(os.environ["TIERWISE_HOME"]) / "mlartifacts").exists() or not any(
        (Path(os.environ["TIERWISE_HOME"]) / "mlartifacts").rglob("MLmodel")
    )
