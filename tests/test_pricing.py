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
from router.service import Service
from router.service.model_manager import LoadedModel
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


def _loaded(catalog: Catalog, training: dict[str, object] | None = None) -> LoadedModel:
    """What the service precomputes for a model (the router stubbed: only its catalog and metadata are read)."""
    router = SimpleNamespace(
        ref=SimpleNamespace(label="t/1", name="t", version="1"),
        meta=SimpleNamespace(training=training or {}, encoder={"kind": "static", "source": "x"}),
        catalog=catalog,
    )
    return LoadedModel(router=router, source="local", uri="x")


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
def test_zero_typical_output_tokens_stays_zero_in_the_service_estimate() -> None:
    cat = _catalog(typical_top=0)
    m = _loaded(cat)
    assert m.out_tokens == [DEFAULT_OUTPUT_TOKENS, DEFAULT_OUTPUT_TOKENS, 0]
    in_tok, out_tok, usd, top_usd = Service._costs(m, 2, 400, False)
    assert (in_tok, out_tok) == (100, 0)
    assert usd == pytest.approx(100 * 10.0 / 1e6) and top_usd == pytest.approx(100 * 10.0 / 1e6)
    in_tok, out_tok, usd, top_usd = Service._costs(m, 0, 400, True)  # batch price of the small tier
    assert (in_tok, out_tok) == (100, DEFAULT_OUTPUT_TOKENS)
    assert usd == pytest.approx((100 * 1.0 + 256 * 2.0) / 1e6 * 0.5) and top_usd == pytest.approx(1000 / 1e6)
    _, _, usd, top_usd = Service._costs(m, 1, 400, False)
    assert usd is None and top_usd is not None  # no prices for that tier: unknown


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


def test_service_reads_chars_per_token_from_the_bundle() -> None:
    cat = _catalog()
    assert _loaded(cat).chars_per_token == DEFAULT_CHARS_PER_TOKEN  # a bundle from before training stored it
    assert _loaded(cat, {"chars_per_token": None}).chars_per_token == DEFAULT_CHARS_PER_TOKEN
    m = _loaded(cat, {"chars_per_token": 2.5})
    assert m.chars_per_token == 2.5
    assert Service._costs(m, 0, 400, False)[0] == 160


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
    m = LoadedModel(router=router, source="registry", uri="x")
    assert m.chars_per_token == pytest.approx(stored)
    assert Service._costs(m, 0, 1000, False)[0] == max(1, round(1000 / stored))

