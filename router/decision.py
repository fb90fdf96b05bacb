"""The routing decision rules: pure functions, no model, no I/O.

Given the predicted probability that each tier answers acceptably (tiers ordered cheapest first), two rules share
one quality knob ``threshold`` in [0, 1] (higher = safer and more expensive):

* ``"threshold"``: route to the cheapest tier whose probability is at least ``threshold``; if no tier qualifies,
  route to the tier with the highest probability (the cheapest among equals).
* ``"utility"`` (expected utility): route to the tier maximising ``P(acceptable) - lam * relative_cost`` with
  ``relative_cost`` = the tier's expected cost for this prompt / the top tier's mean cost (``row_costs``, from the
  bundle's length-based cost model, :mod:`router.cost_model`), or without a cost model the tier's mean cost / the
  top tier's mean cost (``tier_costs``, from the training logs), and ``lam = (1 - threshold) / threshold``: the
  knob says how much probability a tier must add to be worth the top tier's price. ``threshold = 1`` is the
  highest probability (as in the threshold rule), ``0`` the cheapest tier; ties go to the cheaper tier. Unlike the
  threshold rule it weighs what a more expensive tier adds against what it costs, which is what traces the best
  cost-quality curve (see benchmarks/quality.py).

Then floors and ceilings apply: the role's floor (a planner never goes below the catalog's planning floor),
   then ``min_tier`` and ``max_tier`` from the request (``max_tier`` wins over a floor: the caller's cost cap
   is a hard limit).

The reason code says which step decided, so a caller can log and trust the decision.

If the chosen tier's answer fails verification, :func:`escalation_path` lists the tiers to try next: pricier tiers,
each more likely to answer than every tier tried before it (a tier that costs more and is less likely to answer is
never worth the call), up to ``max_tier``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from router.defaults import DECISION_RULE


class Reason(str, Enum):
    """Why a tier was chosen."""

    CHEAPEST_MEETING_THRESHOLD = "cheapest_tier_meeting_threshold"
    NO_TIER_MEETS_THRESHOLD = "no_tier_meets_threshold"
    BEST_EXPECTED_UTILITY = "best_expected_utility"
    PLANNER_FLOOR = "planner_floor"
    VERIFIER_FLOOR = "verifier_floor"
    RAISED_BY_MIN_TIER = "raised_by_min_tier"
    CLAMPED_BY_MAX_TIER = "clamped_by_max_tier"


ROLES = ("single", "plan", "execute", "verify")
RULES = ("threshold", "utility")


def utility_lambda(threshold: float) -> float:
    """Price of the top tier's cost in probability units for the utility rule: ``(1 - t) / t`` (inf at 0)."""
    return float("inf") if threshold <= 0 else (1.0 - threshold) / threshold


def relative_costs(tier_costs: np.ndarray | list[float] | None, n: int) -> np.ndarray:
    """Tier costs divided by the top (last) tier's cost; catalog rank when no costs are known."""
    if tier_costs is None:
        c = np.arange(1, n + 1, dtype=float)
    else:
        c = np.asarray(tier_costs, dtype=float)
        if c.shape != (n,):
            raise ValueError(f"tier_costs must have {n} values, got shape {c.shape}")
    top = c[-1] if c[-1] > 0 else (c.max() if c.max() > 0 else 1.0)
    return c / top


def _row_costs(row_costs: np.ndarray | list[float], shape: tuple[int, ...]) -> np.ndarray:
    c = np.asarray(row_costs, dtype=float)
    if c.shape != shape:
        raise ValueError(f"row_costs must have shape {shape}, got {c.shape}")
    if not np.isfinite(c).all() or (c < 0).any():
        raise ValueError("row_costs must be finite and non-negative")
    return c


def utility_choice(p: np.ndarray, threshold: float, rel_cost: np.ndarray) -> np.ndarray:
    """Utility-rule tier per row of ``p`` ``[n, T]``; ``rel_cost`` is ``[T]`` (every row) or ``[n, T]`` (per row).

    Ties go to the cheaper tier by relative cost, then to the lower index.
    """
    rel = np.broadcast_to(np.asarray(rel_cost, dtype=float), p.shape)
    lam = utility_lambda(threshold)
    if not np.isfinite(lam):
        return rel.argmin(axis=1).astype(int)  # argmin takes the first (lowest index) of equal costs
    u = np.where(np.isnan(p), -np.inf, p) - lam * rel
    best = u.max(axis=1, keepdims=True)
    tied = u >= best - 1e-12
    key = np.where(tied, rel, np.inf)
    return key.argmin(axis=1).astype(int)


@dataclass(frozen=True)
class Choice:
    """A decision: the chosen tier index and the reason code."""

    tier: int
    reason: Reason


