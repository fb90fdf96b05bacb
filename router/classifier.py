"""Per-tier acceptability classifier: P(tier t answers this prompt acceptably), for every tier.

scikit-learn's estimator shape (``fit`` / ``predict_proba``) and a per-tier probability calibration fitted on a
separate calibration split. Four layouts:

* ``linear`` (default): a shrunken, two-part model that suits small, noisy routing logs (one sample per prompt
  and tier, so outcomes are mostly noise around a per-task rate):

  1. a **group prior**: prompts are grouped by the log's ``task`` column when it has one (passed to :meth:`fit`
     as ``groups``; never needed at serve time), else by k-means clusters of the features. A multinomial
     logistic regression (or the nearest centroid) gives P(group | prompt), and the prior is
     ``sum_g P(g | prompt) * rate[g, tier]`` with each group's success rate shrunk towards the tier's overall rate.
     A caller that names the prompt's task (``groups`` at prediction time) gets that task's rates exactly instead
     of the predicted mix (a task the model never saw falls back to the prediction);
  2. a per-tier L2 **logistic regression** on the features (embedding as is, structural features standardised
     and down-weighted);
  3. per tier, a logistic **stacker** combines the two logits; it is fitted on out-of-fold predictions of 1 and 2
     so it learns how much prompt-level signal the data actually carries.

  Prediction is plain numpy (matrix products), no scikit-learn at serve time.
* ``stacked``: one LightGBM model over (prompt features, tier index) rows, so tiers share what they have in
  common and a tier with few observations borrows strength from the others.
* ``per_tier``: one LightGBM model per tier.
* ``blend``: the mean of the ``linear`` layout's probabilities and the ``per_tier`` layout's, the latter
  calibrated per tier (Platt) on its own out-of-fold predictions. The two see different signal (a shrunken linear
  model of the embedding and trees over it); on some logs their mean beats both. Its fit keeps each component's
  out-of-fold probabilities (:attr:`TierClassifier.component_oof_`), which per-log model selection scores.

Everything is saved as text/JSON (LightGBM model strings, linear weights, calibration parameters): no pickles.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import pandas as pd

from router.defaults import LAYOUT, default_calibration

if TYPE_CHECKING:  # pragma: no cover - typing only: lightgbm is imported where a LightGBM layout fits or loads
    import lightgbm as lgb

Layout = Literal["linear", "stacked", "per_tier", "blend"]
LAYOUTS = ("linear", "stacked", "per_tier", "blend")
LINEAR_LAYOUTS = ("linear", "blend")
"""Layouts with a linear part (group prior, tasks a caller can name, out-of-fold probabilities)."""

# linear layout: fixed, data-independent settings (chosen by cross-validation on the train parts of the benchmarks)
LINEAR_C = 0.3  # inverse L2 strength of the per-tier logistic regressions (features: unit-norm embedding + ...)
STRUCTURAL_WEIGHT = 0.2  # ... standardised structural features scaled by this (their prior weight vs the embedding)
GROUP_C = 10.0  # inverse L2 strength of the multinomial P(group | prompt)
GROUP_SHRINK = 10.0  # pseudo-observations pulling a group's success rate towards the tier's overall rate
STACK_C = 1.0
OOF_FOLDS = 3
LINEAR_BAGS = 1  # default fits of the linear layout with different seeds, averaged (see TierClassifier)
GROUP_FIT_ROWS = 20_000
"""linear layout: the group model's P(group | prompt) (the multinomial logistic regression over the tasks, or
k-means) learns from at most this many rows, a seeded sample stratified by task; every group's success rates still
count every row. Its cost grows with rows x groups x iterations (about 4 of 5 minutes of a 25,000-prompt log's fit
with 66 tasks went there), and more rows add little to a 66-way task classifier. Only logs with more fitted prompts
than this are affected; every shared benchmark log has fewer than 10,000."""
FIT_THREADS = max(1, min(4, os.cpu_count() or 1))
"""Independent fits (the out-of-fold parts of the linear layout, one LightGBM model per tier and fold) run on this
many threads, each with single-threaded BLAS / OpenMP: the same models as one after the other (each fit is
deterministic), and on a shared machine far faster than BLAS's own threads, which spin while they wait for a core."""
_T = TypeVar("_T")
CalibrationKind = Literal["sigmoid", "isotonic", "none"]

