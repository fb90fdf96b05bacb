"""Tests for training.metrics (hand-computable cases) and smoke tests for training.plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from router.decision import decide_batch
from training import metrics as M


def choose(proba: np.ndarray, threshold: float, min_tier: int | None = None, max_tier: int | None = None) -> np.ndarray:
    """The threshold rule, the one way the product decides (router.decision)."""
    return decide_batch(proba, threshold, min_tier=min_tier, max_tier=max_tier, rule="threshold")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------------


def _synthetic(n: int = 400, n_tiers: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Binary scores that get likelier with the tier, noisy but informative probabilities, per-prompt costs."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n)
    capability = np.linspace(0.3, 1.0, n_tiers)
    p_true = np.clip(capability[None, :] - difficulty[:, None] + 0.45, 0.02, 0.98)
    score = (rng.random((n, n_tiers)) < p_true).astype(float)
    cost = np.geomspace(1e-4, 1e-2, n_tiers)[None, :] * rng.lognormal(0.0, 0.2, (n, n_tiers))
    proba = np.clip(p_true + rng.normal(0.0, 0.05, (n, n_tiers)), 0.0, 1.0)
    return {"score": score, "cost": cost, "acceptable": score >= 1.0, "proba": proba}


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return _synthetic()


@pytest.fixture(scope="module")
def report(data: dict[str, np.ndarray]) -> M.EvaluationReport:
    curve = M.threshold_curve(data["proba"], data["score"], data["cost"])
    knn = (curve["cost"].to_numpy() * 1.2, curve["quality"].to_numpy() - 0.01)
    return M.evaluate_router(
        data["proba"],
        data["score"],
        data["cost"],
        data["acceptable"],
        default_threshold=0.7,
        tier_names=["nano", "small", "medium", "large"],
        extra_curves={"knn": knn},
    )


# ---------------------------------------------------------------------------------------------------------------------
# decision rule and sweep
# ---------------------------------------------------------------------------------------------------------------------


def test_threshold_rule_fallback_and_clamping() -> None:
    proba = np.array(
        [
            [0.90, 0.95, 0.99],  # tier 0 qualifies
            [0.10, 0.85, 0.90],  # cheapest qualifying is 1
            [0.30, 0.60, 0.60],  # none qualifies -> highest P, tie -> lowest index (1)
            [0.10, 0.20, 0.79],  # none qualifies -> 2
            [np.nan, 0.90, 0.10],  # NaN never qualifies
        ]
    )
    assert choose(proba, 0.8).tolist() == [0, 1, 1, 2, 1]
    assert choose(proba, 0.8, min_tier=1).tolist() == [1, 1, 1, 2, 1]
    assert choose(proba, 0.8, max_tier=1).tolist() == [0, 1, 1, 1, 1]
    assert choose(proba, 0.0).tolist() == [0, 0, 0, 0, 1]
    with pytest.raises(ValueError, match="min_tier <= max_tier"):
        choose(proba, 0.5, min_tier=2, max_tier=1)


@pytest.mark.parametrize(("min_tier", "max_tier"), [(0, None), (1, 2)])
def test_threshold_curve_matches_brute_force(data: dict[str, np.ndarray], min_tier: int, max_tier: int | None) -> None:
    proba = data["proba"].copy()
    proba[::7] = np.round(proba[::7], 1)  # ties between tiers and with grid thresholds
    curve = M.threshold_curve(proba, data["score"], data["cost"], min_tier=min_tier, max_tier=max_tier)
    assert curve["threshold"].is_monotonic_increasing
    n_tiers = data["score"].shape[1]
    share_cols = [f"share_t{t}" for t in range(n_tiers)]
    np.testing.assert_allclose(curve[share_cols].sum(axis=1), 1.0)
    for _, row in curve.iloc[:: max(1, len(curve) // 40)].iterrows():
        choice = choose(proba, row["threshold"], min_tier, max_tier)
        quality, cost = M.realised(choice, data["score"], data["cost"])
        assert row["quality"] == pytest.approx(quality, abs=1e-12)
        assert row["cost"] == pytest.approx(cost, abs=1e-15)
        expected = np.bincount(choice, minlength=n_tiers) / len(choice)
        np.testing.assert_allclose(row[share_cols].to_numpy(float), expected)


def test_realised_and_complete_rows() -> None:
    score = np.array([[0.0, 1.0], [0.5, np.nan]])
    cost = np.array([[1.0, 3.0], [2.0, 4.0]])
    assert M.realised(np.array([1, 0]), score, cost) == pytest.approx((0.75, 2.5))
    with pytest.raises(ValueError, match="complete"):
        M.realised(np.array([1, 1]), score, cost)
    assert M.complete_rows(score, cost).tolist() == [True, False]
    with pytest.raises(ValueError, match="complete_rows"):
        M.threshold_curve(np.full((2, 2), 0.5), score, cost)


def test_single_tiers_and_oracle_choice() -> None:
    score = np.array([[1.0, 1.0, 1.0], [0.0, 0.6, 0.6], [0.0, 1.0, 1.0]])
    cost = np.array([[1.0, 2.0, 3.0], [1.0, 5.0, 2.0], [1.0, 4.0, 2.0]])  # tier 2 cheaper than tier 1 on rows 1-2
    acceptable = score >= 1.0
    # row 0: cheapest acceptable tier 0; row 1: none acceptable -> best score 0.6 at tiers 1, 2 -> cheaper is 2;
    # row 2: acceptable 1 and 2 -> cheaper by this prompt's cost is 2
    assert M.oracle_choice(score, cost, acceptable).tolist() == [0, 2, 2]
    assert M.oracle_point(score, cost, acceptable) == pytest.approx(((1.0 + 0.6 + 1.0) / 3, (1.0 + 2.0 + 2.0) / 3))
    assert M.cheapest_acceptable(acceptable).tolist() == [0, -1, 1]
    pts = M.single_tier_points(score, cost)
    assert pts["tier"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(pts["quality"], [1 / 3, 2.6 / 3, 2.6 / 3])
    np.testing.assert_allclose(pts["cost"], [1.0, 11 / 3, 7 / 3])


# ---------------------------------------------------------------------------------------------------------------------
# hulls and AIQ
# ---------------------------------------------------------------------------------------------------------------------


def test_ndch_drops_dominated_and_non_concave_points() -> None:
    cost = [2.0, 1.0, 3.0, 1.5, 4.0, 2.0, 5.0]
    quality = [0.9, 0.5, 0.8, 0.6, 1.0, 0.3, 1.0]
    # (3, .8) and (5, 1.0) and (2, .3) are dominated; (1.5, .6) lies under the chord (1, .5)-(2, .9)
    hc, hq = M.ndch(cost, quality)
    np.testing.assert_allclose(hc, [1.0, 2.0, 4.0])
    np.testing.assert_allclose(hq, [0.5, 0.9, 1.0])
    hc, hq = M.ndch([1.0, 2.0, 3.0], [0.0, 0.1, 1.0])  # convex kink removed
    np.testing.assert_allclose(hc, [1.0, 3.0])
    np.testing.assert_allclose(hq, [0.0, 1.0])
    hc, hq = M.ndch([1.0, 2.0, 3.0], [0.9, 0.5, 0.2])  # decreasing: only the cheapest survives
    assert hc.tolist() == [1.0] and hq.tolist() == [0.9]
    assert M.ndch([], [])[0].size == 0


def test_aiq_flat_curve_and_late_start() -> None:
    assert M.aiq([1.0], [0.7], 1.0, 3.0) == pytest.approx(0.7)
    assert M.aiq([0.5, 1.0], [0.7, 0.7], 1.0, 3.0) == pytest.approx(0.7)
    # a curve that starts half-way contributes 0 before its cheapest point
    assert M.aiq([2.0], [0.7], 1.0, 3.0) == pytest.approx(0.35)
    # piecewise: 0.5 -> 0.9 on [1, 2] (area 0.7), flat 0.9 on [2, 3]
    assert M.aiq([1.0, 2.0], [0.5, 0.9], 1.0, 3.0) == pytest.approx((0.7 + 0.9) / 2)
    assert M.aiq([1.0], [0.7], 1.0, 1.0) == pytest.approx(0.7)


def test_zero_router_two_tiers_is_trapezoid() -> None:
    score = np.array([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])  # qualities 0.5, 0.75
    cost = np.array([[1.0, 5.0], [1.0, 3.0], [1.0, 4.0], [1.0, 4.0]])  # mean costs 1, 4
    hc, hq = M.zero_router(score, cost)
    np.testing.assert_allclose(hc, [1.0, 4.0])
    np.testing.assert_allclose(hq, [0.5, 0.75])
    assert M.aiq(hc, hq, 1.0, 4.0) == pytest.approx((0.5 + 0.75) / 2)


def test_gap_closed_values() -> None:
    assert M.gap_closed(0.8, 0.6, 1.0) == pytest.approx(0.5)
    assert M.gap_closed(0.5, 0.6, 1.0) == pytest.approx(-0.25)
    assert math.isnan(M.gap_closed(0.5, 0.6, 0.6))


def test_report_oracle_and_zero_anchor_the_gap(report: M.EvaluationReport) -> None:
    assert report.aiq["oracle"] >= report.aiq["zero"]
    assert report.gap_closed["oracle"] == pytest.approx(1.0)
    assert report.gap_closed["zero"] == pytest.approx(0.0)
    # the oracle frontier starts no later than the cheapest single tier and reaches at least the best one
    assert report.oracle_hull[0][0] <= report.c_min + 1e-15
    assert report.oracle_hull[1][-1] >= report.best_single_quality


def test_cost_at_quality_interpolates_on_hull() -> None:
    cost, quality = [1.0, 3.0, 2.5], [0.5, 0.9, 0.6]  # (2.5, .6) is under the hull
    assert M.cost_at_quality(cost, quality, 0.7, reference_cost=4.0) == pytest.approx(0.5)
    assert M.cost_at_quality(cost, quality, 0.4, reference_cost=4.0) == pytest.approx(0.25)
    assert M.cost_at_quality(cost, quality, 0.9, reference_cost=3.0) == pytest.approx(1.0)
    assert math.isnan(M.cost_at_quality(cost, quality, 0.95, reference_cost=4.0))
    assert M.quality_at_cost(cost, quality, 2.0) == pytest.approx(0.7)
    assert math.isnan(M.quality_at_cost(cost, quality, 0.5))


# ---------------------------------------------------------------------------------------------------------------------
# two-tier view
# ---------------------------------------------------------------------------------------------------------------------


def _two_tier_case(n: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weak correct on 60%, strong correct on those and 30% more: the strong tier helps exactly 30% of prompts."""
    w = np.zeros(n)
    w[:60] = 1.0
    s = np.zeros(n)
    s[:90] = 1.0
    helps = (s - w) > 0
    return w, s, helps


