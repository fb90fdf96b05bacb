"""Labelling: from per-attempt outcomes to per-prompt, per-tier matrices and the cheapest acceptable tier.

Pure functions over DataFrames / arrays; no I/O.

Policy (documented in the README):

* Repeated attempts of a prompt on the same model are averaged (score and cost): LLM outputs are noisy.
* An attempt is acceptable when its (mean) score >= the catalog's threshold for the prompt's task.
* The **label** of a prompt is the tier that is cheapest *on that prompt* (ties: the lower tier) among the tiers
  whose answer was acceptable.
* When no tier answered acceptably, ``no_acceptable`` is True and the label falls back to **best effort**: the
  cheapest tier among those with the highest score (for pass/fail data: the cheapest tier, since every tier
  failed). The router itself is trained on the per-tier acceptability, so these prompts teach every tier's
  classifier a failure rather than being dropped.
* Logs need not try every prompt on every tier: unobserved cells are NaN, each tier's classifier learns only from
  the prompts it was tried on, and ``complete`` says whether the label could see every tier. The summary counts
  the prompts observed on each tier (and on that tier only); :func:`single_tier_warning` flags logs where most
  prompts were seen on one tier only, as feedback collected under a router is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from router.catalog import Catalog

SPLITS = ("train", "calibration", "test")


@dataclass
class LabelledData:
    """Per-prompt labels plus per-tier outcome matrices (rows aligned with ``prompts``)."""

    prompts: pd.DataFrame
    """Index ``prompt_id``; columns prompt, task, role, split, label, label_tier, no_acceptable, complete."""
    tier_names: list[str]
    score: np.ndarray
    """[n, T] mean score per tier; NaN where the tier was not tried."""
    cost: np.ndarray
    """[n, T] mean USD cost per tier; NaN where the tier was not tried."""
    acceptable: np.ndarray
    """[n, T] 1.0 / 0.0 / NaN (not tried)."""
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, mask: np.ndarray) -> LabelledData:
        mask = np.asarray(mask, dtype=bool)
        return LabelledData(
            self.prompts.loc[mask].copy(),
            list(self.tier_names),
            self.score[mask],
            self.cost[mask],
            self.acceptable[mask],
            list(self.notes),
        )

    def split(self, name: str) -> LabelledData:
        return self.subset((self.prompts["split"] == name).to_numpy())

    @property
    def complete_rows(self) -> np.ndarray:
        """Rows where every tier was tried (needed to evaluate a router offline)."""
        return ~np.isnan(self.score).any(axis=1) & ~np.isnan(self.cost).any(axis=1)

    def summary(self) -> dict[str, Any]:
        """Counts for logging: prompts per split, label distribution, no-acceptable share, per-tier observations.

        ``tier_observed_prompts``: prompts tried on each tier; ``single_tier_prompts``: prompts tried on that tier
        and no other; ``single_tier_share``: share of prompts tried on exactly one tier.
        """
        p = self.prompts
        label_counts = p.loc[~p["no_acceptable"], "label_tier"].value_counts()
        observed = ~np.isnan(self.score)
        single = observed.sum(axis=1) == 1
        return {
            "n_prompts": int(len(p)),
            "splits": {s: int((p["split"] == s).sum()) for s in SPLITS},
            "label_share": {t: float(label_counts.get(t, 0)) / max(len(p), 1) for t in self.tier_names},
            "no_acceptable_share": float(p["no_acceptable"].mean()) if len(p) else 0.0,
            "complete_share": float(p["complete"].mean()) if len(p) else 0.0,
            "tier_acceptable_rate": {
                t: float(np.nanmean(self.acceptable[:, i])) if (~np.isnan(self.acceptable[:, i])).any() else None
                for i, t in enumerate(self.tier_names)
            },
            "tasks": sorted(str(t) for t in p["task"].dropna().unique()) if "task" in p else [],
            "tier_observed_prompts": {t: int(observed[:, i].sum()) for i, t in enumerate(self.tier_names)},
            "single_tier_prompts": {t: int((single & observed[:, i]).sum()) for i, t in enumerate(self.tier_names)},
            "single_tier_share": float(single.mean()) if len(p) else 0.0,
        }

    def to_frame(self) -> pd.DataFrame:
        """Wide export: one row per prompt with label columns and per-tier score / cost / acceptable."""
        out = self.prompts.reset_index()
        for i, t in enumerate(self.tier_names):
            out[f"score__{t}"] = self.score[:, i]
            out[f"cost_usd__{t}"] = self.cost[:, i]
            out[f"acceptable__{t}"] = self.acceptable[:, i]
        return out


def label_prompts(attempts: pd.DataFrame, catalog: Catalog) -> LabelledData:
    """Aggregate attempts and label each prompt with its cheapest acceptable tier.

    Args:
        attempts: canonical long log restricted to catalog models, with a ``cost_usd`` column filled in
            (see :mod:`training.costs`); ``task``, ``role`` and ``split`` are optional.
        catalog: tiers (ordered cheapest first) and the acceptability rule.
    """
    missing = {"prompt_id", "prompt", "model", "score", "cost_usd"} - set(attempts.columns)
    if missing:
        raise ValueError(f"attempts lack column(s) {sorted(missing)}")
    tier_of_model = {t.model: i for i, t in enumerate(catalog.tiers)}
    unknown = sorted(set(attempts["model"].unique()) - set(tier_of_model))
    if unknown:
        raise ValueError(f"attempts contain models not in the catalog: {unknown}")

    agg = (
        attempts.groupby(["prompt_id", "model"], sort=False)
        .agg(score=("score", "mean"), cost=("cost_usd", "mean"), n=("score", "size"))
        .reset_index()
    )
    meta_cols = [c for c in ("prompt", "task", "role", "split") if c in attempts.columns]
    prompts = attempts.groupby("prompt_id", sort=False)[meta_cols].first()
    for col in ("task", "role", "split"):
        if col not in prompts:
            prompts[col] = None
    prompts["n_attempts"] = attempts.groupby("prompt_id", sort=False).size()

    n, t = len(prompts), len(catalog.tiers)
    row = pd.Index(prompts.index).get_indexer(agg["prompt_id"])
    col = agg["model"].map(tier_of_model).to_numpy()
    score = np.full((n, t), np.nan)
    cost = np.full((n, t), np.nan)
    score[row, col] = agg["score"].to_numpy(dtype=float)
    cost[row, col] = agg["cost"].to_numpy(dtype=float)

    thresholds = np.array(
        [catalog.acceptability.threshold_for(None if pd.isna(x) else str(x)) for x in prompts["task"]], dtype=float
    )
    acceptable = np.where(np.isnan(score), np.nan, (score >= thresholds[:, None] - 1e-12).astype(float))
    label, no_acc = cheapest_acceptable(score, cost, acceptable)

    prompts["label"] = label
    prompts["label_tier"] = [catalog.tiers[i].name for i in label]
    prompts["no_acceptable"] = no_acc
    prompts["complete"] = ~np.isnan(score).any(axis=1)
    notes = []
    repeated = int((agg["n"] > 1).sum())
    if repeated:
        notes.append(f"{repeated} (prompt, model) pairs had repeated attempts; their scores and costs were averaged")
    return LabelledData(prompts, catalog.tier_names, score, cost, acceptable, notes)


def single_tier_warning(labelled: LabelledData) -> str | None:
    """A warning when more than half the prompts were observed on one tier only (None otherwise).

    That is what feedback collected under a router looks like: each prompt was answered by the tier the router
    chose, so the log says little about whether a cheaper tier would have done or a dearer one was needed.
    """
    s = labelled.summary()
    share, n = float(s["single_tier_share"]), len(labelled)  # type: ignore[arg-type]
    if n == 0 or share <= 0.5:
        return None
    per_tier = s["single_tier_prompts"]
    observed = s["tier_observed_prompts"]
    counts = ", ".join(f"{t}: {per_tier[t]}" for t in labelled.tier_names)  # type: ignore[index]
    seen = ", ".join(f"{t}: {observed[t]}" for t in labelled.tier_names)  # type: ignore[index]
    return (
        f"{round(share * n)} of {n} prompts ({share:.0%}) were observed on one tier only ({counts}; prompts observed "
        f"per tier: {seen}). Feedback collected under a router is biased toward that router's choices: each tier "
        "learns only from the prompts routed to it, so the new router cannot learn where a cheaper tier would have "
        "done or a dearer one was needed, and the test metrics use only prompts tried on every tier. Mix in a log "
        "where prompts were tried on every tier (or send a random share of traffic to every tier)."
    )


def cheapest_acceptable(score: np.ndarray, cost: np.ndarray, acceptable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: index of the cheapest acceptable tier (ties -> lower index) and whether none was acceptable.

    Rows with no acceptable tier get the best-effort tier: the cheapest among the highest-scoring tiers.
    NaN cells (not tried) are never chosen unless the whole row is NaN (then tier 0).
    """
    n, t = score.shape
    rank = np.broadcast_to(np.arange(t), (n, t))
    # Sort key: cost, then tier index. Unknown costs sort after known ones but keep catalog order.
    cost_key = np.where(np.isnan(cost), np.inf, cost)
    acc = np.nan_to_num(acceptable, nan=0.0) > 0.5
    key = np.where(acc, cost_key, np.inf)
    order = _argmin_lex(key, rank)
    has_acc = acc.any(axis=1)

    best = np.nanmax(np.where(np.isnan(score), -np.inf, score), axis=1, keepdims=True)
    is_best = (score >= best - 1e-12) & ~np.isnan(score)
    key_best = np.where(is_best, cost_key, np.inf)
    fallback = _argmin_lex(key_best, rank)
    label = np.where(has_acc, order, fallback)
    return label.astype(int), ~has_acc


