"""The one way a router is scored on labelled prompts: by training, by the promotion gate and by the notebooks.

A :class:`EvalSet` holds the prompts and everything a model's decision depends on (texts, roles, the task a caller
would name, per-tier scores and costs). :func:`evaluate_model` scores any :class:`router.core.Router` on it:
features through the embedding cache, probabilities with the set's tasks, and the model's own decision rule,
prices and default knob. Two models scored on one ``EvalSet`` therefore see identical inputs, which is what makes
the champion / challenger comparison (:mod:`training.promotion`) fair.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from router.classifier import task_names
from router.features import structural_features
from router.service.decision_log import prompt_hash
from training.metrics import EvaluationReport, evaluate_router, sweep_choices

if TYPE_CHECKING:
    from router.core import Router
    from training.labels import LabelledData


@dataclass(frozen=True)
class EvalSet:
    """Complete labelled prompts (every tier observed) and the inputs a router's decision depends on."""

    prompts: list[str]
    roles: list[str | None]
    tasks: list[str | None] | None
    """The task each caller would name (the log's ``task`` column), or None: the model predicts it."""
    score: np.ndarray
    cost: np.ndarray
    acceptable: np.ndarray
    tier_names: list[str]
    rows: np.ndarray | None = None
    """Which rows of the labelled log these prompts are (a boolean mask), when built by :meth:`from_labelled`."""

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def from_labelled(cls, labelled: LabelledData, rows: np.ndarray, *, known_task: bool = True) -> EvalSet:
        """The complete prompts among ``rows`` (a boolean mask over ``labelled.prompts``). ``known_task``: pass the
        log's task column as the caller's task (``TrainConfig.eval_known_task``)."""
        mask = np.asarray(rows, dtype=bool) & labelled.complete_rows
        p = labelled.prompts.loc[mask]
        return cls(
            prompts=p["prompt"].astype(str).tolist(),
            roles=[None if pd.isna(r) else str(r) for r in p["role"]],
            tasks=tasks_for(p, known_task),
            score=labelled.score[mask],
            cost=labelled.cost[mask],
            acceptable=labelled.acceptable[mask] > 0.5,
            tier_names=list(labelled.tier_names),
            rows=mask,
        )

    def digests(self) -> list[str]:
        """SHA-256 of each prompt, as the decision log stores it (:func:`router.service.decision_log.prompt_hash`)."""
        return [prompt_hash(t) for t in self.prompts]


def model_features(model: Router, es: EvalSet, *, progress: bool = False) -> np.ndarray:
    """The model's feature matrix for the set, with embeddings from the on-disk cache (the vectors training used)."""
    from training.embedding_cache import EmbeddingCache

    parts = []
    if model.meta.features.embedding:
        parts.append(EmbeddingCache.default().embed(model.encoder, es.prompts, progress=progress))
    if model.meta.features.structural:
        parts.append(structural_features(es.prompts, es.roles))
    return np.hstack(parts).astype(np.float32)


def model_proba(model: Router, es: EvalSet, features: np.ndarray | None = None) -> np.ndarray:
    """P(acceptable) ``[n, T]`` of the model on the set, each prompt with the set's task."""
    X = model_features(model, es) if features is None else features
    return model.classifier.predict_proba(X, num_threads=model.num_threads, groups=es.tasks)


def two_tier_score(proba: np.ndarray, rule: str) -> np.ndarray:
    """Score ranking prompts for the strong (top) tier in the two-tier view, as the decision rule uses it.

    The utility rule sends a prompt to the top tier rather than tier 0 when ``P(top) - P(tier 0)`` exceeds the
    price, so that uplift is its score; the threshold rule escalates when ``P(tier 0)`` is low: ``1 - P(tier 0)``.
    """
    p = np.nan_to_num(np.asarray(proba, float), nan=0.0)
    return p[:, -1] - p[:, 0] if rule == "utility" else 1.0 - p[:, 0]


def evaluate_model(
    model: Router,
    es: EvalSet,
    *,
    features: np.ndarray | None = None,
    proba: np.ndarray | None = None,
    extra_curves: Mapping[str, tuple[Any, Any]] | None = None,
) -> EvaluationReport:
    """Score ``model`` on ``es`` with its own decision rule, prices and default knob.

    ``features``: the model's features for these prompts when the caller has them (else computed through the
    embedding cache); ``proba``: probabilities to score instead of the model's own (research probes);
    ``extra_curves``: baselines' (cost, quality) sweep points to report beside the router.
    """
    if len(es) == 0:
        raise ValueError("no complete prompts to evaluate (none was tried on every tier)")
    if list(model.tiers) != es.tier_names:
        raise ValueError(f"the model routes tiers {model.tiers}, the prompts are labelled for {es.tier_names}")
    X = model_features(model, es) if features is None and proba is None else features
    if proba is None:
        proba = model_proba(model, es, X)
    rule = model.decision_rule
    reference = None
    if X is not None:  # what the per-prompt model adds over the tiers' base rates and the task prior
        reference = model.classifier.reference_proba(X, groups=es.tasks)
    return evaluate_router(
        proba,
        es.score,
        es.cost,
        es.acceptable,
        None,  # label: metrics derive the cheapest acceptable tier and leave out prompts with none
        model.threshold,
        es.tier_names,
        extra_curves=extra_curves,
        rule=rule,
        tier_costs=model.tier_costs,
        row_costs=model.row_costs(es.prompts),
        two_tier_score=two_tier_score(proba, rule),
        reference_proba=reference,
    )


def knob_sweep(model: Router, es: EvalSet, proba: np.ndarray | None = None) -> np.ndarray:
    """The tier ``model`` picks for every prompt of ``es`` at every knob value of its sweep: ``[K, n]`` (the
    choices behind :func:`evaluate_model`'s router curve)."""
    p = model_proba(model, es) if proba is None else proba
    _, choices = sweep_choices(
        p, model.decision_rule, tier_costs=model.tier_costs, row_costs=model.row_costs(es.prompts)
    )
    return choices


def tasks_for(prompts: pd.DataFrame, known_task: bool) -> list[str | None] | None:
    """The task each prompt's caller would name: the ``task`` column, or None when absent or not ``known_task``."""
    if not known_task or "task" not in prompts or not prompts["task"].notna().any():
        return None
    return task_names(prompts["task"].tolist())


__all__ = [
    "EvalSet",
    "evaluate_model",
    "knob_sweep",
    "model_features",
    "model_proba",
    "tasks_for",
    "two_tier_score",
]
