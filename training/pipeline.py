"""The offline pipeline: logs -> labels -> features -> classifier -> threshold -> evaluation -> MLflow registry.

The stages are separate functions so benchmarks and notebooks can run them without MLflow:

* :func:`prepare_data` reads and validates a log, prices every attempt and labels every prompt;
* :func:`fit_router` embeds, fits the per-tier classifier, calibrates it and picks the default threshold;
* :func:`evaluate` scores the router and its baselines on the held-out test split;
* :func:`train` runs all of them, logs everything to MLflow, registers the model and applies the promotion rule.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from router.bundle import BundleMeta, FeatureSpec, write_bundle
from router.catalog import Catalog
from router.classifier import GROUP_SHRINK, LINEAR_BAGS, LINEAR_LAYOUTS, CalibrationKind, Layout, TierClassifier
from router.cost_model import CostModel
from router.defaults import DECISION_RULE, DecisionRule, default_calibration
from router.encoders import Encoder, LayerChoice
from router.features import FEATURE_NAMES, structural_features
from router.numbers import Integer, Number
from router.pricing import DEFAULT_CHARS_PER_TOKEN
from training.evaluation import EvalSet
from training.labels import LabelledData, assign_splits, label_prompts
from training.operating_point import choose_threshold
from training.promotion import GateConfig, GateVerdict
from training.selection import LEVEL, N_BOOT, Selection

if TYPE_CHECKING:
    from router.core import Router

log = logging.getLogger("tierwise")


class TrainingDataError(ValueError):
    """The log and the catalog cannot produce a router (e.g. a tier never appears in the logs)."""


# Averaging several linear fits costs a fit each; it only paid on small logs, where one fit's result depends most on
# its seed (measured with benchmarks/cv_features.py; figures in docs/benchmarks.md).
SMALL_LOG_PROMPTS = 2000
SMALL_LOG_BAGS = 5

Candidate = Literal["linear", "per_tier", "blend"]
DEFAULT_CANDIDATES: tuple[Candidate, ...] = ("linear", "per_tier", "blend")
"""Per-log model selection's candidates (``layout="auto"``): the layouts whose out-of-fold probabilities one blend
fit yields (benchmarks/select_lodo.py measured these and the encoder variants; docs/selection.md)."""
SELECTION_FALLBACK: Candidate = "linear"
"""The candidate kept unless another one wins beyond noise: the best on every shared log, out of fold."""
MIN_SELECTION_PROMPTS = 100
"""Fewer complete out-of-fold prompts than this: no selection, the fallback (AIQ on fewer is mostly noise)."""
SELECTION_SAMPLE = 20_000
"""Per-log model selection on a large log scores the candidates on a seeded sample of this many fitted prompts
(``TrainConfig.selection_sample``); the chosen layout is then fitted on all of them. Every shared benchmark log has
fewer (the largest, MMLU, fits 9,815), so their selections are unchanged; on 100,000 prompts the blend fit behind
the selection would otherwise cost several minutes (docs/benchmarks.md, "Training at scale")."""
KNN_REFERENCE_PROMPTS = 20_000
"""The kNN baseline of the evaluation looks for neighbours among at most this many training prompts (a seeded
sample above it): its cost is test prompts x reference prompts. Only the baseline's figures change, never the
router's; every shared benchmark log has fewer training prompts."""


