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
# One BLAS / OpenMP thread per process (numpy, scipy, torch, LightGBM; read when they load, so set before any test
# module imports them): the suite runs two xdist workers on two cores, and a second thread per worker only spins
# waiting for a core that the other worker holds (an SVD of 4,000 x 384 took 2.4-19 s with two OpenBLAS threads on
# the busy box, 0.4 s with one). Services and kernels the tests start inherit it.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ["TIERWISE_HOME"] = str(_SESSION_HOME)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("TIERWISE_TRACKING_URI", None)
# Share the (slow to build) embedding and ONNX caches across test runs on one machine.
os.environ.setdefault("TIERWISE_CACHE_DIR", str(Path(tempfile.gettempdir()) / "tierwise-test-cache"))


# Seconds one file takes alone (``pytest -n 0``, warm caches, this 2-core box), for the files that take more than
# ~15 s. ``--dist loadfile`` hands whole files to the two workers in collection order (``--no-loadscope-reorder``
# in pyproject.toml keeps ours), so collecting the longest files first (longest processing time first) keeps the
# last file a short one and neither worker idles long at the end. Files not listed run after these, in name order.
# Rough figures are enough; remeasure a file whose cost changes a lot (``--durations``).
FILE_SECONDS: dict[str, float] = {
    "test_spark.py": 135,
    "test_pipeline.py": 133,
    "test_cli_newuser.py": 101,
    "test_promotion.py": 96,
    "test_gateway.py": 87,
    "test_layout_selection.py": 85,
    "test_replicas.py": 60,
    "test_service_safety.py": 50,
    "test_service.py": 43,
    "test_notebooks.py": 36,
    "test_encoders.py": 32,
    "test_mlflow_server.py": 31,
    "test_gateway_cache_keys.py": 29,
    "test_static_encoder.py": 27,
    "test_bundle_upgrade.py": 23,
    "test_classifier.py": 22,
    "test_route_log.py": 20,
    "test_gateway_batch.py": 18,
    "test_decision_log.py": 18,
    "test_costs_escalation.py": 16,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the known-long test files first (stable: a file's own tests keep their order)."""
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0.0))


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