def test_apgr_and_cpt_of_perfect_router() -> None:
    w, s, helps = _two_tier_case()
    curve = M.two_tier_curve(helps.astype(float), w, s)
    assert len(curve) == 101
    assert curve["quality"].iloc[0] == pytest.approx(0.6) and curve["quality"].iloc[-1] == pytest.approx(0.9)
    # curve rises linearly 0.6 -> 0.9 over share [0, 0.3], then flat: APGR = 1 - 0.3 / 2
    x, y = curve["strong_share"], curve["quality"]
    assert M.apgr(x, y) == pytest.approx(0.85)
    assert M.apgr(x, y, q_weak=0.6, q_strong=0.9) == pytest.approx(0.85)
    assert M.cpt(x, y, 0.5) == pytest.approx(0.15)
    assert M.cpt(x, y, 0.8) == pytest.approx(0.24)
    assert M.cpt(x, y, 1.0) == pytest.approx(0.30)


def test_apgr_of_random_and_constant_routers_is_half() -> None:
    rng = np.random.default_rng(7)
    n = 4000
    w = (rng.random(n) < 0.5).astype(float)
    s = np.maximum(w, (rng.random(n) < 0.6).astype(float))
    curve = M.two_tier_curve(rng.random(n), w, s)
    assert M.apgr(curve["strong_share"], curve["quality"]) == pytest.approx(0.5, abs=0.05)
    assert M.cpt(curve["strong_share"], curve["quality"], 0.5) == pytest.approx(0.5, abs=0.08)
    flat = M.two_tier_curve(np.zeros(n), w, s)  # all ties -> the straight weak-to-strong line
    assert M.apgr(flat["strong_share"], flat["quality"]) == pytest.approx(0.5)
    assert M.cpt(flat["strong_share"], flat["quality"], 0.8) == pytest.approx(0.8)


