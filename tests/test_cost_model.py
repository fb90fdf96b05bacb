"""The per-prompt cost model: fit, predict, persistence, and its use by the utility rule."""

from __future__ import annotations

import numpy as np
import pytest

from router.cost_model import CostModel
from router.decision import decide, decide_batch


def _log(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Prompt lengths and per-call costs of three tiers: price x (input tokens + fixed output), with noise."""
    rng = np.random.default_rng(seed)
    chars = rng.integers(50, 8000, size=n)
    in_price = np.array([0.1, 1.0, 10.0]) * 1e-6
    out_price = np.array([0.2, 2.0, 30.0]) * 1e-6
    cost = (chars[:, None] / 4) * in_price + 200 * out_price
    return chars, cost * rng.lognormal(0.0, 0.1, size=cost.shape)


def test_costs_grow_with_length_and_match_the_log() -> None:
    chars, cost = _log()
    cm = CostModel.fit(chars, cost)
    assert all(b > 0 for b in cm.slope)
    short, long_ = cm.predict([100, 6000])
    assert (long_ > short).all()
    # the mean prediction matches the mean logged cost per tier (within the spread of the noise)
    assert np.allclose(cm.predict(chars).mean(axis=0), cost.mean(axis=0), rtol=0.15)
    assert cm.unit == pytest.approx(cost[:, -1].mean())
    assert np.allclose(cm.relative([1000]), cm.predict([1000]) / cm.unit)


def test_a_falling_cost_is_fitted_and_never_extrapolated() -> None:
    # long prompts with one-word answers are cheaper than short prompts with long answers on the output-priced tier
    chars = np.array([100, 150, 200, 3000, 4000, 5000])
    cost = np.column_stack([np.full(6, 1e-5), [0.09, 0.08, 0.085, 0.01, 0.012, 0.011]])
    cm = CostModel.fit(chars, cost)
    assert cm.slope[1] < 0
    assert cm.chars_range == (100, 5000)
    far, edge = cm.predict([10**7]), cm.predict([5000])
    assert np.allclose(far, edge)  # beyond the longest training prompt: priced as the longest
    assert np.allclose(cm.predict([1]), cm.predict([100]))


def test_round_trips_through_json() -> None:
    chars, cost = _log()
    cm = CostModel.fit(chars, cost)
    again = CostModel.model_validate_json(cm.model_dump_json())
    assert np.allclose(again.predict([10, 500, 9000]), cm.predict([10, 500, 9000]))


def test_free_untried_and_sparse_tiers() -> None:
    chars = np.array([100, 200, 300, 400, 500])
    cost = np.column_stack([
        np.zeros(5),  # a free tier
        [np.nan, 0.002, np.nan, np.nan, np.nan],  # one priced call: its mean, flat in length
        np.full(5, np.nan),  # never tried: treated as free rather than failing
        [0.01, 0.02, 0.03, 0.04, 0.05],
    ])
    cm = CostModel.fit(chars, cost)
    pred = cm.predict([100, 5000])
    assert (pred[:, 0] == 0).all() and (pred[:, 2] == 0).all()
    assert np.allclose(pred[:, 1], 0.002)
    assert pred[1, 3] > pred[0, 3]
    CostModel.model_validate_json(cm.model_dump_json())  # finite values only: valid JSON


def test_fit_rejects_misaligned_input() -> None:
    with pytest.raises(ValueError, match="cost must be"):
        CostModel.fit([1, 2, 3], np.ones((2, 3)))


def test_utility_rule_prices_each_prompt() -> None:
    chars, cost = _log()
    cm = CostModel.fit(chars, cost)
    p = np.array([0.70, 0.80, 0.95])
    # same probabilities: a long prompt makes the expensive tiers dearer, so the rule settles lower
    knob = 0.8
    short = decide(p, knob, rule="utility", row_costs=cm.relative([60])[0]).tier
    long_ = decide(p, knob, rule="utility", row_costs=cm.relative([7900])[0]).tier
    assert long_ < short
    # batch and scalar agree with per-row costs
    rng = np.random.default_rng(3)
    P = rng.random((200, 3))
    lengths = rng.integers(10, 20000, size=200)
    rc = cm.relative(lengths)
    for thr in (0.0, 0.5, 0.9, 1.0):
        batch = decide_batch(P, thr, rule="utility", row_costs=rc)
        assert batch.tolist() == [decide(P[i], thr, rule="utility", row_costs=rc[i]).tier for i in range(200)]


def test_row_costs_are_validated() -> None:
    with pytest.raises(ValueError, match="row_costs must have shape"):
        decide(np.array([0.5, 0.6]), 0.5, rule="utility", row_costs=[0.1, 0.2, 1.0])
    with pytest.raises(ValueError, match="finite and non-negative"):
        decide_batch(np.array([[0.5, 0.6]]), 0.5, rule="utility", row_costs=np.array([[np.nan, 1.0]]))


def test_known_tiers_tell_a_free_tier_from_an_unpriced_one() -> None:
    chars = np.array([100, 200, 300, 400])
    cost = np.column_stack([np.zeros(4), np.full(4, np.nan), [0.01, 0.02, 0.03, 0.04]])
    cm = CostModel.fit(chars, cost)
    # both fitted as free (the utility rule needs a number), but only the first one's 0 USD was logged
    assert cm.predict([250])[0, 0] == 0 and cm.predict([250])[0, 1] == 0
    assert cm.known == [True, False, True]
    again = CostModel.model_validate_json(cm.model_dump_json())
    assert again.known == [True, False, True]
    # a bundle written before `priced` existed: a free intercept is taken as unknown, never as 0 USD
    old = CostModel.model_validate({k: v for k, v in cm.model_dump(mode="json").items() if k != "priced"})
    assert old.priced is None and old.known == [False, False, True]