class TrainConfig(BaseModel):
    """Training options (all have production defaults; benchmarks use the same defaults on every dataset)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    encoder: str = Field("minilm-onnx-int8", description="Encoder name (see router.encoders.build_encoder).")
    encoder_max_tokens: Integer = Field(
        256, ge=8, description="Tokens the encoder sees per prompt (specials included)."
    )
    encoder_head_tokens: Integer = Field(32, ge=0, description="Tokens kept from the start of a long prompt.")
    encoder_layers: LayerChoice = Field(
        "last+middle",
        description="Hidden layers pooled into the prompt vector: 'last' (the classic sentence embedding) or "
        "'last+middle' (also the middle layer, from the same forward pass; router.encoders.resolve_layers).",
    )
    structural_features: bool = True
    layout: Layout | Literal["auto"] = Field(
        "auto",
        description="Classifier layout: auto (default: per-log model selection among `candidates`, see "
        "docs/selection.md), or pinned: linear, per_tier (LightGBM per tier), blend (the mean of both) or stacked.",
    )
    candidates: list[Candidate] = Field(
        default_factory=lambda: list(DEFAULT_CANDIDATES),
        min_length=1,
        description="layout auto: the layouts scored by their out-of-fold AIQ on the training prompts.",
    )
    selection_fallback: Candidate = Field(
        SELECTION_FALLBACK,
        description="layout auto: the layout kept unless another candidate beats it beyond noise (and when the log "
        f"has fewer than {MIN_SELECTION_PROMPTS} complete training prompts).",
    )
    selection_level: Number = Field(
        LEVEL,
        gt=0,
        le=0.5,
        description="layout auto: a candidate replaces the fallback only if this quantile of its paired bootstrap "
        "AIQ difference to the fallback is >= 0 (one-sided level).",
    )
    selection_boot: Integer = Field(N_BOOT, ge=1, le=10_000, description="layout auto: paired bootstrap resamples.")
    selection_sample: Integer = Field(
        SELECTION_SAMPLE,
        ge=MIN_SELECTION_PROMPTS,
        description="layout auto: on a log with more fitted (non-test) prompts than this, the candidates are scored "
        "out of fold on a seeded sample of this many of them; the chosen layout is then fitted on every one.",
    )
    group_shrink: Number = Field(
        GROUP_SHRINK,
        ge=0,
        le=1e6,
        description="linear and blend layouts: pseudo-observations pulling each task's success rate towards the "
        "tier's overall rate.",
    )
    task_groups: bool = Field(
        True, description="linear layout: learn the group prior from the log's task column when it has one."
    )
    linear_bags: Integer | None = Field(
        None,
        ge=1,
        description="linear layout: fits with consecutive seeds (out-of-fold partitions, k-means groups) whose "
        f"probabilities are averaged; 1 = a single fit. Unset: {SMALL_LOG_BAGS} below {SMALL_LOG_PROMPTS:,} "
        "fitted prompts, where one fit's results depend most on its seed, else 1.",
    )
    eval_known_task: bool = Field(
        True,
        description="Evaluation: the router is given each test prompt's logged task, as a caller that names its "
        "task (the service's metadata.task) gets; false: it predicts the task from the prompt, as for a caller that "
        "does not. Changes nothing when the log has no task column.",
    )
    decision_rule: DecisionRule = Field(
        DECISION_RULE, description="Decision rule stored in the bundle (router.decision): utility or threshold."
    )
    prompt_costs: bool = Field(
        True,
        description="Utility rule: price each prompt's tiers with a cost model fitted on the log (cost grows with "
        "prompt length; router.cost_model) instead of each tier's mean cost.",
    )
    oof_knob: bool = Field(
        True,
        description="Linear layout without calibration: fit on the train and calibration splits together and choose "
        "the knob on the classifier's out-of-fold probabilities (else: fit on train, knob on calibration).",
    )
    n_estimators: Integer = Field(300, ge=1)
    calibration: CalibrationKind | None = Field(
        None,
        description="Per-tier probability calibration on the calibration split: sigmoid (Platt), isotonic or none. "
        "Unset: none for the linear layout (its out-of-fold logistic stacker is calibrated already, and a second "
        "per-tier fit only added noise in cross-validation), sigmoid for the LightGBM layouts.",
    )
    lgbm_params: dict[str, Any] = Field(default_factory=dict)
    quality_target: Number = Field(0.95, gt=0, le=1.5, description="Share of the best single tier's quality.")
    test_fraction: Number = Field(0.2, ge=0, lt=1)
    calibration_fraction: Number = Field(0.2, gt=0, lt=1)
    seed: Integer = 0
    knn_k: Integer = Field(20, ge=1)

    @field_validator("lgbm_params")
    @classmethod
    def _finite_lgbm_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        for key, value in params.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"lgbm_params.{key} must be a finite number, got {value}")
        return params

    def resolved_linear_bags(self, n_prompts: int) -> int:
        """The number of linear fits averaged for a log with ``n_prompts`` fitted prompts (``linear_bags``)."""
        if self.linear_bags is not None:
            return self.linear_bags
        return SMALL_LOG_BAGS if n_prompts < SMALL_LOG_PROMPTS else LINEAR_BAGS

    @field_validator("candidates")
    @classmethod
    def _distinct_candidates(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError(f"candidates must be distinct, got {names}")
        return names

    @model_validator(mode="after")
    def _fallback_is_a_candidate(self) -> TrainConfig:
        if self.layout == "auto" and self.selection_fallback not in self.candidates:
            raise ValueError(
                f"selection_fallback {self.selection_fallback!r} must be one of the candidates {self.candidates}"
            )
        return self

    def resolved_calibration(self, layout: str | None = None) -> CalibrationKind:
        """The calibration actually used for ``layout`` (default: the configured one): ``calibration``, or the
        layout's default when unset (none for the linear and blend layouts, sigmoid for the LightGBM ones)."""
        if self.calibration is not None:
            return self.calibration
        return default_calibration(layout or self.layout)


@dataclass
class PreparedData:
    """A validated, priced and labelled log, with a split per prompt."""

    catalog: Catalog
    labelled: LabelledData
    warnings: list[str] = field(default_factory=list)
    cost_sources: dict[str, int] = field(default_factory=dict)
    chars_per_token: float = DEFAULT_CHARS_PER_TOKEN
    """The log's characters per input token (``CostEstimate.median_chars_per_token``); the bundle stores it so that
    the service and the reports estimate input tokens as training did."""


@dataclass
class FittedRouter:
    """The output of :func:`fit_router`, before it is written as a bundle."""

    catalog: Catalog
    config: TrainConfig
    encoder: Any
    classifier: TierClassifier
    threshold: float
    threshold_note: str
    features: np.ndarray
    """Feature matrix for every labelled prompt (rows aligned with ``labelled.prompts``)."""
    embeddings: np.ndarray
    decision_rule: str = DECISION_RULE
    tier_costs: list[float] | None = None
    """Mean cost per tier on the training prompts (the utility rule's prices)."""

    threshold_table: list[dict[str, float]] = field(default_factory=list)
    """Knob value per reachable quality target on the knob-picking rows (serves ``quality_target`` requests)."""

    cost_model: CostModel | None = None
    """Per-prompt expected cost per tier (utility rule with ``prompt_costs``); None: the tiers' mean costs."""

    fit_rows: np.ndarray | None = None
    """Rows (of ``labelled.prompts``) the classifier was fitted on; the kNN baseline uses the same ones."""

    selection: Selection | None = None
    """Per-log model selection's figures and choice (``layout="auto"``); ``config.layout`` is the chosen layout."""

    timings: dict[str, float] = field(default_factory=dict)
    """Wall seconds of :func:`fit_router`'s phases: ``embed`` (the vectors), ``features`` (the structural features),
    ``fit`` (everything after them: selection, the final fit and the knob) and ``select`` (part of ``fit``), plus
    ``embed_new_prompts`` (prompts the embedding cache did not hold). :func:`train` adds its own phases and logs them
    as ``time_<phase>_s`` metrics."""

    def decision_info(self) -> dict[str, Any]:
        """What the bundle stores so that serving applies the same rule (``BundleMeta.training``)."""
        return {
            "decision_rule": self.decision_rule,
            "tier_costs": self.tier_costs,
            "threshold_table": self.threshold_table,
            "cost_model": None if self.cost_model is None else self.cost_model.model_dump(mode="json"),
        }

    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec(embedding=True, structural=list(FEATURE_NAMES) if self.config.structural_features else [])

    def as_router(self) -> Router:
        """The in-memory :class:`router.core.Router` that the written bundle loads as (same encoder, classifier,
        rule, prices and knob), so training evaluates the router exactly as it is served and gated."""
        from router.core import ModelRef, Router

        return Router(bundle_meta(self, {}, {}), self.encoder, self.classifier, ref=ModelRef(uri="<training run>"))


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    run_id: str
    model_version: str | None
    registered_name: str | None
    metrics: dict[str, float]
    promoted: bool
    promotion_reason: str
    threshold: float
    tracking_uri: str
    warnings: list[str] = field(default_factory=list)
    gate: GateVerdict | None = None
    """What the promotion gate measured (comparison prompts, AIQ difference and its interval) and decided."""
    selection: Selection | None = None
    """Per-log model selection's candidates, figures and choice (``layout="auto"``)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Wall seconds per phase, as logged to the run (:func:`timing_metrics`)."""

    @property
    def model_uri(self) -> str:
        if self.registered_name and self.model_version:
            return f"models:/{self.registered_name}/{self.model_version}"
        return f"runs:/{self.run_id}/router"


