"""The promotion gate: both models scored by one function on the same held-out prompts, a minimum comparison size,
and a paired bootstrap interval (training.promotion)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from router.core import Router
from training import registry
from training.cli import app
from training.demo import demo_catalog, demo_log
from training.evaluation import EvalSet, evaluate_model, knob_sweep, model_proba
from training.metrics import evaluate_router
from training.pipeline import TrainConfig, prepare_data, train
from training.promotion import GateConfig, compare, gate_decision, paired_aiq_bootstrap

NAME = "tierwise-gate"
TINY = Path(__file__).parent / "fixtures" / "demo_tiny_subset.csv"  # copy of ../shared/fixtures (see its README)
CATALOG = Path(__file__).resolve().parents[1] / "models" / "catalog.yaml"
# The gate is under test here, not per-log selection (tests/test_pipeline.py trains the default layout): selection
# keeps linear on the demo log and on the tiny subset, so pinning it trains the same models without the candidates.
LINEAR = TrainConfig(layout="linear")


# --- the pure rule ------------------------------------------------------------------------------------------------
def test_gate_rule() -> None:
    cfg = GateConfig()
    assert (cfg.min_prompts, cfg.margin) == (200, 0.005)
    ok, why = gate_decision(0.0, 0.0, 500, cfg)  # an exact tie promotes
    assert ok and why.startswith("promoted")
    ok, why = gate_decision(0.01, 0.002, 500, cfg)
    assert ok
    ok, why = gate_decision(0.004, -0.02, 500, cfg)  # a noisy small win does not
    assert not ok and "lower bound -0.0200" in why
    ok, why = gate_decision(-0.001, 0.0, 500, cfg)
    assert not ok and "below the champion's" in why
    ok, why = gate_decision(0.05, 0.04, 30, cfg)  # too few prompts, however good it looks
    assert not ok and "only 30 comparison prompts" in why and "200" in why
    ok, why = gate_decision(0.05, 0.04, 30, GateConfig(force=True))
    assert ok and "--force" in why
    assert gate_decision(0.05, 0.04, 30, GateConfig(min_prompts=20))[0]
    assert gate_decision(0.001, -0.009, 500, GateConfig(margin=0.01))[0]


def test_gate_config_refuses_nonsense() -> None:
    for bad in (
        {"margin": math.inf},
        {"margin": -0.1},
        {"min_prompts": 0},
        {"n_boot": 5},
        {"confidence": 1.0},
        {"margin": True},
        {"min_prompts": True},
        {"seed": True},
        {"min_prompts": "200"},
    ):
        with pytest.raises(ValueError):
            GateConfig(**bad)


# --- the bootstrap --------------------------------------------------------------------------------------------------
def _toy(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    score = (rng.random((n, 3)) < np.array([0.5, 0.7, 0.9])).astype(float)
    cost = np.tile([1.0, 3.0, 10.0], (n, 1)) * rng.uniform(0.8, 1.2, (n, 1))
    proba = np.clip(score * 0.6 + rng.random((n, 3)) * 0.4, 0, 1)
    return proba, score, cost


def test_bootstrap_point_estimate_is_the_evaluation_aiq() -> None:
    from training.metrics import sweep_choices

    proba, score, cost = _toy()
    _, choices = sweep_choices(proba, "utility", tier_costs=[1.0, 3.0, 10.0])
    a, b, delta, low, high = paired_aiq_bootstrap(choices, choices, score, cost, n_boot=200)
    rep = evaluate_router(proba, score, cost, score > 0.5, rule="utility", tier_costs=[1.0, 3.0, 10.0])
    assert a == pytest.approx(rep.aiq["router"], abs=1e-12)
    assert (a, delta, low, high) == (b, 0.0, 0.0, 0.0)  # the same router: exactly no difference in every resample


def test_bootstrap_point_estimate_matches_the_threshold_rule_sweep() -> None:
    from training.metrics import sweep_choices

    proba, score, cost = _toy(seed=4)
    _, choices = sweep_choices(proba, "threshold")
    a, *_ = paired_aiq_bootstrap(choices, choices, score, cost, n_boot=100)
    rep = evaluate_router(proba, score, cost, score > 0.5, rule="threshold")
    assert a == pytest.approx(rep.aiq["router"], abs=1e-12)


def test_bootstrap_separates_a_better_router_from_noise() -> None:
    from training.metrics import sweep_choices

    proba, score, cost = _toy(n=400)
    noise = np.random.default_rng(1).random(proba.shape)
    _, good = sweep_choices(proba, "utility", tier_costs=[1.0, 3.0, 10.0])
    _, blind = sweep_choices(noise, "utility", tier_costs=[1.0, 3.0, 10.0])
    a, b, delta, low, high = paired_aiq_bootstrap(good, blind, score, cost, n_boot=300, seed=3)
    assert delta == pytest.approx(a - b) and low <= delta <= high
    assert low > 0  # informed probabilities beat random ones on every plausible resample
    again = paired_aiq_bootstrap(good, blind, score, cost, n_boot=300, seed=3)
    assert again == (a, b, delta, low, high)  # reproducible
    few = paired_aiq_bootstrap(good[:, :20], blind[:, :20], score[:20], cost[:20], n_boot=300, seed=3)
    assert few[4] - few[3] > high - low  # fewer prompts, wider interval


# --- end to end, real MLflow store -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('gate') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def champion(store: str):
    result = train(demo_log(), catalog=demo_catalog(), register=NAME, tracking_uri=store, config=LINEAR, progress=False)
    assert result.promoted and result.promotion_reason == "no current champion"
    return result


def _train_tiny(store: str, *extra: str) -> tuple[str, str]:
    """``tierwise train`` on the tiny subset through the CLI: (output, the new version)."""
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(TINY),
            "--catalog",
            str(CATALOG),
            "--register",
            NAME,
            "--tracking-uri",
            store,
            "--config",
            LINEAR.model_dump_json(include={"layout"}),
            "--quiet",
            *extra,
        ],
    )
    assert res.exit_code == 0, res.output
    version = registry.alias_version(NAME, "challenger", store)
    assert version is not None and f"models:/{NAME}/{version}" in res.output
    return res.output, version


def test_tiny_subset_does_not_become_champion(champion, store: str) -> None:
    # At review, 150 prompts (5% of the demo log) became champion over the full-data model: the gate compared AIQ on
    # its ~30 test prompts. Too few prompts to tell the models apart now block the promotion.
    out, version = _train_tiny(store)
    assert "champion: unchanged (not promoted: only" in out and "the gate needs 200" in out
    assert "promotion gate: AIQ challenger" in out  # the comparison is still shown
    assert registry.alias_version(NAME, "champion", store) == champion.model_version
    client = MlflowClient(tracking_uri=store)
    metrics = client.get_run(client.get_model_version(NAME, version).run_id).data.metrics
    assert metrics["gate_n_prompts"] < 200 and metrics["gate_promoted"] == 0.0
    assert metrics["gate_delta_ci_low"] <= metrics["gate_delta_aiq"] <= metrics["gate_delta_ci_high"]

    # --force promotes anyway, and says so
    try:
        out, forced = _train_tiny(store, "--force")
        assert f"champion: moved to v{forced} (promoted by --force although only" in out
        assert registry.alias_version(NAME, "champion", store) == forced
    finally:
        registry.promote(NAME, champion.model_version, store)


def test_tiny_model_loses_on_prompts_neither_model_fitted(champion, store: str) -> None:
    # The review's second finding: on the full demo test split the tiny model is worse (AIQ 0.852 vs 0.860). On the
    # full log's test prompts that the tiny run never fitted on, the bootstrap itself refuses it, whatever the
    # minimum size.
    import pandas as pd

    _, version = _train_tiny(store, "--no-promote")
    tiny = Router.load(f"models:/{NAME}/{version}", tracking_uri=store)
    full = Router.load(f"models:/{NAME}/{champion.model_version}", tracking_uri=store)
    tiny_prep = prepare_data(pd.read_csv(TINY), demo_catalog())
    tiny_fitted = set(tiny_prep.labelled.prompts.index[tiny_prep.labelled.prompts["split"] != "test"])
    lab = prepare_data(demo_log(), demo_catalog()).labelled
    rows = (lab.prompts["split"].to_numpy() == "test") & ~lab.prompts.index.isin(tiny_fitted)
    es = EvalSet.from_labelled(lab, rows)
    assert len(es) >= 200
    verdict = compare(tiny, full, es, GateConfig(min_prompts=1))
    assert verdict.delta < 0 and not verdict.promote, verdict.describe()


def test_retraining_the_champion_config_on_the_same_log_ties_and_promotes(champion, store: str) -> None:
    try:
        again = train(
            demo_log(), catalog=demo_catalog(), register=NAME, tracking_uri=store, config=LINEAR, progress=False
        )
        assert again.gate is not None
        assert again.gate.n_prompts >= 200
        assert again.gate.delta == 0.0 and again.gate.ci_low == 0.0 == again.gate.ci_high
        assert again.gate.n_champion_heldout == again.gate.n_prompts  # same split: the champion held them all out
        assert again.promoted, again.promotion_reason
        assert registry.alias_version(NAME, "champion", store) == again.model_version
    finally:
        registry.promote(NAME, champion.model_version, store)


def test_worse_challenger_is_refused_with_its_interval(champion, store: str) -> None:
    weak = TrainConfig(
        layout="per_tier", n_estimators=1, lgbm_params={"learning_rate": 0.001}, structural_features=False
    )
    result = train(demo_log(), catalog=demo_catalog(), register=NAME, tracking_uri=store, config=weak, progress=False)
    assert not result.promoted and "below the champion's" in result.promotion_reason
    assert result.gate is not None and result.gate.delta < 0 and result.gate.ci_high >= result.gate.delta
    assert registry.alias_version(NAME, "champion", store) == champion.model_version


def test_champion_and_challenger_are_scored_with_the_same_inputs(champion, store: str) -> None:
    # At review the challenger was scored with each test prompt's logged task and the champion without it.
    prepared = prepare_data(demo_log(), demo_catalog())
    lab = prepared.labelled
    es = EvalSet.from_labelled(lab, lab.prompts["split"].to_numpy() == "test")
    assert es.tasks is not None and len(es) >= 200
    model = Router.load(f"models:/{NAME}/{champion.model_version}", tracking_uri=store)
    other = Router.load(f"models:/{NAME}/{champion.model_version}", tracking_uri=store)
    verdict = compare(model, other, es)
    # the gate's champion score is the evaluation function's, with the tasks the challenger gets
    assert verdict.aiq_champion == pytest.approx(evaluate_model(model, es).aiq["router"], abs=1e-12)
    assert verdict.aiq_challenger == verdict.aiq_champion and verdict.delta == 0.0 and verdict.promote
    # and the training run's own test AIQ is that same number
    assert champion.metrics["aiq"] == pytest.approx(verdict.aiq_champion, abs=1e-9)
    # naming the task changes this model's decisions, so scoring one model without it would tilt the comparison
    blind = EvalSet(es.prompts, es.roles, None, es.score, es.cost, es.acceptable, es.tier_names)
    assert not np.array_equal(knob_sweep(model, es), knob_sweep(model, blind))
    assert not np.allclose(model_proba(model, es), model_proba(model, blind))


def test_first_champion_rule() -> None:
    from types import SimpleNamespace

    from training.promotion import first_champion

    good = SimpleNamespace(aiq={"router": 0.8, "zero": 0.7})
    assert first_champion(good, 600, GateConfig()).reason == "no current champion"
    few = first_champion(good, 3, GateConfig())  # nothing to keep instead, but the run says its figures are thin
    assert few.promote and "warning: only 3 test prompts" in few.reason
    worse = first_champion(SimpleNamespace(aiq={"router": 0.6, "zero": 0.7}), 600, GateConfig())
    assert not worse.promote and "below the zero router's" in worse.reason
    assert first_champion(SimpleNamespace(aiq={"router": 0.6, "zero": 0.7}), 600, GateConfig(force=True)).promote
    assert not first_champion(None, 0, GateConfig()).promote


def test_a_run_that_fails_after_the_verdict_moves_no_alias(
    champion, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    before = {a: registry.alias_version(NAME, a, store) for a in ("champion", "challenger")}
    real = mlflow.set_tag

    def fail_late(key: str, value: object) -> None:
        if key == "tierwise.catalog":  # after the gate's verdict (forced: promote), before the aliases move
            raise RuntimeError("tracking server went away")
        real(key, value)

    monkeypatch.setattr(mlflow, "set_tag", fail_late)
    with pytest.raises(RuntimeError, match="went away"):
        train(
            demo_log(n_prompts=400, seed=3),
            catalog=demo_catalog(),
            register=NAME,
            tracking_uri=store,
            config=TrainConfig(layout="linear", linear_bags=1),
            progress=False,
            gate=GateConfig(force=True),
        )
    assert {a: registry.alias_version(NAME, a, store) for a in ("champion", "challenger")} == before
