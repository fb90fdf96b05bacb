"""Nested out-of-fold fits through the real pipeline, for the leave-one-dataset-out study (``select_lodo.py``).

Research, not product: ``tierwise train`` scores its candidates from one blend fit (:mod:`training.selection`); this
module refits the whole pipeline once per fold, so any ``TrainConfig`` (encoders, layouts, shrinkage) can be compared
on the same prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class OutOfFold:
    """One candidate's out-of-fold probabilities on a log's non-test prompts, with what scoring them needs."""

    rows: np.ndarray
    """Index (into ``labelled.prompts``) of each scored prompt: complete non-test prompts, fold by fold."""
    fold: np.ndarray
    proba: np.ndarray
    score: np.ndarray
    cost: np.ndarray
    acceptable: np.ndarray
    row_costs: np.ndarray | None
    """The utility rule's per-prompt prices from each fold's own cost model (None: the tiers' mean costs)."""
    tier_costs: np.ndarray
    """Mean tier costs of the first fold's training prompts (used only without ``row_costs``)."""
    fold_gap_closed: list[float]
    """``training.pipeline.evaluate``'s gap closed on each fold (the figure cross-validation reports)."""
    seconds: float


def out_of_fold(prepared: Any, config: Any, fold: np.ndarray, *, progress: bool = False) -> OutOfFold:
    """Fit ``config`` (a :class:`training.pipeline.TrainConfig`, or a registered variant's name or
    :class:`training.variants.Variant`) once per fold of the non-test prompts through the real pipeline
    (``fit_router``) and return every prompt's probabilities from the fit that did not see it.

    ``fold``: an integer fold per row of ``prepared.labelled.prompts`` (-1 or any value for test rows: ignored).
    The log's own test split is never fitted on nor scored; each fold's fit keeps the log's calibration split.
    """
    import copy
    import time

    from training.evaluation import EvalSet, model_proba
    from training.pipeline import TrainConfig, evaluate
    from training.variants import Variant, fit_variant, get_variant

    variant = config if isinstance(config, Variant) else get_variant(config) if isinstance(config, str) else None
    if variant is None:
        variant = Variant("config", dict(config.model_dump()) if isinstance(config, TrainConfig) else dict(config))
    config = variant.train_config()

    lab = prepared.labelled
    split = lab.prompts["split"].to_numpy()
    fold = np.asarray(fold)
    if fold.shape != (len(lab),):
        raise ValueError(f"fold has shape {fold.shape}; expected one fold per prompt ({len(lab)})")
    usable = split != "test"
    if not np.issubdtype(fold.dtype, np.integer):
        raise ValueError(f"fold must hold an integer fold per prompt, got dtype {fold.dtype}")
    ks = np.unique(fold[usable])
    if ks.size < 2:
        raise ValueError(f"need at least two folds among the non-test prompts, got {ks.tolist()}")
    parts: dict[str, list[Any]] = {k: [] for k in ("rows", "fold", "proba", "rc", "gap")}
    tier_costs = None
    t0 = time.perf_counter()
    for k in ks:
        held = usable & (fold == k)
        fold_prep = copy.copy(prepared)
        fold_prep.labelled = copy.copy(lab)
        # the fold is this fit's test split; the log's own test rows are neither fitted nor scored
        fold_split = np.where(held, "test", np.where(usable, split, "excluded"))
        fold_prep.labelled.prompts = lab.prompts.assign(split=fold_split)
        fitted = fit_variant(fold_prep, variant, progress=progress)
        es = EvalSet.from_labelled(fold_prep.labelled, held, known_task=config.eval_known_task)
        te = held & lab.complete_rows
        router = fitted.as_router()
        proba = model_proba(router, es, features=fitted.features[te])
        report = evaluate(fold_prep, fitted, proba_test=proba)
        parts["rows"].append(np.flatnonzero(te))
        parts["fold"].append(np.full(int(te.sum()), k))
        parts["proba"].append(proba)
        parts["rc"].append(router.row_costs(es.prompts))
        parts["gap"].append(np.nan if report is None else float(report.metrics()["gap_closed"]))
        if tier_costs is None:
            tier_costs = np.asarray(fitted.tier_costs, dtype=float)
    rows = np.concatenate(parts["rows"])
    rc = None if any(r is None for r in parts["rc"]) else np.vstack(parts["rc"])
    return OutOfFold(
        rows=rows,
        fold=np.concatenate(parts["fold"]),
        proba=np.vstack(parts["proba"]),
        score=lab.score[rows],
        cost=lab.cost[rows],
        acceptable=lab.acceptable[rows] > 0.5,
        row_costs=rc,
        tier_costs=np.asarray(tier_costs, dtype=float),
        fold_gap_closed=list(parts["gap"]),
        seconds=time.perf_counter() - t0,
    )


def blend(probas: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of several candidates' probability matrices (a blend candidate)."""
    if not probas:
        raise ValueError("nothing to blend")
    arrs = [np.asarray(p, dtype=float) for p in probas]
    if len({a.shape for a in arrs}) != 1:
        raise ValueError(f"cannot blend probability matrices of shapes {[a.shape for a in arrs]}")
    return np.mean(arrs, axis=0)