# --------------------------------------------------------------------------------------------------------------
# Stage 1: data
# --------------------------------------------------------------------------------------------------------------
LogSource: TypeAlias = str | os.PathLike[str] | pd.DataFrame
"""One log: a file path or an in-memory DataFrame in the canonical long format."""


def _source_list(data: Any) -> list[Any]:
    """``data`` as a list of sources (a path, a DataFrame, or a list of them)."""
    items = [data] if isinstance(data, (str, os.PathLike, pd.DataFrame)) else list(data)
    if not items:
        raise TrainingDataError("no log given")
    return items


def catalog_sidecars(data: Any) -> list[Path]:
    """The sidecar catalogs (:func:`router.catalog.catalog_sidecar_path`) that exist beside the logs ``data``."""
    from router.catalog import catalog_sidecar_path

    paths = [catalog_sidecar_path(item) for item in _source_list(data) if not isinstance(item, pd.DataFrame)]
    return [path for path in paths if path.is_file()]


def resolve_catalog(catalog: Catalog | str | os.PathLike[str] | None, data: Any) -> tuple[Catalog, list[str]]:
    """The catalog to train with, and warnings.

    ``catalog`` when given (with a warning for each log whose sidecar catalog, the one it was routed with, has other
    tiers or models); else the sidecar catalog the logs carry (:func:`router.catalog.catalog_sidecar_path`, written
    by ``tierwise decisions export``; sidecars that disagree are an error); else ``models/catalog.yaml``.
    """
    sidecars = {path: Catalog.from_yaml(path) for path in catalog_sidecars(data)}
    if catalog is not None:
        cat = catalog if isinstance(catalog, Catalog) else Catalog.from_yaml(catalog)
        given = f"catalog {cat.name!r}" if isinstance(catalog, Catalog) else f"the catalog {catalog}"
        warnings = [
            f"{path}: the log beside it was routed with tiers {_tier_list(side)}, but training uses {given} with "
            f"tiers {_tier_list(cat)}"
            for path, side in sidecars.items()
            if [(t.name, t.model) for t in side.tiers] != [(t.name, t.model) for t in cat.tiers]
        ]
        return cat, warnings
    if not sidecars:
        return Catalog.from_yaml(None), []
    (first, cat), *rest = sidecars.items()
    differ = [path for path, other in rest if other.model_dump(exclude={"name"}) != cat.model_dump(exclude={"name"})]
    if differ:
        raise TrainingDataError(
            f"the logs carry different catalogs: {first} and {', '.join(map(str, differ))} differ (tiers, prices or "
            "acceptability); choose one with --catalog"
        )
    log.info("using the catalog saved beside the log: %s", first)
    return cat, []


def _tier_list(cat: Catalog) -> str:
    return ", ".join(f"{t.name}={t.model}" for t in cat.tiers)


def read_sources(data: Any, log_options: Any = None) -> tuple[pd.DataFrame, str, list[str]]:
    """Read and validate one log or several into one canonical long log: (attempts, name for messages, warnings).

    Each source is a file (read with :func:`training.readers.read_log`) or a DataFrame (validated with
    :func:`training.readers.validate_log`); the same ``log_options`` apply to every source. Several logs (a base log
    plus a ``tierwise decisions export``, whose ids are hashes of the text) are concatenated, and a prompt is
    identified by its **text** across logs: a text that an earlier log has is that log's prompt (its attempts are
    pooled, as repeated attempts are, and it lands in one split, so a prompt never trains in one log and tests in
    another) and takes that log's id. Within one log ids are kept as they are. An id that an earlier log uses for
    another text is renamed ``<id>@<k>`` (k = the log's position, from 1), with a warning. Explicit splits are kept;
    a prompt given different splits by two logs is an error naming both.
    """
    from training.readers import LogOptions, read_log, validate_log

    items = _source_list(data)
    opts = log_options or LogOptions()
    frames, names = [], []
    for k, item in enumerate(items, start=1):
        if isinstance(item, pd.DataFrame):
            name = "<DataFrame>" if len(items) == 1 else f"<DataFrame #{k}>"
            frames.append(validate_log(item, opts, name))
        else:
            name = str(item)
            frames.append(read_log(item, opts))
        names.append(name)
    if len(frames) == 1:
        return frames[0], names[0], []
    return _merge_sources(frames, names)


