"""Choosing the default decision threshold on the calibration split (pure functions)."""

from __future__ import annotations

import numpy as np

from router.decision import decide_batch
from router.defaults import DECISION_RULE


def threshold_grid(proba: np.ndarray, max_points: int = 400) -> np.ndarray:
    """Candidate thresholds: 0, 1 and the quantiles of the predicted probabilities."""
    p = np.asarray(proba, float).ravel()
    p = p[~np.isnan(p)]
    qs = np.quantile(p, np.linspace(0, 1, max_points)) if p.size else np.array([])
    return np.unique(np.concatenate([[0.0, 1.0], np.clip(qs, 0, 1)]))


def utility_grid(max_points: int = 400) -> np.ndarray:
    """Candidate knobs for the utility rule: ``1 / (1 + lam)`` for geometric ``lam`` in [1e-4, 1e4], plus 0 and 1."""
    lams = np.geomspace(1e-4, 1e4, max_points)
    return np.unique(np.concatenate([[0.0, 1.0], 1.0 / (1.0 + lams)]))


def choose_threshold(
    proba: np.ndarray,
    score: np.ndarray,
    cost: np.ndarray,
    quality_target: float,
    *,
    rule: str = DECISION_RULE,
    tier_costs: np.ndarray | None = None,
    row_costs: np.ndarray | None = None,
    sample: str = "calibration",
) -> tuple[float, str]:
    """Cheapest knob value whose realised quality reaches ``quality_target`` x the best single tier's quality.

    Evaluated on rows where every tier was tried, with the decision rule the router uses (``rule``; the utility
    rule prices tiers with the per-prompt ``row_costs`` ``[n, T]`` when given, else the tiers' mean costs). If no
    value reaches the target, the one with the highest quality is returned and the note says so. ``sample`` names
    the rows in the note (e.g. ``"calibration"`` or ``"out-of-fold training"``).
    """
    rows = ~np.isnan(score).any(axis=1) & ~np.isnan(cost).any(axis=1)
    if rows.sum() < 10:
        return 0.5, f"only {int(rows.sum())} complete {sample} prompts: default threshold 0.5"
    p, s, c = proba[rows], score[rows], cost[rows]
    rc = None if row_costs is None else np.asarray(row_costs, dtype=float)[rows]
    best_single = float(np.max(s.mean(axis=0)))
    target = quality_target * best_single
    idx = np.arange(len(p))
    best: tuple[float, float, float] | None = None  # (cost, -quality, threshold)
    fallback: tuple[float, float, float] | None = None  # (-quality, cost, threshold)
    grid = utility_grid() if rule == "utility" else threshold_grid(p)
    for thr in grid:
        choice = decide_batch(p, float(thr), rule=rule, tier_costs=tier_costs, row_costs=rc)
        q, k = float(s[idx, choice].mean()), float(c[idx, choice].mean())
        if q >= target - 1e-12 and (best is None or (k, -q) < best[:2]):
            best = (k, -q, float(thr))
        if fallback is None or (-q, k) < fallback[:2]:
            fallback = (-q, k, float(thr))
    if best is not None:
        return best[2], (
            f"cheapest threshold reaching {quality_target:.0%} of the best single tier's quality "
            f"({target:.4f}) on {int(rows.sum())} {sample} prompts"
        )
    assert fallback is not None
    return fallback[2], (
        f"no threshold reached {quality_target:.0%} of the best single tier's quality on the {sample} prompts; "
        f"using the highest-quality threshold ({-fallback[0]:.4f})"
    )
