"""TierClassifier: real LightGBM on data with a known structure; calibration; persistence."""

from __future__ import annotations

import numpy as np
import pytest

from router.classifier import Calibrator, TierClassifier


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    difficulty = X[:, 0]
    skill = np.array([-1.0, 0.0, 1.0])
    p = 1 / (1 + np.exp(-3 * (skill[None, :] - difficulty[:, None])))
    Y = (rng.random((n, 3)) < p).astype(float)
    return X, Y


@pytest.mark.parametrize("layout", ["stacked", "per_tier"])
def test_learns_difficulty_and_tier_order(layout: str) -> None:
    X, Y = _data(3000, 0)
    clf = TierClassifier(3, layout=layout, n_estimators=80).fit(X, Y)
    Xt, Yt = _data(1000, 1)
    proba = clf.predict_proba(Xt)
    assert proba.shape == (1000, 3)
    assert ((proba >= 0) & (proba <= 1)).all()
    # higher tiers are predicted more capable on average, and easy prompts score higher than hard ones
    assert proba[:, 0].mean() < proba[:, 1].mean() < proba[:, 2].mean()
    easy, hard = Xt[:, 0] < -1, Xt[:, 0] > 1
    assert proba[easy, 0].mean() > proba[hard, 0].mean() + 0.3
    # better than the base rate in log loss
    eps = 1e-6
    ll = -np.mean(Yt * np.log(proba + eps) + (1 - Yt) * np.log(1 - proba + eps))
    base = Y.mean(axis=0)
    ll0 = -np.mean(Yt * np.log(base + eps) + (1 - Yt) * np.log(1 - base + eps))
    assert ll < ll0 - 0.1


def test_missing_outcomes_are_ignored() -> None:
    X, Y = _data(1500, 2)
    Y[::2, 0] = np.nan
    clf = TierClassifier(3, layout="stacked", n_estimators=30).fit(X, Y)
    assert clf.priors_[0] == pytest.approx(np.nanmean(Y[:, 0]))


def test_constant_tier_uses_prior() -> None:
    X, Y = _data(500, 3)
    Y[:, 2] = 1.0
    clf = TierClassifier(3, layout="per_tier", n_estimators=20).fit(X, Y)
    assert clf.boosters_[2] is None
    assert np.allclose(clf.predict_raw(X[:5])[:, 2], 1.0)


def test_calibration_and_save_load_roundtrip(tmp_path) -> None:
    X, Y = _data(2000, 4)
    Xc, Yc = _data(800, 5)
    clf = TierClassifier(3, layout="stacked", n_estimators=50, calibration="isotonic").fit(X, Y).calibrate(Xc, Yc)
    assert all(c.kind == "isotonic" for c in clf.calibrators_)
    clf.save(tmp_path / "clf")
    again = TierClassifier.load(tmp_path / "clf")
    assert np.allclose(clf.predict_proba(Xc), again.predict_proba(Xc))
    assert np.allclose(clf.predict_proba(Xc[:1], num_threads=1), clf.predict_proba(Xc[:1]))


def test_sigmoid_calibrator_fixes_overconfidence() -> None:
    rng = np.random.default_rng(0)
    true_p = rng.uniform(0.2, 0.8, 5000)
    y = (rng.random(5000) < true_p).astype(float)
    raw = 1 / (1 + np.exp(-3 * np.log(true_p / (1 - true_p))))  # overconfident
    cal = Calibrator.fit("sigmoid", raw, y)
    assert np.abs(cal(raw) - true_p).mean() < np.abs(raw - true_p).mean() / 2


def test_defaults_are_the_products() -> None:
    from router.defaults import LAYOUT

    assert TierClassifier(3).layout == LAYOUT == "linear" and TierClassifier(3).calibration == "none"
    assert TierClassifier(3, layout="per_tier").calibration == "sigmoid"
    assert TierClassifier(3, layout="blend").calibration == "none"
    assert TierClassifier(3, layout="stacked", calibration="isotonic").calibration == "isotonic"


def test_wrong_shapes_raise() -> None:
    X, Y = _data(100, 6)
    with pytest.raises(ValueError, match="shape"):
        TierClassifier(4).fit(X, Y)
    clf = TierClassifier(3, layout="stacked", n_estimators=5).fit(X, Y)
    with pytest.raises(ValueError, match="features"):
        clf.predict_proba(X[:, :3])