def _merge_sources(frames: list[pd.DataFrame], names: list[str]) -> tuple[pd.DataFrame, str, list[str]]:
    id_of_text: dict[str, str] = {}
    text_of_id: dict[str, str] = {}
    warnings: list[str] = []
    merged = 0
    out = []
    for k, (df, name) in enumerate(zip(frames, names, strict=True), start=1):
        mapping: dict[str, str] = {}
        renamed: list[str] = []
        first_id: dict[str, str] = {}  # texts new in this log (ids within one log are left as they are)
        pairs = df[["prompt_id", "prompt"]].drop_duplicates()
        merged += len({t for t in pairs["prompt"].tolist() if t in id_of_text})
        for pid, text in zip(pairs["prompt_id"].tolist(), pairs["prompt"].tolist(), strict=True):
            if text in id_of_text:  # an earlier log has this prompt
                mapping[pid] = id_of_text[text]
                continue
            new = pid
            while new in text_of_id:  # the id names another prompt in an earlier log
                new = f"{new}@{k}"
            if new != pid:
                renamed.append(f"{pid!r} -> {new!r}")
            text_of_id[new], mapping[pid] = text, new
            first_id.setdefault(text, new)
        id_of_text.update(first_id)
        if renamed:
            msg = (
                f"{name}: {len(renamed)} prompt_id(s) already name a different prompt in an earlier log and were "
                f"renamed ({', '.join(renamed[:5])}{', ...' if len(renamed) > 5 else ''}); prompts are matched "
                "across logs by their text"
            )
            log.warning(msg)
            warnings.append(msg)
        out.append(df.assign(prompt_id=df["prompt_id"].map(mapping).astype("str"), __source__=k - 1))
    attempts = pd.concat(out, ignore_index=True)
    if merged:
        log.info("%d prompt(s) appear in several logs (same text) and were merged", merged)
    if "split" in attempts.columns:
        given = attempts.dropna(subset=["split"]).drop_duplicates(["prompt_id", "split"])
        clash = given[given.duplicated("prompt_id", keep=False)]
        ids = clash["prompt_id"].unique()
        if len(ids):
            shown = []
            for pid in ids[:5]:
                rows = clash[clash["prompt_id"] == pid]
                pairs = zip(rows["__source__"], rows["split"], strict=True)
                where = ", ".join(f"{names[i]}: {split}" for i, split in pairs)
                shown.append(f"{pid!r} ({where})")
            raise TrainingDataError(
                f"{len(ids)} prompt(s) are in different splits in different logs: {'; '.join(shown)}"
                + (" ..." if len(ids) > 5 else "")
            )
    return attempts.drop(columns="__source__"), " + ".join(names), warnings


def prepare_data(
    data: LogSource | list[LogSource],
    catalog: Catalog | str | os.PathLike[str] | None = None,
    log_options: Any = None,
    *,
    config: TrainConfig | None = None,
) -> PreparedData:
    """Read, validate, price and label a log (or several: :func:`read_sources`). Raises a ``ValueError`` subclass
    naming the problem.

    Without ``catalog``, the catalog saved beside the log(s) is used, else ``models/catalog.yaml``
    (:func:`resolve_catalog`). Warns (``PreparedData.warnings``) when most prompts were observed on one tier only.
    """
    from training.costs import estimate_costs
    from training.labels import single_tier_warning

    config = config or TrainConfig()
    cat, warnings = resolve_catalog(catalog, data)
    for w in warnings:
        log.warning(w)
    attempts, source, read_warnings = read_sources(data, log_options)
    warnings += read_warnings

    logged = set(attempts["model"].astype(str).unique())
    unknown = sorted(logged - set(cat.models))
    if unknown:
        msg = f"{source}: ignoring {len(unknown)} model(s) not in the catalog: {', '.join(unknown)}"
        log.warning(msg)
        warnings.append(msg)
    absent = [f"{t.name} (model {t.model!r})" for t in cat.tiers if t.model not in logged]
    if absent:
        raise TrainingDataError(
            f"{source}: catalog tier(s) never appear in the log: {', '.join(absent)}. "
            f"Models in the log: {', '.join(sorted(logged)[:20])}"
        )
    attempts = attempts[attempts["model"].isin(cat.models)].reset_index(drop=True)

    est = estimate_costs(attempts, cat)
    for w in est.warnings:
        log.warning(w)
    warnings.extend(est.warnings)
    attempts["cost_usd"] = est.cost_usd.to_numpy()
    missing = attempts.loc[attempts["cost_usd"].isna(), "model"].unique().tolist()
    if missing:
        raise TrainingDataError(
            f"{source}: no cost for model(s) {', '.join(sorted(missing))}: the log has no cost_usd for them and the "
            f"catalog has no prices. Fill input_usd_per_1m / output_usd_per_1m for those tiers in the catalog."
        )

    labelled = label_prompts(attempts, cat)
    given = labelled.prompts["split"] if labelled.prompts["split"].notna().any() else None
    labelled.prompts["split"] = assign_splits(
        labelled.prompts.index,
        given,
        test_fraction=config.test_fraction,
        calibration_fraction=config.calibration_fraction,
        seed=config.seed,
    ).to_numpy()
    for note in labelled.notes:
        log.info(note)
    biased = single_tier_warning(labelled)
    if biased:
        log.warning(biased)
        warnings.append(biased)
    counts = labelled.prompts["split"].value_counts()
    for s in ("train", "calibration"):
        if counts.get(s, 0) < 10:
            raise TrainingDataError(f"{source}: only {counts.get(s, 0)} prompts in the {s} split; need at least 10")
    return PreparedData(cat, labelled, warnings, est.source.value_counts().to_dict(), est.median_chars_per_token())


