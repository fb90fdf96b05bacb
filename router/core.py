"""``Router``: load a trained tierwise model and recommend a tier per prompt.

>>> from router import Router
>>> r = Router.load("models:/tierwise@champion")          # or a local bundle / MLflow model directory
>>> d = r.route("Summarise this paragraph in one sentence: ...")
>>> d.tier, d.model, d.p_acceptable, d.reason
"""

from __future__ import annotations

import numbers
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from router import pricing
from router.bundle import BundleMeta, find_bundle, read_meta
from router.catalog import Catalog
from router.classifier import TierClassifier
from router.cost_model import CostModel
from router.decision import ROLES, Reason, decide, decide_batch, escalation_path
from router.defaults import LEGACY_DECISION_RULE
from router.features import structural_features

if TYPE_CHECKING:
    from router.encoders import Encoder


def check_threshold(threshold: object, name: str = "threshold") -> float:
    """A knob (``threshold``, ``quality_target``) as a float in [0, 1]; a ValueError for a bool, a string, NaN or
    inf (comparisons with NaN are false, so the range test refuses it too)."""
    if isinstance(threshold, bool):
        raise ValueError(f"{name} must be a number, not true/false")
    if not isinstance(threshold, numbers.Real) or not 0.0 <= cast(float, threshold) <= 1.0:
        raise ValueError(f"{name} must be a finite number in [0, 1], got {threshold!r}")
    return float(threshold)


class Decision(BaseModel):
    """A routing decision for one prompt."""

    tier: str = Field(description="Recommended tier name.")
    tier_index: int = Field(description="Position of the tier in the catalog (0 = cheapest).")
    model: str = Field(description="Model that serves the recommended tier.")
    p_acceptable: dict[str, float] = Field(
        description="Predicted P(acceptable answer) per tier, cheapest first (the HTTP API's p_acceptable)."
    )
    threshold: float = Field(description="Threshold the decision used.")
    reason: str = Field(description="Why this tier: a Reason code.")
    escalation: list[str] = Field(
        description="Tiers to try next, in order, if the answer fails verification: pricier tiers, each more likely "
        "to answer than the tiers before it."
    )
    role: str = Field(description="Agent role the decision was made for.")
    estimated_cost_usd: pricing.CallCost | None = Field(
        None,
        description="Expected USD of the call on the chosen and the top tier (list prices, else the bundle's fitted "
        "cost model), with the tokens assumed: the HTTP API's estimated_cost_usd plus the batch prices and where "
        "each figure comes from; None when the decision was made without the prompt's length.",
    )

    @property
    def probabilities(self) -> dict[str, float]:
        """Former name of :attr:`p_acceptable` (kept for callers written before the names were unified)."""
        return self.p_acceptable


@dataclass(frozen=True)
class ModelRef:
    """Where a router came from (for logs, headers and /readyz)."""

    uri: str
    name: str | None = None
    version: str | None = None

    @property
    def label(self) -> str:
        if self.name and self.version:
            return f"{self.name}/{self.version}"
        return self.uri


