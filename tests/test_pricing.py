"""router.pricing: the one price formula and token estimates, used alike by training, the reports and the service."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from router import pricing
from router.catalog import Catalog, CatalogError, Tier
from router.pricing import DEFAULT_CHARS_PER_TOKEN, DEFAULT_OUTPUT_TOKENS
from training import reports
from training.costs import estimate_costs, learn_chars_per_token


def _catalog(typical_top: int | None = 0) -> Catalog:
    return Catalog(
        name="t",
        tiers=[
            Tier(name="small", model="m-small", input_usd_per_1m=1.0, output_usd_per_1m=2.0, batch_discount=0.5),
            Tier(name="free", model="m-free"),  # no prices
            Tier(
                name="top", model="m-top", input_usd_per_1m=10.0, output_usd_per_1m=30.0,
                typical_output_tokens=typical_top,
            ),
        ],
    )


def _router_meta(training: dict[str, object] | None = None) -> SimpleNamespace:
    """What Router's pricing properties read of a bundle (its metadata), without a model."""
    return SimpleNamespace(meta=SimpleNamespace(training=training or {}))


# --------------------------------------------------------------------------------------------------------------
# the formula
# --------------------------------------------------------------------------------------------------------------
def test_formula_list_and_batch_price() -> None:
    assert pricing.usd(1_000_000, 1_000_000, 1.0, 2.0) == pytest.approx(3.0)
    assert pricing.usd(1_000_000, 1_000_000, 1.0, 2.0, batch_discount=0.5) == pytest.approx(3.0)  # list price
    assert pricing.usd(1_000_000, 1_000_000, 1.0, 2.0, batch_discount=0.5, batch=True) == pytest.approx(1.5)
    assert pricing.usd(500, 0, 4.0, 8.0) == pytest.approx(0.002)
    got = pricing.usd_array(np.array([1e6, 0.0, 250.0]), np.array([0.0, 1e6, 100.0]), 1.0, 2.0)
    np.testing.assert_allclose(got, [1.0, 2.0, (250 * 1.0 + 100 * 2.0) / 1e6])
    batch = pricing.usd_array(np.array([1e6]), np.array([1e6]), 1.0, 2.0, batch_discount=0.25, batch=True)
    np.testing.assert_allclose(batch, [2.25])


def test_tier_prices_delegate_to_the_formula() -> None:
    small, free, _ = _catalog().tiers
    assert small.price_usd(1_000_000, 1_000_000) == pytest.approx(3.0)
    assert small.price_usd(1_000_000, 1_000_000, batch=True) == pytest.approx(1.5)
    assert pricing.tier_usd(small, 1_000_000, 1_000_000, batch=True) == pytest.approx(1.5)
    assert pricing.tier_usd(free, 10, 10) is None  # unknown, not a made-up number
    with pytest.raises(CatalogError, match="no prices"):
        free.price_usd(1, 1)


def test_token_estimates_and_defaults() -> None:
    assert (DEFAULT_CHARS_PER_TOKEN, DEFAULT_OUTPUT_TOKENS) == (4.0, 256)
    assert pricing.assumed_output_tokens(None) == DEFAULT_OUTPUT_TOKENS
    assert pricing.assumed_output_tokens(0) == 0
    assert pricing.assumed_output_tokens(90) == 90
    for bad in (None, 0, -1.0, float("nan"), float("inf"), True, "3.0"):
        assert pricing.resolve_chars_per_token(bad) == DEFAULT_CHARS_PER_TOKEN
    assert pricing.resolve_chars_per_token(3.5) == 3.5
    assert pricing.request_input_tokens(0) == 1  # at least one token
    assert pricing.request_input_tokens(401, 4.0) == 100 and pricing.request_input_tokens(70, 3.5) == 20
    np.testing.assert_allclose(pricing.request_input_tokens_array(np.array([0.0, 401.0, 70.0]), 3.5), [1, 115, 20])
    np.testing.assert_allclose(pricing.estimated_input_tokens(np.array([10.0])), [2.5])  # not rounded
    assert pricing.median_chars_per_token([3.0, 5.0, 4.5]) == 4.5
    assert pricing.median_chars_per_token([]) == DEFAULT_CHARS_PER_TOKEN
    cost = pricing.tier_costs(_catalog(typical_top=None).tiers, np.array([100.0]), np.array([np.nan]))
    np.testing.assert_allclose(
        cost, [[(100 * 1 + 256 * 2) / 1e6, np.nan, (100 * 10 + 256 * 30) / 1e6]], equal_nan=True
    )


