"""Per-log model selection in training (``layout="auto"``): candidates scored out of fold, guarded choice, reuse."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from training.demo import demo_catalog, demo_log
from training.evaluation import model_proba
from training.pipeline import (
    DEFAULT_CANDIDATES,
    MIN_SELECTION_PROMPTS,
    TrainConfig,
    evaluate,
    fit_router,
    heldout_set,
    prepare_data,
)


@pytest.fixture(scope="module")
def demo_prepared():
    # the 600-prompt demo log: test_nested_oof, test_notebooks and test_pipeline embed the same prompts (one cache)
    return prepare_data(demo_log(n_prompts=600), demo_catalog())


@pytest.fixture(scope="module")
def demo_auto(demo_prepared):
    return fit_router(demo_prepared, TrainConfig(), progress=False)


def _band_log() -> pd.DataFrame:
    """The demo log, but its two cheapest tiers answer acceptably exactly when the prompt's length is in a middle
    band: a non-monotone signal trees find and a linear model of the features cannot. 800 prompts (the log of
    test_pipeline's sampled-selection test) keep per_tier's win clear of noise: on seeds 0-4 of this log it won
    selection with a 5% bootstrap lower bound of +0.006 to +0.022 AIQ (seed 0, used here: +0.022; 1,500 prompts:
    +0.017) and beat linear on the test split every time."""
    df = demo_log(n_prompts=800)
    length = df["prompt"].str.len()
    band = length.between(length.quantile(0.3), length.quantile(0.6)).astype(float)
    cheap = df["model"].isin(["demo-nano", "demo-small"])
    df.loc[cheap, "score"] = band[cheap]
    return df


def test_default_is_auto_with_the_fitted_layout_recorded(demo_prepared, demo_auto) -> None:
    assert TrainConfig().layout == "auto"
    fitted = demo_auto
    sel = fitted.selection
    assert sel is not None and fitted.config.layout == sel.chosen in DEFAULT_CANDIDATES
    assert fitted.classifier.layout == sel.chosen
    assert set(sel.aiq) == set(DEFAULT_CANDIDATES) and sel.n_boot == TrainConfig().selection_boot
    split = demo_prepared.labelled.prompts["split"].to_numpy()
    assert sel.n_prompts == int((demo_prepared.labelled.complete_rows & (split != "test")).sum())
    assert all(np.isfinite(v) for v in sel.metrics().values())
    md = sel.to_markdown()
    assert "Model selection" in md and all(c in md for c in DEFAULT_CANDIDATES)
    # the chosen layout routes exactly as if it had been pinned: selection only chooses
    pinned = fit_router(demo_prepared, TrainConfig(layout=sel.chosen), progress=False)
    assert pinned.selection is None and pinned.threshold == fitted.threshold
    es = heldout_set(demo_prepared, TrainConfig())
    np.testing.assert_allclose(
        model_proba(fitted.as_router(), es, features=fitted.features[es.rows]),
        model_proba(pinned.as_router(), es, features=pinned.features[es.rows]),
    )


def test_selection_switches_when_another_layout_wins_beyond_noise() -> None:
    prepared = prepare_data(_band_log(), demo_catalog())
    auto = fit_router(prepared, TrainConfig(), progress=False)
    assert auto.selection is not None and auto.config.layout in ("per_tier", "blend")
    sel = auto.selection
    assert sel.diff_lower[sel.chosen] >= 0 and sel.aiq[sel.chosen] > sel.aiq["linear"]
    assert "beats linear" in sel.reason
    # a candidate set without the winner keeps the fallback, fitted as if pinned (the linear router below)
    linear = fit_router(prepared, TrainConfig(candidates=["linear"]), progress=False)
    assert linear.config.layout == "linear" == linear.classifier.layout and linear.selection is not None
    assert linear.selection.reason == "the only candidate"
    # and the choice holds on the test split, which selection never saw
    assert evaluate(prepared, auto).metrics()["aiq"] > evaluate(prepared, linear).metrics()["aiq"]


def test_the_level_and_resamples_reach_the_selection(demo_prepared, demo_auto) -> None:
    # at a level of 0.5 the best point estimate wins; at the default level the same figures keep linear unless the
    # lower bound of the difference is >= 0 (a light fit: the settings are under test here, not the candidates)
    config = TrainConfig(selection_level=0.5, selection_boot=50, n_estimators=50, linear_bags=1)
    loose = fit_router(demo_prepared, config, progress=False)
    assert loose.selection is not None and loose.selection.n_boot == 50 and loose.selection.level == 0.5
    assert loose.selection.chosen == loose.selection.best
    sel = demo_auto.selection
    assert sel is not None and sel.level == TrainConfig().selection_level
    if sel.best != "linear" and sel.diff_lower[sel.best] < 0:
        assert sel.chosen == "linear" and "within noise" in sel.reason
    else:
        assert sel.chosen == sel.best


def test_small_log_keeps_the_fallback_without_fitting_candidates() -> None:
    prepared = prepare_data(demo_log(n_prompts=110), demo_catalog())
    config = TrainConfig(selection_fallback="blend", selection_level=0.2, n_estimators=20, linear_bags=1)
    fitted = fit_router(prepared, config, progress=False)
    assert fitted.config.layout == "blend" and fitted.classifier.layout == "blend"
    assert fitted.selection is not None and fitted.selection.aiq == {}
    assert fitted.selection.level == 0.2  # the configured level is what the run records
    assert f"selection needs {MIN_SELECTION_PROMPTS}" in fitted.selection.reason
    assert "no candidate was scored" in fitted.selection.to_markdown()


def test_selection_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="selection_fallback"):
        TrainConfig(candidates=["per_tier", "blend"])  # the fallback (linear) is not a candidate
    with pytest.raises(ValidationError, match="distinct"):
        TrainConfig(candidates=["linear", "linear"])
    with pytest.raises(ValidationError):
        TrainConfig(candidates=["stacked"], selection_fallback="stacked")  # not a selection candidate
    with pytest.raises(ValidationError):
        TrainConfig(candidates=[])
    for bad in (0, 0.6, float("nan")):
        with pytest.raises(ValidationError, match="selection_level"):
            TrainConfig(selection_level=bad)
    with pytest.raises(ValidationError, match="group_shrink"):
        TrainConfig(group_shrink=-1)
    # a pinned layout ignores the candidates
    assert TrainConfig(layout="per_tier", candidates=["blend"]).layout == "per_tier"
