"""Per-log model selection (training.selection): the product's AIQ, paired bootstrap, fallback to the reference."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import evaluate_router
from training.selection import score_candidates, select_candidate


def _log(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic routing log: a per-prompt difficulty decides every tier's success; dearer tiers succeed more."""
    rng = np.random.default_rng(seed)
    n_tiers = 4
    hard = rng.normal(size=(n, 1))
    truth = 1 / (1 + np.exp(-(1.5 * -hard + np.arange(n_tiers) * 0.8 - 0.6)))
    score = (rng.random((n, n_tiers)) < truth).astype(float)
    price = np.array([1.0, 2.0, 5.0, 10.0])
    cost = price * rng.uniform(0.8, 1.2, (n, n_tiers)) * 1e-3
    informed = np.clip(truth + rng.normal(0, 0.05, truth.shape), 0, 1)
    base = np.tile(score.mean(axis=0), (n, 1))
    return {"score": score, "cost": cost, "acc": score > 0.5, "informed": informed, "base": base,
            "row_costs": cost / cost[:, -1:], "price": price}


def test_point_aiq_and_gap_equal_evaluate_router_for_both_rules() -> None:
    d = _log(1500)
    for rule, kw in (("utility", {"row_costs": d["row_costs"]}), ("utility", {"tier_costs": d["price"]}),
                     ("threshold", {})):
        sc = score_candidates({"informed": d["informed"], "base": d["base"]}, d["score"], d["cost"], d["acc"],
                              rule=rule, n_boot=5, **kw)
        for name in ("informed", "base"):
            rep = evaluate_router(d[name], d["score"], d["cost"], d["acc"], None, 0.5, rule=rule, **kw)
            assert sc.aiq[sc.names.index(name)] == pytest.approx(rep.aiq["router"], abs=1e-12)
            assert sc.gap_closed(name) == pytest.approx(rep.gap_closed["router"], abs=1e-10)


def test_a_clearly_better_candidate_is_chosen_on_a_large_log() -> None:
    d = _log(4000)
    sel = select_candidate({"base": d["base"], "informed": d["informed"]}, d["score"], d["cost"], d["acc"],
                           reference="base", row_costs=d["row_costs"], n_boot=100)
    assert sel.best == "informed" and sel.chosen == "informed"
    assert sel.diff_lower["informed"] > 0
    assert sel.gap_closed["informed"] > sel.gap_closed["base"] + 0.02
    assert "informed" in sel.to_markdown() and sel.metrics()["selection_aiq_informed"] == sel.aiq["informed"]


def test_a_small_win_within_noise_falls_back_to_the_reference() -> None:
    d = _log(150, seed=3)
    # the reference plus a little noise: on 150 prompts its point AIQ may come out higher, but never significantly.
    # Take the first noise draw whose point estimate beats the reference, so the fallback itself is exercised.
    for draw in range(100):
        rng = np.random.default_rng(draw)
        noisy = np.clip(d["informed"] + rng.normal(0, 0.03, d["informed"].shape), 0, 1)
        sc = score_candidates({"ref": d["informed"], "noisy": noisy}, d["score"], d["cost"], d["acc"],
                              row_costs=d["row_costs"], n_boot=200)
        sel = sc.select("ref", level=0.05)
        if sel.best == "noisy":
            break
    else:
        raise AssertionError("no noise draw beat the reference's point AIQ")
    assert sel.aiq["noisy"] > sel.aiq["ref"]
    assert sel.chosen == "ref" and "within noise" in sel.reason
    assert sel.diff_lower["noisy"] < 0 < sel.diff_upper["noisy"]
    # with the level at the median, the bootstrap no longer protects the reference: the point estimate decides
    loose = sc.select("ref", level=0.5)
    assert loose.chosen == loose.best == "noisy"


def test_bootstrap_is_paired_and_seeded() -> None:
    d = _log(800)
    probas = {"a": d["informed"], "b": d["informed"].copy()}
    sc = score_candidates(probas, d["score"], d["cost"], d["acc"], row_costs=d["row_costs"], n_boot=50, seed=4)
    # identical candidates: every resample gives identical AIQs (paired), so the difference is exactly 0
    assert np.array_equal(sc.boot_aiq[:, 0], sc.boot_aiq[:, 1])
    assert sc.boot_aiq[:, 0].std() > 0
    again = score_candidates(probas, d["score"], d["cost"], d["acc"], row_costs=d["row_costs"], n_boot=50, seed=4)
    assert np.array_equal(sc.boot_aiq, again.boot_aiq)
    sel = sc.select("b")
    assert sel.chosen == "b"  # a tie goes to the reference


def test_select_among_a_subset_and_blend() -> None:
    d = _log(1000)
    mixed = (d["informed"] + d["base"]) / 2.0
    assert np.allclose(mixed, (d["informed"] + d["base"]) / 2)
    sc = score_candidates({"base": d["base"], "informed": d["informed"], "mixed": mixed}, d["score"], d["cost"],
                          d["acc"], row_costs=d["row_costs"], n_boot=40)
    sel = sc.select("base", candidates=["base", "mixed"])
    assert set(sel.aiq) == {"base", "mixed"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: {"probas": {"a": d["informed"][:10]}}, "shape"),
        (lambda d: {"probas": {"a": np.where(d["informed"] > 0.5, np.nan, d["informed"])}}, "finite"),
        (lambda d: {"probas": {"a": d["informed"] * 2}}, "within"),
        (lambda d: {"probas": {}}, "no candidates"),
        (lambda d: {"score": np.where(d["score"] > 0, np.inf, 0.0)}, "non-finite"),
        (lambda d: {"n_boot": 0}, "n_boot"),
        (lambda d: {"n_boot": 10**9}, "n_boot"),
        (lambda d: {"n_boot": True}, "n_boot"),
        (lambda d: {"rule": "magic"}, "rule"),
    ],
)
def test_bad_inputs_are_refused_with_a_clear_error(change, message) -> None:
    d = _log(60)
    kw = {"probas": {"a": d["informed"]}, "score": d["score"], "cost": d["cost"], "acceptable": d["acc"],
          "n_boot": 3, "rule": "utility"}
    kw.update(change(d))
    with pytest.raises(ValueError, match=message):
        score_candidates(kw.pop("probas"), kw.pop("score"), kw.pop("cost"), kw.pop("acceptable"), **kw)


def test_select_refuses_unknown_names_and_bad_levels() -> None:
    d = _log(60)
    sc = score_candidates({"a": d["informed"], "b": d["base"]}, d["score"], d["cost"], d["acc"], n_boot=3)
    with pytest.raises(ValueError, match="unknown candidate"):
        sc.select("c")
    for level in (0.0, 0.7, float("nan"), True):
        with pytest.raises(ValueError, match="level"):
            sc.select("a", level=level)
    with pytest.raises(ValueError, match="reference"):
        select_candidate({"a": d["informed"]}, d["score"], d["cost"], d["acc"], reference="zzz")


def test_absurd_bootstrap_sizes_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.selection as S

    d = _log(60)
    monkeypatch.setattr(S, "MAX_WEIGHTS", 60 * 21 - 1)  # prompts x (resamples + the point estimate)
    with pytest.raises(ValueError, match="too large"):
        score_candidates({"a": d["informed"]}, d["score"], d["cost"], d["acc"], n_boot=20)
    assert score_candidates({"a": d["informed"]}, d["score"], d["cost"], d["acc"], n_boot=19).boot_aiq.shape == (19, 1)
