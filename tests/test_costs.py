"""Tests for training.costs: logged costs, token prices, estimated tokens and unknown prices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from router.catalog import Catalog, Tier
from router.pricing import DEFAULT_CHARS_PER_TOKEN, DEFAULT_OUTPUT_TOKENS
from training.costs import (
    attempt_costs,
    estimate_costs,
    learn_chars_per_token,
)


def _catalog(**overrides: dict[str, object]) -> Catalog:
    tiers = {
        "cheap": dict(name="cheap", model="m-cheap", input_usd_per_1m=1.0, output_usd_per_1m=2.0),
        "pricey": dict(name="pricey", model="m-pricey", input_usd_per_1m=10.0, output_usd_per_1m=30.0,
                       typical_output_tokens=100),
    }
    for k, v in overrides.items():
        tiers[k].update(v)
    return Catalog(tiers=[Tier(**t) for t in tiers.values()])  # type: ignore[arg-type]


def test_logged_cost_wins() -> None:
    df = pd.DataFrame({"model": ["m-cheap", "m-pricey"], "prompt": ["abcd", "efgh"], "cost_usd": [0.5, 0.25],
                       "input_tokens": [1000, 1000], "output_tokens": [1000, 1000]})
    est = estimate_costs(df, _catalog())
    assert est.cost_usd.tolist() == [0.5, 0.25]
    assert est.source.tolist() == ["logged", "logged"]
    assert est.warnings == []


def test_tokens_times_prices() -> None:
    df = pd.DataFrame({"model": ["m-cheap", "m-pricey", "m-cheap"], "prompt": ["a", "b", "c"],
                       "cost_usd": [np.nan, np.nan, 0.1], "input_tokens": [1000.0, 2000.0, 5.0],
                       "output_tokens": [500.0, 100.0, 5.0]})
    est = estimate_costs(df, _catalog())
    assert est.cost_usd.iloc[0] == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1e6)
    assert est.cost_usd.iloc[1] == pytest.approx((2000 * 10.0 + 100 * 30.0) / 1e6)
    assert est.cost_usd.iloc[2] == 0.1
    assert est.source.tolist() == ["tokens", "tokens", "logged"]
    assert est.summary() == {"logged": 1, "tokens": 2, "estimated_tokens": 0, "unknown": 0}


def test_estimated_tokens_with_learned_ratio() -> None:
    # m-cheap: logged rows show 3 characters per token (median of 3, 3, 30); the last row has no tokens.
    df = pd.DataFrame({
        "model": ["m-cheap"] * 4,
        "prompt": ["x" * 300, "x" * 60, "x" * 300, "y" * 600],
        "input_tokens": [100.0, 20.0, 10.0, np.nan],
        "output_tokens": [10.0, 10.0, 10.0, np.nan],
    })
    est = estimate_costs(df, _catalog())
    assert est.chars_per_token == {"m-cheap": 3.0}
    assert est.chars_per_token_source == {"m-cheap": "learned"}
    assert est.source.tolist() == ["tokens", "tokens", "tokens", "estimated_tokens"]
    expected = (600 / 3.0 * 1.0 + DEFAULT_OUTPUT_TOKENS * 2.0) / 1e6  # m-cheap has no typical_output_tokens
    assert est.cost_usd.iloc[3] == pytest.approx(expected)
    assert len(est.warnings) == 1 and "m-cheap" in est.warnings[0] and str(DEFAULT_OUTPUT_TOKENS) in est.warnings[0]


def test_default_chars_per_token_with_warning_and_typical_output() -> None:
    df = pd.DataFrame({"model": ["m-pricey", "m-pricey"], "prompt": ["z" * 400, "z" * 40],
                       "output_tokens": [np.nan, 7.0]})
    est = estimate_costs(df, _catalog())
    assert est.chars_per_token_source == {"m-pricey": "default"}
    assert est.chars_per_token == {"m-pricey": DEFAULT_CHARS_PER_TOKEN}
    assert est.source.tolist() == ["estimated_tokens", "estimated_tokens"]
    assert est.cost_usd.iloc[0] == pytest.approx((400 / 4.0 * 10.0 + 100 * 30.0) / 1e6)  # typical_output_tokens=100
    assert est.cost_usd.iloc[1] == pytest.approx((40 / 4.0 * 10.0 + 7 * 30.0) / 1e6)
    assert len(est.warnings) == 1
    assert "m-pricey" in est.warnings[0] and "4.0 characters per token" in est.warnings[0]


def test_unknown_prices_do_not_crash() -> None:
    cat = _catalog(pricey={"input_usd_per_1m": None, "output_usd_per_1m": None})
    df = pd.DataFrame({"model": ["m-pricey", "m-pricey", "m-cheap"], "prompt": ["a", "b", "c"],
                       "cost_usd": [np.nan, 0.3, np.nan], "input_tokens": [1.0, 1.0, 1.0],
                       "output_tokens": [1.0, 1.0, 1.0]})
    est = estimate_costs(df, cat)
    assert est.source.tolist() == ["unknown", "logged", "tokens"]
    assert np.isnan(est.cost_usd.iloc[0]) and est.cost_usd.iloc[1] == 0.3
    assert any("no prices" in w and "m-pricey" in w and "1 attempt(s)" in w for w in est.warnings)


def test_models_outside_catalog_raise() -> None:
    df = pd.DataFrame({"model": ["m-cheap", "gpt-x", "gpt-y"], "prompt": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="gpt-x, gpt-y"):
        estimate_costs(df, _catalog())


def test_tier_names_are_accepted_and_index_is_kept() -> None:
    df = pd.DataFrame({"model": ["cheap"], "prompt": ["abcd"], "input_tokens": [4.0], "output_tokens": [0.0]},
                      index=[42])
    before = df.copy()
    est = attempt_costs(df, _catalog())
    assert est.cost_usd.index.tolist() == [42] and est.source.index.tolist() == [42]
    assert est.cost_usd.loc[42] == pytest.approx(4e-6)
    pd.testing.assert_frame_equal(df, before)


def test_learn_chars_per_token_ignores_zero_tokens() -> None:
    df = pd.DataFrame({"model": ["a", "a", "b"], "prompt": ["xxxx", "xx", "yy"], "input_tokens": [2.0, 0.0, np.nan]})
    ratios, sources = learn_chars_per_token(df)
    assert ratios == {"a": 2.0, "b": DEFAULT_CHARS_PER_TOKEN}
    assert sources == {"a": "learned", "b": "default"}
