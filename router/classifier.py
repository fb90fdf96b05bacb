"""Per-tier acceptability classifier: P(tier t answers this prompt acceptably), for every tier.

scikit-learn's estimator shape (``fit`` / ``predict_proba``), LightGBM underneath, and a per-tier probability
calibration fitted on a separate calibration split. Two layouts:

* ``stacked`` (default): one LightGBM model over (prompt features, tier index, tier cost rank) rows, so tiers share
  what they have in common (a prompt that is hard for one tier is usually hard for the next) and a tier with few
  observations borrows strength from the others.
* ``per_tier``: one LightGBM model per tier.

Everything is saved as text/JSON (LightGBM model strings, calibration parameters): no pickles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np

Layout = Literal["stacked", "per_tier"]
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
    "num_threads": 2,
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
        layout: ``stacked`` (one model, tier as a feature) or ``per_tier`` (one model per tier).
        n_estimators: boosting rounds.
        calibration: probability calibration fitted in :meth:`calibrate`.
        params: LightGBM parameters overriding :data:`DEFAULT_LGBM_PARAMS`.
        random_state: seed for LightGBM's bagging and feature sampling.
    """

    def __init__(
        self,
        n_tiers: int,
        *,
        layout: Layout = "stacked",
        n_estimators: int = 300,
        calibration: CalibrationKind = "sigmoid",
        params: dict[str, Any] | None = None,
        random_state: int = 0,
    ) -> None:
        if n_tiers < 1:
            raise ValueError("n_tiers must be >= 1")
        if layout not in ("stacked", "per_tier"):
            raise ValueError(f"unknown layout {layout!r}; choose stacked or per_tier")
        self.n_tiers = n_tiers
        self.layout: Layout = layout
        self.n_estimators = n_estimators
        self.calibration: CalibrationKind = calibration
        self.params = {**DEFAULT_LGBM_PARAMS, **(params or {}), "seed": random_state}
        self.random_state = random_state
        self.boosters_: list[lgb.Booster | None] = []
        self.priors_: list[float] = []
        self.calibrators_: list[Calibrator] = [Calibrator() for _ in range(n_tiers)]
        self.n_features_: int | None = None

    # --- layout helpers ------------------------------------------------------------------------------------
    def _stack(self, X: np.ndarray) -> np.ndarray:
        """Repeat every row once per tier and append the tier index: [n*T, d+1], tier-major within a row."""
        n = X.shape[0]
        tiers = np.tile(np.arange(self.n_tiers, dtype=np.float32), n)[:, None]
        return np.hstack([np.repeat(X, self.n_tiers, axis=0), tiers])

    # --- fit / predict -------------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, Y: np.ndarray) -> TierClassifier:
        """Fit on features ``X [n, d]`` and per-tier outcomes ``Y [n, T]`` (1 / 0 / NaN = not tried)."""
        X = np.asarray(X, dtype=np.float32)
        Y = np.asarray(Y, dtype=float)
        if Y.shape != (X.shape[0], self.n_tiers):
            raise ValueError(f"Y must have shape ({X.shape[0]}, {self.n_tiers}), got {Y.shape}")
        self.n_features_ = X.shape[1]
        observed = ~np.isnan(Y)
        self.priors_ = [float(np.nanmean(Y[:, t])) if observed[:, t].any() else 0.5 for t in range(self.n_tiers)]
        if self.layout == "stacked":
            Xs, ys = self._stack(X), Y.reshape(-1)
            keep = ~np.isnan(ys)
            # Start every row from its tier's base rate, so trees learn how this prompt deviates from it.
            init = np.tile(self._prior_logits(), X.shape[0])[keep]
            self.boosters_ = [self._train(Xs[keep], ys[keep], categorical=[Xs.shape[1] - 1], init_score=init)]
        else:
            self.boosters_ = [
                self._train(X[observed[:, t]], Y[observed[:, t], t], categorical=None) for t in range(self.n_tiers)
            ]
        return self

    def _prior_logits(self) -> np.ndarray:
        return _logit(np.asarray(self.priors_, dtype=float))

    def _train(
        self, X: np.ndarray, y: np.ndarray, categorical: list[int] | None, init_score: np.ndarray | None = None
    ) -> lgb.Booster | None:
        if y.size == 0 or np.unique(y).size < 2:
            return None  # constant outcome: the prior is the prediction
        ds = lgb.Dataset(
            X, label=y, init_score=init_score, categorical_feature=categorical or "auto", free_raw_data=True
        )
        return lgb.train(self.params, ds, num_boost_round=self.n_estimators)

    def predict_raw(self, X: np.ndarray, num_threads: int | None = None) -> np.ndarray:
        """Uncalibrated probabilities ``[n, T]``."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim == 1:
            X = X[None, :]
        if self.n_features_ is None:
            raise RuntimeError("TierClassifier is not fitted")
        if X.shape[1] != self.n_features_:
            raise ValueError(f"expected {self.n_features_} features, got {X.shape[1]}")
        kw = {"num_threads": num_threads} if num_threads else {}
        n = X.shape[0]
        if self.layout == "stacked":
            b = self.boosters_[0]
            if b is None:
                return np.tile(np.asarray(self.priors_), (n, 1))
            margin = b.predict(self._stack(X), raw_score=True, **kw).reshape(n, self.n_tiers)
            return _sigmoid(margin + self._prior_logits()[None, :])
        out = np.empty((n, self.n_tiers))
        for t, b in enumerate(self.boosters_):
            out[:, t] = self.priors_[t] if b is None else b.predict(X, **kw)
        return out

    def calibrate(self, X: np.ndarray, Y: np.ndarray) -> TierClassifier:
        """Fit one calibrator per tier on a held-out calibration split (``Y``: 1 / 0 / NaN)."""
        raw = self.predict_raw(X)
        Y = np.asarray(Y, float)
        self.calibrators_ = []
        for t in range(self.n_tiers):
            m = ~np.isnan(Y[:, t])
            self.calibrators_.append(Calibrator.fit(self.calibration, raw[m, t], Y[m, t]))
        return self

    def predict_proba(self, X: np.ndarray, num_threads: int | None = None) -> np.ndarray:
        """Calibrated P(acceptable) per tier, ``[n, T]``."""
        raw = self.predict_raw(X, num_threads=num_threads)
        return np.column_stack([c(raw[:, t]) for t, c in enumerate(self.calibrators_)])

    # --- persistence ---------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        files = []
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
        )
        obj.n_features_ = meta["n_features"]
        obj.priors_ = meta["priors"]
        obj.boosters_ = [
            None if f is None else lgb.Booster(model_str=(d / f).read_text(encoding="utf-8")) for f in meta["boosters"]
        ]
        obj.calibrators_ = [Calibrator(**c) for c in meta["calibrators"]]
        return obj
