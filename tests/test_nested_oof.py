"""The leave-one-dataset-out study's nested fold fitter (``benchmarks/nested_oof.py``): research code whose figures the
docs quote, so it is tested like the product."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from nested_oof import blend, out_of_fold  # noqa: E402

from training.selection import score_candidates  # noqa: E402


def test_out_of_fold_fits_through_the_pipeline_without_the_test_split_or_the_fold() -> None:
    from training.demo import demo_catalog, demo_log
    from training.pipeline import TrainConfig, fit_router, prepare_data

    prepared = prepare_data(demo_log(n_prompts=600), demo_catalog())
    lab = prepared.labelled
    split = lab.prompts["split"].to_numpy()
    fold = np.arange(len(lab)) % 3
    config = TrainConfig(layout="linear", linear_bags=1)  # one fit per fold: the folds are under test, not bagging
    oof = out_of_fold(prepared, config, fold)
    want = np.flatnonzero((split != "test") & lab.complete_rows)
    assert sorted(oof.rows.tolist()) == want.tolist()  # every complete non-test prompt once, no test prompt
    assert (lab.prompts["split"].to_numpy() == split).all()  # the caller's splits are untouched
    assert oof.proba.shape == oof.score.shape == (want.size, len(lab.tier_names))
    # fold 0's probabilities are those of a fit that saw neither fold 0 nor the test split
    held = (fold == 0) & (split != "test")
    alone = prepared.labelled.prompts.assign(split=np.where(held, "test", np.where(split == "test", "x", split)))
    prepared.labelled.prompts, kept = alone, prepared.labelled.prompts
    try:
        fitted = fit_router(prepared, config, progress=False)
    finally:
        prepared.labelled.prompts = kept
    assert not (fitted.fit_rows & (held | (split == "test"))).any()
    rows0 = oof.rows[oof.fold == 0]
    np.testing.assert_allclose(
        oof.proba[oof.fold == 0],
        fitted.classifier.predict_proba(
            fitted.features[rows0], groups=[None if pd.isna(t) else str(t) for t in lab.prompts["task"].iloc[rows0]]
        ),
        atol=1e-12,
    )
    # each fold's figure from the pipeline's evaluate equals the selection module's on the same prompts
    for k in range(3):
        m = oof.fold == k
        sc = score_candidates(
            {"default": oof.proba[m]},
            oof.score[m],
            oof.cost[m],
            oof.acceptable[m],
            row_costs=oof.row_costs[m],
            n_boot=1,
        )
        assert sc.gap_closed("default") == pytest.approx(oof.fold_gap_closed[k], abs=1e-9)
    with pytest.raises(ValueError, match="two folds"):
        out_of_fold(prepared, TrainConfig(), np.zeros(len(lab), int))
    with pytest.raises(ValueError, match="one fold per prompt"):
        out_of_fold(prepared, TrainConfig(), fold[:10])


def test_blend_is_the_mean_and_refuses_mismatched_shapes() -> None:
    a, b = np.array([[0.2, 0.4]]), np.array([[0.6, 0.8]])
    np.testing.assert_allclose(blend([a, b]), [[0.4, 0.6]])
    with pytest.raises(ValueError, match="nothing"):
        blend([])
    with pytest.raises(ValueError, match="shapes"):
        blend([a, np.zeros((2, 2))])
