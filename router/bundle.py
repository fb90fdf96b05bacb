"""The router bundle: one directory holding everything needed to route exactly as training did.

Layout::

    bundle/
      tierwise.json     # BundleMeta: format version, catalog, encoder spec, features, default threshold, metrics
      encoder/          # the encoder's own files (ONNX weights + tokenizer, or a fingerprinted reference)
      classifier/       # LightGBM model text + calibration JSON

A bundle is written to a temporary sibling directory and renamed into place, so a crash never leaves a
half-written bundle behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from router.atomic_io import build_dir_atomic
from router.catalog import Catalog

BUNDLE_FORMAT = 1
META_FILE = "tierwise.json"


class FeatureSpec(BaseModel):
    """Which features the classifier was trained on, in order."""

    model_config = ConfigDict(extra="forbid")

    embedding: bool = True
    structural: list[str] = Field(default_factory=list)


class BundleMeta(BaseModel):
    """Metadata of a trained router (stored as ``tierwise.json``)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format: int = BUNDLE_FORMAT
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    tierwise_version: str = "0.1.0"
    catalog: Catalog
    encoder: dict[str, Any] = Field(description="The encoder's spec (kind, source, fingerprint, dim, window).")
    features: FeatureSpec
    threshold: float = Field(ge=0, le=1, description="Default decision threshold chosen on the calibration split.")
    quality_target: float = Field(description="Quality target (share of the best single tier) the threshold meets.")
    threshold_note: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)


class BundleError(RuntimeError):
    """A directory is not a usable tierwise bundle."""


def write_bundle(directory: str | Path, meta: BundleMeta, writers: dict[str, Callable[[Path], None]]) -> Path:
    """Write a bundle atomically: ``writers`` maps a sub-directory name to a function that fills it."""

    def build(tmp: Path) -> None:
        for sub, write in writers.items():
            (tmp / sub).mkdir()
            write(tmp / sub)
        (tmp / META_FILE).write_text(meta.model_dump_json(indent=1), encoding="utf-8")

    return build_dir_atomic(Path(directory), build)


def read_meta(directory: str | Path) -> BundleMeta:
    p = Path(directory) / META_FILE
    if not p.is_file():
        raise BundleError(f"{directory} is not a tierwise bundle (no {META_FILE})")
    data = json.loads(p.read_text(encoding="utf-8"))
    if data.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{p}: bundle format {data.get('format')} is not supported (expected {BUNDLE_FORMAT})")
    return BundleMeta.model_validate(data)


def find_bundle(directory: str | Path) -> Path:
    """Locate the bundle inside a bundle dir, an MLflow model dir (``artifacts/bundle``) or a parent of one."""
    d = Path(directory)
    for cand in (d, d / "artifacts" / "bundle", d / "bundle"):
        if (cand / META_FILE).is_file():
            return cand
    raise BundleError(f"no tierwise bundle found in {d} (looked for {META_FILE}, artifacts/bundle/, bundle/)")