DEFAULT_LGBM_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.5,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 63,
    "verbose": -1,
    # one thread: on these sizes a second one saves little, and OpenMP threads that spin-wait for a busy core made
    # fits many times slower when other work shared the machine (deterministic: the same trees either way)
    "num_threads": 1,
    "deterministic": True,
    "force_col_wise": True,
}


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class Calibrator:
    """Maps a raw probability to a calibrated one (Platt scaling on the logit, or isotonic steps)."""

    kind: CalibrationKind = "none"
    a: float = 1.0
    b: float = 0.0
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)

    @classmethod
    def fit(cls, kind: CalibrationKind, raw: np.ndarray, target: np.ndarray) -> Calibrator:
        raw, target = np.asarray(raw, float), np.asarray(target, float)
        if kind == "none" or raw.size < 20 or np.unique(target).size < 2:
            return cls("none")
        if kind == "sigmoid":
            from sklearn.linear_model import LogisticRegression

            lr = LogisticRegression(C=1e4, max_iter=1000).fit(_logit(raw)[:, None], target.astype(int))
            return cls("sigmoid", a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))
        if kind == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, target)
            return cls("isotonic", x=[float(v) for v in iso.X_thresholds_], y=[float(v) for v in iso.y_thresholds_])
        raise ValueError(f"unknown calibration {kind!r}; choose sigmoid, isotonic or none")

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if self.kind == "sigmoid":
            return _sigmoid(self.a * _logit(raw) + self.b)
        if self.kind == "isotonic":
            return np.interp(raw, self.x, self.y)
        return np.asarray(raw, float)


