"""Labelling edge cases: ties, none acceptable, graded scores, per-task thresholds, repeats, missing tiers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from router.catalog import Acceptability, Catalog, Tier
from training.labels import assign_splits, cheapest_acceptable, label_prompts


def _catalog(threshold: float = 1.0, per_task: dict | None = None) -> Catalog:
    return Catalog(
        tiers=[Tier(name=n, model=f"m-{n}") for n in ("a", "b", "c")],
        acceptability=Acceptability(threshold=threshold, per_task=per_task or {}),
    )


def _attempts(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["prompt_id", "prompt", "model", "score", "cost_usd", "task"])


def test_cheapest_acceptable_by_prompt_cost_not_catalog_order() -> None:
    df = _attempts(
        [("p1", "x", "m-a", 0.0, 1.0, None), ("p1", "x", "m-b", 1.0, 5.0, None), ("p1", "x", "m-c", 1.0, 3.0, None)]
    )
    lab = label_prompts(df, _catalog())
    assert lab.prompts.loc["p1", "label_tier"] == "c"  # c is cheaper than b on this prompt
    assert not lab.prompts.loc["p1", "no_acceptable"]


def test_cost_tie_goes_to_lower_tier() -> None:
    df = _attempts(
        [("p", "x", "m-a", 1.0, 2.0, None), ("p", "x", "m-b", 1.0, 2.0, None), ("p", "x", "m-c", 1.0, 9.0, None)]
    )
    assert label_prompts(df, _catalog()).prompts.loc["p", "label"] == 0


def test_none_acceptable_falls_back_to_best_effort() -> None:
    df = _attempts(
        [("p", "x", "m-a", 0.2, 1.0, "t"), ("p", "x", "m-b", 0.6, 2.0, "t"), ("p", "x", "m-c", 0.6, 3.0, "t")]
    )
    lab = label_prompts(df, _catalog(threshold=0.9))
    row = lab.prompts.loc["p"]
    assert bool(row["no_acceptable"]) is True
    assert row["label_tier"] == "b"  # highest score, cheapest among equals


def test_binary_all_failed_labels_cheapest_tier() -> None:
    df = _attempts([("p", "x", m, 0.0, c, None) for m, c in (("m-a", 1.0), ("m-b", 2.0), ("m-c", 3.0))])
    row = label_prompts(df, _catalog()).prompts.loc["p"]
    assert row["no_acceptable"] and row["label"] == 0


def test_graded_scores_and_per_task_threshold() -> None:
    rows = []
    for pid, task in (("p1", "chat"), ("p2", "code")):
        rows += [
            (pid, pid, "m-a", 0.75, 1.0, task), (pid, pid, "m-b", 0.85, 2.0, task), (pid, pid, "m-c", 0.95, 3.0, task)
        ]
    lab = label_prompts(_attempts(rows), _catalog(threshold=0.9, per_task={"chat": 0.7}))
    assert lab.prompts.loc["p1", "label_tier"] == "a"  # chat: 0.75 >= 0.7
    assert lab.prompts.loc["p2", "label_tier"] == "c"  # default: only 0.95 >= 0.9


def test_repeated_attempts_are_averaged() -> None:
    df = _attempts(
        [
            ("p", "x", "m-a", 1.0, 1.0, None),
            ("p", "x", "m-a", 0.0, 3.0, None),
            ("p", "x", "m-b", 1.0, 4.0, None),
            ("p", "x", "m-c", 1.0, 5.0, None),
        ]
    )
    lab = label_prompts(df, _catalog(threshold=0.5))
    assert lab.score[0, 0] == pytest.approx(0.5)
    assert lab.cost[0, 0] == pytest.approx(2.0)
    assert lab.prompts.loc["p", "label_tier"] == "a"
    assert lab.notes and "averaged" in lab.notes[0]


def test_missing_tiers_are_nan_and_incomplete() -> None:
    df = _attempts([("p", "x", "m-b", 1.0, 2.0, None)])
    lab = label_prompts(df, _catalog())
    assert np.isnan(lab.score[0, 0]) and np.isnan(lab.acceptable[0, 2])
    assert lab.prompts.loc["p", "label_tier"] == "b"
    assert not lab.prompts.loc["p", "complete"]
    assert not lab.complete_rows[0]


def test_unknown_model_rejected() -> None:
    with pytest.raises(ValueError, match="not in the catalog"):
        label_prompts(_attempts([("p", "x", "zzz", 1.0, 1.0, None)]), _catalog())


def test_cheapest_acceptable_vectorised() -> None:
    score = np.array([[1, 1, 1], [0, 0, 1], [0, 0, 0], [np.nan, 1, 1]], float)
    cost = np.array([[3, 2, 1], [1, 2, 3], [1, 2, 3], [np.nan, 5, 4]], float)
    label, none = cheapest_acceptable(score, cost, score)
    assert label.tolist() == [2, 2, 0, 2]
    assert none.tolist() == [False, False, True, False]


def test_assign_splits_deterministic_and_respects_given_test() -> None:
    ids = pd.Index([f"p{i}" for i in range(1000)])
    a = assign_splits(ids, None, seed=3)
    b = assign_splits(ids, None, seed=3)
    assert a.equals(b)
    shares = a.value_counts(normalize=True)
    assert 0.15 < shares["test"] < 0.25 and 0.12 < shares["calibration"] < 0.2
    given = pd.Series(["test"] * 100 + ["train"] * 900, index=ids)
    s = assign_splits(ids, given, calibration_fraction=0.25)
    assert (s.iloc[:100] == "test").all()
    assert set(s.iloc[100:]) == {"train", "calibration"}
    assert 0.18 < (s.iloc[100:] == "calibration").mean() < 0.32


# ---- per-tier observations (issue 11: feedback collected under a router) -----------------------------------------
def _partly_observed() -> pd.DataFrame:
    tiers = (("m-a", 1.0), ("m-b", 2.0), ("m-c", 3.0))
    rows = [(f"full{i}", f"f{i}", m, 1.0, c, None) for i in range(2) for m, c in tiers]
    rows += [(f"b{i}", f"b{i}", "m-b", 1.0, 2.0, None) for i in range(2)]  # routed to b only
    rows += [("c0", "c0", "m-c", 0.0, 3.0, None)]  # routed to c only
    rows += [("ab", "ab", "m-a", 0.0, 1.0, None), ("ab", "ab", "m-b", 1.0, 2.0, None)]
    return _attempts(rows)


def test_summary_counts_prompts_observed_per_tier() -> None:
    s = label_prompts(_partly_observed(), _catalog()).summary()
    assert s["n_prompts"] == 6
    assert s["tier_observed_prompts"] == {"a": 3, "b": 5, "c": 3}
    assert s["single_tier_prompts"] == {"a": 0, "b": 2, "c": 1}
    assert s["single_tier_share"] == pytest.approx(3 / 6)
    import json

    assert json.loads(json.dumps(s)) == s  # logged to MLflow as labelled_summary.json


def test_single_tier_warning_when_most_prompts_saw_one_tier() -> None:
    from training.labels import single_tier_warning

    lab = label_prompts(_partly_observed(), _catalog())
    assert single_tier_warning(lab) is None  # exactly half: not most
    more = pd.concat([_partly_observed(), _attempts([("b9", "b9", "m-b", 0.0, 2.0, None)])], ignore_index=True)
    msg = single_tier_warning(label_prompts(more, _catalog()))
    assert msg is not None
    assert msg.startswith("4 of 7 prompts (57%) were observed on one tier only (a: 0, b: 3, c: 1;")
    assert "prompts observed per tier: a: 3, b: 6, c: 3" in msg
    assert "biased toward that router's choices" in msg
    full = _attempts([(f"p{i}", f"p{i}", m, 1.0, 1.0, None) for i in range(5) for m in ("m-a", "m-b", "m-c")])
    assert single_tier_warning(label_prompts(full, _catalog())) is None