# --------------------------------------------------------------------------------------------------------------
# Stage 2: fit
# --------------------------------------------------------------------------------------------------------------
def build_features(
    encoder: Any,
    prompts: list[str],
    roles: list[str | None],
    structural: bool,
    progress: bool = True,
    stats: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(features, embeddings) for a list of prompts, with embeddings served from the on-disk cache.

    ``stats``: filled with ``embed_new_prompts`` (prompts the cache did not hold, now embedded) and the wall
    seconds of ``embed`` (the vectors) and ``features`` (the structural features)."""
    from training.embedding_cache import EmbeddingCache

    start = time.perf_counter()
    cache = EmbeddingCache.default()
    emb = cache.embed(encoder, prompts, progress=progress)
    done = time.perf_counter()
    parts = [emb] + ([_structural_features(prompts, roles)] if structural else [])
    if stats is not None:
        stats.update(embed_new_prompts=float(cache.last_misses), embed=done - start)
        stats["features"] = time.perf_counter() - done
    return np.hstack(parts).astype(np.float32), emb


PARALLEL_FEATURES_PROMPTS = 20_000
"""From this many prompts on, :func:`build_features` computes the structural features (pure Python, about 0.2 ms a
prompt) in :data:`router.classifier.FIT_THREADS` processes; below, starting a process costs more than it saves."""


def _structural_features(prompts: list[str], roles: list[str | None]) -> np.ndarray:
    """:func:`router.features.structural_features`, split between processes on long lists (the same rows)."""
    from router.classifier import FIT_THREADS

    n = len(prompts)
    if n < PARALLEL_FEATURES_PROMPTS or FIT_THREADS < 2:
        return structural_features(prompts, roles)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    bounds = np.linspace(0, n, FIT_THREADS + 1).astype(int)
    context = multiprocessing.get_context("spawn")  # the training process has threads (onnxruntime): never fork
    with ProcessPoolExecutor(FIT_THREADS - 1, mp_context=context) as pool:
        spans = zip(bounds[1:-1], bounds[2:], strict=True)
        rest = [pool.submit(structural_features, prompts[a:b], roles[a:b]) for a, b in spans]
        first = structural_features(prompts[: bounds[1]], roles[: bounds[1]])
        return np.vstack([first, *(f.result() for f in rest)])


def encoder_for(config: TrainConfig | None = None) -> Encoder:
    """The encoder training embeds with: ``config``'s encoder, token window and layers (two threads: two
    single-threaded calls in parallel; same vectors). :func:`fit_router` and ``tierwise featurize`` build it here."""
    from router.encoders import build_encoder

    config = config or TrainConfig()
    return build_encoder(
        config.encoder,
        threads=2,
        max_tokens=config.encoder_max_tokens,
        head_tokens=config.encoder_head_tokens,
        layers=config.encoder_layers,
    )


def fit_router(
    prepared: PreparedData, config: TrainConfig | None = None, *, progress: bool = True, encoder: Any = None
) -> FittedRouter:
    """Embed every prompt, fit the classifier and the cost model, and choose the default knob.

    The LightGBM layouts (and the linear one with a calibration) fit on the train split, calibrate on the
    calibration split and choose the knob there. The default linear layout fits on train + calibration and chooses
    the knob on its out-of-fold probabilities. Test rows are never used.

    ``encoder``: an encoder object to embed with instead of building ``config.encoder`` (the research hook of
    :mod:`training.variants`; such a router is not saveable unless :func:`router.encoders.load_encoder` can
    rebuild the encoder from its spec).
    """
    config = config or TrainConfig()
    cfg = config  # narrowed for the closure below
    lab = prepared.labelled
    if encoder is None:
        encoder = encoder_for(config)
    p = lab.prompts
    roles = [None if pd.isna(r) else str(r) for r in p["role"]]
    timings: dict[str, float] = {}
    X, emb = build_features(
        encoder, p["prompt"].astype(str).tolist(), roles, config.structural_features, progress, stats=timings
    )
    start = time.perf_counter()

    split = p["split"].to_numpy()
    tr, ca = split == "train", split == "calibration"
    seen = tr | ca  # every non-test prompt: prices and the cost model come from all of them
    tier_costs = [float(v) for v in np.nan_to_num(np.nanmean(lab.cost[seen], axis=0), nan=0.0)]
    chars = p["prompt"].astype(str).str.len().to_numpy()
    cost_model = None
    if config.decision_rule == "utility" and config.prompt_costs:
        cost_model = CostModel.fit(chars[seen], lab.cost[seen])

    def prices(rows: np.ndarray) -> dict[str, Any]:
        rc = None if cost_model is None else cost_model.relative(chars[rows])
        return {"rule": cfg.decision_rule, "tier_costs": np.asarray(tier_costs), "row_costs": rc}

    selection = None
    if config.layout == "auto":
        config, clf, selection = _select_layout(prepared, config, X, emb.shape[1], prices)
        timings["select"] = time.perf_counter() - start
    else:
        clf = None
    # The linear and blend layouts without calibration learn from the calibration prompts too and pick the knob on
    # their own out-of-fold probabilities (each prompt's from models that never saw it); the others fit on train,
    # calibrate and pick the knob on the calibration split.
    oof_knob = _oof_knob(config)
    fit = (tr | ca) if oof_knob else tr
    if clf is None:
        clf = _fit_classifier(prepared, config, X, emb.shape[1], fit)
    if oof_knob:
        assert clf.oof_proba_ is not None
        knob_rows, proba_knob, sample = fit, clf.oof_proba_, "out-of-fold training"
    else:
        clf.calibrate(X[ca], lab.acceptable[ca])
        knob_rows, proba_knob, sample = ca, clf.predict_proba(X[ca]), "calibration"
    score, cost = lab.score[knob_rows], lab.cost[knob_rows]
    knob = {**prices(knob_rows), "sample": sample}
    threshold, note = choose_threshold(proba_knob, score, cost, config.quality_target, **knob)
    log.info("default threshold %.4f (%s rule): %s", threshold, config.decision_rule, note)
    table = threshold_table(proba_knob, score, cost, **knob)
    timings["fit"] = time.perf_counter() - start
    return FittedRouter(
        prepared.catalog, config, encoder, clf, threshold, note, X, emb, config.decision_rule, tier_costs,
        threshold_table=table, cost_model=cost_model, fit_rows=fit, selection=selection, timings=timings,
    )


def _oof_knob(config: TrainConfig) -> bool:
    return config.oof_knob and config.layout in LINEAR_LAYOUTS and config.resolved_calibration() == "none"


def _fit_classifier(
    prepared: PreparedData, config: TrainConfig, X: np.ndarray, n_embedding: int, fit: np.ndarray
) -> TierClassifier:
    """The classifier of a pinned layout (``config.layout``), fitted on the rows ``fit``."""
    lab, p = prepared.labelled, prepared.labelled.prompts
    clf = TierClassifier(
        len(prepared.catalog.tiers),
        layout=config.layout,  # type: ignore[arg-type]  # never "auto" here
        n_estimators=config.n_estimators,
        calibration=config.resolved_calibration(),
        params=config.lgbm_params,
        random_state=config.seed,
        n_embedding=n_embedding,
        n_bags=config.resolved_linear_bags(int(fit.sum())),
        group_shrink=config.group_shrink,
    )
    groups = None
    if config.layout in LINEAR_LAYOUTS and config.task_groups and p["task"].notna().any():
        groups = p["task"].to_numpy(dtype=object)[fit]
    log.info("fitting %s classifier on %d prompts (%d features)", config.layout, int(fit.sum()), X.shape[1])
    if config.layout in LINEAR_LAYOUTS:
        clf.fit(X[fit], lab.acceptable[fit], groups=groups)
    else:
        clf.fit(X[fit], lab.acceptable[fit])
    return clf


def _select_layout(
    prepared: PreparedData, config: TrainConfig, X: np.ndarray, n_embedding: int, prices: Any
) -> tuple[TrainConfig, TierClassifier | None, Selection]:
    """Per-log model selection (``layout="auto"``): one blend fit on the non-test prompts yields the out-of-fold
    probabilities of the linear layout, the per-tier LightGBM layout and their blend; each candidate's AIQ of its
    own decisions on the complete ones, with a paired bootstrap, picks the layout (:mod:`training.selection`).

    The candidates are always scored out of fold; the chosen layout is then fitted as if pinned (``oof_knob``,
    ``calibration``). Returns the config with the chosen layout, its classifier when the blend fit already is it
    (else None: fit it as a pinned layout), and the selection."""
    from training.selection import score_candidates, skipped

    lab = prepared.labelled
    split = lab.prompts["split"].to_numpy()
    seen = (split == "train") | (split == "calibration")
    rows = seen & lab.complete_rows
    fallback = config.selection_fallback
    candidates = list(config.candidates)
    if len(candidates) == 1 or int(rows.sum()) < MIN_SELECTION_PROMPTS:
        why = (
            "the only candidate"
            if len(candidates) == 1
            else f"only {int(rows.sum())} complete training prompts (selection needs {MIN_SELECTION_PROMPTS})"
        )
        chosen = candidates[0] if len(candidates) == 1 else fallback
        log.info("model selection: %s (%s)", chosen, why)
        record = skipped(chosen, fallback, why, int(rows.sum()), config.selection_level)
        return config.model_copy(update={"layout": chosen}), None, record
    blend_config = config.model_copy(update={"layout": "blend"})
    log.info("model selection among %s (fallback %s)", ", ".join(candidates), fallback)
    fitted = seen
    n_seen = int(seen.sum())
    if n_seen > config.selection_sample:  # a large log: score the candidates on a sample (SELECTION_SAMPLE)
        fitted = sample_rows(seen, config.selection_sample, config.seed)
        rows = fitted & lab.complete_rows
        log.info("model selection on a seeded sample of %d of the %d training prompts", config.selection_sample, n_seen)
    blended = _fit_classifier(prepared, blend_config, X, n_embedding, fitted)
    assert blended.oof_proba_ is not None
    oof = {"linear": blended.component_oof_["linear"], "per_tier": blended.component_oof_["per_tier"],
           "blend": blended.oof_proba_}
    sub = rows[fitted]  # complete rows among the fitted ones (the out-of-fold matrices' rows)
    scores = score_candidates(
        {c: oof[c][sub] for c in candidates}, lab.score[rows], lab.cost[rows], lab.acceptable[rows] > 0.5,
        n_boot=config.selection_boot, seed=config.seed, **prices(rows),
    )
    selection = scores.select(fallback, level=config.selection_level)
    if fitted is not seen:
        note = f" (scored on a seeded sample of {config.selection_sample:,} of the {n_seen:,} training prompts)"
        selection = dataclasses.replace(selection, reason=selection.reason + note)
    log.info("model selection: %s (%s)", selection.chosen, selection.reason)
    chosen_config = config.model_copy(update={"layout": selection.chosen})
    clf = None
    if fitted is seen and _oof_knob(chosen_config):  # fitted on the same rows as the blend: reuse its fit
        clf = {"blend": blended, "linear": blended.linear_part()}.get(selection.chosen)
    return chosen_config, clf, selection


def sample_rows(mask: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A boolean mask of ``size`` rows drawn (seeded, without replacement) from the true rows of ``mask``."""
    rows = np.flatnonzero(mask)
    out = np.zeros_like(mask, dtype=bool)
    out[np.random.default_rng([seed, size]).choice(rows, min(size, rows.size), replace=False)] = True
    return out