@pytest.mark.parametrize("with_groups", [False, True])
def test_linear_layout_learns_and_roundtrips(tmp_path, with_groups: bool) -> None:
    X, Y = _data(2500, 7)
    Xc, Yc = _data(800, 8)
    Xt, _ = _data(800, 9)
    groups = np.where(X[:, 1] > 0, "a", "b") if with_groups else None
    clf = TierClassifier(3, layout="linear").fit(X, Y, groups=groups).calibrate(Xc, Yc)
    proba = clf.predict_proba(Xt)
    assert proba.shape == (800, 3) and ((proba >= 0) & (proba <= 1)).all()
    assert proba[:, 0].mean() < proba[:, 1].mean() < proba[:, 2].mean()
    easy, hard = Xt[:, 0] < -1, Xt[:, 0] > 1
    assert proba[easy, 0].mean() > proba[hard, 0].mean() + 0.3
    clf.save(tmp_path / "lin")
    again = TierClassifier.load(tmp_path / "lin")
    assert np.allclose(again.predict_proba(Xt), proba)


def test_group_prior_alone_knows_groups_not_prompts() -> None:
    # groups carry part of the signal (their success rates differ), the prompt's difficulty the rest
    X, Y = _data(2500, 7)
    Xt, Yt = _data(800, 9)
    groups = np.where(X[:, 0] > 0, "hard", "easy")
    clf = TierClassifier(3, layout="linear", calibration="none").fit(X, Y, groups=groups)
    prior = clf.predict_group_prior(Xt)
    assert prior.shape == (800, 3) and ((prior > 0) & (prior < 1)).all()
    hard = Xt[:, 0] > 0
    assert prior[~hard, 0].mean() > prior[hard, 0].mean() + 0.2  # the group rates are learnt ...
    within = hard & (Xt[:, 0] < 0.5), hard & (Xt[:, 0] > 1.5)
    assert abs(prior[within[0], 0].mean() - prior[within[1], 0].mean()) < 0.1  # ... but not difficulty within a group
    ref = clf.reference_proba(Xt)
    np.testing.assert_array_equal(ref["group_prior"], prior)
    np.testing.assert_allclose(ref["base_rates"], np.tile(np.nanmean(Y, axis=0), (800, 1)))
    full = clf.predict_proba(Xt)
    assert ((full - Yt) ** 2).mean() < ((prior - Yt) ** 2).mean()  # the per-prompt model adds to the prior
    with pytest.raises(ValueError, match="linear"):
        TierClassifier(3, layout="per_tier", n_estimators=5).fit(X, Y).predict_group_prior(Xt)


def test_a_named_task_replaces_the_predicted_one() -> None:
    # the task is invisible in the features (random assignment), so only a caller that names it can use its rates
    X, Y = _data(3000, 11)
    rng = np.random.default_rng(0)
    groups = rng.choice(["easy", "hard"], size=3000)
    Y[groups == "hard"] = (rng.random(((groups == "hard").sum(), 3)) < 0.1).astype(float)
    clf = TierClassifier(3, layout="linear", calibration="none").fit(X, Y, groups=groups)
    assert clf.task_groups == ["easy", "hard"]
    Xt, _ = _data(400, 12)
    predicted = clf.predict_proba(Xt)
    hard = clf.predict_proba(Xt, groups=["hard"] * 400)
    easy = clf.predict_proba(Xt, groups=["easy"] * 400)
    assert (hard < predicted).mean() > 0.95 and (easy > predicted).mean() > 0.95
    assert hard[:, 2].mean() < easy[:, 2].mean() - 0.3
    # the group prior alone follows the named task's learned rates exactly
    rates = np.asarray(clf.linear_["bags"][0]["group"]["rates"])  # the same in every bag: tasks, not k-means
    np.testing.assert_allclose(clf.predict_group_prior(Xt[:2], groups=["hard", "easy"]), rates[[1, 0]])
    np.testing.assert_allclose(clf.reference_proba(Xt[:2], groups=["hard", "easy"])["group_prior"], rates[[1, 0]])
    # unknown or missing tasks fall back to the prediction, row by row
    mixed = clf.predict_proba(Xt[:3], groups=["hard", "no-such-task", None])
    np.testing.assert_allclose(mixed[0], hard[0])
    np.testing.assert_allclose(mixed[1:], predicted[1:3])
    with pytest.raises(ValueError, match="2 entries for 3 rows"):
        clf.predict_proba(Xt[:3], groups=["hard", "easy"])
    with pytest.raises(TypeError, match="not a string"):
        clf.predict_proba(Xt[:4], groups="hard")
    # without a task column (k-means groups) and for LightGBM, there is nothing to name
    for other in (
        TierClassifier(3, layout="linear", calibration="none").fit(X, Y),
        TierClassifier(3, layout="per_tier", n_estimators=5).fit(X, Y),
    ):
        assert other.task_groups == []
        np.testing.assert_array_equal(other.predict_proba(Xt, groups=["hard"] * 400), other.predict_proba(Xt))


