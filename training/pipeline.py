"""The offline pipeline: logs -> labels -> features -> classifier -> threshold -> evaluation -> MLflow registry.

The stages are separate functions so benchmarks and notebooks can run them without MLflow:

* :func:`prepare_data` reads and validates a log, prices every attempt and labels every prompt;
* :func:`fit_router` embeds, fits the per-tier classifier, calibrates it and picks the default threshold;
* :func:`evaluate` scores the router and its baselines on the held-out test split;
* :func:`train` runs all of them, logs everything to MLflow, registers the model and applies the promotion rule.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from router.bundle import BundleMeta, FeatureSpec, write_bundle
from router.catalog import Catalog
from router.classifier import (
    LINEAR_BAGS,
    CalibrationKind,
    Layout,
    TierClassifier,
    task_names,
)
from router.cost_model import CostModel
from router.encoders import LayerChoice
from router.features import FEATURE_NAMES, structural_features
from training.labels import LabelledData, assign_splits, label_prompts
from training.operating_point import choose_threshold

log = logging.getLogger("tierwise")


class TrainingDataError(ValueError):
    """The log and the catalog cannot produce a router (e.g. a tier never appears in the logs)."""


# Averaging several linear fits costs a fit each; it only paid on small logs (benchmarks/cv_features.py: GSM8K's
# 590-prompt folds gained 2.3 points of gap closed, routerbench-3task's 1,470-prompt folds nothing).
SMALL_LOG_PROMPTS = 2000
SMALL_LOG_BAGS = 5


class TrainConfig(BaseModel):
    """Training options (all have production defaults; benchmarks use the same defaults on every dataset)."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = Field("minilm-onnx-int8", description="Encoder name (see router.encoders.build_encoder).")
    encoder_max_tokens: int = Field(256, ge=8, description="Tokens the encoder sees per prompt (specials included).")
    encoder_head_tokens: int = Field(32, ge=0, description="Tokens kept from the start of a long prompt.")
    encoder_layers: LayerChoice = Field(
        "last+middle",
        description="Hidden layers pooled into the prompt vector: 'last' (the classic sentence embedding) or "
        "'last+middle' (also the middle layer, from the same forward pass; router.encoders.resolve_layers).",
    )
    structural_features: bool = True
    layout: Layout = Field("linear", description="Classifier layout: linear (default), stacked or per_tier (LightGBM).")
    task_groups: bool = Field(
        True, description="linear layout: learn the group prior from the log's task column when it has one."
    )
    linear_bags: int | None = Field(
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
    decision_rule: Literal["threshold", "utility"] = Field(
        "utility", description="Decision rule stored in the bundle (router.decision): utility or threshold."
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
    n_estimators: int = Field(300, ge=1)
    calibration: CalibrationKind | None = Field(
        None,
        description="Per-tier probability calibration on the calibration split: sigmoid (Platt), isotonic or none. "
        "Unset: none for the linear layout (its out-of-fold logistic stacker is calibrated already, and a second "
        "per-tier fit only added noise in cross-validation), sigmoid for the LightGBM layouts.",
    )
    lgbm_params: dict[str, Any] = Field(default_factory=dict)
    quality_target: float = Field(0.95, gt=0, le=1.5, description="Share of the best single tier's quality.")
    test_fraction: float = Field(0.2, ge=0, lt=1)
    calibration_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    knn_k: int = Field(20, ge=1)

    def resolved_linear_bags(self, n_prompts: int) -> int:
        """The number of linear fits averaged for a log with ``n_prompts`` fitted prompts (``linear_bags``)."""
        if self.linear_bags is not None:
            return self.linear_bags
        return SMALL_LOG_BAGS if n_prompts < SMALL_LOG_PROMPTS else LINEAR_BAGS

    def resolved_calibration(self) -> CalibrationKind:
        """The calibration actually used: ``calibration``, or the layout's default when unset."""
        if self.calibration is not None:
            return self.calibration
        return "none" if self.layout == "linear" else "sigmoid"


@dataclass
class PreparedData:
    """A validated, priced and labelled log, with a split per prompt."""

    catalog: Catalog
    labelled: LabelledData
    warnings: list[str] = field(default_factory=list)
    cost_sources: dict[str, int] = field(default_factory=dict)


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
    decision_rule: str = "threshold"
    tier_costs: list[float] | None = None
    """Mean cost per tier on the training prompts (the utility rule's prices)."""

    threshold_table: list[dict[str, float]] = field(default_factory=list)
    """Knob value per reachable quality target on the knob-picking rows (serves ``quality_target`` requests)."""

    cost_model: CostModel | None = None
    """Per-prompt expected cost per tier (utility rule with ``prompt_costs``); None: the tiers' mean costs."""

    fit_rows: np.ndarray | None = None
    """Rows (of ``labelled.prompts``) the classifier was fitted on; the kNN baseline uses the same ones."""

    def decision_info(self) -> dict[str, Any]:
        """What the bundle stores so that serving applies the same rule (``BundleMeta.training``)."""
        return {
            "decision_rule": self.decision_rule,
            "tier_costs": self.tier_costs,
            "threshold_table": self.threshold_table,
            "cost_model": None if self.cost_model is None else self.cost_model.model_dump(mode="json"),
        }

    def row_costs(self, prompts: pd.DataFrame) -> np.ndarray | None:
        """Relative tier costs ``[n, T]`` of these labelled prompts from the cost model (None without one)."""
        if self.cost_model is None:
            return None
        return self.cost_model.relative_for(prompts["prompt"].astype(str).tolist())

    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec(embedding=True, structural=list(FEATURE_NAMES) if self.config.structural_features else [])


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

    @property
    def model_uri(self) -> str:
        if self.registered_name and self.model_version:
            return f"models:/{self.registered_name}/{self.model_version}"
        return f"runs:/{self.run_id}/router"


# --------------------------------------------------------------------------------------------------------------
# Stage 1: data
# --------------------------------------------------------------------------------------------------------------
def prepare_data(
    data: str | os.PathLike[str] | pd.DataFrame,
    catalog: Catalog | str | os.PathLike[str] | None = None,
    log_options: Any = None,
    *,
    config: TrainConfig | None = None,
) -> PreparedData:
    """Read, validate, price and label a log. Raises a ``ValueError`` subclass naming the problem."""
    from training.costs import estimate_costs
    from training.readers import LogOptions, read_log

    config = config or TrainConfig()
    cat = catalog if isinstance(catalog, Catalog) else Catalog.from_yaml(catalog)
    if isinstance(data, pd.DataFrame):
        attempts = data.copy()
        source = "<DataFrame>"
    else:
        attempts = read_log(data, log_options or LogOptions())
        source = str(data)
    warnings: list[str] = []

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
    counts = labelled.prompts["split"].value_counts()
    for s in ("train", "calibration"):
        if counts.get(s, 0) < 10:
            raise TrainingDataError(f"{source}: only {counts.get(s, 0)} prompts in the {s} split; need at least 10")
    return PreparedData(cat, labelled, warnings, est.source.value_counts().to_dict())


# --------------------------------------------------------------------------------------------------------------
# Stage 2: fit
# --------------------------------------------------------------------------------------------------------------
def build_features(
    encoder: Any, prompts: list[str], roles: list[str | None], structural: bool, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(features, embeddings) for a list of prompts, with embeddings served from the on-disk cache."""
    from training.embedding_cache import EmbeddingCache

    emb = EmbeddingCache.default().embed(encoder, prompts, progress=progress)
    parts = [emb] + ([structural_features(prompts, roles)] if structural else [])
    return np.hstack(parts).astype(np.float32), emb


def fit_router(prepared: PreparedData, config: TrainConfig | None = None, *, progress: bool = True) -> FittedRouter:
    """Embed every prompt, fit the classifier and the cost model, and choose the default knob.

    The LightGBM layouts (and the linear one with a calibration) fit on the train split, calibrate on the
    calibration split and choose the knob there. The default linear layout fits on train + calibration and chooses
    the knob on its out-of-fold probabilities. Test rows are never used.
    """
    from router.encoders import build_encoder

    config = config or TrainConfig()
    lab = prepared.labelled
    encoder = build_encoder(  # two single-threaded calls in parallel; same vectors
        config.encoder,
        threads=2,
        max_tokens=config.encoder_max_tokens,
        head_tokens=config.encoder_head_tokens,
        layers=config.encoder_layers,
    )
    p = lab.prompts
    roles = [None if pd.isna(r) else str(r) for r in p["role"]]
    X, emb = build_features(encoder, p["prompt"].astype(str).tolist(), roles, config.structural_features, progress)

    split = p["split"].to_numpy()
    tr, ca = split == "train", split == "calibration"
    # The linear layout without calibration learns from the calibration prompts too and picks its knob on its own
    # out-of-fold probabilities (each prompt's from models that never saw it); the others fit on train, calibrate
    # and pick the knob on the calibration split.
    oof_knob = config.oof_knob and config.layout == "linear" and config.resolved_calibration() == "none"
    fit = (tr | ca) if oof_knob else tr
    clf = TierClassifier(
        len(prepared.catalog.tiers),
        layout=config.layout,
        n_estimators=config.n_estimators,
        calibration=config.resolved_calibration(),
        params=config.lgbm_params,
        random_state=config.seed,
        n_embedding=emb.shape[1],
        n_bags=config.resolved_linear_bags(int(fit.sum())),
    )
    groups = None
    if config.layout == "linear" and config.task_groups and p["task"].notna().any():
        groups = p["task"].to_numpy(dtype=object)[fit]
    log.info("fitting %s classifier on %d prompts (%d features)", config.layout, int(fit.sum()), X.shape[1])
    if config.layout == "linear":
        clf.fit(X[fit], lab.acceptable[fit], groups=groups)
    else:
        clf.fit(X[fit], lab.acceptable[fit])
    if oof_knob:
        assert clf.oof_proba_ is not None
        knob_rows, proba_knob, sample = fit, clf.oof_proba_, "out-of-fold training"
    else:
        clf.calibrate(X[ca], lab.acceptable[ca])
        knob_rows, proba_knob, sample = ca, clf.predict_proba(X[ca]), "calibration"
    seen = tr | ca  # every non-test prompt: prices and the cost model come from all of them
    tier_costs = [float(v) for v in np.nan_to_num(np.nanmean(lab.cost[seen], axis=0), nan=0.0)]
    chars = p["prompt"].astype(str).str.len().to_numpy()
    cost_model = None
    if config.decision_rule == "utility" and config.prompt_costs:
        cost_model = CostModel.fit(chars[seen], lab.cost[seen])
    rc = None if cost_model is None else cost_model.relative(chars[knob_rows])
    score, cost = lab.score[knob_rows], lab.cost[knob_rows]
    knob = {"rule": config.decision_rule, "tier_costs": np.asarray(tier_costs), "row_costs": rc, "sample": sample}
    threshold, note = choose_threshold(proba_knob, score, cost, config.quality_target, **knob)
    log.info("default threshold %.4f (%s rule): %s", threshold, config.decision_rule, note)
    return FittedRouter(
        prepared.catalog, config, encoder, clf, threshold, note, X, emb, config.decision_rule, tier_costs,
        threshold_table=threshold_table(proba_knob, score, cost, **knob), cost_model=cost_model, fit_rows=fit,
    )


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
def evaluate(prepared: PreparedData, fitted: FittedRouter, proba_test: np.ndarray | None = None) -> Any:
    """Evaluate the router, the kNN baseline, the zero router and the oracle on the complete test prompts.

    Returns a :class:`training.metrics.EvaluationReport`, or None when the test split has no complete prompts.
    """
    from training.baselines import knn_proba
    from training.metrics import evaluate_router, threshold_curve, utility_curve

    lab = prepared.labelled
    split = lab.prompts["split"].to_numpy()
    te = (split == "test") & lab.complete_rows
    if te.sum() == 0:
        log.warning("no complete test prompts (every tier tried): skipping evaluation")
        return None
    tr = split == "train" if fitted.fit_rows is None else fitted.fit_rows
    tasks = test_tasks(lab.prompts.loc[te], fitted.config)
    if proba_test is None:
        proba_test = fitted.classifier.predict_proba(fitted.features[te], groups=tasks)
    knn = knn_proba(fitted.embeddings[tr], lab.acceptable[tr], fitted.embeddings[te], k=fitted.config.knn_k)
    rule, costs = fitted.decision_rule, fitted.tier_costs
    rc = fitted.row_costs(lab.prompts.loc[te])
    # the kNN baseline routes with the same decision rule (and prices) as the router
    if rule == "utility":
        knn_curve = utility_curve(knn, lab.score[te], lab.cost[te], costs, row_costs=rc)
    else:
        knn_curve = threshold_curve(knn, lab.score[te], lab.cost[te])
    return evaluate_router(
        proba_test,
        lab.score[te],
        lab.cost[te],
        lab.acceptable[te] > 0.5,
        None,  # label: metrics derive the cheapest acceptable tier and leave out prompts with none
        fitted.threshold,
        lab.tier_names,
        extra_curves={"knn": (knn_curve["cost"].to_numpy(), knn_curve["quality"].to_numpy())},
        rule=rule,
        tier_costs=costs,
        row_costs=rc,
        two_tier_score=two_tier_score(proba_test, rule),
        # what the per-prompt model adds
        reference_proba=fitted.classifier.reference_proba(fitted.features[te], groups=tasks),
    )


def test_tasks(prompts: pd.DataFrame, config: TrainConfig) -> list[str | None] | None:
    """The task each test prompt's caller would name (``eval_known_task``): the log's ``task`` column, or None
    when the log has none or the config evaluates without it."""
    if not config.eval_known_task or "task" not in prompts or not prompts["task"].notna().any():
        return None
    return task_names(prompts["task"].tolist())


def two_tier_score(proba: np.ndarray, rule: str) -> np.ndarray:
    """Score ranking prompts for the strong (top) tier in the two-tier view, as the decision rule uses it.

    The utility rule sends a prompt to the top tier rather than tier 0 when ``P(top) - P(tier 0)`` exceeds the
    price, so that uplift is its score; the threshold rule escalates when ``P(tier 0)`` is low: ``1 - P(tier 0)``.
    """
    p = np.nan_to_num(np.asarray(proba, float), nan=0.0)
    return p[:, -1] - p[:, 0] if rule == "utility" else 1.0 - p[:, 0]


# --------------------------------------------------------------------------------------------------------------
# Bundle
# --------------------------------------------------------------------------------------------------------------
def save_bundle(
    fitted: FittedRouter, directory: str | Path, metrics: dict[str, float], training_info: dict[str, Any]
) -> Path:
    """Write the fitted router as a bundle directory (atomically)."""
    meta = BundleMeta(
        catalog=fitted.catalog,
        encoder=fitted.encoder.spec.model_dump(mode="json"),
        features=fitted.feature_spec(),
        threshold=fitted.threshold,
        quality_target=fitted.config.quality_target,
        threshold_note=fitted.threshold_note,
        metrics={k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)},
        training={**training_info, **fitted.decision_info()},
    )
    return write_bundle(directory, meta, {"encoder": fitted.encoder.save, "classifier": fitted.classifier.save})


# --------------------------------------------------------------------------------------------------------------
# Stage 4: everything, with MLflow
# --------------------------------------------------------------------------------------------------------------
def train(
    data: str | os.PathLike[str] | pd.DataFrame,
    *,
    catalog: Catalog | str | os.PathLike[str] | None = None,
    log_options: Any = None,
    config: TrainConfig | None = None,
    register: str | None = "tierwise",
    promote: bool = True,
    tracking_uri: str | None = None,
    experiment: str = "tierwise",
    progress: bool = True,
) -> TrainResult:
    """Train a router on a log, log it to MLflow, register it and apply the promotion rule.

    The new version gets the alias ``challenger``; ``champion`` moves to it only when ``promote`` is true and it
    is at least as good (AIQ on this run's test split) as the current champion evaluated on the same prompts.
    Any failure leaves the registry's aliases as they were (the MLflow run is marked FAILED).
    """
    import mlflow

    from training import registry

    config = config or TrainConfig()
    turi = registry.configure(tracking_uri)
    prepared = prepare_data(data, catalog, log_options, config=config)
    fitted = fit_router(prepared, config, progress=progress)
    report = evaluate(prepared, fitted)
    metrics = report.metrics() if report is not None else {}
    metrics = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}
    metrics["default_threshold"] = fitted.threshold

    summary = prepared.labelled.summary()
    training_info = {
        "data": str(data) if not isinstance(data, pd.DataFrame) else "<DataFrame>",
        "config": config.model_dump(mode="json"),
        "summary": summary,
        "cost_sources": {str(k): int(v) for k, v in prepared.cost_sources.items()},
    }
    exp_id = registry.ensure_experiment(experiment, turi)
    workdir = Path(tempfile.mkdtemp(prefix="tierwise-train-"))
    try:
        bundle = save_bundle(fitted, workdir / "bundle", metrics, training_info)
        with mlflow.start_run(experiment_id=exp_id) as run:
            mlflow.log_params(_flat_params(config, prepared))
            mlflow.log_param("encoder_layers_used", ",".join(map(str, fitted.encoder.spec.layers)))
            if fitted.config.layout == "linear":
                mlflow.log_param("linear_bags_used", fitted.classifier.n_bags)
            mlflow.log_metrics(metrics)
            mlflow.log_text(prepared.catalog.to_yaml(), "catalog.yaml")
            mlflow.log_text(json.dumps(summary, indent=1), "labelled_summary.json")
            mlflow.log_text(fitted.threshold_note, "threshold_note.txt")
            if prepared.warnings:
                mlflow.log_text("\n".join(prepared.warnings), "warnings.txt")
            if report is not None:
                _log_report(report, workdir / "plots")
            version = registry.log_router_model(
                bundle, registered_name=register, encoder_kind=fitted.encoder.spec.kind
            )
            promoted, reason = False, "not registered"
            if register and version:
                registry.set_alias(register, registry.CHALLENGER, version, turi)
                promoted, reason = _maybe_promote(register, version, promote, prepared, report, turi)
                mlflow.set_tag("tierwise.promotion", reason)
            mlflow.set_tag("tierwise.catalog", prepared.catalog.name)
            return TrainResult(
                run.info.run_id, version, register, metrics, promoted, reason, fitted.threshold, turi,
                prepared.warnings,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _maybe_promote(
    name: str, version: str, promote: bool, prepared: PreparedData, report: Any, turi: str
) -> tuple[bool, str]:
    from training import registry

    if not promote:
        return False, "promotion disabled (--no-promote)"
    champ = registry.alias_version(name, registry.CHAMPION, turi)
    if champ is None:
        registry.promote(name, version, turi)
        return True, "no current champion"
    if report is None:
        return False, "no complete test prompts to compare with the champion; promote by hand if wanted"
    champ_score = champion_aiq(name, champ, prepared, turi)
    if champ_score is None:
        return False, f"champion v{champ} routes a different set of tiers; not comparable, promote by hand if wanted"
    ok, reason = registry.promotion_decision(report.metrics()["aiq"], champ_score)
    if ok:
        registry.promote(name, version, turi)
    log.info("promotion: %s", reason)
    return ok, reason


def champion_aiq(name: str, version: str, prepared: PreparedData, turi: str) -> float | None:
    """AIQ of a registered version on this run's test prompts, or None when its tiers differ."""
    from router.core import Router
    from training.metrics import evaluate_router

    champion = Router.load(f"models:/{name}/{version}", tracking_uri=turi)
    lab = prepared.labelled
    if champion.tiers != lab.tier_names:
        return None
    te = (lab.prompts["split"].to_numpy() == "test") & lab.complete_rows
    p = lab.prompts.loc[te]
    roles = [None if pd.isna(r) else str(r) for r in p["role"]]
    prompts = p["prompt"].astype(str).tolist()
    proba = champion.predict_proba_array(prompts, roles)
    rule = champion.meta.training.get("decision_rule", "threshold")
    rep = evaluate_router(
        proba, lab.score[te], lab.cost[te], lab.acceptable[te] > 0.5, None, champion.threshold, lab.tier_names,
        rule=rule, tier_costs=champion.meta.training.get("tier_costs"), row_costs=champion.row_costs(prompts),
        two_tier_score=two_tier_score(proba, rule),
    )
    return float(rep.metrics()["aiq"])


def _flat_params(config: TrainConfig, prepared: PreparedData) -> dict[str, Any]:
    params = {k: v for k, v in config.model_dump().items() if k != "lgbm_params"}
    params.update({f"lgbm.{k}": v for k, v in config.lgbm_params.items()})
    params["calibration"] = config.resolved_calibration()
    params["catalog"] = prepared.catalog.name
    params["tiers"] = ",".join(prepared.catalog.tier_names)[:500]
    params["n_prompts"] = len(prepared.labelled)
    return params


def _log_report(report: Any, plot_dir: Path) -> None:
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
    mlflow.log_text(report.to_markdown(), "evaluation.md")