QUALITY_TARGETS = (0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 1.0)


def threshold_table(
    proba: np.ndarray,
    score: np.ndarray,
    cost: np.ndarray,
    *,
    rule: str,
    tier_costs: np.ndarray,
    row_costs: np.ndarray | None = None,
    sample: str = "calibration",
) -> list[dict[str, float]]:
    """Knob value for each quality target (share of the best single tier) that the knob-picking rows reach."""
    rows = []
    for target in QUALITY_TARGETS:
        thr, note = choose_threshold(
            proba, score, cost, target, rule=rule, tier_costs=tier_costs, row_costs=row_costs, sample=sample
        )
        if note.startswith("cheapest"):
            rows.append({"quality_target": target, "threshold": float(thr)})
    return rows


# --------------------------------------------------------------------------------------------------------------
# Stage 3: evaluate
# --------------------------------------------------------------------------------------------------------------
def evaluate(
    prepared: PreparedData,
    fitted: FittedRouter,
    proba_test: np.ndarray | None = None,
    *,
    eval_set: EvalSet | None = None,
) -> Any:
    """Evaluate the router, the kNN baseline, the zero router and the oracle on the complete test prompts, through
    :func:`training.evaluation.evaluate_model` (the function the promotion gate and the notebooks use).

    Returns a :class:`training.metrics.EvaluationReport`, or None when the test split has no complete prompts.
    ``proba_test``: probabilities to score instead of the router's own (research probes); ``eval_set``: the
    :func:`heldout_set` when the caller has built it already.
    """
    from training.evaluation import evaluate_model
    from training.metrics import threshold_curve, utility_curve

    lab = prepared.labelled
    es = heldout_set(prepared, fitted.config) if eval_set is None else eval_set
    if len(es) == 0:
        log.warning("no complete test prompts (every tier tried): skipping evaluation")
        return None
    te = es.rows
    router = fitted.as_router()
    tr = lab.prompts["split"].to_numpy() == "train" if fitted.fit_rows is None else fitted.fit_rows
    if int(tr.sum()) > KNN_REFERENCE_PROMPTS:
        tr = sample_rows(tr, KNN_REFERENCE_PROMPTS, fitted.config.seed)
    knn = _knn_baseline(fitted.embeddings[tr], lab.acceptable[tr], fitted.embeddings[te], fitted.config.knn_k)
    # the kNN baseline routes with the same decision rule (and prices) as the router
    if router.decision_rule == "utility":
        knn_curve = utility_curve(knn, es.score, es.cost, router.tier_costs, row_costs=router.row_costs(es.prompts))
    else:
        knn_curve = threshold_curve(knn, es.score, es.cost)
    return evaluate_model(
        router, es, features=fitted.features[te], proba=proba_test,
        extra_curves={"knn": (knn_curve["cost"].to_numpy(), knn_curve["quality"].to_numpy())},
    )


