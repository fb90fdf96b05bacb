"""Per-attempt USD cost: logged when the log has it, otherwise estimated from catalog prices.

Rule, per attempt (row of the canonical long log, see :mod:`training.readers`):

1. ``cost_usd`` is logged (non-null)                      -> that value                     (source ``"logged"``)
2. the tier has prices and both token counts are logged   -> ``tier.price_usd(in, out)``     (source ``"tokens"``)
3. the tier has prices, some token count is missing       -> prices x estimated tokens       (``"estimated_tokens"``)
   * input tokens  = ``len(prompt) / chars_per_token[model]``
   * output tokens = the tier's ``typical_output_tokens`` (0 included), else
     :data:`router.pricing.DEFAULT_OUTPUT_TOKENS`
4. the tier has no prices                                 -> NaN                             (``"unknown"``)

``chars_per_token[model]`` is learned as the median of ``len(prompt) / input_tokens`` over the model's rows with
``input_tokens > 0``; a model without such rows uses :data:`router.pricing.DEFAULT_CHARS_PER_TOKEN` (``"default"``).
The token estimates and the price formula are :mod:`router.pricing`'s. Every fallback that was actually used for
some row produces a warning; nothing here raises for missing prices (the caller decides), but models absent from the
catalog are an error (filter them out first).

Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from router import pricing
from router.catalog import Catalog, Tier
from router.pricing import DEFAULT_CHARS_PER_TOKEN, DEFAULT_OUTPUT_TOKENS

__all__ = [
    "COST_SOURCES",
    "CostEstimate",
    "attempt_costs",
    "estimate_costs",
    "learn_chars_per_token",
]

COST_SOURCES = ("logged", "tokens", "estimated_tokens", "unknown")


@dataclass
class CostEstimate:
    """Per-attempt costs (aligned with the input DataFrame's index) and how each was obtained."""

    cost_usd: pd.Series
    """float64 USD per attempt; NaN where ``source == "unknown"``."""
    source: pd.Series
    """One of :data:`COST_SOURCES` per attempt."""
    chars_per_token: dict[str, float] = field(default_factory=dict)
    """Per model in the log: characters per input token used (or usable) for estimates."""
    chars_per_token_source: dict[str, Literal["learned", "default"]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def median_chars_per_token(self) -> float:
        """One characters-per-token value for the log (what training stores in the model bundle): the median of the
        learned per-model values, else :data:`router.pricing.DEFAULT_CHARS_PER_TOKEN`."""
        learned = [v for m, v in self.chars_per_token.items() if self.chars_per_token_source.get(m) == "learned"]
        return pricing.median_chars_per_token(learned)

    def summary(self) -> dict[str, int]:
        """Number of attempts per cost source (all sources listed, zeros included)."""
        counts = self.source.value_counts()
        return {s: int(counts.get(s, 0)) for s in COST_SOURCES}


def learn_chars_per_token(df: pd.DataFrame) -> tuple[dict[str, float], dict[str, Literal["learned", "default"]]]:
    """Characters per input token for every model in ``df``: median over rows with ``input_tokens > 0``.

    Models without such rows get :data:`router.pricing.DEFAULT_CHARS_PER_TOKEN` and source ``"default"``.
    """
    models = [str(m) for m in pd.unique(df["model"])]
    ratios: dict[str, float] = {}
    sources: dict[str, Literal["learned", "default"]] = {}
    learned = pd.Series(dtype="float64")
    if "input_tokens" in df.columns:
        tok = pd.to_numeric(df["input_tokens"], errors="coerce")
        ok = (tok > 0) & df["prompt"].notna()
        if ok.any():
            ratio = df.loc[ok, "prompt"].astype(str).str.len() / tok[ok]
            learned = ratio.groupby(df.loc[ok, "model"].astype(str)).median()
    for m in models:
        value = learned.get(m)
        if value is not None and np.isfinite(value) and value > 0:
            ratios[m], sources[m] = float(value), "learned"
        else:
            ratios[m], sources[m] = DEFAULT_CHARS_PER_TOKEN, "default"
    return ratios, sources


def estimate_costs(df: pd.DataFrame, catalog: Catalog) -> CostEstimate:
    """Cost of every attempt in a canonical long log (see the module docstring for the rule).

    Args:
        df: canonical long log with ``model`` and ``prompt``; optional ``cost_usd``, ``input_tokens``,
            ``output_tokens``. Not modified.
        catalog: tier catalog; every model in ``df`` must be one of its tiers (by model or tier name).

    Raises:
        ValueError: ``df`` holds models that are not in the catalog (the message names them).
    """
    for col in ("model", "prompt"):
        if col not in df.columns:
            raise ValueError(f"estimate_costs needs a {col!r} column")
    models = df["model"].astype(str)
    tiers = _tiers_by_model(catalog)
    unknown = sorted(set(models.unique()) - set(tiers))
    if unknown:
        raise ValueError(
            f"model(s) not in catalog {catalog.name!r}: {', '.join(unknown)}; filter them out before costing "
            f"(catalog models: {', '.join(catalog.models)})"
        )

    n = len(df)
    logged = _column(df, "cost_usd")
    in_tok = _column(df, "input_tokens")
    out_tok = _column(df, "output_tokens")
    cost = logged.copy()
    source = np.full(n, "unknown", dtype=object)
    source[~np.isnan(logged)] = "logged"

    cpt, cpt_source = learn_chars_per_token(df)
    prompt_len = df["prompt"].astype(str).str.len().to_numpy(dtype=float)
    used_default_cpt: set[str] = set()
    used_default_out: set[str] = set()
    no_prices: set[str] = set()

    model_arr = models.to_numpy()
    for model in pd.unique(model_arr):
        tier = tiers[model]
        rows = (model_arr == model) & np.isnan(logged)
        if not rows.any():
            continue
        if tier.input_usd_per_1m is None or tier.output_usd_per_1m is None:  # not tier.has_prices, for mypy
            no_prices.add(model)
            continue  # stays NaN / "unknown"
        i_tok = in_tok[rows]
        o_tok = out_tok[rows]
        exact = ~np.isnan(i_tok) & ~np.isnan(o_tok)
        need_in = np.isnan(i_tok)
        need_out = np.isnan(o_tok)
        if need_in.any() and cpt_source[model] == "default":
            used_default_cpt.add(model)
        if need_out.any() and tier.typical_output_tokens is None:
            used_default_out.add(model)
        est_in = np.where(need_in, pricing.estimated_input_tokens(prompt_len[rows], cpt[model]), i_tok)
        est_out = np.where(need_out, float(pricing.tier_output_tokens(tier)), o_tok)
        cost[rows] = pricing.usd_array(est_in, est_out, tier.input_usd_per_1m, tier.output_usd_per_1m)
        source[np.flatnonzero(rows)] = np.where(exact, "tokens", "estimated_tokens")

    warnings: list[str] = []
    if used_default_cpt:
        warnings.append(
            f"no logged input_tokens for model(s) {', '.join(sorted(used_default_cpt))}: input tokens estimated "
            f"from prompt length assuming the default {DEFAULT_CHARS_PER_TOKEN} characters per token"
        )
    if used_default_out:
        warnings.append(
            f"no logged output_tokens and no typical_output_tokens in the catalog for model(s) "
            f"{', '.join(sorted(used_default_out))}: assuming {DEFAULT_OUTPUT_TOKENS} output tokens per call"
        )
    if no_prices:
        n_unknown = int((source == "unknown").sum())
        warnings.append(
            f"no prices in the catalog for model(s) {', '.join(sorted(no_prices))} and no logged cost_usd: "
            f"{n_unknown} attempt(s) have unknown cost (fill input_usd_per_1m / output_usd_per_1m)"
        )
    return CostEstimate(
        cost_usd=pd.Series(cost, index=df.index, name="cost_usd", dtype="float64"),
        source=pd.Series(source, index=df.index, name="cost_source", dtype="str"),
        chars_per_token=cpt,
        chars_per_token_source=cpt_source,
        warnings=warnings,
    )


attempt_costs = estimate_costs
"""Alias used in ``docs/CONTRACTS.md``."""


def _tiers_by_model(catalog: Catalog) -> dict[str, Tier]:
    """Lookup of a log's ``model`` value: the tier's model name first, then its tier name."""
    out = {t.name: t for t in catalog.tiers}
    out.update({t.model: t for t in catalog.tiers})
    return out


def _column(df: pd.DataFrame, name: str) -> np.ndarray:
    if name not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