# --------------------------------------------------------------------------------------------------------------
# typical_output_tokens: 0 stays 0 everywhere
# --------------------------------------------------------------------------------------------------------------
def test_zero_typical_output_tokens_stays_zero_in_a_decisions_estimate() -> None:
    """What a Decision carries as estimated_cost_usd (the service passes it through unchanged)."""
    cat = _catalog(typical_top=0)
    assert [pricing.tier_output_tokens(t) for t in cat.tiers] == [DEFAULT_OUTPUT_TOKENS, DEFAULT_OUTPUT_TOKENS, 0]
    c = pricing.call_cost(cat.tiers, 2, 400, chars_per_token=DEFAULT_CHARS_PER_TOKEN)
    assert (c.input_tokens, c.output_tokens) == (100, 0)
    assert c.tier == pytest.approx(100 * 10.0 / 1e6) and c.top_tier == pytest.approx(100 * 10.0 / 1e6)
    c = pricing.call_cost(cat.tiers, 0, 400, chars_per_token=DEFAULT_CHARS_PER_TOKEN)  # the small tier
    assert (c.input_tokens, c.output_tokens) == (100, DEFAULT_OUTPUT_TOKENS)
    assert c.batch_tier == pytest.approx((100 * 1.0 + 256 * 2.0) / 1e6 * 0.5)
    assert c.batch_top_tier == pytest.approx(1000 / 1e6)
    c = pricing.call_cost(cat.tiers, 1, 400)
    assert c.tier is None and c.top_tier is not None  # no prices for that tier and no cost model: unknown


def test_zero_typical_output_tokens_stays_zero_in_training_and_reports() -> None:
    cat = _catalog(typical_top=0)
    est = estimate_costs(pd.DataFrame({"model": ["m-top"], "prompt": ["x" * 400]}), cat)
    assert est.cost_usd.iloc[0] == pytest.approx(100 * 10.0 / 1e6)  # 100 input tokens, 0 output tokens
    decisions = pd.DataFrame({"request_id": ["r"], "tier": ["small"], "prompt_chars": [400]})
    frame = reports.spend_frame_from_decisions(decisions, cat, chars_per_token=4.0)
    assert frame.loc["r", "cost__top"] == pytest.approx(100 * 10.0 / 1e6)


# --------------------------------------------------------------------------------------------------------------
# chars per token: learned by training, stored in the bundle, used by the service and the reports
# --------------------------------------------------------------------------------------------------------------
def test_median_of_learned_chars_per_token() -> None:
    cat = Catalog(tiers=[Tier(name=n, model=n, input_usd_per_1m=1.0, output_usd_per_1m=1.0) for n in "abc"])
    df = pd.DataFrame(
        {
            "model": ["a", "a", "b", "c"],
            "prompt": ["x" * 30, "x" * 30, "x" * 50, "x" * 8],
            "input_tokens": [10, 10, 10, None],
        }
    )
    est = estimate_costs(df, cat)
    assert est.chars_per_token_source == {"a": "learned", "b": "learned", "c": "default"}
    assert est.median_chars_per_token() == pytest.approx(4.0)  # median of 3.0 and 5.0; c's default is not counted
    no_tokens = estimate_costs(df.drop(columns="input_tokens"), cat)
    assert no_tokens.median_chars_per_token() == DEFAULT_CHARS_PER_TOKEN


def test_router_reads_chars_per_token_from_the_bundle() -> None:
    from router.core import Router

    def cpt(training: dict[str, object] | None = None) -> float:
        return float(Router.chars_per_token.fget(_router_meta(training)))  # type: ignore[attr-defined]

    assert cpt() == DEFAULT_CHARS_PER_TOKEN  # a bundle from before training stored it
    assert cpt({"chars_per_token": None}) == DEFAULT_CHARS_PER_TOKEN
    assert cpt({"chars_per_token": 2.5}) == 2.5
    c = pricing.call_cost(_catalog().tiers, 0, 400, chars_per_token=cpt({"chars_per_token": 2.5}))
    assert c.input_tokens == 160