def _argmin_lex(key: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Row-wise argmin of ``key`` with ties broken by the lower ``rank`` (tier index)."""
    m = key.min(axis=1, keepdims=True)
    # np.inf == np.inf, so a row with nothing finite picks its lowest tier (callers mask such rows).
    tied = key == m
    return np.where(tied, rank, rank.shape[1]).min(axis=1)


def assign_splits(
    prompt_ids: pd.Index,
    given: pd.Series | None,
    *,
    test_fraction: float = 0.2,
    calibration_fraction: float = 0.2,
    seed: int = 0,
) -> pd.Series:
    """Train / calibration / test split per prompt, deterministic from the prompt id and the seed.

    When the log gives a split, its ``test`` rows stay test (never fitted or calibrated on) and its
    ``calibration`` rows stay calibration; if it marks no calibration rows, a ``calibration_fraction`` of its
    train rows is carved out. Without a given split, prompts are split by a seeded hash of their id.
    """
    u = _unit_hash(prompt_ids, seed)
    out = pd.Series(index=prompt_ids, dtype=object)
    if given is not None and given.notna().any():
        g = given.reindex(prompt_ids).fillna("train").astype(str).str.lower()
        out[:] = g.to_numpy()
        if not (g == "calibration").any():
            carve = (g == "train").to_numpy() & (_unit_hash(prompt_ids, seed + 1) < calibration_fraction)
            out[carve] = "calibration"
        return out
    test = u < test_fraction
    cal = (~test) & (u < test_fraction + calibration_fraction * (1 - test_fraction))
    out[:] = np.where(test, "test", np.where(cal, "calibration", "train"))
    return out


def _unit_hash(ids: pd.Index, seed: int) -> np.ndarray:
    """A stable pseudo-uniform value in [0, 1) per id (sha1 of seed and id; machine independent)."""
    vals = [int.from_bytes(hashlib.sha1(f"{seed}:{i}".encode()).digest()[:8], "big") for i in ids]
    return np.asarray(vals, dtype=np.float64) / 2.0**64
