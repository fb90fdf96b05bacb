"""Per-log model selection: choose among candidate routers by the metric the product is judged on.

Given several candidates' probabilities for the same prompts (each prompt's from a model that never saw it: out of
fold), :func:`score_candidates` computes each candidate's AIQ of its own decisions (the decision rule's knob swept
from 0 to 1, exactly as :func:`training.metrics.evaluate_router` does) and a paired bootstrap over prompts: every
resample of the prompts scores all candidates, so the difference of two candidates' AIQ on it is paired.
:meth:`CandidateScores.select` then picks the candidate with the best AIQ unless the lower bound of its bootstrap
difference to the reference (the most robust candidate) is below zero: then the reference stays. A small log, whose
differences are mostly noise, thus keeps the reference.

The bootstrap is :func:`training.metrics.bootstrap_aiq` (the promotion gate's too): one choice per (knob, prompt),
and a resample's curve is the weighted mean of the chosen tiers' score and cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from training.metrics import _metric_key, bootstrap_aiq, evaluate_router, gap_closed, sweep_choices

N_BOOT = 200
"""Default bootstrap resamples (the lower bound's Monte-Carlo error is small next to its sampling error)."""
LEVEL = 0.05
"""Default one-sided level: the lower bound is the 5% quantile of the bootstrap difference."""
MAX_BOOT = 10_000
MAX_WEIGHTS = 50_000_000  # prompts x resamples: a bound on the bootstrap's work


@dataclass(frozen=True)
class Selection:
    """The outcome of :meth:`CandidateScores.select`."""

    chosen: str
    reference: str
    best: str
    """The candidate with the highest out-of-fold AIQ (``chosen`` unless the fallback applied)."""
    reason: str
    level: float
    aiq: dict[str, float]
    gap_closed: dict[str, float]
    diff_lower: dict[str, float]
    """Per candidate: the ``level`` quantile of the bootstrap AIQ difference to the reference."""
    diff_upper: dict[str, float]
    """Per candidate: the ``1 - level`` quantile of the same difference."""
    n_prompts: int
    n_boot: int

    def metrics(self) -> dict[str, float]:
        """Flat, MLflow-friendly metrics: ``selection_aiq_<candidate>``, ``selection_gap_closed_<candidate>``,
        ``selection_diff_lo_<candidate>`` (AIQ difference to the reference, lower bound) and
        ``selection_diff_hi_<candidate>``."""
        out: dict[str, float] = {"selection_n_prompts": float(self.n_prompts), "selection_n_boot": float(self.n_boot)}
        for name in self.aiq:
            key = _metric_key(name)
            out[f"selection_aiq_{key}"] = self.aiq[name]
            out[f"selection_gap_closed_{key}"] = self.gap_closed[name]
            out[f"selection_diff_lo_{key}"] = self.diff_lower[name]
            out[f"selection_diff_hi_{key}"] = self.diff_upper[name]
        return out

    def to_markdown(self) -> str:
        """A short table of the candidates' out-of-fold figures and the choice (for ``evaluation.md``)."""
        lo, hi = 100 * self.level, 100 * (1 - self.level)
        if not self.aiq:
            return f"## Model selection\n\nChosen: **{self.chosen}** ({self.reason}); no candidate was scored.\n"
        lines = [
            f"## Model selection ({self.n_prompts} out-of-fold prompts, {self.n_boot} paired bootstrap resamples)",
            "",
            f"Chosen: **{self.chosen}** ({self.reason}).",
            "",
            f"| candidate | AIQ | gap closed | AIQ minus {self.reference}: {lo:g}% .. {hi:g}% bootstrap quantiles |",
            "|---|---|---|---|",
        ]
        for name in sorted(self.aiq, key=lambda n: -self.aiq[n]):
            mark = " (chosen)" if name == self.chosen else ""
            lines.append(
                f"| {name}{mark} | {self.aiq[name]:.4f} | {100 * self.gap_closed[name]:.1f}% | "
                f"{self.diff_lower[name]:+.4f} .. {self.diff_upper[name]:+.4f} |"
            )
        return "\n".join(lines) + "\n"


@dataclass
class CandidateScores:
    """Out-of-fold AIQ of every candidate on the same prompts, with paired bootstrap replicates."""

    names: list[str]
    aiq: np.ndarray
    """Point AIQ per candidate ``[C]``."""
    boot_aiq: np.ndarray
    """AIQ per bootstrap resample and candidate ``[B, C]`` (resample b is the same prompts for every candidate)."""
    aiq_zero: float
    aiq_oracle: float
    n_prompts: int

    def gap_closed(self, name: str) -> float:
        return gap_closed(float(self.aiq[self.names.index(name)]), self.aiq_zero, self.aiq_oracle)

    def select(self, reference: str, candidates: Sequence[str] | None = None, level: float = LEVEL) -> Selection:
        """Choose among ``candidates`` (default: all): the best AIQ, unless the ``level`` quantile of its paired
        bootstrap AIQ difference to ``reference`` is below 0, in which case ``reference``. Ties go to the
        reference, then to the earlier candidate."""
        names = list(self.names if candidates is None else candidates)
        if not names:
            raise ValueError("no candidates to select from")
        unknown = [n for n in [*names, reference] if n not in self.names]
        if unknown:
            raise ValueError(f"unknown candidate(s) {unknown}; scored: {self.names}")
        if reference not in names:
            names.append(reference)
        if not (isinstance(level, float | int) and not isinstance(level, bool) and 0 < level <= 0.5):
            raise ValueError(f"level must be a number in (0, 0.5], got {level!r}")
        idx = {n: self.names.index(n) for n in names}
        r = idx[reference]
        diff = self.boot_aiq[:, [idx[n] for n in names]] - self.boot_aiq[:, [r]]
        lower = dict(zip(names, np.quantile(diff, level, axis=0).tolist(), strict=True))
        upper = dict(zip(names, np.quantile(diff, 1 - level, axis=0).tolist(), strict=True))
        order = sorted(names, key=lambda n: (-self.aiq[idx[n]], n != reference, names.index(n)))
        best = order[0]
        if best == reference:
            chosen, reason = reference, f"{reference} has the best out-of-fold AIQ"
        elif lower[best] >= 0:
            chosen = best
            reason = (
                f"{best} beats {reference} by {self.aiq[idx[best]] - self.aiq[r]:+.4f} AIQ out of fold; the "
                f"{100 * level:g}% bootstrap quantile of the difference is {lower[best]:+.4f} >= 0"
            )
        else:
            chosen = reference
            reason = (
                f"{best} beats {reference} by {self.aiq[idx[best]] - self.aiq[r]:+.4f} AIQ out of fold, within "
                f"noise (the {100 * level:g}% bootstrap quantile of the difference is {lower[best]:+.4f} < 0): "
                f"kept {reference}"
            )
        return Selection(
            chosen=chosen,
            reference=reference,
            best=best,
            reason=reason,
            level=float(level),
            aiq={n: float(self.aiq[idx[n]]) for n in names},
            gap_closed={n: self.gap_closed(n) for n in names},
            diff_lower=lower,
            diff_upper=upper,
            n_prompts=self.n_prompts,
            n_boot=int(self.boot_aiq.shape[0]),
        )


def score_candidates(
    probas: Mapping[str, np.ndarray],
    score: np.ndarray,
    cost: np.ndarray,
    acceptable: np.ndarray,
    *,
    rule: str = "utility",
    tier_costs: Sequence[float] | np.ndarray | None = None,
    row_costs: np.ndarray | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> CandidateScores:
    """AIQ of each candidate's decisions on the same complete prompts, plus ``n_boot`` paired bootstrap replicates.

    ``probas``: candidate name -> P(acceptable) ``[n, T]`` (out of fold); ``score`` / ``cost`` / ``acceptable``
    ``[n, T]`` as in :mod:`training.metrics` (complete rows only); ``rule`` / ``tier_costs`` / ``row_costs``: the
    decision rule and prices of :func:`training.metrics.evaluate_router`. The point AIQ equals
    ``evaluate_router(...).aiq["router"]``; zero and oracle AIQ are those of ``evaluate_router`` on the same
    prompts, so :meth:`CandidateScores.gap_closed` is its ``gap_closed``.
    """
    if not probas:
        raise ValueError("no candidates to score")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or not 1 <= n_boot <= MAX_BOOT:
        raise ValueError(f"n_boot must be an integer in 1..{MAX_BOOT}, got {n_boot!r}")
    s, c = _finite_matrix(score, "score"), _finite_matrix(cost, "cost")
    acc = np.asarray(acceptable, dtype=bool)
    if s.shape != c.shape or acc.shape != s.shape:
        raise ValueError(f"score {s.shape}, cost {c.shape} and acceptable {acc.shape} must have the same shape")
    n, n_tiers = s.shape
    if n == 0:
        raise ValueError("no prompts to score the candidates on")
    if n * (n_boot + 1) > MAX_WEIGHTS:
        raise ValueError(
            f"{n} prompts x {n_boot} resamples is too large a bootstrap (at most {MAX_WEIGHTS:,} prompt weights); "
            "use fewer resamples or a sample of the prompts"
        )
    ps = {}
    for name, p in probas.items():
        arr = np.asarray(p, dtype=float)
        if arr.shape != s.shape:
            raise ValueError(f"candidate {name!r}: probabilities have shape {arr.shape}, expected {s.shape}")
        if not np.isfinite(arr).all() or (arr < 0).any() or (arr > 1).any():
            raise ValueError(f"candidate {name!r}: probabilities must be finite and within [0, 1]")
        ps[str(name)] = arr
    rc = None if row_costs is None else _finite_matrix(row_costs, "row_costs")
    if rc is not None and rc.shape != s.shape:
        raise ValueError(f"row_costs has shape {rc.shape}, expected {s.shape}")
    tc = None if tier_costs is None else np.asarray(tier_costs, dtype=float)
    if tc is not None and (tc.shape != (n_tiers,) or not np.isfinite(tc).all()):
        raise ValueError(f"tier_costs must be {n_tiers} finite numbers")

    names = list(ps)
    choices = [sweep_choices(ps[name], rule, tier_costs=tc, row_costs=rc)[1] for name in names]
    # row 0: every prompt once (the point estimate); rows 1..: resamples shared by every candidate (paired)
    out = bootstrap_aiq(choices, s, c, n_boot=n_boot, seed=seed)
    ref = evaluate_router(ps[names[0]], s, c, acc, None, 0.5, rule=rule, tier_costs=tc, row_costs=rc)  # zero, oracle
    return CandidateScores(
        names=names,
        aiq=out[0],
        boot_aiq=out[1:],
        aiq_zero=float(ref.aiq["zero"]),
        aiq_oracle=float(ref.aiq["oracle"]),
        n_prompts=n,
    )


def select_candidate(
    probas: Mapping[str, np.ndarray],
    score: np.ndarray,
    cost: np.ndarray,
    acceptable: np.ndarray,
    *,
    reference: str,
    level: float = LEVEL,
    rule: str = "utility",
    tier_costs: Sequence[float] | np.ndarray | None = None,
    row_costs: np.ndarray | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Selection:
    """:func:`score_candidates`, then :meth:`CandidateScores.select` among all of them."""
    if reference not in probas:
        raise ValueError(f"reference candidate {reference!r} is not among {list(probas)}")
    scores = score_candidates(
        probas, score, cost, acceptable, rule=rule, tier_costs=tier_costs, row_costs=row_costs, n_boot=n_boot,
        seed=seed,
    )
    return scores.select(reference, level=level)


def skipped(chosen: str, reference: str, reason: str, n_prompts: int = 0, level: float = LEVEL) -> Selection:
    """The record of a selection that scored nothing (one candidate, or too few prompts to tell them apart)."""
    return Selection(
        chosen=chosen, reference=reference, best=chosen, reason=reason, level=float(level), aiq={}, gap_closed={},
        diff_lower={}, diff_upper={}, n_prompts=int(n_prompts), n_boot=0,
    )


def _finite_matrix(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n_prompts, n_tiers], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} has {int((~np.isfinite(arr)).sum())} non-finite cell(s); keep complete prompts only")
    return arr


__all__ = [
    "CandidateScores", "Selection", "score_candidates", "select_candidate", "skipped", "LEVEL", "N_BOOT",
]
