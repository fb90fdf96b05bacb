"""The pure decision rule."""

from __future__ import annotations

import numpy as np
import pytest

from router.decision import Reason, decide, decide_batch, escalation_path


def test_cheapest_tier_meeting_threshold() -> None:
    c = decide(np.array([0.2, 0.7, 0.9, 0.95]), 0.6, rule="threshold")
    assert (c.tier, c.reason) == (1, Reason.CHEAPEST_MEETING_THRESHOLD)


def test_threshold_is_inclusive() -> None:
    assert decide(np.array([0.5, 0.9]), 0.5, rule="threshold").tier == 0


def test_no_tier_meets_threshold_picks_highest_probability_cheapest_among_equals() -> None:
    c = decide(np.array([0.3, 0.6, 0.6, 0.5]), 0.9, rule="threshold")
    assert (c.tier, c.reason) == (1, Reason.NO_TIER_MEETS_THRESHOLD)


def test_non_monotone_probabilities_still_pick_cheapest_qualifying() -> None:
    # a mid tier that is worse than a cheaper one is skipped only if it does not qualify
    assert decide(np.array([0.1, 0.8, 0.4, 0.9]), 0.75, rule="threshold").tier == 1


def test_planner_floor_and_reason() -> None:
    c = decide(np.array([0.99, 0.99, 0.99]), 0.5, rule="threshold", floor=2)
    assert (c.tier, c.reason) == (2, Reason.PLANNER_FLOOR)


def test_min_and_max_tier_clamp() -> None:
    assert decide(np.array([0.9, 0.9, 0.9]), 0.5, rule="threshold", min_tier=1).reason == Reason.RAISED_BY_MIN_TIER
    c = decide(np.array([0.1, 0.2, 0.9]), 0.5, rule="threshold", max_tier=1)
    assert (c.tier, c.reason) == (1, Reason.CLAMPED_BY_MAX_TIER)


def test_max_tier_wins_over_planner_floor() -> None:
    c = decide(np.array([0.9, 0.9, 0.9]), 0.5, rule="threshold", floor=2, max_tier=1)
    assert (c.tier, c.reason) == (1, Reason.CLAMPED_BY_MAX_TIER)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"min_tier": 2, "max_tier": 1}, "above max_tier"), ({"max_tier": 5}, "out of range")],
)
def test_invalid_clamps(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decide(np.array([0.5, 0.5, 0.5]), 0.5, rule="threshold", **kwargs)


@pytest.mark.parametrize("thr", [-0.1, 1.1])
def test_threshold_out_of_range(thr: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        decide(np.array([0.5]), thr, rule="threshold")


def test_batch_matches_scalar_rule() -> None:
    rng = np.random.default_rng(0)
    p = rng.random((500, 5))
    for thr in (0.0, 0.3, 0.7, 1.0):
        batch = decide_batch(p, thr, rule="threshold")
        scalar = [decide(row, thr, rule="threshold").tier for row in p]
        assert batch.tolist() == scalar


def test_escalation_path() -> None:
    # without probabilities (callers that have none): every tier above the chosen one, up to max_tier
    assert escalation_path(1, 4) == [2, 3]
    assert escalation_path(3, 4) == []
    assert escalation_path(0, 4, max_tier=2) == [1, 2]


def test_escalation_path_only_raises_p_acceptable() -> None:
    # tier 1 is pricier than tier 0 but less likely to answer; tier 3 is pricier than 2 and less likely too
    p = [0.6, 0.3, 0.8, 0.7]
    assert escalation_path(0, 4, probabilities=p) == [2]
    # strictly increasing along the path: each step beats the best seen so far, not only its predecessor
    assert escalation_path(0, 5, probabilities=[0.5, 0.9, 0.7, 0.8, 0.95]) == [1, 4]
    assert escalation_path(0, 3, probabilities=[0.5, 0.5, 0.6]) == [2]  # an equal P is no gain
    assert escalation_path(0, 4, max_tier=1, probabilities=p) == []  # max_tier still caps the path
    assert escalation_path(0, 4, max_tier=2, probabilities=p) == [2]
    assert escalation_path(3, 4, probabilities=p) == []
    assert escalation_path(0, 3, probabilities=[0.2, np.nan, 0.4]) == [2]  # an unpredicted tier is skipped
    with pytest.raises(ValueError, match="probabilities must have 4 values"):
        escalation_path(0, 4, probabilities=[0.1, 0.2])


def test_utility_rule_weighs_gain_against_relative_cost() -> None:
    costs = [1.0, 2.0, 10.0]  # relative costs 0.1, 0.2, 1.0
    p = np.array([0.70, 0.72, 0.95])
    # threshold 0.9 -> lam 1/9: top tier adds 0.25 for 0.9 more relative cost (0.1 per unit needed) -> top
    c = decide(p, 0.9, rule="utility", tier_costs=costs)
    assert (c.tier, c.reason) == (2, Reason.BEST_EXPECTED_UTILITY)
    # threshold 0.5 -> lam 1: nothing is worth its extra cost -> cheapest
    assert decide(p, 0.5, rule="utility", tier_costs=costs).tier == 0
    # the knob's ends: 1 = highest probability, 0 = cheapest tier
    assert decide(p, 1.0, rule="utility", tier_costs=costs).tier == 2
    assert decide(np.array([0.1, 0.9, 0.2]), 0.0, rule="utility", tier_costs=costs).tier == 0


def test_utility_batch_matches_scalar_and_clamps() -> None:
    rng = np.random.default_rng(1)
    p = rng.random((300, 4))
    costs = [1.0, 3.0, 5.0, 20.0]
    for thr in (0.0, 0.5, 0.9, 0.99, 1.0):
        batch = decide_batch(p, thr, rule="utility", tier_costs=costs)
        assert batch.tolist() == [decide(row, thr, rule="utility", tier_costs=costs).tier for row in p]
    assert decide(np.array([0.1, 0.2, 0.3, 0.99]), 1.0, rule="utility", tier_costs=costs, max_tier=2).tier == 2


def test_unknown_rule_raises() -> None:
    with pytest.raises(ValueError, match="rule"):
        decide(np.array([0.5, 0.6]), 0.5, rule="nope")


def test_default_rule_is_the_products() -> None:
    from router.defaults import DECISION_RULE

    assert DECISION_RULE == "utility"
    p, costs = np.array([0.55, 0.9, 0.95]), [1.0, 2.0, 10.0]
    assert decide(p, 0.5, tier_costs=costs) == decide(p, 0.5, rule="utility", tier_costs=costs)
    assert decide(p, 0.5, tier_costs=costs).tier != decide(p, 0.5, rule="threshold").tier
