"""Test-suite wide setup: offline model loading, no telemetry, and a private TIERWISE_HOME per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