def test_cpt_interpolates_between_points() -> None:
    share = [0.0, 0.5, 1.0]
    quality = [0.2, 0.6, 1.0]
    assert M.cpt(share, quality, 0.5) == pytest.approx(0.5)
    assert M.cpt(share, quality, 0.25) == pytest.approx(0.25)
    assert M.cpt([0.0, 0.5, 1.0], [0.2, 0.2, 0.4], 0.5) == pytest.approx(0.75)


# ---------------------------------------------------------------------------------------------------------------------
# operating point, confusion, calibration
# ---------------------------------------------------------------------------------------------------------------------


def test_operating_point_rates() -> None:
    score = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    cost = np.tile([1.0, 2.0, 4.0], (4, 1))
    acceptable = score >= 1.0
    label = M.cheapest_acceptable(acceptable)  # [0, 1, 2, -1]
    choice = np.array([1, 0, 2, 0])  # over, under, exact, unlabelled
    op = M.operating_point(choice, label, score, cost, acceptable)
    assert op["quality"] == pytest.approx(0.5)
    assert op["cost"] == pytest.approx((2 + 1 + 4 + 1) / 4)
    assert op["cost_pct_top"] == pytest.approx(100 * 2.0 / 4.0)
    assert op["quality_rel_best"] == pytest.approx(0.5 / 0.75)
    assert op["under_routing"] == pytest.approx(1 / 3)
    assert op["over_routing"] == pytest.approx(1 / 3)
    assert op["exact_match"] == pytest.approx(1 / 3)
    assert op["unacceptable"] == pytest.approx(0.5)
    assert [op[f"share_t{t}"] for t in range(3)] == pytest.approx([0.5, 0.25, 0.25])
    assert M.operating_point(choice, None, score, cost, acceptable) == op


