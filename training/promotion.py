"""The promotion gate: may a newly trained version (the challenger) replace the champion?

Both models are scored by :func:`training.evaluation.evaluate_model`'s inputs on one :class:`EvalSet`: the
complete prompts the challenger never fitted on (its test split), each with the same text, role, task and costs.
The comparison is AIQ (the area under each model's cost-quality curve, over the same cost range), and a paired
bootstrap over prompts (the same resampled prompts for both models) gives an interval for
``AIQ(challenger) - AIQ(champion)``.

The rule (:func:`gate_decision`):

* fewer than ``min_prompts`` comparison prompts: not promoted (the run says why); ``force`` overrides;
* else promoted when the difference is >= 0 and the interval's lower bound is >= ``-margin``. An exact tie (the
  champion's own config retrained on the same log) promotes; a small win the data cannot tell from noise whose
  interval reaches below ``-margin`` does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from router.numbers import Integer, Number
from training.evaluation import EvalSet, knob_sweep, model_proba
from training.metrics import EvaluationReport, bootstrap_aiq

if TYPE_CHECKING:
    from router.core import Router

MIN_PROMPTS = 200
MARGIN = 0.005
N_BOOT = 1000


class GateConfig(BaseModel):
    """Settings of the promotion gate (``tierwise train --min-compare-prompts / --promotion-margin / --force``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    min_prompts: Integer = Field(
        MIN_PROMPTS, ge=1, description="Fewest comparison prompts (complete, held out of the challenger's fit)."
    )
    margin: Number = Field(
        MARGIN, ge=0, le=1, description="How far below 0 the interval's lower bound may reach and still promote."
    )
    n_boot: Integer = Field(N_BOOT, ge=100, le=100_000, description="Paired bootstrap resamples of the prompts.")
    confidence: Number = Field(0.95, gt=0.5, lt=1, description="Coverage of the bootstrap interval.")
    seed: Integer = Field(0, description="Seed of the bootstrap resamples (the verdict is reproducible).")
    force: bool = Field(False, description="Promote even when the gate says no (the verdict is still recorded).")


@dataclass(frozen=True)
class GateVerdict:
    """What the gate measured and decided."""

    promote: bool
    reason: str
    n_prompts: int
    aiq_challenger: float = math.nan
    aiq_champion: float = math.nan
    delta: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    confidence: float = 0.95
    n_champion_heldout: int | None = None
    """Comparison prompts that the champion's run also held out (None: the champion registered none)."""

    def metrics(self) -> dict[str, float]:
        """MLflow metrics (finite values only)."""
        m = {
            "gate_n_prompts": float(self.n_prompts),
            "gate_aiq_challenger": self.aiq_challenger,
            "gate_aiq_champion": self.aiq_champion,
            "gate_delta_aiq": self.delta,
            "gate_delta_ci_low": self.ci_low,
            "gate_delta_ci_high": self.ci_high,
            "gate_promoted": float(self.promote),
        }
        if self.n_champion_heldout is not None:
            m["gate_n_champion_heldout"] = float(self.n_champion_heldout)
        return {k: float(v) for k, v in m.items() if math.isfinite(v)}

    def describe(self) -> str:
        """One paragraph for the CLI and the run's ``promotion.md``."""
        if not math.isfinite(self.delta):
            return self.reason
        pct = round(100 * self.confidence)
        text = (
            f"AIQ challenger {self.aiq_challenger:.4f} vs champion {self.aiq_champion:.4f} on {self.n_prompts} "
            f"comparison prompts: difference {self.delta:+.4f}, {pct}% interval [{self.ci_low:+.4f}, "
            f"{self.ci_high:+.4f}] (paired bootstrap over prompts)"
        )
        if self.n_champion_heldout is not None:
            text += f"; {self.n_champion_heldout} of them were held out of the champion's fit too"
            if self.n_champion_heldout < self.n_prompts:
                text += (
                    f" (the champion's run fitted on or calibrated with the other "
                    f"{self.n_prompts - self.n_champion_heldout}, which favours the champion)"
                )
        return f"{text}. {self.reason}"


def paired_aiq_bootstrap(
    choices_a: np.ndarray,
    choices_b: np.ndarray,
    score: np.ndarray,
    cost: np.ndarray,
    *,
    n_boot: int = N_BOOT,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float, float, float]:
    """AIQ of two routers' knob sweeps on the same prompts and a paired bootstrap interval of their difference
    (:func:`training.metrics.bootstrap_aiq`). ``choices_*``: ``[K, n]`` tier per knob value and prompt
    (:func:`training.evaluation.knob_sweep`). Returns ``(aiq_a, aiq_b, aiq_a - aiq_b, low, high)``."""
    res = bootstrap_aiq([choices_a, choices_b], score, cost, n_boot=n_boot, seed=seed)
    deltas = res[1:, 0] - res[1:, 1]
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(deltas, [tail, 1.0 - tail])
    a, b = float(res[0, 0]), float(res[0, 1])
    return a, b, a - b, float(low), float(high)


def gate_decision(delta: float, low: float, n_prompts: int, config: GateConfig) -> tuple[bool, str]:
    """Pure rule: promote when there are enough comparison prompts, the difference is >= 0 and the interval's
    lower bound is >= ``-margin``; ``force`` promotes whatever the rest says."""
    why: str
    if n_prompts < config.min_prompts:
        ok, why = False, (
            f"only {n_prompts} comparison prompts (complete, held out of the challenger's fit); the gate needs "
            f"{config.min_prompts} to compare models (--min-compare-prompts)"
        )
    elif not math.isfinite(delta) or delta < 0:
        ok, why = False, "the challenger's AIQ is below the champion's"
    elif low < -config.margin:
        ok, why = False, (
            f"the interval's lower bound {low:+.4f} is below -{config.margin:g}: the comparison prompts cannot tell "
            "the challenger from a worse model (--promotion-margin)"
        )
    else:
        ok, why = True, f"the challenger is at least as good (lower bound >= -{config.margin:g})"
    return _verdict(ok, why, config.force)


def _verdict(ok: bool, why: str, force: bool) -> tuple[bool, str]:
    if ok:
        return True, f"promoted: {why}"
    if force:
        return True, f"promoted by --force although {why}"
    return False, f"not promoted: {why}; promote by hand with `tierwise promote VERSION` if wanted"


def refuse(why: str, es: EvalSet, config: GateConfig) -> GateVerdict:
    """A verdict without a comparison (``why``: what prevented it); ``force`` still promotes."""
    ok, reason = _verdict(False, why, config.force)
    return GateVerdict(ok, reason, len(es), confidence=config.confidence)


def first_champion(report: EvaluationReport | None, n_prompts: int, config: GateConfig) -> GateVerdict:
    """With no champion, the run becomes one unless its router is worse than the zero router (the best single tier
    for each budget, which needs no router) on its test prompts. Fewer than ``min_prompts`` of them still promote
    (there is nothing to keep instead), with a warning in the reason."""
    if report is None:
        why = "no complete test prompts to check the router against the single tiers"
    elif report.aiq["router"] < report.aiq["zero"]:
        why = (
            f"the router's AIQ {report.aiq['router']:.4f} is below the zero router's {report.aiq['zero']:.4f} "
            "(the best single tier for each budget) on the test prompts"
        )
    else:
        reason = "no current champion"
        if n_prompts < config.min_prompts:
            reason += (
                f" (warning: only {n_prompts} test prompts tried on every tier, fewer than {config.min_prompts}; "
                "its test figures are not reliable)"
            )
        return GateVerdict(True, reason, n_prompts, confidence=config.confidence)
    ok, reason = _verdict(False, why, config.force)
    return GateVerdict(ok, reason, n_prompts, confidence=config.confidence)


def compare(
    challenger: Router,
    champion: Router,
    es: EvalSet,
    config: GateConfig | None = None,
    *,
    challenger_features: np.ndarray | None = None,
    champion_heldout: set[str] | None = None,
) -> GateVerdict:
    """Score both models on ``es`` with identical inputs and apply :func:`gate_decision`.

    ``challenger_features``: the challenger's features for ``es`` when training has them (the same values
    :func:`training.evaluation.model_features` returns from the embedding cache). ``champion_heldout``: digests
    of the prompts the champion's run held out, to report how many comparison prompts neither model saw.
    """
    config = config or GateConfig()
    n = len(es)
    heldout = None if champion_heldout is None else sum(d in champion_heldout for d in es.digests())
    if list(champion.tiers) != es.tier_names:
        return refuse(f"the champion routes tiers {champion.tiers} and this run {es.tier_names}: not comparable", es,
                      config)
    if n == 0:
        ok, reason = gate_decision(math.nan, math.nan, 0, config)
        return GateVerdict(ok, reason, 0, confidence=config.confidence, n_champion_heldout=heldout)
    ch_choices = knob_sweep(challenger, es, model_proba(challenger, es, challenger_features))
    champ_choices = knob_sweep(champion, es)
    a, b, delta, low, high = paired_aiq_bootstrap(
        ch_choices, champ_choices, es.score, es.cost, n_boot=config.n_boot, confidence=config.confidence,
        seed=config.seed,
    )
    ok, reason = gate_decision(delta, low, n, config)
    return GateVerdict(ok, reason, n, a, b, delta, low, high, config.confidence, heldout)