def decide(
    proba: np.ndarray,
    threshold: float,
    *,
    floor: int = 0,
    floor_reason: Reason = Reason.PLANNER_FLOOR,
    min_tier: int | None = None,
    max_tier: int | None = None,
    rule: str = DECISION_RULE,
    tier_costs: np.ndarray | list[float] | None = None,
    row_costs: np.ndarray | list[float] | None = None,
) -> Choice:
    """Choose a tier for one prompt.

    Args:
        proba: P(acceptable) per tier, shape ``[T]``, tiers ordered cheapest first.
        threshold: the quality knob in [0, 1]; higher means safer and more expensive.
        floor: lowest tier index allowed by the role (e.g. the planning floor).
        floor_reason: reason reported when ``floor`` raised the choice.
        min_tier: lowest tier index the caller allows.
        max_tier: highest tier index the caller allows (a hard cap).
        rule: ``"threshold"`` or ``"utility"`` (see the module doc).
        tier_costs: mean cost per tier (utility rule; default: catalog rank).
        row_costs: this prompt's expected cost per tier relative to the top tier's mean cost (utility rule;
            overrides ``tier_costs``), e.g. ``CostModel.relative([len(prompt)])[0]``.
    """
    p = np.asarray(proba, dtype=float)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"proba must be a non-empty 1-D array, got shape {p.shape}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    n = p.size
    lo = 0 if min_tier is None else min_tier
    hi = n - 1 if max_tier is None else max_tier
    if not (0 <= lo < n and 0 <= hi < n):
        raise ValueError(f"min_tier/max_tier out of range for {n} tiers: {min_tier}, {max_tier}")
    if lo > hi:
        raise ValueError(f"min_tier ({min_tier}) is above max_tier ({max_tier})")

    if rule == "utility":
        rel = relative_costs(tier_costs, n) if row_costs is None else _row_costs(row_costs, (n,))
        tier = int(utility_choice(p[None, :], threshold, rel)[0])
        reason = Reason.BEST_EXPECTED_UTILITY
    elif rule == "threshold":
        meets = np.flatnonzero(p >= threshold)
        if meets.size:
            tier, reason = int(meets[0]), Reason.CHEAPEST_MEETING_THRESHOLD
        else:
            tier, reason = int(np.argmax(p)), Reason.NO_TIER_MEETS_THRESHOLD
    else:
        raise ValueError(f"unknown decision rule {rule!r}; choose one of {', '.join(RULES)}")
    if tier < floor:
        tier, reason = floor, floor_reason
    if tier < lo:
        tier, reason = lo, Reason.RAISED_BY_MIN_TIER
    if tier > hi:
        tier, reason = hi, Reason.CLAMPED_BY_MAX_TIER
    return Choice(tier, reason)


def decide_batch(
    proba: np.ndarray,
    threshold: float,
    *,
    floors: np.ndarray | None = None,
    min_tier: int | None = None,
    max_tier: int | None = None,
    rule: str = DECISION_RULE,
    tier_costs: np.ndarray | list[float] | None = None,
    row_costs: np.ndarray | None = None,
) -> np.ndarray:
    """Vectorised :func:`decide` returning only the tier indices, shape ``[n]`` (``row_costs``: ``[n, T]``)."""
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"proba must be 2-D [n, T], got shape {p.shape}")
    n, t = p.shape
    if rule == "utility":
        rel = relative_costs(tier_costs, t) if row_costs is None else _row_costs(row_costs, (n, t))
        tiers = utility_choice(p, threshold, rel)
    elif rule == "threshold":
        q = np.where(np.isnan(p), -np.inf, p)  # a NaN probability never qualifies nor wins the argmax
        meets = q >= threshold
        tiers = np.where(meets.any(axis=1), meets.argmax(axis=1), q.argmax(axis=1))
    else:
        raise ValueError(f"unknown decision rule {rule!r}; choose one of {', '.join(RULES)}")
    lo = 0 if min_tier is None else min_tier
    hi = t - 1 if max_tier is None else max_tier
    if not 0 <= lo <= hi <= t - 1:
        raise ValueError(f"need 0 <= min_tier <= max_tier <= {t - 1}, got {min_tier}, {max_tier}")
    if floors is not None:
        tiers = np.maximum(tiers, floors)
    if min_tier is not None:
        tiers = np.maximum(tiers, min_tier)
    if max_tier is not None:
        tiers = np.minimum(tiers, max_tier)
    return tiers.astype(int)


def escalation_path(
    chosen: int,
    n_tiers: int,
    max_tier: int | None = None,
    probabilities: np.ndarray | Sequence[float] | None = None,
) -> list[int]:
    """Tiers to try, in order, if the chosen tier's answer fails verification, up to ``max_tier``.

    With ``probabilities`` (P(acceptable) per tier, as :func:`decide` takes them): only the pricier tiers that raise
    P(acceptable) above the best seen so far along the path, starting from the chosen tier's, so the path never
    pays more for a tier less likely to answer (a strictly increasing P). Without them: every tier above ``chosen``
    (the rule before probabilities were passed; kept for callers that have none).
    """
    top = n_tiers - 1 if max_tier is None else max_tier
    above = range(chosen + 1, top + 1)
    if probabilities is None:
        return list(above)
    p = np.asarray(probabilities, dtype=float)
    if p.shape != (n_tiers,):
        raise ValueError(f"probabilities must have {n_tiers} values, got shape {p.shape}")
    path: list[int] = []
    best = p[chosen] if 0 <= chosen < n_tiers and np.isfinite(p[chosen]) else -np.inf
    for t in above:
        if p[t] > best:  # NaN never passes: an unpredicted tier is not worth paying for
            path.append(t)
            best = p[t]
    return path