def test_cost_weighted_confusion_sums() -> None:
    cost = np.tile([1.0, 2.0, 4.0], (5, 1))
    label = np.array([0, 0, 1, 2, -1])
    choice = np.array([0, 2, 0, 2, 1])
    conf = M.cost_weighted_confusion(choice, label, cost)
    counts, extra = conf["count"], conf["extra_cost"]
    assert counts.to_numpy().sum() == 5
    assert list(counts.index) == [-1, 0, 1, 2]
    assert counts.loc[0, 2] == 1 and counts.loc[1, 0] == 1 and counts.loc[-1, 1] == 1
    assert extra.loc[0, 2] == pytest.approx(3.0)  # over-routing overspend
    assert extra.loc[1, 0] == pytest.approx(-1.0)  # under-routing "saving"
    assert extra.loc[2, 2] == pytest.approx(0.0)
    assert np.isnan(extra.loc[-1]).all()


def test_brier_and_ece_values() -> None:
    proba = np.array([[0.25, 0.75]] * 4)
    acceptable = np.array([[1, 1], [0, 1], [0, 1], [0, 0]], dtype=bool)
    b = M.brier(proba, acceptable)
    assert b.per_tier == pytest.approx([0.1875, 0.1875])
    assert b.overall == pytest.approx(0.1875)
    e = M.ece(proba, acceptable, n_bins=10)  # each bin's frequency equals its probability
    assert e.per_tier == pytest.approx([0.0, 0.0])
    assert e.overall == pytest.approx(0.0)
    skewed = M.ece(np.full((4, 1), 0.9), np.array([[1], [1], [0], [0]], dtype=bool))
    assert skewed.overall == pytest.approx(0.4)
    # unobserved cells (NaN) are ignored
    p_nan = np.array([[0.25, np.nan], [0.25, 0.5]])
    y_nan = np.array([[0.0, 1.0], [1.0, np.nan]])
    b2 = M.brier(p_nan, y_nan)
    assert b2.per_tier[0] == pytest.approx((0.0625 + 0.5625) / 2)
    assert np.isnan(b2.per_tier[1]) and b2.counts.tolist() == [2, 0]
    table = M.reliability_table(proba, acceptable, n_bins=4)
    assert len(table) == 8
    row = table[(table["tier"] == 1) & (table["count"] > 0)].iloc[0]
    assert row["bin"] == 3
    assert row["mean_proba"] == pytest.approx(0.75) and row["frac_acceptable"] == pytest.approx(0.75)


