"""Tests for the SYNTHETIC demo catalog and log (training.demo)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from router.catalog import Catalog
from training.costs import estimate_costs
from training.demo import TASKS, demo_catalog, demo_log, write_demo_catalog, write_demo_log
from training.readers import read_log, validate_log


@pytest.fixture(scope="module")
def log() -> pd.DataFrame:
    return demo_log()


def _cheapest_acceptable(log: pd.DataFrame, catalog: Catalog) -> pd.Series:
    """Per prompt: the cheapest tier whose mean score meets the threshold, or 'none' (independent of labels.py)."""
    thr = log["task"].map(lambda t: catalog.acceptability.threshold_for(t))
    ok = log.assign(ok=log["score"]).groupby(["prompt_id", "model"])["ok"].mean()
    thr_pm = thr.groupby([log["prompt_id"], log["model"]]).first()
    acc = (ok >= thr_pm - 1e-12).unstack("model")[catalog.models]
    first = acc.to_numpy().argmax(axis=1)
    names = np.array(catalog.tier_names, dtype=object)[first]
    return pd.Series(np.where(acc.to_numpy().any(axis=1), names, "none"), index=acc.index)


def test_catalog_is_synthetic_and_consistent(tmp_path: Path) -> None:
    cat = demo_catalog()
    assert cat.tier_names == ["nano", "small", "medium", "large"]
    assert cat.models == ["demo-nano", "demo-small", "demo-medium", "demo-large"]
    assert {t.provider for t in cat.tiers} == {"synthetic"}
    prices = [t.price_usd(1000, 1000) for t in cat.tiers]
    assert prices == sorted(prices)
    assert cat.planning.min_plan_tier == "medium" and cat.planning.min_verify_tier == "small"
    path = write_demo_catalog(tmp_path / "c.yaml")
    assert path.read_text().startswith("# SYNTHETIC demo catalog")
    assert Catalog.from_yaml(path) == cat


def test_deterministic_and_fast() -> None:
    start = time.perf_counter()
    a = demo_log(n_prompts=3000, seed=0)
    assert time.perf_counter() - start < 3.0  # < 1 s on a normal machine; generous for slow CI
    pd.testing.assert_frame_equal(a, demo_log(n_prompts=3000, seed=0))
    b = demo_log(n_prompts=3000, seed=1)
    assert not a["score"].equals(b["score"])
    small = demo_log(n_prompts=50, seed=0)
    assert small["prompt_id"].nunique() == 50


def test_canonical_format(log: pd.DataFrame) -> None:
    assert isinstance(log.index, pd.RangeIndex)
    # the log passes the reader's validation unchanged (apart from types it already has)
    checked = validate_log(log)
    pd.testing.assert_frame_equal(checked, log, check_dtype=False)
    assert log["synthetic"].all()
    assert "split" not in log.columns
    assert set(log["task"]) == set(TASKS)
    assert set(log["role"]) == {"single", "plan", "execute", "verify"}
    assert (log.loc[log["role"] != "single", "task"] == "planning").all()
    assert (log["role"] == "single").mean() > 0.8
    for col in ("score", "cost_usd", "input_tokens", "output_tokens", "latency_ms"):
        assert log[col].dtype == np.float64 and (log[col] >= 0).all()
    assert log["score"].between(0, 1).all()
    ts = log["timestamp"]
    assert ts.notna().all() and str(ts.dt.tz) == "UTC"
    assert ts.min() >= pd.Timestamp("2025-01-06", tz="UTC") and ts.max() < pd.Timestamp("2025-02-04", tz="UTC")


def test_every_prompt_on_every_tier_with_some_repeats(log: pd.DataFrame) -> None:
    pairs = log.groupby(["prompt_id", "model"]).size()
    assert len(pairs) == 3000 * 4
    repeated = (pairs > 1).mean()
    assert 0.02 < repeated < 0.04
    assert pairs.max() == 2


def test_scores_graded_and_binary(log: pd.DataFrame) -> None:
    graded = log["task"].isin(["chat", "summarize"])
    assert set(log.loc[~graded, "score"].unique()) <= {0.0, 1.0}
    g = log.loc[graded, "score"]
    assert g.nunique() > 20 and ((g > 0) & (g < 1)).any()


def test_costs_follow_catalog_prices(log: pd.DataFrame) -> None:
    cat = demo_catalog()
    no_cost = log.drop(columns=["cost_usd"])
    est = estimate_costs(no_cost, cat)
    assert (est.source == "tokens").all()
    np.testing.assert_allclose(est.cost_usd.to_numpy(), log["cost_usd"].to_numpy(), rtol=1e-12)
    # the tokenizer ratio differs per model and is learnable from the log
    assert est.chars_per_token["demo-medium"] < est.chars_per_token["demo-large"]
    mean_cost = log.groupby("model")["cost_usd"].mean()[cat.models]
    assert mean_cost.is_monotonic_increasing


def test_label_distribution_is_non_trivial(log: pd.DataFrame) -> None:
    share = _cheapest_acceptable(log, demo_catalog()).value_counts(normalize=True)
    assert 0.30 <= share["nano"] <= 0.40
    assert 0.20 <= share["small"] <= 0.30
    assert 0.15 <= share["medium"] <= 0.25
    assert 0.10 <= share["large"] <= 0.15
    assert 0.03 <= share["none"] <= 0.08


def test_label_is_learnable_from_text(log: pd.DataFrame) -> None:
    sklearn = pytest.importorskip("sklearn")
    del sklearn
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    labels = _cheapest_acceptable(log, demo_catalog())
    prompts = log.groupby("prompt_id")["prompt"].first().loc[labels.index]
    # (not seed 0: that stream is the generator's own, and its first draws pick the task of each prompt)
    test = np.random.default_rng(2024).random(len(labels)) < 0.3
    vec = TfidfVectorizer(min_df=2, sublinear_tf=True)
    x_train = vec.fit_transform(prompts[~test])
    clf = LogisticRegression(max_iter=1000, C=3.0).fit(x_train, labels[~test])
    acc = (clf.predict(vec.transform(prompts[test])) == labels[test]).mean()
    majority = labels[~test].value_counts().index[0]
    base = (labels[test] == majority).mean()
    assert acc > base + 0.10, (acc, base)  # about 0.50 vs 0.33


def test_difficulty_is_visible_but_noisy(log: pd.DataFrame) -> None:
    first = log.groupby("prompt_id").first()
    length = first["prompt"].str.len()
    corr = np.corrcoef(length, first["difficulty"])[0, 1]
    assert 0.3 < corr < 0.95
    assert not first["prompt"].str.contains("demo-").any()


@pytest.mark.parametrize("name", ["demo.csv", "demo.csv.gz", "demo.parquet", "demo.jsonl", "demo.json"])
def test_write_demo_log_round_trips(tmp_path: Path, name: str) -> None:
    path = write_demo_log(tmp_path / name, n_prompts=40, seed=3)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # atomic: no temp files left
    back = read_log(path)
    expected = demo_log(n_prompts=40, seed=3)
    assert back["prompt_id"].tolist() == expected["prompt_id"].tolist()
    assert back["prompt"].tolist() == expected["prompt"].tolist()
    np.testing.assert_allclose(back["score"], expected["score"])
    np.testing.assert_allclose(back["cost_usd"], expected["cost_usd"], rtol=1e-9)
    assert (back["timestamp"] == expected["timestamp"]).all()
    assert back["synthetic"].astype(bool).all()


def test_write_demo_log_rejects_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported extension"):
        write_demo_log(tmp_path / "demo.xlsx", n_prompts=5)