def test_linear_bags_average_fits_with_consecutive_seeds(tmp_path) -> None:
    import json

    X, Y = _data(1200, 13)
    Xt, _ = _data(300, 14)
    bagged = TierClassifier(3, layout="linear", calibration="none", n_bags=3, random_state=4).fit(X, Y)
    singles = [
        TierClassifier(3, layout="linear", calibration="none", n_bags=1, random_state=s).fit(X, Y) for s in (4, 5, 6)
    ]
    assert len(bagged.linear_["bags"]) == 3
    np.testing.assert_allclose(bagged.predict_proba(Xt), np.mean([c.predict_proba(Xt) for c in singles], axis=0))
    np.testing.assert_allclose(bagged.oof_proba_, np.mean([c.oof_proba_ for c in singles], axis=0))
    # the seeds matter (k-means groups, out-of-fold partitions), so the bags differ
    assert not np.allclose(singles[0].predict_proba(Xt), singles[1].predict_proba(Xt))
    bagged.save(tmp_path / "bags")
    again = TierClassifier.load(tmp_path / "bags")
    assert again.n_bags == 3
    np.testing.assert_allclose(again.predict_proba(Xt), bagged.predict_proba(Xt))
    # a model saved before bagging (one unwrapped parameter set) still loads and predicts as it did
    singles[0].save(tmp_path / "old")
    meta_path = tmp_path / "old" / "classifier.json"
    meta = json.loads(meta_path.read_text())
    meta["linear"] = meta["linear"]["bags"][0]
    meta_path.write_text(json.dumps(meta))
    old = TierClassifier.load(tmp_path / "old")
    assert old.n_bags == 1
    np.testing.assert_allclose(old.predict_proba(Xt), singles[0].predict_proba(Xt))
    with pytest.raises(ValueError, match="n_bags"):
        TierClassifier(3, layout="linear", n_bags=0)


def test_linear_out_of_fold_probabilities() -> None:
    from sklearn.metrics import roc_auc_score

    # structure is found out of fold ...
    X, Y = _data(1500, 7)
    clf = TierClassifier(3, layout="linear", calibration="none").fit(X, Y)
    oof = clf.oof_proba_
    assert oof is not None and oof.shape == (1500, 3) and ((oof > 0) & (oof < 1)).all()
    m = ~np.isnan(Y[:, 0])
    assert roc_auc_score(Y[m, 0], oof[m, 0]) > 0.7
    # ... and pure noise is not: with 200 features an in-sample fit would find some
    rng = np.random.default_rng(0)
    Xn = rng.normal(size=(600, 200)).astype(np.float32)
    Yn = (rng.random((600, 2)) < 0.5).astype(float)
    noise = TierClassifier(2, layout="linear", calibration="none").fit(Xn, Yn).oof_proba_
    assert noise is not None and abs(roc_auc_score(Yn[:, 0], noise[:, 0]) - 0.5) < 0.08
    assert TierClassifier(2, layout="per_tier", n_estimators=5).fit(Xn, Yn).oof_proba_ is None