class Router:
    """A trained router: encoder + structural features + per-tier classifier + decision rule.

    Build it with :meth:`load` (registry URI or directory) or :meth:`from_bundle`.
    """

    def __init__(
        self,
        meta: BundleMeta,
        encoder: Encoder,
        classifier: TierClassifier,
        *,
        ref: ModelRef | None = None,
        bundle_dir: Path | None = None,
        num_threads: int = 1,
    ) -> None:
        self.meta = meta
        self.encoder = encoder
        self.classifier = classifier
        self.ref = ref or ModelRef(uri=str(bundle_dir) if bundle_dir else "<memory>")
        self.bundle_dir = bundle_dir
        self.num_threads = num_threads

    # --- construction --------------------------------------------------------------------------------------
    @classmethod
    def from_bundle(cls, directory: str | Path, *, threads: int = 1, ref: ModelRef | None = None) -> Router:
        """Load from a bundle directory (or an MLflow model directory that contains one)."""
        from router.encoders import load_encoder

        bdir = find_bundle(directory)
        meta = read_meta(bdir)
        encoder = load_encoder(bdir / "encoder", threads=threads)
        clf = TierClassifier.load(bdir / "classifier")
        return cls(meta, encoder, clf, ref=ref or ModelRef(uri=str(bdir)), bundle_dir=bdir, num_threads=threads)

    @classmethod
    def load(
        cls,
        uri_or_path: str | os.PathLike[str],
        *,
        tracking_uri: str | None = None,
        threads: int = 1,
        on_download: Callable[[Router], None] | None = None,
    ) -> Router:
        """Load a router from ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/...`` or a local directory.

        Registry URIs are resolved against ``tracking_uri`` (default: ``MLFLOW_TRACKING_URI`` or tierwise's local
        SQLite store). ``on_download`` runs on a downloaded router before its files are deleted (the service warms
        it up and copies the bundle there; it may point ``bundle_dir`` at the copy).
        """
        text = str(uri_or_path)
        local = local_model_dir(text)
        if local is not None:
            return cls.from_bundle(local, threads=threads)
        if not is_remote_uri(text):
            raise FileNotFoundError(f"no such model directory or registry URI: {text}")
        path, ref = download_model(text, tracking_uri=tracking_uri)
        try:
            router = cls.from_bundle(path, threads=threads, ref=ref)
            downloaded = router.bundle_dir
            if on_download is not None:
                on_download(router)
        finally:
            # Everything is in memory now; the downloaded copy is not needed.
            shutil.rmtree(download_root(path), ignore_errors=True)
        if router.bundle_dir == downloaded:
            router.bundle_dir = None
        return router

    # --- properties ----------------------------------------------------------------------------------------
    @property
    def catalog(self) -> Catalog:
        return self.meta.catalog

    @property
    def tiers(self) -> list[str]:
        return self.catalog.tier_names

    @property
    def threshold(self) -> float:
        return self.meta.threshold

    @property
    def decision_rule(self) -> str:
        """``threshold`` or ``utility`` (see router.decision); bundles written before the rule was stored use the rule
        they were tuned for (``router.defaults.LEGACY_DECISION_RULE``)."""
        return str(self.meta.training.get("decision_rule", LEGACY_DECISION_RULE))

    @property
    def tier_costs(self) -> list[float] | None:
        """Mean cost per tier on the training logs (the utility rule's prices), when the bundle has them."""
        return self.meta.training.get("tier_costs")

    @cached_property
    def cost_model(self) -> CostModel | None:
        """Expected cost per tier from the prompt's length (:mod:`router.cost_model`), when the bundle has one."""
        raw = self.meta.training.get("cost_model")
        return None if raw is None else CostModel.model_validate(raw)

    @property
    def chars_per_token(self) -> float:
        """Characters per input token learned by training (``training["chars_per_token"]``), else the default."""
        return pricing.resolve_chars_per_token(self.meta.training.get("chars_per_token"))

    @cached_property
    def threshold_table(self) -> list[tuple[float, float]]:
        """``(quality_target, threshold)`` pairs chosen by training, by increasing target (empty for bundles
        without a table)."""
        table = self.meta.training.get("threshold_table") or []
        rows: list[tuple[float, float]] = []
        for row in table if isinstance(table, list) else []:
            try:
                rows.append((float(row["quality_target"]), float(row["threshold"])))
            except (KeyError, TypeError, ValueError):
                continue
        return sorted(rows)

    def threshold_for(self, quality_target: float) -> float:
        """The knob for a quality target (share of the best single tier's quality): the threshold of the lowest
        target in :attr:`threshold_table` that meets it. The one rule behind ``quality_target`` in the Python,
        CLI and HTTP APIs."""
        qt = check_threshold(quality_target, "quality_target")
        rows = self.threshold_table
        if not rows:
            raise ValueError(f"this model ({self.ref.label}) has no threshold table, so quality_target is not "
                             "supported; give a threshold instead")
        for target, thr in rows:
            if target >= qt - 1e-9:
                return thr
        raise ValueError(
            f"quality_target {qt} is above the highest target this model was calibrated for ({rows[-1][0]})"
        )

    def knob(self, threshold: float | None = None, quality_target: float | None = None) -> float | None:
        """The threshold a call routes with: ``threshold`` (checked), the one :meth:`threshold_for` gives for
        ``quality_target``, or None (the model's own); a ValueError for both."""
        if quality_target is not None:
            if threshold is not None:
                raise ValueError("give threshold or quality_target, not both")
            return self.threshold_for(quality_target)
        return None if threshold is None else check_threshold(threshold)

    def row_costs(self, prompts: Sequence[str]) -> np.ndarray | None:
        """Per-prompt relative tier costs ``[n, T]`` for the utility rule, or None (no cost model: mean costs)."""
        cm = self.cost_model
        return None if cm is None else cm.relative_for(prompts)

    # --- prediction ----------------------------------------------------------------------------------------
    def features(self, prompts: Sequence[str], roles: Sequence[str | None] | None = None) -> np.ndarray:
        """Feature matrix as the classifier was trained on it."""
        parts = []
        if self.meta.features.embedding:
            parts.append(self.encoder.encode(list(prompts)))
        if self.meta.features.structural:
            parts.append(structural_features(prompts, roles))
        return np.hstack(parts).astype(np.float32)

    @property
    def known_tasks(self) -> list[str]:
        """Tasks the model learned success rates for (the training log's ``task`` values; empty when the log had
        none). Naming one of them when routing (``task=``) uses its rates instead of the task predicted from the
        prompt."""
        return self.classifier.task_groups

    def predict_proba_array(
        self,
        prompts: Sequence[str],
        roles: Sequence[str | None] | None = None,
        tasks: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """P(acceptable) per tier as an array ``[n, T]``. ``tasks``: each prompt's task when the caller knows it
        (None where not); see :attr:`known_tasks`."""
        return self.predict_proba_and_embedding(prompts, roles, tasks)[0]

    def predict_proba_and_embedding(
        self,
        prompts: Sequence[str],
        roles: Sequence[str | None] | None = None,
        tasks: Sequence[str | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`predict_proba_array` and the prompts' embeddings ``[n, dim]`` it was computed from (None when the
        model uses no embedding): callers that also need the vector (the gateway's semantic cache) get it without
        a second encoder call."""
        X = self.features(prompts, roles)
        proba = self.classifier.predict_proba(X, num_threads=self.num_threads, groups=tasks)
        return proba, (X[:, : self.encoder.dim] if self.meta.features.embedding else None)

    def fits_encoder_window(self, prompt: str) -> bool:
        """Whether the encoder sees ``prompt`` whole (its head+tail token window cuts longer prompts, so two long
        prompts that differ only in the middle embed alike)."""
        window = getattr(self.encoder, "window", None)
        return window is not None and window.fits(prompt)

    def predict_proba(
        self,
        prompts: Sequence[str],
        roles: Sequence[str | None] | None = None,
        tasks: Sequence[str | None] | None = None,
    ) -> pd.DataFrame:
        """P(acceptable) per tier: one row per prompt, one column per tier (cheapest first)."""
        return pd.DataFrame(self.predict_proba_array(prompts, roles, tasks), columns=self.tiers)

    def route(
        self,
        prompt: str,
        threshold: float | None = None,
        role: str | None = None,
        min_tier: str | None = None,
        max_tier: str | None = None,
        task: str | None = None,
        quality_target: float | None = None,
    ) -> Decision:
        """Recommend a tier for one prompt. See :func:`router.decision.decide` for the rule.

        ``task``: the prompt's task, named as in the training log's ``task`` column, when the caller knows it
        (a known task routes with its learned success rates; see :attr:`known_tasks`). ``quality_target``: instead
        of ``threshold``, the knob training chose for that share of the best tier's quality (:meth:`threshold_for`)."""
        return self.route_batch(
            [prompt], threshold=threshold, roles=[role], min_tier=min_tier, max_tier=max_tier, tasks=[task],
            quality_target=quality_target,
        )[0]

    def route_batch(
        self,
        prompts: Sequence[str],
        threshold: float | None = None,
        roles: Sequence[str | None] | None = None,
        min_tier: str | None = None,
        max_tier: str | None = None,
        tasks: Sequence[str | None] | None = None,
        quality_target: float | None = None,
    ) -> list[Decision]:
        """Vectorised :meth:`route`: one encoder and one classifier call for all prompts."""
        if isinstance(prompts, str):
            raise TypeError("route_batch takes a sequence of prompts; use route() for one prompt")
        threshold = self.knob(threshold, quality_target)
        roles = list(roles) if roles is not None else [None] * len(prompts)
        for r in roles:
            if r is not None and r not in ROLES:
                raise ValueError(f"unknown role {r!r}; roles are {', '.join(ROLES)}")
        if tasks is not None and len(tasks) != len(prompts):
            raise ValueError(f"tasks has {len(tasks)} entries for {len(prompts)} prompts")
        proba = self.predict_proba_array(prompts, roles, tasks)
        return [
            self.decide(p, threshold=threshold, role=r, min_tier=min_tier, max_tier=max_tier, prompt_chars=len(text))
            for p, r, text in zip(proba, roles, prompts, strict=True)
        ]

    def decide(
        self,
        proba: np.ndarray,
        *,
        threshold: float | None = None,
        role: str | None = None,
        min_tier: str | None = None,
        max_tier: str | None = None,
        prompt_chars: int | None = None,
    ) -> Decision:
        """Turn one row of probabilities into a :class:`Decision` (no model call).

        ``prompt_chars``: the routed text's length in characters; with the bundle's cost model the utility rule
        prices each tier for this prompt. Without it (or without a cost model) it uses the tiers' mean costs. With
        it the decision carries its expected USD (``estimated_cost_usd``, :func:`router.pricing.call_cost`).
        """
        thr = self.threshold if threshold is None else check_threshold(threshold)
        role = role or "single"
        cat = self.catalog
        floor, floor_reason = 0, Reason.PLANNER_FLOOR
        if role == "plan":
            floor = cat.plan_floor
        elif role == "verify":
            floor, floor_reason = cat.verify_floor, Reason.VERIFIER_FLOOR
        lo = cat.index(min_tier) if min_tier is not None else None
        hi = cat.index(max_tier) if max_tier is not None else None
        cm = self.cost_model if prompt_chars is not None else None
        choice = decide(
            proba, thr, floor=floor, floor_reason=floor_reason, min_tier=lo, max_tier=hi,
            rule=self.decision_rule, tier_costs=self.tier_costs,
            row_costs=None if cm is None or prompt_chars is None else cm.relative([prompt_chars])[0],
        )
        tier = cat.tiers[choice.tier]
        cost = None
        if prompt_chars is not None:
            cost = pricing.call_cost(
                cat.tiers, choice.tier, prompt_chars, chars_per_token=self.chars_per_token, cost_model=self.cost_model
            )
        return Decision(
            tier=tier.name,
            tier_index=choice.tier,
            model=tier.model,
            p_acceptable={t: round(float(p), 6) for t, p in zip(self.tiers, proba, strict=True)},
            threshold=thr,
            reason=choice.reason.value,
            escalation=[
                cat.tiers[i].name for i in escalation_path(choice.tier, len(cat.tiers), hi, probabilities=proba)
            ],
            role=role,
            estimated_cost_usd=cost,
        )

    def choose(
        self, proba: np.ndarray, threshold: float | None = None, prompts: Sequence[str] | None = None
    ) -> np.ndarray:
        """Vectorised tier indices for a probability matrix (role ``single``, no clamps); pass the ``prompts``
        so the utility rule prices each one (else the tiers' mean costs)."""
        return decide_batch(
            proba, self.threshold if threshold is None else check_threshold(threshold), rule=self.decision_rule,
            tier_costs=self.tier_costs, row_costs=None if prompts is None else self.row_costs(prompts),
        )


DOWNLOAD_PREFIX = "tierwise-model-"


def download_root(local: str | Path) -> Path:
    """The temp directory :func:`download_model` created for ``local`` (its outermost ``tierwise-model-*`` parent)."""
    p = Path(local)
    for parent in (p, *p.parents):
        if parent.name.startswith(DOWNLOAD_PREFIX):
            return parent
    raise ValueError(f"{local} is not inside a tierwise download directory")


def is_remote_uri(uri: str) -> bool:
    """A registry / run URI or any ``scheme://`` URI (never a local directory)."""
    return uri.startswith(("models:/", "runs:/")) or "://" in uri


def local_model_dir(uri: str) -> Path | None:
    """The existing local directory ``uri`` names, or None (a remote URI, or no such path)."""
    if is_remote_uri(uri):
        return None
    path = Path(uri).expanduser()
    return path if path.exists() else None


def parse_registry_uri(uri: str) -> tuple[str | None, str | None, str | None]:
    """``(name, version, alias)`` of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; Nones for other URIs."""
    if not uri.startswith("models:/"):
        return None, None, None
    body = uri[len("models:/") :]
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, None, alias
    if "/" in body:
        name, version = body.split("/", 1)
        return name, version, None
    return None, None, None


def alias_version(name: str, alias: str, *, tracking_uri: str | None = None) -> str:
    """The registry version ``models:/NAME@ALIAS`` points to now."""
    from mlflow import MlflowClient

    from router.settings import resolve_tracking_uri

    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    return str(client.get_model_version_by_alias(name, alias).version)


def download_model(uri: str, *, tracking_uri: str | None = None) -> tuple[Path, ModelRef]:
    """Download an MLflow model (registry or run URI) to a local temp dir; resolve name/version for aliases."""
    import mlflow

    from router.settings import resolve_tracking_uri

    turi = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(turi)
    name, version, alias = parse_registry_uri(uri)
    if name is not None and alias is not None:
        version = alias_version(name, alias, tracking_uri=turi)
    dst = Path(tempfile.mkdtemp(prefix=DOWNLOAD_PREFIX))
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=turi)
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)  # a failed download leaves nothing behind
        raise
    return Path(local), ModelRef(uri=uri, name=name, version=str(version) if version is not None else None)
