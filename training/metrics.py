"""Routing evaluation on a held-out test set: pure functions over numpy arrays.

Conventions (n prompts, T tiers, tiers ordered cheapest-first by the catalog):

* ``score[n, T]``  quality of tier t's answer on prompt i, in [0, 1]; NaN = not observed.
* ``cost[n, T]``   USD cost of tier t on prompt i (costs are per prompt, so the catalog order is only a prior).
* ``acceptable[n, T]`` bool, tier t's answer on prompt i is acceptable.
* ``proba[n, T]``  a router's P(tier t answers prompt i acceptably).
* ``label[n]``     the cheapest acceptable tier per prompt (by that prompt's costs, as ``training.labels`` and
  :func:`oracle_choice`); entries of prompts without an acceptable tier are ignored.

Two views are implemented:

* **N tiers, dollar cost (RouterBench).** Threshold sweeps give a cost-quality curve; curves are compared through
  their non-decreasing convex hull (:func:`ndch`) and the AIQ (:func:`aiq`) over the common cost range
  ``[cheapest single tier, most expensive single tier]`` (by mean cost on the test set), against the *zero router*
  (the NDCH of the single tiers) and the *oracle*.
* **Two tiers, share of strong calls (RouteLLM).** :func:`two_tier_curve`, :func:`apgr`, :func:`cpt`.

Evaluation needs complete test matrices: filter prompts with :func:`complete_rows` first.
Everything here is free of I/O; plots live in :mod:`training.plots`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from router.decision import decide_batch
from router.defaults import DECISION_RULE

ArrayLike = Any  # anything np.asarray accepts

__all__ = [
    "CalibrationScore",
    "EvaluationReport",
    "aiq",
    "apgr",
    "bootstrap_aiq",
    "brier",
    "cheapest_acceptable",
    "complete_rows",
    "cost_at_quality",
    "cost_weighted_confusion",
    "cpt",
    "ece",
    "evaluate_router",
    "gap_closed",
    "knob_grid",
    "ndch",
    "operating_point",
    "oracle_choice",
    "oracle_curve",
    "oracle_point",
    "quality_at_cost",
    "random_router_curve",
    "realised",
    "reliability_table",
    "single_tier_points",
    "sweep_choices",
    "threshold_curve",
    "two_tier_curve",
    "utility_curve",
    "zero_router",
]

_QUALITY_TOL = 1e-9  # absolute slack when comparing mean qualities computed in different summation orders


# --------------------------------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------------------------------


def _matrix(x: ArrayLike, name: str, dtype: type = float) -> np.ndarray:
    """``x`` as a 2-D array of ``dtype`` (raises ValueError otherwise)."""
    arr: np.ndarray = np.asarray(x, dtype=dtype)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n_prompts, n_tiers], got shape {arr.shape}")
    return arr


def _same_shape(**arrays: np.ndarray) -> None:
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shape mismatch: {shapes}")


def _require_complete(score: np.ndarray, cost: np.ndarray) -> None:
    """Raise ValueError when a score or cost cell is not finite."""
    bad = ~complete_rows(score, cost)
    if bad.any():
        raise ValueError(
            f"evaluation needs complete test matrices: {int(bad.sum())} of {bad.size} prompts have a missing "
            "(NaN) score or cost; filter them with training.metrics.complete_rows(score, cost)"
        )


def complete_rows(score: ArrayLike, cost: ArrayLike) -> np.ndarray:
    """Boolean mask ``[n]`` of prompts whose score and cost are finite for every tier."""
    s = _matrix(score, "score")
    c = _matrix(cost, "cost")
    _same_shape(score=s, cost=c)
    return np.isfinite(s).all(axis=1) & np.isfinite(c).all(axis=1)


def cheapest_acceptable(acceptable: ArrayLike) -> np.ndarray:
    """Lowest tier index whose answer is acceptable, ``-1`` when none is (catalog order; compare
    :func:`oracle_choice`, which uses each prompt's own costs like ``training.labels``)."""
    acc = _matrix(acceptable, "acceptable", dtype=bool)
    return np.where(acc.any(axis=1), acc.argmax(axis=1), -1).astype(np.int64)


# --------------------------------------------------------------------------------------------------------------------
# decision rule and single points
# --------------------------------------------------------------------------------------------------------------------


def realised(choice: ArrayLike, score: ArrayLike, cost: ArrayLike) -> tuple[float, float]:
    """Mean quality and mean cost (USD per prompt) of the chosen tier per prompt.

    Raises ValueError when a chosen cell is NaN (evaluation needs complete test matrices, see
    :func:`complete_rows`).
    """
    s = _matrix(score, "score")
    c = _matrix(cost, "cost")
    _same_shape(score=s, cost=c)
    ch = np.asarray(choice, dtype=np.int64)
    if ch.shape != (s.shape[0],):
        raise ValueError(f"choice must have shape ({s.shape[0]},), got {ch.shape}")
    if ch.size == 0:
        raise ValueError("no prompts to evaluate")
    rows = np.arange(s.shape[0])
    sq, sc = s[rows, ch], c[rows, ch]
    if not (np.isfinite(sq).all() and np.isfinite(sc).all()):
        raise ValueError(
            "a chosen (prompt, tier) cell has no observed score or cost: evaluation needs complete test "
            "matrices; filter prompts with training.metrics.complete_rows(score, cost)"
        )
    return float(sq.mean()), float(sc.mean())


def single_tier_points(score: ArrayLike, cost: ArrayLike) -> pd.DataFrame:
    """Mean quality and mean cost of always using each tier: DataFrame[tier, quality, cost]."""
    s = _matrix(score, "score")
    c = _matrix(cost, "cost")
    _same_shape(score=s, cost=c)
    _require_complete(s, c)
    return pd.DataFrame({"tier": np.arange(s.shape[1]), "quality": s.mean(axis=0), "cost": c.mean(axis=0)})


def oracle_choice(score: ArrayLike, cost: ArrayLike, acceptable: ArrayLike) -> np.ndarray:
    """RouterBench oracle: per prompt the cheapest acceptable tier (by that prompt's cost, ties -> lowest index).

    When no tier is acceptable: the cheapest tier among those with the highest score. NaN scores/costs never win.
    """
    s = _matrix(score, "score")
    c = _matrix(cost, "cost")
    acc = _matrix(acceptable, "acceptable", dtype=bool)
    _same_shape(score=s, cost=c, acceptable=acc)
    c_ok = np.where(np.isfinite(c), c, np.inf)
    s_ok = np.where(np.isfinite(s), s, -np.inf)
    cheapest_ok = np.where(acc, c_ok, np.inf).argmin(axis=1)
    best = s_ok.max(axis=1, keepdims=True)
    cheapest_best = np.where(s_ok == best, c_ok, np.inf).argmin(axis=1)
    return np.where(acc.any(axis=1), cheapest_ok, cheapest_best).astype(np.int64)


def oracle_point(score: ArrayLike, cost: ArrayLike, acceptable: ArrayLike) -> tuple[float, float]:
    """(mean quality, mean cost) of :func:`oracle_choice`."""
    return realised(oracle_choice(score, cost, acceptable), score, cost)


def oracle_curve(score: ArrayLike, cost: ArrayLike, n_lambdas: int = 400, max_rows: int = 20000) -> pd.DataFrame:
    """Cost-quality frontier of an oracle that knows every score: per prompt ``argmax(score - lam * cost)``.

    Sweeping the price of a dollar ``lam`` traces the best achievable (cost, quality) trade-off of any per-prompt
    router; its convex hull dominates the zero router and the RouterBench oracle point, and it starts at the
    per-prompt cheapest tier (cost <= cheapest single tier). ``lam`` runs over quantiles of the per-prompt
    breakpoints (estimated on at most ``max_rows`` prompts), evaluated between breakpoints so that ties resolve
    to the cheaper tier. Returns DataFrame[lam, quality, cost] sorted by cost.
    """
    s = _matrix(score, "score")
    c = _matrix(cost, "cost")
    _same_shape(score=s, cost=c)
    _require_complete(s, c)
    sub_s, sub_c = s, c
    if s.shape[0] > max_rows:
        idx = np.random.default_rng(0).choice(s.shape[0], size=max_rows, replace=False)
        sub_s, sub_c = s[idx], c[idx]
    ds = sub_s[:, None, :] - sub_s[:, :, None]  # [i, j, k] = s_k - s_j
    dc = sub_c[:, None, :] - sub_c[:, :, None]
    mask = (ds > 0) & (dc > 0)
    breaks = ds[mask] / dc[mask]
    if breaks.size == 0:
        lams = np.array([1.0])
    else:
        qs = np.unique(np.quantile(breaks, np.linspace(0.0, 1.0, max(n_lambdas, 2))))
        mids = np.sqrt(qs[:-1] * qs[1:]) if qs.size > 1 else np.empty(0)
        lams = np.concatenate([[qs[0] / 2.0], mids, [qs[-1] * 2.0]])
    rows = np.arange(s.shape[0])
    out = np.empty((lams.size, 3))
    for k, lam in enumerate(lams):
        ch = (s - lam * c).argmax(axis=1)
        out[k] = (lam, s[rows, ch].mean(), c[rows, ch].mean())
    df = pd.DataFrame(out, columns=["lam", "quality", "cost"])
    return df.sort_values(["cost", "quality"], kind="stable").reset_index(drop=True)


def random_router_curve(
    score: ArrayLike, cost: ArrayLike, rng: np.random.Generator | None = None, n_points: int = 21
) -> pd.DataFrame:
    """Random-router baselines: DataFrame[kind, p_top, quality, cost].

    * ``kind == "uniform"``: a uniformly random tier per prompt (one row, ``p_top = 1/T``).
    * ``kind == "two_tier"``: tier 0 or the top tier (last index), the top one with probability ``p_top`` for
      ``n_points`` values of ``p_top`` in [0, 1] (this line lies on or under the zero router's hull).

    Without ``rng`` the exact expectations are returned; with ``rng`` one sampled realisation per row.
    """
    s = _matrix(score, "score")
    c = _matrix(cost, "cost")
    _same_shape(score=s, cost=c)
    _require_complete(s, c)
    n, n_tiers = s.shape
    rows = np.arange(n)
    records: list[tuple[str, float, float, float]] = []
    if rng is None:
        records.append(("uniform", 1.0 / n_tiers, float(s.mean()), float(c.mean())))
    else:
        first = rng.integers(0, n_tiers, size=n)
        records.append(("uniform", 1.0 / n_tiers, float(s[rows, first].mean()), float(c[rows, first].mean())))
    top = n_tiers - 1
    for p in np.linspace(0.0, 1.0, n_points):
        if rng is None:
            q = (1 - p) * s[:, 0].mean() + p * s[:, top].mean()
            k = (1 - p) * c[:, 0].mean() + p * c[:, top].mean()
        else:
            ch = np.where(rng.random(n) < p, top, 0)
            q, k = s[rows, ch].mean(), c[rows, ch].mean()
        records.append(("two_tier", float(p), float(q), float(k)))
    return pd.DataFrame(records, columns=["kind", "p_top", "quality", "cost"])


# --------------------------------------------------------------------------------------------------------------------
# threshold sweep
# --------------------------------------------------------------------------------------------------------------------


def _sweep_events(
    proba: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where each prompt's choice changes as the threshold rises.

    With prefix maxima ``M_j = max(p_0..p_j)``, the rule picks tier j for thresholds in ``(M_{j-1}, M_j]`` at the
    indices j where ``M`` increases ("records"), and the last record (the argmax) above ``max(p)``. So the choice
    starts at tier 0 and moves from the previous record to record j once ``threshold > M_{j-1}``.
    Returns (value, prompt, from_col, to_col) per event, with tiers already mapped through the clamp ``cols``.
    """
    n, n_tiers = proba.shape
    p = np.where(np.isnan(proba), -np.inf, proba)
    prefix_max = np.maximum.accumulate(p, axis=1)
    is_record = np.zeros((n, n_tiers), dtype=bool)
    is_record[:, 0] = True
    is_record[:, 1:] = prefix_max[:, 1:] > prefix_max[:, :-1]
    last_record = np.maximum.accumulate(np.where(is_record, np.arange(n_tiers), 0), axis=1)
    ii, jj = np.nonzero(is_record[:, 1:])
    jj = jj + 1
    values = prefix_max[ii, jj - 1]
    prev = last_record[ii, jj - 1]
    return values, ii, cols[prev], cols[jj]


def _default_thresholds(values: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Dense threshold grid: 201 uniform points on [0, 1], 201 quantiles of the change points, and max(p) + eps."""
    finite = values[np.isfinite(values)]
    grid: list[Any] = [np.linspace(0.0, 1.0, 201)]
    if finite.size:
        grid.append(np.quantile(finite, np.linspace(0.0, 1.0, 201)))
    pmax = np.nanmax(proba) if np.isfinite(proba).any() else 1.0
    grid.append([max(1.0, float(pmax)) + 1e-9])
    return np.unique(np.concatenate(grid))


def _curve_inputs(proba: np.ndarray, score: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated float matrices for a curve sweep: same shapes, complete score/cost, at least one prompt."""
    p = _matrix(proba, "proba")
    s = _matrix(score, "score")
    c = _matrix(cost, "cost")
    _same_shape(proba=p, score=s, cost=c)
    _require_complete(s, c)
    if s.shape[0] == 0:
        raise ValueError("no prompts to evaluate")
    return p, s, c


def threshold_curve(
    proba: ArrayLike,
    score: ArrayLike,
    cost: ArrayLike,
    thresholds: ArrayLike | None = None,
    min_tier: int = 0,
    max_tier: int | None = None,
) -> pd.DataFrame:
    """Sweep the knob of the threshold rule (:func:`router.decision.decide_batch`, ``rule="threshold"``):
    DataFrame[threshold, quality, cost, share_t0 .. share_t{T-1}].

    Exact for every threshold (event sweep, O(nT log nT), no per-threshold pass over the data). Default
    thresholds: 201 uniform points on [0, 1] plus 201 quantiles of the points where some prompt's choice changes,
    plus one threshold above every probability (the argmax end of the curve).
    """
    p, s, c = _curve_inputs(proba, score, cost)
    n, n_tiers = s.shape
    hi = n_tiers - 1 if max_tier is None else max_tier
    if not 0 <= min_tier <= hi <= n_tiers - 1:
        raise ValueError(f"need 0 <= min_tier <= max_tier <= {n_tiers - 1}, got {min_tier}, {max_tier}")
    cols = np.clip(np.arange(n_tiers), min_tier, hi)

    values, prompt, src, dst = _sweep_events(p, cols)
    order = np.argsort(values, kind="stable")
    values, prompt, src, dst = values[order], prompt[order], src[order], dst[order]
    d_quality = np.concatenate([[0.0], np.cumsum(s[prompt, dst] - s[prompt, src])])
    d_cost = np.concatenate([[0.0], np.cumsum(c[prompt, dst] - c[prompt, src])])
    d_share = np.zeros((values.size + 1, n_tiers))
    ev = np.arange(1, values.size + 1)
    np.add.at(d_share, (ev, dst), 1.0)
    np.add.at(d_share, (ev, src), -1.0)
    d_share = np.cumsum(d_share, axis=0)

    thr = _default_thresholds(values, p) if thresholds is None else np.unique(np.asarray(thresholds, dtype=float))
    k = np.searchsorted(values, thr, side="left")  # number of events with value < threshold
    base = cols[0]
    share = d_share[k] / n
    share[:, base] += 1.0
    out = pd.DataFrame(
        {
            "threshold": thr,
            "quality": (s[:, base].sum() + d_quality[k]) / n,
            "cost": (c[:, base].sum() + d_cost[k]) / n,
        }
    )
    for t in range(n_tiers):
        out[f"share_t{t}"] = share[:, t]
    return out


def utility_curve(
    proba: ArrayLike,
    score: ArrayLike,
    cost: ArrayLike,
    tier_costs: ArrayLike | None,
    thresholds: ArrayLike | None = None,
    min_tier: int = 0,
    max_tier: int | None = None,
    row_costs: ArrayLike | None = None,
) -> pd.DataFrame:
    """Sweep the knob of the expected-utility rule (``router.decision``, ``rule="utility"``): same columns as
    :func:`threshold_curve`. Default knobs: :func:`knob_grid`. ``row_costs`` ``[n, T]``: per-prompt relative tier
    costs (a cost model's prices); else ``tier_costs``."""
    p, s, c = _curve_inputs(proba, score, cost)
    n, n_tiers = s.shape
    thr, choices = sweep_choices(
        p, "utility", tier_costs=tier_costs, row_costs=row_costs, thresholds=thresholds, min_tier=min_tier,
        max_tier=max_tier,
    )
    rows = np.arange(n)
    records = [
        [float(t), float(s[rows, ch].mean()), float(c[rows, ch].mean()), *(np.bincount(ch, minlength=n_tiers) / n)]
        for t, ch in zip(thr, choices, strict=True)
    ]
    cols = ["threshold", "quality", "cost", *(f"share_t{k}" for k in range(n_tiers))]
    return pd.DataFrame(records, columns=cols)


def knob_grid(proba: ArrayLike, rule: str) -> np.ndarray:
    """The knob values a sweep of ``rule`` visits by default.

    ``utility``: 201 uniform points on [0, 1] plus ``1 / (1 + lam)`` for 401 geometrically spaced ``lam`` in
    [1e-4, 1e4] (the utility rule's price of the top tier's cost). ``threshold``: :func:`threshold_curve`'s grid
    (uniform points, quantiles of the points where a choice changes, and one knob above every probability).
    """
    if rule == "utility":
        lams = np.geomspace(1e-4, 1e4, 401)
        return np.unique(np.concatenate([np.linspace(0.0, 1.0, 201), 1.0 / (1.0 + lams)]))
    if rule == "threshold":
        p = _matrix(proba, "proba")
        values, *_ = _sweep_events(p, np.arange(p.shape[1]))
        return _default_thresholds(values, p)
    raise ValueError(f"unknown decision rule {rule!r}")


def sweep_choices(
    proba: ArrayLike,
    rule: str,
    *,
    tier_costs: ArrayLike | None = None,
    row_costs: ArrayLike | None = None,
    thresholds: ArrayLike | None = None,
    min_tier: int = 0,
    max_tier: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The tier every prompt gets at every knob value: ``(knobs [K], choices [K, n])``, through the serving rule
    (:func:`router.decision.decide_batch`). Default knobs: :func:`knob_grid`."""
    p = _matrix(proba, "proba")
    rc = None if row_costs is None else np.asarray(row_costs, dtype=float)
    thr = knob_grid(p, rule) if thresholds is None else np.unique(np.asarray(thresholds, dtype=float))
    choices = np.empty((thr.size, p.shape[0]), dtype=np.int64)
    for k, t in enumerate(thr):
        choices[k] = decide_batch(
            p, float(t), min_tier=min_tier or None, max_tier=max_tier, rule=rule, tier_costs=tier_costs, row_costs=rc
        )
    return thr, choices


def bootstrap_aiq(
    choices: Sequence[np.ndarray],
    score: ArrayLike,
    cost: ArrayLike,
    *,
    n_boot: int,
    seed: int = 0,
    chunk: int = 4096,
) -> np.ndarray:
    """AIQ of several routers' knob sweeps on the same prompts, on the full set and on paired bootstrap resamples.

    ``choices``: per router, the tier of every prompt at every knob value ``[K, n]`` (:func:`sweep_choices`; K may
    differ between routers); ``score`` / ``cost``: complete ``[n, T]``. Returns ``[1 + n_boot, R]``: row 0 weighs
    every prompt once (equal to :func:`evaluate_router`'s ``aiq["router"]`` for that sweep), row b > 0 is a
    multinomial resample of the prompts, the same resample for every router (so differences are paired). Each
    resample recomputes the curves and the single tiers' cost range, as the full-set AIQ does. A resample's curve is
    a weighted mean of per-prompt outcomes, so the cost is matrix products, not ``n_boot`` sweeps.
    """
    s, c = _matrix(score, "score"), _matrix(cost, "cost")
    _same_shape(score=s, cost=c)
    _require_complete(s, c)
    n = s.shape[0]
    if n == 0:
        raise ValueError("no prompts to bootstrap")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer, got {n_boot!r}")
    choices = [np.asarray(ch) for ch in choices]
    for j, ch in enumerate(choices):
        if ch.ndim != 2 or ch.shape[1] != n:
            raise ValueError(f"choices[{j}] must have shape [K, {n}], got {ch.shape}")
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot + 1, len(choices)))
    done = 0
    while done < n_boot + 1:  # blocks of resamples bound the [B, n] weight matrix on large logs
        b = min(100, n_boot + 1 - done)
        draws = rng.multinomial(n, np.full(n, 1.0 / n), size=b - 1 if done == 0 else b).astype(np.float64)
        weights = np.vstack([np.ones((1, n)), draws]) if done == 0 else draws
        singles_c = weights @ c / n  # [b, T]: each resample's single-tier costs set its AIQ cost range
        for j, ch_all in enumerate(choices):
            q = np.zeros((b, ch_all.shape[0]))
            k = np.zeros_like(q)
            for start in range(0, n, chunk):  # blocks of prompts bound the [K, block] outcome matrices
                rows = np.arange(start, min(n, start + chunk))
                ch = ch_all[:, rows]
                q += weights[:, rows] @ s[rows[None, :], ch].T
                k += weights[:, rows] @ c[rows[None, :], ch].T
            q /= n
            k /= n
            for r in range(b):
                out[done + r, j] = aiq(k[r], q[r], float(singles_c[r].min()), float(singles_c[r].max()))
        done += b
    return out


# --------------------------------------------------------------------------------------------------------------------
# hulls, AIQ, cost at quality
# --------------------------------------------------------------------------------------------------------------------


def ndch(points_cost: ArrayLike, points_quality: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing convex hull (RouterBench) of (cost, quality) points.

    Dominated points (another point costs no more and has at least the same quality) are dropped, then the upper
    concave hull of the rest is taken. Returns the hull vertices ``(cost, quality)`` sorted by cost; both are
    strictly increasing. Non-finite points are ignored; no points -> two empty arrays.
    """
    c = np.asarray(points_cost, dtype=float).ravel()
    q = np.asarray(points_quality, dtype=float).ravel()
    if c.shape != q.shape:
        raise ValueError(f"cost and quality must have the same length, got {c.shape} and {q.shape}")
    ok = np.isfinite(c) & np.isfinite(q)
    c, q = c[ok], q[ok]
    if c.size == 0:
        return np.empty(0), np.empty(0)
    order = np.lexsort((-q, c))  # cost ascending, then quality descending
    c, q = c[order], q[order]
    running = np.maximum.accumulate(q)
    keep = np.concatenate([[True], q[1:] > running[:-1]])
    c, q = c[keep], q[keep]
    hull: list[int] = []
    for i in range(c.size):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (c[b] - c[a]) * (q[i] - q[a]) - (q[b] - q[a]) * (c[i] - c[a])
            if cross >= 0:  # b lies on or below the chord a -> i
                hull.pop()
            else:
                break
        hull.append(i)
    idx = np.asarray(hull)
    return c[idx], q[idx]


def zero_router(score: ArrayLike, cost: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Zero router (RouterBench): the NDCH of the single-tier (mean cost, mean quality) points."""
    pts = single_tier_points(score, cost)
    return ndch(pts["cost"].to_numpy(), pts["quality"].to_numpy())


def quality_at_cost(curve_cost: ArrayLike, curve_quality: ArrayLike, budget: float) -> float:
    """Best quality on the curve's NDCH at mean cost <= ``budget`` (flat beyond the hull); NaN below its start."""
    hc, hq = ndch(curve_cost, curve_quality)
    if hc.size == 0 or budget < hc[0]:
        return math.nan
    return float(np.interp(budget, hc, hq))


def aiq(curve_cost: ArrayLike, curve_quality: ArrayLike, c_min: float, c_max: float) -> float:
    """Average quality (RouterBench AIQ) of a curve over the cost range ``[c_min, c_max]``.

    The curve's NDCH is linear between vertices, flat beyond its most expensive vertex and 0 below its cheapest
    one (the hull starts at its cheapest point); it is integrated exactly over ``[c_min, c_max]`` and divided by
    ``c_max - c_min``. With ``c_min == c_max`` the hull's value at that cost is returned. NaN for an empty curve.
    """
    if not (math.isfinite(c_min) and math.isfinite(c_max)) or c_max < c_min:
        raise ValueError(f"need finite c_min <= c_max, got {c_min}, {c_max}")
    hc, hq = ndch(curve_cost, curve_quality)
    if hc.size == 0:
        return math.nan
    if c_max == c_min:
        return 0.0 if c_min < hc[0] else float(np.interp(c_min, hc, hq))
    start = max(c_min, float(hc[0]))
    if start >= c_max:
        return 0.0
    xs = np.concatenate([[start], hc[(hc > start) & (hc < c_max)], [c_max]])
    ys = np.interp(xs, hc, hq)
    return float(np.trapezoid(ys, xs) / (c_max - c_min))


def gap_closed(aiq_router: float, aiq_zero: float, aiq_oracle: float) -> float:
    """Share of the zero-router-to-oracle AIQ gap closed by a router (negative when worse than the zero router)."""
    gap = aiq_oracle - aiq_zero
    if not math.isfinite(gap) or gap <= 0:
        return math.nan
    return float((aiq_router - aiq_zero) / gap)


def cost_at_quality(
    curve_cost: ArrayLike, curve_quality: ArrayLike, target_quality: float, reference_cost: float
) -> float:
    """Least cost on the curve's NDCH at which quality >= ``target_quality``, as a fraction of ``reference_cost``.

    Linear interpolation between hull vertices; ``reference_cost`` is normally the always-top-tier cost.
    NaN when the curve never reaches the target.
    """
    hc, hq = ndch(curve_cost, curve_quality)
    if hc.size == 0 or not math.isfinite(target_quality) or target_quality > hq[-1] + _QUALITY_TOL:
        return math.nan
    cost = hc[0] if target_quality <= hq[0] else np.interp(min(target_quality, hq[-1]), hq, hc)
    return float(cost / reference_cost)


# --------------------------------------------------------------------------------------------------------------------
# two-tier view (RouteLLM)
# --------------------------------------------------------------------------------------------------------------------


def two_tier_curve(router_score: ArrayLike, score_w: ArrayLike, score_s: ArrayLike) -> pd.DataFrame:
    """Quality against share of strong calls: DataFrame[strong_share, quality, alpha], n + 1 rows.

    Prompts are sorted by ``router_score`` (high = needs the strong tier, e.g. ``1 - P(weak acceptable)``) and the
    top k go to the strong tier, k = 0..n. Prompts with tied scores cannot be separated by a threshold, so within
    a tie block the curve is the straight line between the block ends (random tie-breaking in expectation).
    ``alpha`` is the router-score threshold reaching that share (route to strong when score >= alpha).
    """
    r = np.asarray(router_score, dtype=float).ravel()
    w = np.asarray(score_w, dtype=float).ravel()
    st = np.asarray(score_s, dtype=float).ravel()
    if not (r.shape == w.shape == st.shape) or r.size == 0:
        raise ValueError("router_score, score_w and score_s must be non-empty and of equal length")
    if not (np.isfinite(w).all() and np.isfinite(st).all()):
        raise ValueError("two_tier_curve needs complete weak and strong scores (see complete_rows)")
    r = np.where(np.isnan(r), -np.inf, r)
    order = np.argsort(-r, kind="stable")
    rs, delta = r[order], (st - w)[order]
    group = np.cumsum(np.concatenate([[True], rs[1:] != rs[:-1]])) - 1
    group_mean = np.bincount(group, weights=delta) / np.bincount(group)
    n = r.size
    quality = (w.sum() + np.concatenate([[0.0], np.cumsum(group_mean[group])])) / n
    return pd.DataFrame(
        {
            "strong_share": np.arange(n + 1) / n,
            "quality": quality,
            "alpha": np.concatenate([[np.inf], rs]),
        }
    )


def _gap_ends(quality: np.ndarray, q_weak: float | None, q_strong: float | None) -> tuple[float, float]:
    return (float(quality[0]) if q_weak is None else q_weak, float(quality[-1]) if q_strong is None else q_strong)


def apgr(
    strong_share: ArrayLike, quality: ArrayLike, q_weak: float | None = None, q_strong: float | None = None
) -> float:
    """Average performance gap recovered (RouteLLM): ``(AUC_router - AUC_weak) / (AUC_strong - AUC_weak)``.

    AUCs are trapezoids over the curve's strong-share range (AUC_weak/strong use the constant weak/strong
    quality), so over a full [0, 1] curve this is ``(AUC_router - q_weak) / (q_strong - q_weak)``. ``q_weak`` and
    ``q_strong`` default to the curve's first and last qualities (exact for :func:`two_tier_curve`). NaN when the
    strong tier is no better than the weak one.
    """
    x = np.asarray(strong_share, dtype=float)
    y = np.asarray(quality, dtype=float)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    qw, qs = _gap_ends(y, q_weak, q_strong)
    width = x[-1] - x[0]
    if qs <= qw or width <= 0:
        return math.nan
    return float((np.trapezoid(y, x) - qw * width) / ((qs - qw) * width))


def cpt(
    strong_share: ArrayLike,
    quality: ArrayLike,
    x: float,
    q_weak: float | None = None,
    q_strong: float | None = None,
) -> float:
    """Call-performance threshold (RouteLLM CPT(x)): least strong-call share at which quality reaches
    ``q_weak + x * (q_strong - q_weak)``, interpolating linearly between curve points. NaN if never reached or
    when the strong tier is no better than the weak one.
    """
    s = np.asarray(strong_share, dtype=float)
    y = np.asarray(quality, dtype=float)
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    qw, qs = _gap_ends(y, q_weak, q_strong)
    if qs <= qw:
        return math.nan
    target = qw + x * (qs - qw)
    hit = np.nonzero(y >= target - _QUALITY_TOL)[0]
    if hit.size == 0:
        return math.nan
    k = hit[0]
    if k == 0 or y[k] <= target:
        return float(s[k])
    frac = (target - y[k - 1]) / (y[k] - y[k - 1])
    return float(s[k - 1] + frac * (s[k] - s[k - 1]))


# --------------------------------------------------------------------------------------------------------------------
# operating point and confusion
# --------------------------------------------------------------------------------------------------------------------


def operating_point(
    choice: ArrayLike,
    label: ArrayLike | None,
    score: ArrayLike,
    cost: ArrayLike,
    acceptable: ArrayLike,
) -> dict[str, float]:
    """Report for one routing decision per prompt.

    Keys: ``quality``, ``cost`` (USD per prompt), ``cost_pct_top`` (cost as % of always-top-tier),
    ``quality_rel_best`` (quality / best single tier's quality), ``unacceptable`` (share of chosen answers that are
    not acceptable), ``under_routing`` / ``over_routing`` / ``exact_match`` (chosen tier index below / above /
    equal to the label, over the ``n_labelled`` prompts that have an acceptable tier, so they sum to 1) and
    ``share_t{k}`` per tier. ``label`` (cheapest acceptable tier, as in ``training.labels``; whatever it holds for
    prompts without an acceptable tier is ignored) defaults to :func:`oracle_choice`.
    """
    s = _matrix(score, "score")
    c = _matrix(cost, "cost")
    acc = _matrix(acceptable, "acceptable", dtype=bool)
    _same_shape(score=s, cost=c, acceptable=acc)
    _require_complete(s, c)
    ch = np.asarray(choice, dtype=np.int64)
    lab = oracle_choice(s, c, acc) if label is None else np.asarray(label, dtype=np.int64)
    quality, mean_cost = realised(ch, s, c)
    n, n_tiers = s.shape
    top_cost = float(c[:, -1].mean())
    best_quality = float(s.mean(axis=0).max())
    labelled = (lab >= 0) & acc.any(axis=1)
    n_lab = int(labelled.sum())

    def rate(mask: np.ndarray) -> float:
        return float((mask & labelled).sum() / n_lab) if n_lab else math.nan

    out: dict[str, float] = {
        "quality": quality,
        "cost": mean_cost,
        "cost_pct_top": 100.0 * mean_cost / top_cost if top_cost > 0 else math.nan,
        "quality_rel_best": quality / best_quality if best_quality > 0 else math.nan,
        "unacceptable": float(1.0 - acc[np.arange(n), ch].mean()),
        "under_routing": rate(ch < lab),
        "over_routing": rate(ch > lab),
        "exact_match": rate(ch == lab),
        "n_labelled": float(n_lab),
    }
    shares = np.bincount(ch, minlength=n_tiers) / n
    for t in range(n_tiers):
        out[f"share_t{t}"] = float(shares[t])
    return out


def cost_weighted_confusion(choice: ArrayLike, label: ArrayLike, cost: ArrayLike) -> pd.DataFrame:
    """Confusion of label tier (rows) against chosen tier (columns), with the cost of each kind of mistake.

    Columns are a MultiIndex: ``df["count"]`` is the count matrix, ``df["extra_cost"]`` the summed
    ``cost[chosen] - cost[label]`` in USD (positive = overspend by over-routing, negative = saving bought with
    under-routing). Rows are tiers ``0..T-1`` plus ``-1`` (no acceptable tier; extra cost NaN) when present.
    """
    c = _matrix(cost, "cost")
    ch = np.asarray(choice, dtype=np.int64)
    lab = np.asarray(label, dtype=np.int64)
    n, n_tiers = c.shape
    if ch.shape != (n,) or lab.shape != (n,):
        raise ValueError(f"choice and label must have shape ({n},)")
    rows_idx = np.arange(n)
    has = lab >= 0
    extra = np.full(n, np.nan)
    extra[has] = c[rows_idx[has], ch[has]] - c[rows_idx[has], lab[has]]
    row_labels = ([-1] if (~has).any() else []) + list(range(n_tiers))
    counts = np.zeros((len(row_labels), n_tiers))
    extras = np.zeros((len(row_labels), n_tiers))
    r = lab + (1 if (~has).any() else 0)
    np.add.at(counts, (r, ch), 1.0)
    np.add.at(extras, (r, ch), np.nan_to_num(extra))
    if (~has).any():
        extras[0, :] = np.nan
    index = pd.Index(row_labels, name="label")
    chosen = pd.Index(range(n_tiers), name="chosen")
    parts = {
        "count": pd.DataFrame(counts.astype(np.int64), index=index, columns=chosen),
        "extra_cost": pd.DataFrame(extras, index=index, columns=chosen),
    }
    return pd.concat(parts, axis=1, names=["metric"])


# --------------------------------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationScore:
    """A calibration score per tier and pooled over every observed cell."""

    per_tier: np.ndarray
    overall: float
    counts: np.ndarray


def _calibration_inputs(
    proba: ArrayLike, acceptable: ArrayLike, observed: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(proba, outcome as float, observed mask); cells with NaN proba or NaN outcome are unobserved."""
    p = _matrix(proba, "proba")
    y = _matrix(acceptable, "acceptable")
    _same_shape(proba=p, acceptable=y)
    mask = np.isfinite(p) & np.isfinite(y)
    if observed is not None:
        mask &= _matrix(observed, "observed", dtype=bool)
    return p, y, mask


def brier(proba: ArrayLike, acceptable: ArrayLike, observed: ArrayLike | None = None) -> CalibrationScore:
    """Brier score ``mean((p - y)^2)`` per tier and pooled, ignoring unobserved (NaN) cells."""
    p, y, mask = _calibration_inputs(proba, acceptable, observed)
    sq = np.where(mask, (np.nan_to_num(p) - np.nan_to_num(y)) ** 2, 0.0)
    counts = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_tier = sq.sum(axis=0) / counts
    overall = float(sq.sum() / mask.sum()) if mask.any() else math.nan
    return CalibrationScore(per_tier=per_tier, overall=overall, counts=counts)


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    return np.clip(np.floor(np.nan_to_num(p) * n_bins).astype(np.int64), 0, n_bins - 1)


def _ece_1d(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    if p.size == 0:
        return math.nan
    b = _bin_index(p, n_bins)
    cnt = np.bincount(b, minlength=n_bins)
    gap = np.abs(np.bincount(b, weights=y, minlength=n_bins) - np.bincount(b, weights=p, minlength=n_bins))
    return float(gap.sum() / cnt.sum())


def ece(
    proba: ArrayLike, acceptable: ArrayLike, n_bins: int = 10, observed: ArrayLike | None = None
) -> CalibrationScore:
    """Expected calibration error with ``n_bins`` equal-width bins on [0, 1], per tier and pooled.

    ``ECE = sum_b (n_b / N) * |mean(y in b) - mean(p in b)|``; unobserved (NaN) cells are ignored.
    """
    p, y, mask = _calibration_inputs(proba, acceptable, observed)
    per_tier = np.array([_ece_1d(p[mask[:, t], t], y[mask[:, t], t], n_bins) for t in range(p.shape[1])])
    return CalibrationScore(per_tier=per_tier, overall=_ece_1d(p[mask], y[mask], n_bins), counts=mask.sum(axis=0))


def reliability_table(
    proba: ArrayLike, acceptable: ArrayLike, n_bins: int = 10, observed: ArrayLike | None = None
) -> pd.DataFrame:
    """Reliability diagram data: DataFrame[tier, bin, bin_lo, bin_hi, count, mean_proba, frac_acceptable].

    One row per (tier, bin); empty bins have count 0 and NaN means.
    """
    p, y, mask = _calibration_inputs(proba, acceptable, observed)
    frames = []
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    for t in range(p.shape[1]):
        pt, yt = p[mask[:, t], t], y[mask[:, t], t]
        b = _bin_index(pt, n_bins)
        cnt = np.bincount(b, minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            mp = np.bincount(b, weights=pt, minlength=n_bins) / cnt
            fy = np.bincount(b, weights=yt, minlength=n_bins) / cnt
        frames.append(
            pd.DataFrame(
                {
                    "tier": t,
                    "bin": np.arange(n_bins),
                    "bin_lo": edges[:-1],
                    "bin_hi": edges[1:],
                    "count": cnt,
                    "mean_proba": mp,
                    "frac_acceptable": fy,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------------------------------
# the bundled report
# --------------------------------------------------------------------------------------------------------------------

_RESERVED_CURVES = {"router", "zero", "oracle"}


def _metric_key(name: str) -> str:
    """MLflow-safe metric name fragment."""
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", name).strip("_") or "unnamed"


def _fmt(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}g}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


@dataclass
class EvaluationReport:
    """Everything :func:`evaluate_router` computes; :meth:`metrics` flattens the headline numbers."""

    tier_names: list[str]
    n_prompts: int
    curve: pd.DataFrame  # threshold sweep: threshold, quality, cost, share_t*
    router_hull: tuple[np.ndarray, np.ndarray]
    single_tiers: pd.DataFrame  # tier, name, quality, cost
    zero_hull: tuple[np.ndarray, np.ndarray]
    oracle: pd.DataFrame  # lam, quality, cost (frontier)
    oracle_hull: tuple[np.ndarray, np.ndarray]
    oracle_point: tuple[float, float]  # RouterBench oracle (quality, cost)
    random: pd.DataFrame
    extra_curves: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (cost, quality)
    c_min: float
    c_max: float
    aiq: dict[str, float]  # router, zero, oracle, <extra>
    gap_closed: dict[str, float]  # router, zero, oracle, <extra>
    cost_at: dict[str, dict[str, float]]  # "95"/"100" -> curve name -> fraction of top-tier cost
    best_single_quality: float
    top_tier_cost: float
    two_tier: pd.DataFrame
    apgr: float
    cpt50: float
    cpt80: float
    default_threshold: float
    default_op: dict[str, float]
    brier: CalibrationScore
    ece: CalibrationScore
    reliability: pd.DataFrame
    confusion: pd.DataFrame
    brier_reference: dict[str, float] = field(default_factory=dict)
    """Brier score of simpler probability sources on the same prompts (e.g. ``base_rates``: every tier's training
    success rate for every prompt; ``group_prior``: the task prior alone), to show how much the router's per-prompt
    model adds."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def brier_skill(self) -> float:
        """``1 - Brier / Brier(base_rates)``: the share of the base-rate Brier score the router removes (NaN without
        a ``base_rates`` reference)."""
        base = self.brier_reference.get("base_rates", math.nan)
        return 1.0 - self.brier.overall / base if base > 0 else math.nan

    def metrics(self) -> dict[str, float]:
        """Flat, MLflow-friendly metrics (all floats)."""
        m: dict[str, float] = {
            "n_test": float(self.n_prompts),
            "aiq": self.aiq["router"],
            "aiq_zero": self.aiq["zero"],
            "aiq_oracle": self.aiq["oracle"],
            "aiq_gain": self.aiq["router"] - self.aiq["zero"],
            "gap_closed": self.gap_closed["router"],
            "cost_at_95pct": self.cost_at["95"]["router"],
            "cost_at_100pct": self.cost_at["100"]["router"],
            "cost_at_95pct_zero": self.cost_at["95"]["zero"],
            "cost_at_100pct_zero": self.cost_at["100"]["zero"],
            "best_single_quality": self.best_single_quality,
            "top_tier_cost": self.top_tier_cost,
            "oracle_quality": self.oracle_point[0],
            "oracle_cost": self.oracle_point[1],
            "apgr": self.apgr,
            "cpt50": self.cpt50,
            "cpt80": self.cpt80,
            "default_threshold": self.default_threshold,
            "default_quality": self.default_op["quality"],
            "default_quality_rel": self.default_op["quality_rel_best"],
            "default_cost": self.default_op["cost"],
            "default_cost_pct": self.default_op["cost_pct_top"],
            "default_unacceptable": self.default_op["unacceptable"],
            "under_routing": self.default_op["under_routing"],
            "over_routing": self.default_op["over_routing"],
            "exact_match": self.default_op["exact_match"],
            "brier": self.brier.overall,
            "ece": self.ece.overall,
        }
        if self.brier_reference:
            m["brier_skill"] = self.brier_skill
            for name, value in self.brier_reference.items():
                m[f"brier_ref_{_metric_key(name)}"] = value
        for name in self.extra_curves:
            key = _metric_key(name)
            m[f"aiq_{key}"] = self.aiq[name]
            m[f"gap_closed_{key}"] = self.gap_closed[name]
            m[f"cost_at_95pct_{key}"] = self.cost_at["95"][name]
            m[f"cost_at_100pct_{key}"] = self.cost_at["100"][name]
        for t, tier in enumerate(self.tier_names):
            key = _metric_key(tier)
            m[f"default_share_{key}"] = self.default_op[f"share_t{t}"]
            m[f"brier_{key}"] = float(self.brier.per_tier[t])
            m[f"ece_{key}"] = float(self.ece.per_tier[t])
        return {k: float(v) for k, v in m.items()}

    def to_markdown(self) -> str:
        """Human-readable summary (GitHub markdown)."""
        weak, strong = self.tier_names[0], self.tier_names[-1]
        curves = ["router", "zero", "oracle", *self.extra_curves]
        aiq_rows = [
            [
                name,
                _fmt(self.aiq[name]),
                _fmt(self.gap_closed.get(name, math.nan), 3),
                _fmt(self.cost_at["95"].get(name, math.nan), 3),
                _fmt(self.cost_at["100"].get(name, math.nan), 3),
            ]
            for name in curves
        ]
        op = self.default_op
        tier_rows = [
            [
                name,
                _fmt(float(self.single_tiers["quality"].iloc[t])),
                f"{float(self.single_tiers['cost'].iloc[t]):.3g}",
                f"{100 * op[f'share_t{t}']:.1f}%",
                _fmt(float(self.brier.per_tier[t]), 3),
                _fmt(float(self.ece.per_tier[t]), 3),
            ]
            for t, name in enumerate(self.tier_names)
        ]
        parts = [
            f"## Routing evaluation ({self.n_prompts} test prompts, {len(self.tier_names)} tiers)",
            "",
            f"Cost range for AIQ: ${self.c_min:.3g} .. ${self.c_max:.3g} per prompt. Best single tier quality "
            f"{_fmt(self.best_single_quality)}; always-top-tier cost ${self.top_tier_cost:.3g}.",
            "",
            _md_table(["curve", "AIQ", "gap closed", "cost @95% (x top)", "cost @100% (x top)"], aiq_rows),
            "",
            f"**Default threshold {self.default_threshold:g}:** quality {_fmt(op['quality'])} "
            f"({100 * op['quality_rel_best']:.1f}% of best single tier) at ${op['cost']:.3g} per prompt "
            f"({op['cost_pct_top']:.1f}% of always-top); under-routing {100 * op['under_routing']:.1f}%, "
            f"over-routing {100 * op['over_routing']:.1f}%, exact {100 * op['exact_match']:.1f}%, "
            f"unacceptable answers {100 * op['unacceptable']:.1f}%.",
            "",
            f"**Two-tier view ({weak} vs {strong}):** APGR {_fmt(self.apgr, 3)} (random 0.5), "
            f"CPT(50%) {_fmt(100 * self.cpt50, 3)}% and CPT(80%) {_fmt(100 * self.cpt80, 3)}% strong calls.",
            "",
            f"**Calibration:** Brier {_fmt(self.brier.overall, 3)}, ECE {_fmt(self.ece.overall, 3)}."
            + _describe_brier_reference(self),
            "",
            _md_table(["tier", "quality", "cost (USD)", "default share", "Brier", "ECE"], tier_rows),
        ]
        return "\n".join(parts) + "\n"


def _describe_brier_reference(report: EvaluationReport) -> str:
    ref = report.brier_reference
    if not ref:
        return ""
    named = {"base_rates": "every tier's training success rate", "group_prior": "the task prior alone"}
    parts = ", ".join(f"{named.get(k, k)} {_fmt(v, 4)}" for k, v in ref.items())
    text = f" Brier of simpler sources on the same prompts: {parts}"
    if math.isfinite(report.brier_skill):
        text += f"; the router removes {100 * report.brier_skill:.1f}% of the base-rate Brier score"
    return text + "."


def evaluate_router(
    proba: ArrayLike,
    score: ArrayLike,
    cost: ArrayLike,
    acceptable: ArrayLike,
    label: ArrayLike | None = None,
    default_threshold: float = 0.5,
    tier_names: Sequence[str] | None = None,
    extra_curves: Mapping[str, tuple[ArrayLike, ArrayLike]] | None = None,
    *,
    min_tier: int = 0,
    max_tier: int | None = None,
    thresholds: ArrayLike | None = None,
    n_bins: int = 10,
    rule: str = DECISION_RULE,
    tier_costs: ArrayLike | None = None,
    row_costs: ArrayLike | None = None,
    two_tier_score: ArrayLike | None = None,
    reference_proba: Mapping[str, ArrayLike] | None = None,
) -> EvaluationReport:
    """Evaluate a router's probabilities on a complete test set and bundle every metric.

    ``label`` is the cheapest acceptable tier per prompt (default :func:`oracle_choice`); prompts without an
    acceptable tier are excluded from the routing-error rates and shown as confusion row ``-1``.
    ``extra_curves`` maps a baseline name (e.g. ``"knn"``) to its (cost, quality) sweep points. AIQ is computed on
    the common range [cheapest, most expensive single tier by mean cost]; the oracle is the NDCH of
    :func:`oracle_curve`, the RouterBench oracle point and the single tiers, so ``aiq_oracle >= aiq_zero``.
    Cost at 95%/100% of the best single tier's quality is a fraction of the always-top-tier (last index) cost.
    The two-tier view compares tier 0 with the top tier, with router score ``two_tier_score`` (default
    ``1 - P(tier 0 acceptable)``; a router using the utility rule passes ``P(top) - P(tier 0)``, the quantity its
    rule compares with the price when there are two tiers).
    ``rule`` / ``tier_costs``: the decision rule whose knob is swept (``"threshold"``: :func:`threshold_curve`;
    ``"utility"``: :func:`utility_curve` with per-prompt ``row_costs`` when given, else the tiers' mean
    ``tier_costs``) and applied at ``default_threshold``.
    ``reference_proba`` maps a name to simpler probabilities ``[n, T]`` (``base_rates``: the training success rate
    of each tier; ``group_prior``: a task prior alone) whose Brier scores are reported next to the router's
    (:attr:`EvaluationReport.brier_skill`).
    """
    p = _matrix(proba, "proba")
    s = _matrix(score, "score")
    c = _matrix(cost, "cost")
    acc = _matrix(acceptable, "acceptable", dtype=bool)
    _same_shape(proba=p, score=s, cost=c, acceptable=acc)
    _require_complete(s, c)
    n, n_tiers = s.shape
    names = [f"t{t}" for t in range(n_tiers)] if tier_names is None else [str(x) for x in tier_names]
    if len(names) != n_tiers:
        raise ValueError(f"{len(names)} tier names for {n_tiers} tiers")
    extras = {k: (np.asarray(v[0], float), np.asarray(v[1], float)) for k, v in (extra_curves or {}).items()}
    clash = _RESERVED_CURVES & set(extras)
    if clash:
        raise ValueError(f"extra curve names {sorted(clash)} are reserved")
    lab = oracle_choice(s, c, acc) if label is None else np.asarray(label, dtype=np.int64)
    lab = np.where(acc.any(axis=1), lab, -1)  # best-effort labels of hopeless prompts: own confusion row

    rc = None if row_costs is None else np.asarray(row_costs, dtype=float)
    if rule == "utility":
        curve = utility_curve(p, s, c, tier_costs, thresholds, min_tier=min_tier, max_tier=max_tier, row_costs=rc)
    elif rule == "threshold":
        curve = threshold_curve(p, s, c, thresholds, min_tier=min_tier, max_tier=max_tier)
    else:
        raise ValueError(f"unknown decision rule {rule!r}")
    singles = single_tier_points(s, c)
    singles.insert(1, "name", names)
    c_min, c_max = float(singles["cost"].min()), float(singles["cost"].max())
    zero = ndch(singles["cost"].to_numpy(), singles["quality"].to_numpy())
    o_point = oracle_point(s, c, acc)
    o_curve = oracle_curve(s, c)
    o_hull = ndch(
        np.concatenate([o_curve["cost"].to_numpy(), [o_point[1]], singles["cost"].to_numpy()]),
        np.concatenate([o_curve["quality"].to_numpy(), [o_point[0]], singles["quality"].to_numpy()]),
    )
    router_pts = (curve["cost"].to_numpy(), curve["quality"].to_numpy())
    named = {"router": router_pts, "zero": zero, "oracle": o_hull, **extras}
    aiqs = {k: aiq(v[0], v[1], c_min, c_max) for k, v in named.items()}
    gaps = {k: gap_closed(aiqs[k], aiqs["zero"], aiqs["oracle"]) for k in named}
    best_q = float(singles["quality"].max())
    top_cost = float(singles["cost"].iloc[-1])
    cost_at = {
        label_: {k: cost_at_quality(v[0], v[1], frac * best_q, top_cost) for k, v in named.items()}
        for label_, frac in (("95", 0.95), ("100", 1.0))
    }

    tts = 1.0 - np.nan_to_num(p[:, 0], nan=0.0) if two_tier_score is None else np.asarray(two_tier_score, float)
    two = two_tier_curve(tts, s[:, 0], s[:, -1])
    x, y = two["strong_share"].to_numpy(), two["quality"].to_numpy()
    choice = decide_batch(
        p, default_threshold, min_tier=min_tier or None, max_tier=max_tier, rule=rule, tier_costs=tier_costs,
        row_costs=rc if rule == "utility" else None,
    )
    return EvaluationReport(
        tier_names=names,
        n_prompts=n,
        curve=curve,
        router_hull=ndch(*router_pts),
        single_tiers=singles,
        zero_hull=zero,
        oracle=o_curve,
        oracle_hull=o_hull,
        oracle_point=o_point,
        random=random_router_curve(s, c),
        extra_curves=extras,
        c_min=c_min,
        c_max=c_max,
        aiq=aiqs,
        gap_closed=gaps,
        cost_at=cost_at,
        best_single_quality=best_q,
        top_tier_cost=top_cost,
        two_tier=two,
        apgr=apgr(x, y),
        cpt50=cpt(x, y, 0.5),
        cpt80=cpt(x, y, 0.8),
        default_threshold=float(default_threshold),
        default_op=operating_point(choice, lab, s, c, acc),
        brier=brier(p, acc),
        ece=ece(p, acc, n_bins=n_bins),
        reliability=reliability_table(p, acc, n_bins=n_bins),
        confusion=cost_weighted_confusion(choice, lab, c),
        brier_reference={k: brier(v, acc).overall for k, v in (reference_proba or {}).items()},
    )