def test_blend_layout_averages_linear_and_calibrated_trees(tmp_path) -> None:
    X, Y = _data(1500, 8)
    groups = np.where(X[:, 1] > 0, "a", "b")
    blend = TierClassifier(3, layout="blend", calibration="none", n_estimators=40).fit(X, Y, groups=groups)
    alone = TierClassifier(3, layout="linear", calibration="none", n_estimators=40).fit(X, Y, groups=groups)
    # its linear part is exactly the linear layout fitted alone with the same arguments
    part = blend.linear_part()
    Xt, _ = _data(300, 9)
    np.testing.assert_allclose(part.predict_proba(Xt), alone.predict_proba(Xt))
    np.testing.assert_allclose(blend.component_oof_["linear"], alone.oof_proba_)
    # the blend is the mean of the linear part and the Platt-calibrated trees, in and out of fold
    trees = blend.component_oof_["per_tier"]
    assert trees.shape == (1500, 3) and ((trees > 0) & (trees < 1)).all()
    np.testing.assert_allclose(blend.oof_proba_, (alone.oof_proba_ + trees) / 2)
    # the served trees are the mean of the three fold models (boosters stored fold by fold), then calibrated
    assert len(blend.boosters_) == 3 * 3

    def trees_raw(Z: np.ndarray) -> np.ndarray:
        folds = [blend.boosters_[3 * j : 3 * j + 3] for j in range(3)]
        return np.mean([np.column_stack([b.predict(Z) for b in f]) for f in folds], axis=0)

    raw_trees = trees_raw(Xt)
    cal = np.column_stack([c(raw_trees[:, t]) for t, c in enumerate(blend.blend_calibrators_)])
    assert all(c.kind == "sigmoid" for c in blend.blend_calibrators_)
    np.testing.assert_allclose(blend.predict_proba(Xt), (alone.predict_proba(Xt) + cal) / 2)
    # out-of-fold trees are not the in-sample fit: their AUC is lower than the fold ensemble's on the same rows
    from sklearn.metrics import roc_auc_score

    in_sample = trees_raw(X.astype(np.float32))
    assert roc_auc_score(Y[:, 0], trees[:, 0]) < roc_auc_score(Y[:, 0], in_sample[:, 0])
    # named tasks, the group prior and persistence work as for the linear layout
    assert blend.task_groups == ["a", "b"]
    blend.save(tmp_path / "b")
    back = TierClassifier.load(tmp_path / "b")
    assert back.layout == "blend"
    np.testing.assert_allclose(back.predict_proba(Xt, groups=["a"] * 300), blend.predict_proba(Xt, groups=["a"] * 300))
    np.testing.assert_allclose(back.predict_group_prior(Xt), blend.predict_group_prior(Xt))
    with pytest.raises(ValueError, match="blend"):
        alone.linear_part()


def test_group_shrink_pulls_task_rates_towards_the_tier_rate(tmp_path) -> None:
    X, Y = _data(800, 10)
    groups = np.where(X[:, 0] > 0, "hard", "easy")

    def spread(shrink: float) -> float:
        clf = TierClassifier(3, layout="linear", calibration="none", group_shrink=shrink).fit(X, Y, groups=groups)
        rates = np.asarray(clf.linear_["bags"][0]["group"]["rates"])
        return float(np.abs(rates[0] - rates[1]).max())

    assert spread(0.0) > spread(10.0) > spread(1000.0)
    clf = TierClassifier(3, layout="linear", group_shrink=3.5).fit(X, Y, groups=groups)
    clf.save(tmp_path / "c")
    assert TierClassifier.load(tmp_path / "c").group_shrink == 3.5
    for bad in (-1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="group_shrink"):
            TierClassifier(3, layout="linear", group_shrink=bad)  # type: ignore[arg-type]


def test_linear_prediction_follows_a_refit_and_keeps_task_names(tmp_path) -> None:
    """Prediction converts the saved parameters to arrays once: a refit or a load must never reuse the old ones,
    and task names that look like numbers stay names."""
    X1, Y1 = _data(600, 0)
    X2, Y2 = _data(600, 5)
    groups = np.array(["1", "2", "x"] * 200, dtype=object)
    clf = TierClassifier(3, layout="linear").fit(X1, Y1, groups=groups)
    first = clf.predict_proba(X1[:50], groups=["1"] * 50)
    assert clf.task_groups == ["1", "2", "x"]
    clf.fit(X2, Y2, groups=groups)
    fresh = TierClassifier(3, layout="linear").fit(X2, Y2, groups=groups)
    again = clf.predict_proba(X1[:50], groups=["1"] * 50)
    np.testing.assert_allclose(again, fresh.predict_proba(X1[:50], groups=["1"] * 50), rtol=0, atol=0)
    assert not np.allclose(first, again)
    clf.save(tmp_path / "clf")
    loaded = TierClassifier.load(tmp_path / "clf")
    np.testing.assert_allclose(loaded.predict_proba(X1[:50], groups=["1"] * 50), again, rtol=0, atol=1e-12)
    # a named task changes the prediction (its rates are used): the name "1" was matched, not turned into 1.0
    assert not np.allclose(loaded.predict_proba(X1[:50], groups=["1"] * 50), loaded.predict_proba(X1[:50]))
