"""Expected cost of one call per tier, as a function of the prompt's length.

A call's price is input tokens x input price + output tokens x output price, and input tokens grow with the prompt,
so a long prompt costs more on every tier and the gap between a cheap and an expensive tier grows with it. The
utility rule (``router.decision``) weighs each tier's probability against this per-prompt cost rather than the
tier's mean, so the router is more careful with long prompts on expensive tiers.

Per tier, a log-linear fit on the training log's per-call costs::

    log cost_t = a_t + b_t * log(1 + characters)        (a_t includes the log-normal smearing term)

The slope is fitted, not assumed: across a log's tasks, output length (the larger part of the price for many calls)
can fall as prompts grow, e.g. short coding requests with long answers next to long multiple-choice questions with
one-letter answers, and the benchmarks route better with the fitted slope (README, Evaluation). Lengths outside the
range seen in training are priced as the nearest seen length, so the fit is never extrapolated.

Costs are reported relative to ``unit``, the mean cost of the top tier on the training prompts, which is the unit
of the utility rule's price (``lam * relative cost``). Pure numpy; stored as JSON in the bundle.

``priced`` says which tiers had a logged cost at all: a tier without one is fitted as free (the utility rule needs a
number), but its price is unknown, and :mod:`router.pricing` must not report it as 0 USD. Bundles written before the
field existed lack it; there a free intercept (:data:`FREE`) counts as unknown.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field, PrivateAttr

MIN_ROWS = 3  # fewer priced calls than this: the tier's mean cost, whatever the length
FREE = -700.0  # log-cost intercept of a free tier (exp(-700) ~ 1e-304 USD; finite, so it survives JSON)


class CostModel(BaseModel):
    """Per-tier ``log cost = intercept + slope * log(1 + chars)``; see the module doc."""

    intercept: list[float] = Field(description="Per tier: log-cost intercept (with smearing); FREE for a free tier.")
    slope: list[float] = Field(description="Per tier: elasticity of cost to prompt length.")
    chars_range: tuple[int, int] = Field(description="Shortest and longest training prompt (characters).")
    unit: float = Field(gt=0, description="USD counted as 1: the top tier's mean cost on the training prompts.")
    priced: list[bool] | None = Field(
        None, description="Per tier: the training log had a cost for it (None: a bundle from before the field)."
    )

    _a: np.ndarray = PrivateAttr()
    _b: np.ndarray = PrivateAttr()

    def model_post_init(self, context: object, /) -> None:
        self._a = np.asarray(self.intercept, dtype=float)[None, :]  # arrays once, not per decision
        self._b = np.asarray(self.slope, dtype=float)[None, :]

    @property
    def n_tiers(self) -> int:
        return len(self.intercept)

    @property
    def known(self) -> list[bool]:
        """Per tier: whether :meth:`predict` is a cost learned from the log (False: the tier was never priced)."""
        if self.priced is not None:
            return list(self.priced)
        return [a > FREE for a in self.intercept]

    @classmethod
    def fit(cls, chars: Sequence[int] | np.ndarray, cost: np.ndarray) -> CostModel:
        """Fit on prompt lengths ``chars [n]`` and per-call costs ``cost [n, T]`` (NaN = tier not tried)."""
        n_chars = np.asarray(chars, dtype=float)
        x = np.log1p(n_chars)
        cost = np.asarray(cost, dtype=float)
        if cost.ndim != 2 or cost.shape[0] != x.shape[0]:
            raise ValueError(f"cost must be [n, T] with n = {x.shape[0]}, got shape {cost.shape}")
        intercept, slope, priced = [], [], []
        for t in range(cost.shape[1]):
            c = cost[:, t]
            seen = np.isfinite(c)
            priced.append(bool(seen.any()))
            mean = float(c[seen].mean()) if seen.any() else 0.0
            positive = seen & (c > 0)
            if mean <= 0:
                intercept.append(FREE)  # free (or never priced) tier
                slope.append(0.0)
                continue
            if positive.sum() < MIN_ROWS or np.ptp(x[positive]) == 0:
                intercept.append(float(np.log(mean)))
                slope.append(0.0)
                continue
            xs, ys = x[positive], np.log(c[positive])
            b = float(np.polyfit(xs, ys, 1)[0])
            a = float(ys.mean() - b * xs.mean())
            resid = ys - (a + b * xs)
            intercept.append(a + float(resid.var()) / 2.0)  # E[cost] of a log-normal, not its median
            slope.append(b)
        top = cost[:, -1]
        unit = float(np.nanmean(top)) if np.isfinite(top).any() else 0.0
        if not unit > 0:
            finite = cost[np.isfinite(cost)]
            unit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        lo, hi = (int(n_chars.min()), int(n_chars.max())) if n_chars.size else (0, 0)
        return cls(intercept=intercept, slope=slope, unit=unit, chars_range=(lo, hi), priced=priced)

    def predict(self, chars: Sequence[int] | np.ndarray) -> np.ndarray:
        """Expected USD per call ``[n, T]`` for prompts of ``chars`` characters (clipped to ``chars_range``)."""
        lo, hi = self.chars_range
        x = np.log1p(np.clip(np.asarray(chars, dtype=float).reshape(-1), lo, hi))[:, None]
        with np.errstate(over="ignore"):
            return np.where(self._a <= FREE, 0.0, np.exp(self._a + self._b * x))

    def relative(self, chars: Sequence[int] | np.ndarray) -> np.ndarray:
        """Expected cost per call in units of the top tier's mean cost, ``[n, T]`` (the utility rule's prices)."""
        return self.predict(chars) / self.unit

    def relative_for(self, prompts: Sequence[str]) -> np.ndarray:
        """:meth:`relative` for these prompt texts (priced by their length in characters)."""
        return self.relative([len(p) for p in prompts])
