"""A catalog without list prices, trained on a log that records each call's cost_usd (as RouterBench's): the router's
decisions still carry a finite USD cost (from the bundle's fitted cost model), the reports price every tier, and the
escalation path only lists tiers that raise P(acceptable)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from router.catalog import Catalog
from router.core import Router
from training import reports
from training.demo import demo_catalog, demo_log
from training.pipeline import TrainConfig, fit_router, prepare_data, save_bundle


def _priceless(cat: Catalog) -> Catalog:
    raw = cat.model_dump(mode="json")
    for tier in raw["tiers"]:
        tier["input_usd_per_1m"] = tier["output_usd_per_1m"] = None
    return Catalog.model_validate(raw)


@pytest.fixture(scope="module")
def priceless_router(tmp_path_factory: pytest.TempPathFactory) -> Router:
    cat = _priceless(demo_catalog())
    assert not any(t.has_prices for t in cat.tiers)
    log = demo_log(n_prompts=300, seed=3)  # every call has its logged cost_usd
    assert log["cost_usd"].notna().all()
    prepared = prepare_data(log, cat)
    fitted = fit_router(prepared, TrainConfig(layout="linear"), progress=False)
    directory = tmp_path_factory.mktemp("bundle") / "bundle"
    save_bundle(fitted, directory, {}, {"chars_per_token": float(prepared.chars_per_token)})
    return Router.load(str(directory))  # the bundle as written and read back


def test_decisions_carry_a_finite_cost_without_list_prices(priceless_router: Router) -> None:
    r = priceless_router
    assert r.cost_model is not None and all(r.cost_model.known)
    prompts = ["What is 2 + 2?", "Summarise this report for the board. " * 40]
    decisions = r.route_batch(prompts)
    for text, d in zip(prompts, decisions, strict=True):
        c = d.estimated_cost_usd
        assert c is not None and c.source == "cost_model" and c.top_tier_source == "cost_model"
        assert c.tier is not None and c.top_tier is not None and c.batch_tier is not None
        assert np.isfinite([c.tier, c.top_tier, c.batch_tier]).all() and c.tier > 0
        expected = r.cost_model.predict([len(text)])[0]
        assert c.tier == pytest.approx(expected[d.tier_index]) and c.top_tier == pytest.approx(expected[-1])
    # the same prompt on every tier: the fitted USD grows with the tier, as in the log
    forced = [r.decide(np.full(4, 0.5), min_tier=t, max_tier=t, prompt_chars=500).estimated_cost_usd for t in r.tiers]
    usd = [c.tier for c in forced if c is not None]
    assert len(usd) == 4 and usd == sorted(usd) and usd[0] < usd[-1]
    # serialised as the service and the pyfunc see it: numbers, never null
    dumped = decisions[0].model_dump(mode="json")
    cost = dumped["estimated_cost_usd"]
    assert isinstance(cost["tier"], float) and isinstance(cost["top_tier"], float)


def test_router_escalates_only_to_tiers_more_likely_to_answer(priceless_router: Router) -> None:
    r = priceless_router
    # medium is pricier than small and less likely to answer: never worth escalating to
    proba = np.array([0.6, 0.85, 0.7, 0.9])
    d = r.decide(proba, threshold=0.0, prompt_chars=100)  # knob 0: the cheapest tier
    assert d.tier == "nano"
    assert d.escalation == ["small", "large"]
    assert r.decide(proba, threshold=0.0, max_tier="medium", prompt_chars=100).escalation == ["small"]
    assert r.decide(np.array([0.9, 0.3, 0.5, 0.8]), threshold=0.0).escalation == []


def test_savings_report_prices_a_priceless_catalog(priceless_router: Router) -> None:
    r = priceless_router
    decisions = pd.DataFrame(
        {"request_id": ["r1", "r2"], "tier": ["nano", "large"], "prompt_chars": [200, 3000], "router_version": "t/1"}
    )
    with pytest.raises(ValueError, match="lack a cost"):
        reports.savings_summary(reports.spend_frame_from_decisions(decisions, r.catalog))
    frame = reports.spend_frame_from_decisions(decisions, r.catalog, cost_model=r.cost_model)
    assert r.cost_model is not None
    np.testing.assert_allclose(
        frame[[f"cost__{t}" for t in r.tiers]].to_numpy(), r.cost_model.predict([200, 3000])
    )
    s = reports.savings_summary(frame)
    assert 0 < s.loc["routed", "spend_usd"] < s.loc["always large", "spend_usd"]


def test_the_bundle_records_which_tiers_the_log_priced(priceless_router: Router) -> None:
    # the cost model records which tiers the log priced; a reader of an older release ignores the extra field
    assert priceless_router.cost_model is not None
    raw = priceless_router.meta.training["cost_model"]
    assert raw["priced"] == [True, True, True, True]
    assert {"intercept", "slope", "chars_range", "unit"} <= set(raw)