def test_training_writes_chars_per_token_and_the_service_uses_it(tmp_path: Path) -> None:
    from router.core import Router
    from training.demo import demo_catalog, demo_log
    from training.pipeline import TrainConfig, prepare_data, train

    log, cat = demo_log(n_prompts=300, seed=5), demo_catalog()
    prepared = prepare_data(log, cat)
    learned, sources = learn_chars_per_token(log)
    assert set(sources.values()) == {"learned"}  # the demo log has input token counts for every model
    expected = float(np.median(list(learned.values())))
    assert prepared.chars_per_token == pytest.approx(expected) and prepared.chars_per_token != DEFAULT_CHARS_PER_TOKEN

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = train(
        log, catalog=cat, config=TrainConfig(layout="linear"), register="tierwise-pricing", tracking_uri=store,
        progress=False,
    )
    router = Router.load(f"models:/tierwise-pricing/{result.model_version}", tracking_uri=store)
    stored = router.meta.training["chars_per_token"]
    assert isinstance(stored, float) and stored == pytest.approx(prepared.chars_per_token)
    # the router's decisions (and so the service's estimates, passed through) count tokens with the bundle's value
    assert router.chars_per_token == pytest.approx(stored)
    d = router.decide(np.full(len(router.tiers), 0.5), prompt_chars=1000)
    assert d.estimated_cost_usd is not None and d.estimated_cost_usd.input_tokens == max(1, round(1000 / stored))



# --------------------------------------------------------------------------------------------------------------
# tiers without list prices: the fitted cost model prices them
# --------------------------------------------------------------------------------------------------------------
def _fitted_cost_model(n_tiers: int = 3):
    """A cost model fitted on a log that records every call's USD (cost_usd), as training fits it."""
    from router.cost_model import CostModel

    chars = np.array([100, 400, 1600, 6400])
    usd = np.column_stack([chars * 1e-8, chars * 1e-7, chars * 1e-6][:n_tiers])
    return CostModel.fit(chars, usd)


def test_call_cost_uses_list_prices_first_then_the_cost_model() -> None:
    cat, cm = _catalog(typical_top=0), _fitted_cost_model()
    # the "free" tier has no prices: without a cost model its USD is unknown
    plain = pricing.call_cost(cat.tiers, 1, 400, chars_per_token=4.0)
    assert plain.tier is None and plain.source is None
    assert plain.top_tier == pytest.approx(100 * 10.0 / 1e6) and plain.top_tier_source == "list_price"
    priced = pricing.call_cost(cat.tiers, 1, 400, chars_per_token=4.0, cost_model=cm)
    assert priced.source == "cost_model" and priced.tier == pytest.approx(cm.predict([400])[0, 1])
    assert priced.batch_tier == pytest.approx(priced.tier)  # no batch discount on that tier
    # a tier with list prices keeps them even with a cost model
    small = pricing.call_cost(cat.tiers, 0, 400, chars_per_token=4.0, cost_model=cm)
    assert small.source == "list_price" and small.tier == pytest.approx((100 * 1.0 + 256 * 2.0) / 1e6)
    assert small.batch_tier == pytest.approx(small.tier * 0.5)
    assert (small.input_tokens, small.output_tokens) == (100, DEFAULT_OUTPUT_TOKENS)
    with pytest.raises(ValueError, match="chosen"):
        pricing.call_cost(cat.tiers, 3, 400)


def test_priceless_catalog_is_priced_by_the_cost_model_everywhere() -> None:
    # a catalog drafted from a log with per-call cost_usd (e.g. RouterBench): no tier has list prices
    cat = Catalog(name="rb", tiers=[Tier(name=n, model=f"m-{n}", batch_discount=0.5 if n == "c" else 0.0)
                                    for n in "abc"])
    cm = _fitted_cost_model()
    c = pricing.call_cost(cat.tiers, 0, 1000, cost_model=cm)
    assert c.tier is not None and c.top_tier is not None and np.isfinite([c.tier, c.top_tier]).all()
    assert 0 < c.tier < c.top_tier and c.source == c.top_tier_source == "cost_model"
    assert c.batch_top_tier == pytest.approx(c.top_tier * 0.5)  # the provider's batch discount applies
    chars = np.array([100.0, 1000.0, np.nan])
    tok = pricing.request_input_tokens_array(chars)
    assert np.isnan(pricing.tier_costs(cat.tiers, tok)).all()
    filled = pricing.tier_costs(cat.tiers, tok, cost_model=cm, prompt_chars=chars)
    np.testing.assert_allclose(filled[:2], cm.predict([100, 1000]))
    assert np.isnan(filled[2]).all()  # no length: no estimate
    # a tier the log never priced stays unknown, not 0 USD
    unpriced = type(cm).fit([100, 200, 300], np.column_stack([[1e-6, 2e-6, 3e-6], np.full(3, np.nan), [1e-4] * 3]))
    got = pricing.cost_model_usd(unpriced, cat.tiers, [150])
    assert np.isfinite(got[0, 0]) and np.isnan(got[0, 1]) and np.isfinite(got[0, 2])
    with pytest.raises(ValueError, match="prices 2 tiers but the catalog has 3"):
        pricing.cost_model_usd(_fitted_cost_model(2), cat.tiers, [100])
