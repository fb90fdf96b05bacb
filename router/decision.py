"""The routing decision rule: pure functions, no model, no I/O.

Given the predicted probability that each tier answers acceptably (tiers ordered cheapest first):

1. route to the cheapest tier whose probability is at least ``threshold``;
2. if no tier qualifies, route to the tier with the highest probability (the cheapest among equals);
3. apply floors and ceilings: the role's floor (a planner never goes below the catalog's planning floor),
   then ``min_tier`` and ``max_tier`` from the request (``max_tier`` wins over a floor: the caller's cost cap
   is a hard limit).

The reason code says which step decided, so a caller can log and trust the decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


class Reason(str, Enum):
    """Why a tier was chosen."""

    CHEAPEST_MEETING_THRESHOLD = "cheapest_tier_meeting_threshold"
    NO_TIER_MEETS_THRESHOLD = "no_tier_meets_threshold"
    PLANNER_FLOOR = "planner_floor"
    VERIFIER_FLOOR = "verifier_floor"
    RAISED_BY_MIN_TIER = "raised_by_min_tier"
    CLAMPED_BY_MAX_TIER = "clamped_by_max_tier"


ROLES = ("single", "plan", "execute", "verify")


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
) -> Choice:
    """Choose a tier for one prompt.

    Args:
        proba: P(acceptable) per tier, shape ``[T]``, tiers ordered cheapest first.
        threshold: the quality knob in [0, 1]; higher means safer and more expensive.
        floor: lowest tier index allowed by the role (e.g. the planning floor).
        floor_reason: reason reported when ``floor`` raised the choice.
        min_tier: lowest tier index the caller allows.
        max_tier: highest tier index the caller allows (a hard cap).
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

    meets = np.flatnonzero(p >= threshold)
    if meets.size:
        tier, reason = int(meets[0]), Reason.CHEAPEST_MEETING_THRESHOLD
    else:
        tier, reason = int(np.argmax(p)), Reason.NO_TIER_MEETS_THRESHOLD
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
) -> np.ndarray:
    """Vectorised :func:`decide` returning only the tier indices, shape ``[n]``."""
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"proba must be 2-D [n, T], got shape {p.shape}")
    n, t = p.shape
    meets = p >= threshold
    any_meets = meets.any(axis=1)
    tiers = np.where(any_meets, meets.argmax(axis=1), p.argmax(axis=1))
    if floors is not None:
        tiers = np.maximum(tiers, floors)
    if min_tier is not None:
        tiers = np.maximum(tiers, min_tier)
    if max_tier is not None:
        tiers = np.minimum(tiers, max_tier)
    return tiers.astype(int)


def escalation_path(chosen: int, n_tiers: int, max_tier: int | None = None) -> list[int]:
    """Tiers to try, in order, if the chosen tier's answer fails verification: every tier above it."""
    top = n_tiers - 1 if max_tier is None else max_tier
    return list(range(chosen + 1, top + 1))