class TierClassifier:
    """Predicts, for each of ``n_tiers`` tiers, the probability that it answers a prompt acceptably.

    Args:
        n_tiers: number of tiers (catalog order, cheapest first).
        layout: ``linear`` (default, :data:`router.defaults.LAYOUT`), ``blend``, ``stacked`` (one LightGBM model,
            tier as a feature) or ``per_tier`` (one LightGBM model per tier).
        n_estimators: boosting rounds.
        calibration: probability calibration fitted in :meth:`calibrate`; unset: the layout's default
            (:func:`router.defaults.default_calibration`: none for linear and blend, sigmoid for LightGBM).
        params: LightGBM parameters overriding :data:`DEFAULT_LGBM_PARAMS`.
        random_state: seed for LightGBM's bagging and feature sampling, k-means and the out-of-fold splits.
        n_embedding: ``linear`` layout: the first ``n_embedding`` feature columns are a unit-norm embedding (used
            as is); the others are standardised and scaled by ``STRUCTURAL_WEIGHT``. ``None``: standardise all.
        n_bags: ``linear`` layout: how many fits with seeds ``random_state, random_state + 1, ...`` to average.
            The seed decides the out-of-fold partition the stackers learn from and the k-means groups of a log
            without tasks; on small logs one fit's figures moved by a few points with it, an average far less.
        group_shrink: ``linear`` layout: pseudo-observations pulling each group's success rate towards the tier's
            overall rate (:data:`GROUP_SHRINK`).

    The ``linear`` and ``blend`` layouts also take ``groups`` in :meth:`fit` and keep the training rows'
    out-of-fold probabilities in :attr:`oof_proba_`.
    """

    def __init__(
        self,
        n_tiers: int,
        *,
        layout: Layout = LAYOUT,
        n_estimators: int = 300,
        calibration: CalibrationKind | None = None,
        params: dict[str, Any] | None = None,
        random_state: int = 0,
        n_embedding: int | None = None,
        n_bags: int = LINEAR_BAGS,
        group_shrink: float = GROUP_SHRINK,
    ) -> None:
        if n_tiers < 1:
            raise ValueError("n_tiers must be >= 1")
        if n_bags < 1:
            raise ValueError("n_bags must be >= 1")
        if isinstance(group_shrink, bool) or not (np.isfinite(group_shrink) and group_shrink >= 0):
            raise ValueError(f"group_shrink must be a finite number >= 0, got {group_shrink!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
        self.n_tiers = n_tiers
        self.layout: Layout = layout
        self.n_estimators = n_estimators
        self.calibration: CalibrationKind = default_calibration(layout) if calibration is None else calibration
        self.params = {**DEFAULT_LGBM_PARAMS, **(params or {}), "seed": random_state}
        self.random_state = random_state
        self.boosters_: list[lgb.Booster | None] = []
        self.priors_: list[float] = []
        self.calibrators_: list[Calibrator] = [Calibrator() for _ in range(n_tiers)]
        self.n_features_: int | None = None
        self.n_embedding = n_embedding
        self.n_bags = n_bags
        self.group_shrink = float(group_shrink)
        self.linear_: dict[str, Any] = {}
        """``linear`` layout, after :meth:`fit`: ``{"bags": [parameters of each fit]}``."""
        self.blend_calibrators_: list[Calibrator] = []
        """``blend`` layout: the per-tier calibration of the LightGBM part (fitted on its out-of-fold predictions)."""
        self.oof_proba_: np.ndarray | None = None
        """``linear`` and ``blend`` layouts, after :meth:`fit`: out-of-fold P(acceptable) ``[n, T]`` of the training
        rows before :meth:`calibrate` (each row's from models fitted without it); not saved."""
        self.component_oof_: dict[str, np.ndarray] = {}
        """``blend`` layout, after :meth:`fit`: the out-of-fold probabilities of its parts, ``linear`` and
        ``per_tier`` (the latter calibrated like the blend's), for per-log model selection; not saved."""

    # --- layout helpers ------------------------------------------------------------------------------------
    def _stack(self, X: np.ndarray) -> np.ndarray:
        """Repeat every row once per tier and append the tier index: [n*T, d+1], tier-major within a row."""
        n = X.shape[0]
        tiers = np.tile(np.arange(self.n_tiers, dtype=np.float32), n)[:, None]
        return np.hstack([np.repeat(X, self.n_tiers, axis=0), tiers])

    # --- fit / predict -------------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, Y: np.ndarray, groups: np.ndarray | None = None) -> TierClassifier:
        """Fit on features ``X [n, d]`` and per-tier outcomes ``Y [n, T]`` (1 / 0 / NaN = not tried).

        ``groups`` (``linear`` layout only, optional): a task label per row, used to learn the group prior; with
        fewer than two distinct labels the groups are k-means clusters of the features.
        """
        X = np.asarray(X, dtype=np.float32)
        Y = np.asarray(Y, dtype=float)
        if Y.shape != (X.shape[0], self.n_tiers):
            raise ValueError(f"Y must have shape ({X.shape[0]}, {self.n_tiers}), got {Y.shape}")
        self.n_features_ = X.shape[1]
        observed = ~np.isnan(Y)
        self.priors_ = [float(np.nanmean(Y[:, t])) if observed[:, t].any() else 0.5 for t in range(self.n_tiers)]
        self.component_oof_ = {}
        if self.layout in LINEAR_LAYOUTS:
            self.boosters_ = []
            priors = np.asarray(self.priors_)
            shrink = self.group_shrink
            fits = [_fit_linear(X, Y, groups, self.n_embedding, priors, self.random_state, group_shrink=shrink)]
            for b in range(1, self.n_bags):  # the seed-free full-data parts are fitted once
                fits.append(
                    _fit_linear(
                        X, Y, groups, self.n_embedding, priors, self.random_state + b, fits[0][0], group_shrink=shrink
                    )
                )
            self.linear_ = {"bags": [params for params, _ in fits]}
            self.oof_proba_ = np.mean([oof for _, oof in fits], axis=0)
            if self.layout == "blend":
                self._fit_blend_trees(X, Y, observed)
        elif self.layout == "stacked":
            Xs, ys = self._stack(X), Y.reshape(-1)
            keep = ~np.isnan(ys)
            # Start every row from its tier's base rate, so trees learn how this prompt deviates from it.
            init = np.tile(self._prior_logits(), X.shape[0])[keep]
            self.boosters_ = [self._train(Xs[keep], ys[keep], categorical=[Xs.shape[1] - 1], init_score=init)]
        else:
            self.boosters_ = self._fit_per_tier(X, Y, observed)
        return self

    def _fit_per_tier(self, X: np.ndarray, Y: np.ndarray, observed: np.ndarray) -> list[lgb.Booster | None]:
        """One LightGBM model per tier on the rows where the tier was observed, side by side (:func:`parallel_jobs`)."""
        return parallel_jobs([partial(self._train_tier, X, Y, observed[:, t], t) for t in range(self.n_tiers)])

    def _train_tier(self, X: np.ndarray, Y: np.ndarray, rows: np.ndarray, t: int) -> lgb.Booster | None:
        """Tier ``t``'s LightGBM model on the ``rows`` (a mask)."""
        return self._train(X[rows], Y[rows, t], categorical=None)

    def _per_tier_raw(self, boosters: Sequence[lgb.Booster | None], X: np.ndarray, **kw: Any) -> np.ndarray:
        out = np.empty((X.shape[0], self.n_tiers))
        for t, b in enumerate(boosters):
            out[:, t] = self.priors_[t] if b is None else b.predict(X, **kw)
        return out

    def _fit_blend_trees(self, X: np.ndarray, Y: np.ndarray, observed: np.ndarray) -> None:
        """``blend`` layout: LightGBM per tier on each out-of-fold partition (folds drawn like the linear part's),
        a Platt calibration per tier fitted on their out-of-fold predictions, and the fold models kept: the served
        trees are the mean of the fold models (a cross-fitted ensemble), so no refit on every row is needed."""
        assert self.oof_proba_ is not None
        fold = np.random.default_rng(self.random_state).integers(0, OOF_FOLDS, size=X.shape[0])
        raw = np.tile(np.asarray(self.priors_, dtype=float), (X.shape[0], 1))
        # every (fold, tier) model side by side, kept fold by fold
        jobs = [
            partial(self._train_tier, X, Y, (fold != j) & observed[:, t], t)
            for j in range(OOF_FOLDS)
            for t in range(self.n_tiers)
        ]
        self.boosters_ = parallel_jobs(jobs)
        for j in range(OOF_FOLDS):
            b = fold == j
            if b.any():
                raw[b] = self._per_tier_raw(self.boosters_[j * self.n_tiers : (j + 1) * self.n_tiers], X[b])
        self.blend_calibrators_ = [
            Calibrator.fit("sigmoid", raw[observed[:, t], t], Y[observed[:, t], t]) for t in range(self.n_tiers)
        ]
        trees = np.column_stack([c(raw[:, t]) for t, c in enumerate(self.blend_calibrators_)])
        self.component_oof_ = {"linear": self.oof_proba_, "per_tier": trees}
        self.oof_proba_ = (self.oof_proba_ + trees) / 2.0

    def _blend_trees_raw(self, X: np.ndarray, **kw: Any) -> np.ndarray:
        """``blend`` layout: the mean of the fold models' per-tier predictions (boosters stored fold by fold)."""
        k = len(self.boosters_) // self.n_tiers
        folds = [self.boosters_[j * self.n_tiers : (j + 1) * self.n_tiers] for j in range(k)]
        return np.mean([self._per_tier_raw(f, X, **kw) for f in folds], axis=0)

    def linear_part(self) -> TierClassifier:
        """``blend`` layout: its linear part as a ``linear``-layout classifier (the same fitted parameters and
        out-of-fold probabilities; no calibration), as if fitted alone with the same arguments."""
        if self.layout != "blend" or not self.linear_:
            raise ValueError("linear_part needs a fitted blend-layout classifier")
        out = TierClassifier(
            self.n_tiers, layout="linear", n_estimators=self.n_estimators, calibration="none", params=self.params,
            random_state=self.random_state, n_embedding=self.n_embedding, n_bags=self.n_bags,
            group_shrink=self.group_shrink,
        )
        out.n_features_, out.priors_, out.linear_ = self.n_features_, list(self.priors_), self.linear_
        out.oof_proba_ = self.component_oof_.get("linear")
        return out

    def _prior_logits(self) -> np.ndarray:
        return _logit(np.asarray(self.priors_, dtype=float))

    def _train(
        self, X: np.ndarray, y: np.ndarray, categorical: list[int] | None, init_score: np.ndarray | None = None
    ) -> lgb.Booster | None:
        if y.size == 0 or np.unique(y).size < 2:
            return None  # constant outcome: the prior is the prediction
        import lightgbm as lgb

        ds = lgb.Dataset(
            X, label=y, init_score=init_score, categorical_feature=categorical or "auto", free_raw_data=True
        )
        return lgb.train(self.params, ds, num_boost_round=self.n_estimators)

    def _bags(self) -> list[dict[str, Any]]:
        """``linear`` layout: the parameters of every fit (models saved before bagging hold one, unwrapped)."""
        if not self.linear_:
            return []
        return self.linear_.get("bags", [self.linear_])

    def _array_bags(self) -> list[dict[str, Any]]:
        """:meth:`_bags` with every list of numbers as a float array, converted once per fit or load: prediction
        reads them on every call, and converting the JSON lists each time cost more than the model itself."""
        cached = getattr(self, "_array_cache", None)
        if cached is None or cached[0] is not self.linear_:  # refitted or loaded since: convert again
            cached = (self.linear_, [_as_arrays(p) for p in self._bags()])
            self._array_cache = cached
        return cached[1]

    @property
    def task_groups(self) -> list[str]:
        """The tasks the ``linear`` layout's group prior learned (the log's ``task`` values); empty when its
        groups are k-means clusters or for the LightGBM layouts. Only these tasks change a prediction."""
        bags = self._bags() if self.layout in LINEAR_LAYOUTS else []
        group = bags[0]["group"] if bags else None
        return [c for c in group["classes"] if c] if group and group.get("kind") == "task" else []

    def predict_raw(
        self, X: np.ndarray, num_threads: int | None = None, groups: Sequence[str | None] | None = None
    ) -> np.ndarray:
        """Uncalibrated probabilities ``[n, T]``. ``groups``: see :meth:`predict_proba`."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim == 1:
            X = X[None, :]
        if self.n_features_ is None:
            raise RuntimeError("TierClassifier is not fitted")
        if X.shape[1] != self.n_features_:
            raise ValueError(f"expected {self.n_features_} features, got {X.shape[1]}")
        kw: dict[str, Any] = {"num_threads": num_threads} if num_threads else {}
        n = X.shape[0]
        if self.layout in LINEAR_LAYOUTS:
            groups = _check_groups(groups, n)
            lin = np.mean([_sigmoid(_linear_logits(params, X, groups)) for params in self._array_bags()], axis=0)
            if self.layout == "linear":
                return lin
            raw = self._blend_trees_raw(X, **kw)
            trees = np.column_stack([c(raw[:, t]) for t, c in enumerate(self.blend_calibrators_)])
            return (lin + trees) / 2.0
        if self.layout == "stacked":
            b = self.boosters_[0]
            if b is None:
                return np.tile(np.asarray(self.priors_), (n, 1))
            margin = np.asarray(b.predict(self._stack(X), raw_score=True, **kw)).reshape(n, self.n_tiers)
            return _sigmoid(margin + self._prior_logits()[None, :])
        return self._per_tier_raw(self.boosters_, X, **kw)

    def reference_proba(
        self, X: np.ndarray, groups: Sequence[str | None] | None = None
    ) -> dict[str, np.ndarray]:
        """Simpler probabilities ``[n, T]`` to compare this classifier with (``training.metrics.evaluate_router``'s
        ``reference_proba``): ``base_rates`` (every tier's training success rate, for every prompt) and, for the
        ``linear`` layout, ``group_prior`` (:meth:`predict_group_prior`, with the same ``groups``)."""
        X = np.asarray(X)
        n = 1 if X.ndim == 1 else X.shape[0]
        out = {"base_rates": np.tile(np.asarray(self.priors_, dtype=float), (n, 1))}
        if self.layout in LINEAR_LAYOUTS:
            out["group_prior"] = self.predict_group_prior(X, groups)
        return out

    def predict_group_prior(self, X: np.ndarray, groups: Sequence[str | None] | None = None) -> np.ndarray:
        """``linear`` layout: P(acceptable) ``[n, T]`` from the group prior alone (task or cluster success rates,
        weighted by P(group | prompt), or the named task's rates), without the per-prompt model; shows how much
        the latter adds."""
        if self.layout not in LINEAR_LAYOUTS or not self.linear_:
            raise ValueError("predict_group_prior needs a fitted linear- or blend-layout classifier")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[None, :]
        groups = _check_groups(groups, X.shape[0])
        out = []
        for params in self._array_bags():
            group = params["group"]
            named = _named_rows(group, groups, X.shape[0])
            out.append(_prior_proba(group, _inputs(params, X), named))
        return np.mean(out, axis=0)

    def calibrate(self, X: np.ndarray, Y: np.ndarray) -> TierClassifier:
        """Fit one calibrator per tier on a held-out calibration split (``Y``: 1 / 0 / NaN)."""
        raw = self.predict_raw(X)
        Y = np.asarray(Y, float)
        self.calibrators_ = []
        for t in range(self.n_tiers):
            m = ~np.isnan(Y[:, t])
            self.calibrators_.append(Calibrator.fit(self.calibration, raw[m, t], Y[m, t]))
        return self

    def predict_proba(
        self, X: np.ndarray, num_threads: int | None = None, groups: Sequence[str | None] | None = None
    ) -> np.ndarray:
        """Calibrated P(acceptable) per tier, ``[n, T]``.

        ``groups``: optionally the task of each row, as the training log's ``task`` column names it (None for
        rows whose task is unknown). For a task in :attr:`task_groups`, the ``linear`` layout uses that task's
        success rates instead of the task it predicts from the prompt; other values and other layouts change
        nothing.
        """
        raw = self.predict_raw(X, num_threads=num_threads, groups=groups)
        return np.column_stack([c(raw[:, t]) for t, c in enumerate(self.calibrators_)])

    # --- persistence ---------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        files: list[str | None] = []
        for i, b in enumerate(self.boosters_):
            if b is None:
                files.append(None)
                continue
            name = f"booster_{i}.txt"
            (d / name).write_text(b.model_to_string(), encoding="utf-8")
            files.append(name)
        meta = {
            "n_tiers": self.n_tiers,
            "layout": self.layout,
            "n_estimators": self.n_estimators,
            "calibration": self.calibration,
            "params": self.params,
            "random_state": self.random_state,
            "n_features": self.n_features_,
            "priors": self.priors_,
            "boosters": files,
            "calibrators": [c.__dict__ for c in self.calibrators_],
            "n_embedding": self.n_embedding,
            "linear": self.linear_,
            "group_shrink": self.group_shrink,
            "blend_calibrators": [c.__dict__ for c in self.blend_calibrators_],
        }
        (d / "classifier.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> TierClassifier:
        d = Path(directory)
        meta = json.loads((d / "classifier.json").read_text(encoding="utf-8"))
        obj = cls(
            meta["n_tiers"],
            layout=meta["layout"],
            n_estimators=meta["n_estimators"],
            calibration=meta["calibration"],
            params=meta["params"],
            random_state=meta["random_state"],
            n_embedding=meta.get("n_embedding"),
            group_shrink=meta.get("group_shrink", GROUP_SHRINK),
        )
        obj.linear_ = meta.get("linear") or {}
        obj.blend_calibrators_ = [Calibrator(**c) for c in meta.get("blend_calibrators", [])]
        obj.n_bags = len(obj._bags()) or LINEAR_BAGS
        obj.n_features_ = meta["n_features"]
        obj.priors_ = meta["priors"]
        obj.boosters_ = [None if f is None else _load_booster(d / f) for f in meta["boosters"]]
        obj.calibrators_ = [Calibrator(**c) for c in meta["calibrators"]]
        return obj


def _load_booster(path: Path) -> lgb.Booster:
    """A saved LightGBM model; lightgbm is imported here so that a linear-layout bundle never imports it."""
    import lightgbm as lgb

    return lgb.Booster(model_str=path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------------------
# linear layout (group prior + logistic regression + stacker), plain numpy at prediction time
# --------------------------------------------------------------------------------------------------------------
def _inputs(params: dict[str, Any], X: np.ndarray) -> np.ndarray:
    """Scaled model inputs: the embedding columns as is, the others standardised and weighted."""
    X = np.asarray(X, dtype=np.float64)
    mean = np.asarray(params["scale_mean"])
    std = np.asarray(params["scale_std"])
    weight = np.asarray(params["scale_weight"])
    return (X - mean) / std * weight


def _as_arrays(obj: Any) -> Any:
    """A copy of saved parameters with every (nested) list of numbers as a float array; strings, None and
    dictionaries' structure kept."""
    if isinstance(obj, dict):
        return {k: _as_arrays(v) for k, v in obj.items()}
    if isinstance(obj, list) and obj:
        try:
            arr = np.asarray(obj)
        except ValueError:  # ragged
            arr = None
        if arr is not None and arr.dtype.kind in "fiu":  # numbers only (task names, even "1", stay strings)
            return arr.astype(np.float64)
        return [_as_arrays(v) for v in obj]
    return obj


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _check_groups(groups: Sequence[str | None] | None, n: int) -> Sequence[str | None] | None:
    if groups is None:
        return None
    if isinstance(groups, str):
        raise TypeError("groups must be a sequence with one task (or None) per row, not a string")
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} rows")
    return groups


def _named_rows(g: dict[str, Any], groups: Sequence[str | None] | None, n: int) -> np.ndarray:
    """Index of each row's named task among the learned tasks (-1: none named, unknown, or no task groups)."""
    out = np.full(n, -1)
    if groups is not None and g["kind"] == "task":
        index = {c: j for j, c in enumerate(g["classes"]) if c}
        for i, task in enumerate(groups):
            if isinstance(task, str):
                out[i] = index.get(task, -1)
    return out


def _group_proba(g: dict[str, Any], Z: np.ndarray, named: np.ndarray | None = None) -> np.ndarray:
    """P(group | prompt) ``[n, G]``; rows with a named task (``named >= 0``, see :func:`_named_rows`) get it as a
    one-hot row instead of the prediction."""
    out = _predicted_group_proba(g, Z)
    if named is not None and (named >= 0).any():
        rows = np.flatnonzero(named >= 0)
        out[rows] = 0.0
        out[rows, named[rows]] = 1.0
    return out


def _predicted_group_proba(g: dict[str, Any], Z: np.ndarray) -> np.ndarray:
    if g["kind"] == "centroids":
        c = np.asarray(g["centroids"])
        d = (Z**2).sum(1)[:, None] - 2 * Z @ c.T + (c**2).sum(1)[None, :]
        out = np.zeros((Z.shape[0], c.shape[0]))
        out[np.arange(Z.shape[0]), d.argmin(axis=1)] = 1.0
        return out
    coef, icpt = np.asarray(g["coef"]), np.asarray(g["intercept"])
    if coef.shape[0] == 1:  # binary logistic regression: one row for the second class
        p1 = _sigmoid(Z @ coef[0] + icpt[0])
        return np.column_stack([1 - p1, p1])
    return _softmax(Z @ coef.T + icpt)


def _prior_proba(g: dict[str, Any], Z: np.ndarray, named: np.ndarray | None = None) -> np.ndarray:
    """The group prior ``[n, T]``: P(group | prompt) (or the named task) times each group's success rates."""
    return _group_proba(g, Z, named) @ np.asarray(g["rates"])


def _component_logits(
    params: dict[str, Any], Z: np.ndarray, named: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    lin = Z @ np.asarray(params["lr_coef"]).T + np.asarray(params["lr_intercept"])
    return _logit(_prior_proba(params["group"], Z, named)), lin


def _linear_logits(
    params: dict[str, Any], X: np.ndarray, groups: Sequence[str | None] | None = None
) -> np.ndarray:
    """Stacked logits ``[n, T]``. Rows whose task is named use the stacker fitted on named-task priors
    (``stack_named``; models saved before it existed use ``stack``)."""
    Z = _inputs(params, X)
    named = _named_rows(params["group"], groups, Z.shape[0])
    prior, lin = _component_logits(params, Z, named)
    w = np.asarray(params["stack"])  # [T, 3]: prior weight, linear weight, intercept
    out = w[:, 0] * prior + w[:, 1] * lin + w[:, 2]
    rows = named >= 0
    if rows.any():
        wn = np.asarray(params.get("stack_named", params["stack"]))
        out[rows] = wn[:, 0] * prior[rows] + wn[:, 1] * lin[rows] + wn[:, 2]
    return out


def _fit_group_model(
    Z: np.ndarray,
    Y: np.ndarray,
    groups: np.ndarray | None,
    priors: np.ndarray,
    seed: int,
    group_shrink: float = GROUP_SHRINK,
) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    n = Z.shape[0]
    labels = None
    if groups is not None:
        g: np.ndarray = np.asarray(_task_labels(list(groups)))
        if np.unique(g).size >= 2:
            labels = g
    sample = _group_sample(n, labels, seed)  # None: every row (logs up to GROUP_FIT_ROWS fitted prompts)
    learn: slice | np.ndarray = slice(None) if sample is None else sample  # Z[slice(None)] is Z itself, no copy
    if labels is not None:
        lr = LogisticRegression(C=GROUP_C, max_iter=2000).fit(Z[learn], labels[learn])
        model: dict[str, Any] = {
            "kind": "task",
            "classes": [str(c) for c in lr.classes_],
            "coef": lr.coef_.tolist(),
            "intercept": lr.intercept_.tolist(),
        }
        member = labels[:, None] == lr.classes_[None, :]
    else:
        from sklearn.cluster import KMeans

        k = int(np.clip(round(np.sqrt(n / 4.0)), 1, 64))
        k = min(k, n)
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(Z[learn])
        model = {"kind": "centroids", "centroids": km.cluster_centers_.tolist()}
        assigned = km.labels_ if sample is None else km.predict(Z)
        member = assigned[:, None] == np.arange(k)[None, :]
    rates = []
    for j in range(member.shape[1]):
        y = Y[member[:, j]]
        cnt = (~np.isnan(y)).sum(axis=0)
        hits = np.nansum(y, axis=0)
        rates.append((hits + group_shrink * priors) / (cnt + group_shrink))
    model["rates"] = np.clip(np.asarray(rates), 1e-4, 1 - 1e-4).tolist()
    return model


def _group_sample(n: int, labels: np.ndarray | None, seed: int) -> np.ndarray | None:
    """The rows the group model learns from when there are more than :data:`GROUP_FIT_ROWS` (else None): a seeded
    sample, stratified by task when there are tasks (each task keeps its share, and at least one row)."""
    if n <= GROUP_FIT_ROWS:
        return None
    rng = np.random.default_rng([seed, GROUP_FIT_ROWS])
    if labels is None:
        return np.sort(rng.choice(n, GROUP_FIT_ROWS, replace=False))
    picked = []
    for task in np.unique(labels):
        rows = np.flatnonzero(labels == task)
        take = max(1, round(rows.size * GROUP_FIT_ROWS / n))
        picked.append(rng.choice(rows, take, replace=False))
    return np.sort(np.concatenate(picked))


def parallel_jobs(jobs: Sequence[Callable[[], _T]]) -> list[_T]:
    """Run ``jobs`` on up to :data:`FIT_THREADS` threads, BLAS and OpenMP limited to one thread each; their results
    in order. Each job must be independent of the others (the fits here are, and each is deterministic)."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        if FIT_THREADS == 1 or len(jobs) <= 1:
            return [job() for job in jobs]
        with ThreadPoolExecutor(max_workers=min(FIT_THREADS, len(jobs)), thread_name_prefix="tierwise-fit") as pool:
            return list(pool.map(lambda job: job(), jobs))


def task_names(values: Sequence[Any]) -> list[str | None]:
    """Task values (a log's ``task`` column, a request's tasks) as strings, None where missing."""
    return [None if pd.isna(x) else str(x) for x in values]


def _task_labels(groups: Sequence[Any]) -> list[str]:
    """Task labels as strings ("" where missing)."""
    return [t or "" for t in task_names(groups)]


def _fit_stacker(oof_prior: np.ndarray, oof_lin: np.ndarray, Y: np.ndarray, priors: np.ndarray) -> list[list[float]]:
    """Per tier, a logistic regression of the outcome on the two out-of-fold component logits: [T, 3] weights
    (prior, linear, intercept); a tier with too few or constant outcomes keeps its base rate."""
    from sklearn.linear_model import LogisticRegression

    stack = []
    for t in range(Y.shape[1]):
        m = ~np.isnan(Y[:, t])
        y = Y[m, t]
        if m.sum() < 10 or np.unique(y).size < 2:
            stack.append([0.0, 0.0, float(_logit(np.array([priors[t]]))[0])])
            continue
        F = np.column_stack([oof_prior[m, t], oof_lin[m, t]])
        st = LogisticRegression(C=STACK_C, max_iter=1000).fit(F, y.astype(int))
        stack.append([float(st.coef_[0, 0]), float(st.coef_[0, 1]), float(st.intercept_[0])])
    return stack


def _fit_lr(Z: np.ndarray, Y: np.ndarray, priors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    T = Y.shape[1]
    coef = np.zeros((T, Z.shape[1]))
    icpt = _logit(priors).astype(float)
    for t in range(T):
        m = ~np.isnan(Y[:, t])
        y = Y[m, t]
        if m.sum() < 2 or np.unique(y).size < 2:
            continue  # constant outcome: the prior is the prediction
        lr = LogisticRegression(C=LINEAR_C, max_iter=3000).fit(Z[m], y.astype(int))
        coef[t], icpt[t] = lr.coef_[0], lr.intercept_[0]
    return coef, icpt


def _fit_linear(
    X: np.ndarray,
    Y: np.ndarray,
    groups: np.ndarray | None,
    n_embedding: int | None,
    priors: np.ndarray,
    seed: int,
    reuse: dict[str, Any] | None = None,
    *,
    group_shrink: float = GROUP_SHRINK,
) -> tuple[dict[str, Any], np.ndarray]:
    """(parameters, out-of-fold probabilities of the training rows).

    Two stackers share the components: ``stack`` over the prior of the task predicted from the prompt, and, when
    the groups are the log's tasks, ``stack_named`` over the prior of each row's own task, for callers that name
    it. Each is fitted on the out-of-fold version of the prior it is used with (a prior that is vague when
    predicted can be sharp when named, and deserves another weight).

    ``reuse``: the parameters of another fit on the same data; its full-data logistic regressions (and its task
    group model) do not depend on the seed and are taken as they are, so another seed only refits the out-of-fold
    parts, the k-means groups and the stackers."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    n_emb = 0 if n_embedding is None else int(min(n_embedding, d))
    mean = np.zeros(d)
    std = np.ones(d)
    weight = np.ones(d)
    if n_emb < d:
        rest = X[:, n_emb:]
        mean[n_emb:] = rest.mean(axis=0)
        sd = rest.std(axis=0)
        std[n_emb:] = np.where(sd > 1e-12, sd, 1.0)
        weight[n_emb:] = STRUCTURAL_WEIGHT if n_emb > 0 else 1.0
    params: dict[str, Any] = {"scale_mean": mean.tolist(), "scale_std": std.tolist(), "scale_weight": weight.tolist()}
    Z = _inputs(params, X)
    g = None if groups is None else np.array(_task_labels(list(groups)), dtype=object)

    # out-of-fold component logits for the stackers; every fold's parts and the full-data parts fit side by side
    rng = np.random.default_rng(seed)
    fold = rng.integers(0, OOF_FOLDS, size=n)
    oof_prior = np.zeros(Y.shape)
    oof_named = np.zeros(Y.shape)
    oof_lin = np.zeros(Y.shape)
    folds = [j for j in range(OOF_FOLDS) if (fold == j).sum() > 0 and (fold != j).sum() >= 2]
    fold_priors = {
        j: np.clip(np.nan_to_num(np.nanmean(Y[fold != j], axis=0), nan=0.5), 1e-4, 1 - 1e-4) for j in folds
    }
    full_priors = np.clip(priors, 1e-4, 1 - 1e-4)
    reused_group = reuse["group"] if reuse is not None and reuse["group"]["kind"] == "task" else None

    def fold_group(j: int) -> dict[str, Any]:
        a = fold != j
        return _fit_group_model(Z[a], Y[a], None if g is None else g[a], fold_priors[j], seed, group_shrink)

    def fold_lr(j: int) -> tuple[np.ndarray, np.ndarray]:
        a = fold != j
        return _fit_lr(Z[a], Y[a], fold_priors[j])

    jobs: dict[str, Callable[[], Any]] = {}  # the slowest first
    if reused_group is None:
        jobs["group"] = partial(_fit_group_model, Z, Y, g, full_priors, seed, group_shrink)
    jobs.update({f"group{j}": partial(fold_group, j) for j in folds})
    if reuse is None:
        jobs["lr"] = partial(_fit_lr, Z, Y, full_priors)
    jobs.update({f"lr{j}": partial(fold_lr, j) for j in folds})
    done = dict(zip(jobs, parallel_jobs(list(jobs.values())), strict=True))
    for j in folds:
        b = fold == j
        part = {**params, "group": done[f"group{j}"]}
        part["lr_coef"], part["lr_intercept"] = done[f"lr{j}"]
        oof_prior[b], oof_lin[b] = _component_logits(part, Z[b])
        if g is not None and part["group"]["kind"] == "task":
            named = _named_rows(part["group"], list(g[b]), int(b.sum()))
            oof_named[b] = _logit(_prior_proba(part["group"], Z[b], named))

    params["group"] = done["group"] if reused_group is None else reused_group
    if reuse is not None:
        params["lr_coef"], params["lr_intercept"] = reuse["lr_coef"], reuse["lr_intercept"]
    else:
        coef, icpt = done["lr"]
        params["lr_coef"], params["lr_intercept"] = coef.tolist(), icpt.tolist()
    params["stack"] = _fit_stacker(oof_prior, oof_lin, Y, priors)
    if params["group"]["kind"] == "task":
        params["stack_named"] = _fit_stacker(oof_named, oof_lin, Y, priors)
    w = np.asarray(params["stack"])
    oof = _sigmoid(w[:, 0] * oof_prior + w[:, 1] * oof_lin + w[:, 2])
    return params, oof