def _knn_baseline(train_emb: np.ndarray, outcome: np.ndarray, test_emb: np.ndarray, k: int) -> np.ndarray:
    """:func:`training.baselines.knn_proba`, the test prompts split between :data:`router.classifier.FIT_THREADS`
    threads (each row's neighbours do not depend on the other rows, so the result is the same)."""
    from functools import partial

    from router.classifier import FIT_THREADS, parallel_jobs
    from training.baselines import knn_proba

    parts = np.array_split(np.arange(test_emb.shape[0]), max(1, min(FIT_THREADS, test_emb.shape[0] // 2048)))
    jobs = [partial(knn_proba, train_emb, outcome, test_emb[rows], k=k) for rows in parts]
    return np.vstack(parallel_jobs(jobs))


# --------------------------------------------------------------------------------------------------------------
# Bundle
# --------------------------------------------------------------------------------------------------------------
def bundle_meta(fitted: FittedRouter, metrics: dict[str, float], training_info: dict[str, Any]) -> BundleMeta:
    """The bundle metadata of a fitted router (what :func:`save_bundle` writes and :meth:`FittedRouter.as_router`
    routes with)."""
    return BundleMeta(
        catalog=fitted.catalog,
        encoder=fitted.encoder.spec.model_dump(mode="json"),
        features=fitted.feature_spec(),
        threshold=fitted.threshold,
        quality_target=fitted.config.quality_target,
        threshold_note=fitted.threshold_note,
        metrics={k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)},
        training={**training_info, **fitted.decision_info()},
    )


def save_bundle(
    fitted: FittedRouter, directory: str | Path, metrics: dict[str, float], training_info: dict[str, Any]
) -> Path:
    """Write the fitted router as a bundle directory (atomically)."""
    meta = bundle_meta(fitted, metrics, training_info)
    return write_bundle(directory, meta, {"encoder": fitted.encoder.save, "classifier": fitted.classifier.save})


# --------------------------------------------------------------------------------------------------------------
# Stage 4: everything, with MLflow
# --------------------------------------------------------------------------------------------------------------
def train(
    data: LogSource | list[LogSource],
    *,
    catalog: Catalog | str | os.PathLike[str] | None = None,
    log_options: Any = None,
    config: TrainConfig | None = None,
    register: str | None = "tierwise",
    promote: bool = True,
    tracking_uri: str | None = None,
    experiment: str = "tierwise",
    progress: bool = True,
    gate: GateConfig | None = None,
) -> TrainResult:
    """Train a router on a log (or several: a base log and feedback exports, see :func:`prepare_data`), log it to
    MLflow, register it and apply the promotion gate.

    The new version gets the alias ``challenger``; ``champion`` moves to it only when ``promote`` is true and the
    gate (:mod:`training.promotion`, settings ``gate``) finds it at least as good as the current champion, both
    scored on the same held-out prompts, or when there is no champion and it beats the single tiers.
    Any failure leaves the registry's aliases as they were (the MLflow run is marked FAILED).
    """
    import mlflow

    from training import registry

    config = config or TrainConfig()
    gate = gate or GateConfig()
    started = time.perf_counter()
    turi = registry.configure(tracking_uri)
    prepared = prepare_data(data, catalog, log_options, config=config)
    timings = {"prepare": time.perf_counter() - started}
    fitted = fit_router(prepared, config, progress=progress)
    timings.update(fitted.timings)
    # the test prompts: the run's evaluation and the gate's comparison prompts (the challenger never fitted on them)
    start = time.perf_counter()
    comparison = heldout_set(prepared, config)
    report = evaluate(prepared, fitted, eval_set=comparison)
    timings["evaluate"] = time.perf_counter() - start
    start = time.perf_counter()
    metrics = report.metrics() if report is not None else {}
    metrics = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}
    metrics["default_threshold"] = fitted.threshold

    summary = prepared.labelled.summary()
    selection = fitted.selection
    if selection is not None:
        metrics.update(selection.metrics())
    training_info = {
        "data": ", ".join("<DataFrame>" if isinstance(d, pd.DataFrame) else str(d) for d in _source_list(data)),
        "config": config.model_dump(mode="json"),
        "layout": fitted.config.layout,
        "selection": None if selection is None else {"chosen": selection.chosen, "reason": selection.reason},
        "summary": summary,
        "cost_sources": {str(k): int(v) for k, v in prepared.cost_sources.items()},
        "chars_per_token": float(prepared.chars_per_token),
    }
    exp_id = registry.ensure_experiment(experiment, turi)
    workdir = Path(tempfile.mkdtemp(prefix="tierwise-train-"))
    try:
        bundle = save_bundle(fitted, workdir / "bundle", metrics, training_info)
        with mlflow.start_run(experiment_id=exp_id) as run:
            mlflow.log_params(_flat_params(config, prepared))
            mlflow.log_param("encoder_layers_used", ",".join(map(str, fitted.encoder.spec.layers)))
            mlflow.log_param("layout_used", fitted.config.layout)
            if fitted.config.layout in LINEAR_LAYOUTS:
                mlflow.log_param("linear_bags_used", fitted.classifier.n_bags)
            if selection is not None:
                mlflow.set_tag("tierwise.selection", selection.reason[:5000])
                mlflow.log_text(selection.to_markdown(), "selection.md")
            mlflow.log_metrics(metrics)
            mlflow.log_text(prepared.catalog.to_yaml(), "catalog.yaml")
            mlflow.log_text(json.dumps(summary, indent=1), "labelled_summary.json")
            mlflow.log_text(fitted.threshold_note, "threshold_note.txt")
            if prepared.warnings:
                mlflow.log_text("\n".join(prepared.warnings), "warnings.txt")
            if report is not None:
                _log_report(report, workdir / "plots", selection)
            # digests, not texts: a later run's gate reports how many of its prompts this run also held out
            mlflow.log_dict({"sha256": comparison.digests()}, registry.HELDOUT_ARTIFACT)
            version = registry.log_router_model(
                bundle, registered_name=register, encoder_kind=fitted.encoder.spec.kind
            )
            verdict = GateVerdict(False, "not registered", len(comparison))
            if register and version:
                verdict = _gate_verdict(register, promote, gate, fitted, comparison, report, turi)
                log.info("promotion: %s", verdict.describe())
                mlflow.set_tag("tierwise.promotion", verdict.reason[:5000])
                mlflow.log_metrics(verdict.metrics())
                mlflow.log_text(verdict.describe() + "\n", "promotion.md")
            mlflow.set_tag("tierwise.catalog", prepared.catalog.name)
            # the aliases move last, once everything else of the run is logged: a failure before leaves them as
            # they were
            if register and version:
                registry.set_alias(register, registry.CHALLENGER, version, turi)
                if verdict.promote:
                    registry.promote(register, version, turi)
            timings["log"] = time.perf_counter() - start
            timings["total"] = time.perf_counter() - started
            mlflow.log_metrics(timing_metrics(timings))
            log.info("timings: %s", describe_timings(timings))
            return TrainResult(
                run.info.run_id, version, register, metrics, verdict.promote, verdict.reason, fitted.threshold,
                turi, prepared.warnings, verdict, selection, timings,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def timing_metrics(timings: dict[str, float]) -> dict[str, float]:
    """MLflow metrics of a run's phase timings: ``time_<phase>_s`` (wall seconds: ``prepare`` reading, pricing and
    labelling the log; ``embed`` the vectors (from the cache or the encoder); ``features`` the structural features;
    ``fit``, of which ``select`` is per-log model selection; ``evaluate``; ``log`` writing the bundle, plots, the
    MLflow model, registration and the gate; ``total``), ``embed_new_prompts`` and ``embed_prompts_per_s`` (new
    prompts embedded per second, when any)."""
    out = {f"time_{k}_s": float(v) for k, v in timings.items() if k != "embed_new_prompts"}
    new = timings.get("embed_new_prompts")
    if new is not None:
        out["embed_new_prompts"] = float(new)
        if new > 0 and timings.get("embed", 0.0) > 0:
            out["embed_prompts_per_s"] = float(new) / timings["embed"]
    return out


def describe_timings(timings: dict[str, float]) -> str:
    """One line: each phase's wall seconds (and the embedding rate)."""
    rate = timing_metrics(timings).get("embed_prompts_per_s")
    parts = []
    for key in ("prepare", "embed", "features", "fit", "evaluate", "log", "total"):
        if key not in timings:
            continue
        text = f"{key} {timings[key]:.1f} s"
        if key == "embed" and rate is not None:
            text += f" ({int(timings['embed_new_prompts']):,} new prompts, {rate:.0f}/s)"
        if key == "fit" and "select" in timings:
            text += f" (model selection {timings['select']:.1f} s)"
        parts.append(text)
    return ", ".join(parts)


def heldout_set(prepared: PreparedData, config: TrainConfig) -> EvalSet:
    """The complete test prompts of a prepared log, with each one's task when ``config.eval_known_task``."""
    lab = prepared.labelled
    return EvalSet.from_labelled(lab, lab.prompts["split"].to_numpy() == "test", known_task=config.eval_known_task)


def _gate_verdict(
    name: str, promote: bool, gate: GateConfig, fitted: FittedRouter, comparison: EvalSet, report: Any, turi: str
) -> GateVerdict:
    """The promotion gate's verdict (:mod:`training.promotion`); moves no alias."""
    from router.core import Router
    from training import registry
    from training.promotion import compare, first_champion, refuse

    if not promote:
        return GateVerdict(False, "promotion disabled (--no-promote)", len(comparison))
    champ = registry.alias_version(name, registry.CHAMPION, turi)
    if champ is None:
        return first_champion(report, len(comparison), gate)
    try:
        champion = Router.load(f"models:/{name}/{champ}", tracking_uri=turi)
    except Exception as exc:  # noqa: BLE001 - a champion that cannot be loaded cannot be compared
        return refuse(f"the champion v{champ} could not be loaded ({type(exc).__name__}: {exc})", comparison, gate)
    return compare(
        fitted.as_router(), champion, comparison, gate, challenger_features=fitted.features[comparison.rows],
        champion_heldout=registry.heldout_digests(name, champ, turi),
    )


def _flat_params(config: TrainConfig, prepared: PreparedData) -> dict[str, Any]:
    params = {k: v for k, v in config.model_dump().items() if k != "lgbm_params"}
    params.update({f"lgbm.{k}": v for k, v in config.lgbm_params.items()})
    params["calibration"] = config.resolved_calibration()
    params["catalog"] = prepared.catalog.name
    params["tiers"] = ",".join(prepared.catalog.tier_names)[:500]
    params["n_prompts"] = len(prepared.labelled)
    return params


def _log_report(report: Any, plot_dir: Path, selection: Selection | None = None) -> None:
    import mlflow

    from training import plots

    plot_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "cost_quality.png": plots.plot_cost_quality(report),
        "reliability.png": plots.plot_reliability(report),
        "tier_mix.png": plots.plot_tier_mix(report),
        "confusion.png": plots.plot_confusion(report),
    }
    for name, fig in figures.items():
        plots.save_figure(fig, plot_dir / name)
    mlflow.log_artifacts(str(plot_dir), "plots")
    text = report.to_markdown() + ("" if selection is None else "\n" + selection.to_markdown())
    mlflow.log_text(text, "evaluation.md")