# ---------------------------------------------------------------------------------------------------------------------
# the bundled report
# ---------------------------------------------------------------------------------------------------------------------


def test_evaluate_router_metrics(report: M.EvaluationReport) -> None:
    m = report.metrics()
    for key in (
        "aiq", "aiq_zero", "aiq_oracle", "gap_closed", "cost_at_95pct", "cost_at_100pct", "apgr", "cpt50", "cpt80",
        "default_quality", "default_cost_pct", "under_routing", "over_routing", "brier", "ece", "aiq_knn",
        "gap_closed_knn", "default_share_nano", "brier_large", "ece_medium",
    ):
        assert key in m, key
    assert all(isinstance(v, float) for v in m.values())
    assert 0.0 <= m["aiq_zero"] <= m["aiq_oracle"] <= 1.0
    assert m["apgr"] > 0.5  # the synthetic probabilities are informative
    assert m["under_routing"] + m["over_routing"] + m["exact_match"] == pytest.approx(1.0)
    assert sum(m[f"default_share_{t}"] for t in report.tier_names) == pytest.approx(1.0)
    md = report.to_markdown()
    assert "AIQ" in md and "APGR" in md and "nano" in md


def test_brier_of_reference_probabilities(data: dict[str, np.ndarray]) -> None:
    rates = np.tile(data["acceptable"].mean(axis=0), (len(data["proba"]), 1))
    rep = M.evaluate_router(
        data["proba"], data["score"], data["cost"], data["acceptable"], tier_names=["nano", "small", "medium", "large"],
        reference_proba={"base_rates": rates, "group_prior": rates},
    )
    base = M.brier(rates, data["acceptable"]).overall
    assert rep.brier_reference == pytest.approx({"base_rates": base, "group_prior": base})
    assert rep.brier_skill == pytest.approx(1 - rep.brier.overall / base)
    assert rep.brier_skill > 0  # the synthetic probabilities are informative
    m = rep.metrics()
    assert m["brier_ref_base_rates"] == pytest.approx(base) and m["brier_skill"] == pytest.approx(rep.brier_skill)
    assert "removes" in rep.to_markdown()
    # without references: no skill metric, no sentence
    plain = M.evaluate_router(data["proba"], data["score"], data["cost"], data["acceptable"])
    assert "brier_skill" not in plain.metrics() and np.isnan(plain.brier_skill)
    assert "removes" not in plain.to_markdown()


def test_evaluate_router_rejects_incomplete_matrices(data: dict[str, np.ndarray]) -> None:
    score = data["score"].copy()
    score[3, 1] = np.nan
    with pytest.raises(ValueError, match="complete"):
        M.evaluate_router(data["proba"], score, data["cost"], data["acceptable"])


def test_random_router_expectation(data: dict[str, np.ndarray]) -> None:
    rnd = M.random_router_curve(data["score"], data["cost"], n_points=3)
    uniform = rnd[rnd["kind"] == "uniform"].iloc[0]
    assert uniform["quality"] == pytest.approx(data["score"].mean())
    line = rnd[rnd["kind"] == "two_tier"]
    assert line["quality"].iloc[1] == pytest.approx((data["score"][:, 0].mean() + data["score"][:, -1].mean()) / 2)
    sampled = M.random_router_curve(data["score"], data["cost"], rng=np.random.default_rng(0))
    assert sampled["quality"].iloc[0] == pytest.approx(uniform["quality"], abs=0.1)


# ---------------------------------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------------------------------


def test_plots_write_png(report: M.EvaluationReport, tmp_path: Path) -> None:
    from training import plots

    figures = {
        "cost_quality": plots.plot_cost_quality(report),
        "cost_quality_log": plots.plot_cost_quality(report, log_x=True),
        "reliability": plots.plot_reliability(report),
        "tier_mix": plots.plot_tier_mix(report),
        "confusion": plots.plot_confusion(report),
    }
    for name, fig in figures.items():
        path = plots.save_figure(fig, tmp_path / "figs" / f"{name}.png")
        data = path.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), name
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(f"{n}.png" for n in figures)
