"""Test-suite wide setup: offline model loading, no telemetry, and a private TIERWISE_HOME per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Set before anything imports mlflow / transformers (mlflow reads its telemetry switch at import).
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="tierwise-tests-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["TIERWISE_HOME"] = str(_SESSION_HOME)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("TIERWISE_TRACKING_URI", None)
# Share the (slow to build) embedding and ONNX caches across test runs on one machine.
os.environ.setdefault("TIERWISE_CACHE_DIR", str(Path(tempfile.gettempdir()) / "tierwise-test-cache"))


@pytest.fixture(scope="module")
def work(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory shared by one test module's tests (named after the module)."""
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(scope="module")
def client(server):  # noqa: ANN001 - each service test module defines its own ``server`` (a ServerProcess)
    """An HTTP client of the module's ``server`` fixture."""
    from service_server import http_client

    with http_client(server, 120) as c:
        yield c
