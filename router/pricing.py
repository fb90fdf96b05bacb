"""What a call costs: the one place for the price formula and the token estimates behind it.

* USD of a call = ``(input_tokens * input_usd_per_1m + output_tokens * output_usd_per_1m) / 1e6``; the batch price
  is that times ``1 - batch_discount`` (:func:`usd`, :func:`usd_array`, :func:`tier_usd`, :func:`tier_costs`).
* Output tokens not logged or not known yet: the tier's ``typical_output_tokens`` when the catalog sets it (``0``
  included), else :data:`DEFAULT_OUTPUT_TOKENS` (:func:`assumed_output_tokens`).
* Input tokens not logged or not known yet: ``prompt characters / chars_per_token`` (:func:`estimated_input_tokens`); a
  request's estimate is that rounded to a whole number of at least 1 (:func:`request_input_tokens`). Training learns
  characters per token from the log and stores one value in the model bundle (``training["chars_per_token"]``);
  without it, :data:`DEFAULT_CHARS_PER_TOKEN` (:func:`resolve_chars_per_token`).
* A tier without list prices (e.g. a catalog drafted from a log that records each call's ``cost_usd``): the model's
  fitted cost model (:class:`router.cost_model.CostModel`, ``training["cost_model"]`` in the bundle) prices it from
  the prompt's length, when it learned a cost for that tier; else its cost is unknown (None / NaN). List prices win
  where both exist. :func:`call_cost` (one routed call, what a :class:`router.Decision` carries) and
  :func:`tier_costs` (``cost_model=`` and ``prompt_chars=``, many calls) apply this rule.

Used by the catalog (``Tier.price_usd``), training (:mod:`training.costs`, :mod:`training.reports`) and the service.
Pure functions, no I/O; this module imports nothing of tierwise at run time (the catalog imports it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from router.cost_model import CostModel


class Tier(Protocol):
    """What pricing reads of a tier (``router.catalog.Tier`` has it; the catalog imports this module, not the
    other way round)."""

    @property
    def input_usd_per_1m(self) -> float | None: ...
    @property
    def output_usd_per_1m(self) -> float | None: ...
    @property
    def batch_discount(self) -> float: ...
    @property
    def typical_output_tokens(self) -> int | None: ...
    @property
    def has_prices(self) -> bool: ...


__all__ = [
    "DEFAULT_CHARS_PER_TOKEN",
    "DEFAULT_OUTPUT_TOKENS",
    "CallCost",
    "CostSource",
    "assumed_output_tokens",
    "call_cost",
    "cost_model_usd",
    "estimated_input_tokens",
    "median_chars_per_token",
    "request_input_tokens",
    "request_input_tokens_array",
    "resolve_chars_per_token",
    "tier_costs",
    "tier_output_tokens",
    "tier_usd",
    "usd",
    "usd_array",
]

DEFAULT_CHARS_PER_TOKEN = 4.0
"""Characters per token assumed when the log gives no input token counts to learn from (English-ish BPE)."""
DEFAULT_OUTPUT_TOKENS = 256
"""Output tokens assumed when neither the log nor the tier's ``typical_output_tokens`` gives them."""


# --------------------------------------------------------------------------------------------------------------
# token estimates
# --------------------------------------------------------------------------------------------------------------
def assumed_output_tokens(typical_output_tokens: int | None) -> int:
    """Output tokens assumed for a call to a tier: its ``typical_output_tokens`` when set (0 stays 0), else
    :data:`DEFAULT_OUTPUT_TOKENS`."""
    return DEFAULT_OUTPUT_TOKENS if typical_output_tokens is None else int(typical_output_tokens)


def resolve_chars_per_token(value: object = None) -> float:
    """``value`` as characters per token when it is a finite positive number, else :data:`DEFAULT_CHARS_PER_TOKEN`
    (e.g. a bundle trained before training stored it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return DEFAULT_CHARS_PER_TOKEN
    v = float(value)
    return v if math.isfinite(v) and v > 0 else DEFAULT_CHARS_PER_TOKEN


def median_chars_per_token(learned: Iterable[float]) -> float:
    """One characters-per-token value for a log: the median of the per-model learned values (the non-positive and
    non-finite ones skipped), else :data:`DEFAULT_CHARS_PER_TOKEN`."""
    values = [float(v) for v in learned if math.isfinite(float(v)) and float(v) > 0]
    return float(np.median(values)) if values else DEFAULT_CHARS_PER_TOKEN


def estimated_input_tokens(prompt_chars: np.ndarray, cpt: float | None = None) -> np.ndarray:
    """Estimated input tokens of prompts of ``prompt_chars`` characters: ``prompt_chars / cpt`` (not rounded; the
    default :data:`DEFAULT_CHARS_PER_TOKEN`)."""
    return np.asarray(prompt_chars, dtype=float) / resolve_chars_per_token(cpt)


def request_input_tokens(prompt_chars: int, cpt: float | None = None) -> int:
    """A request's estimated input tokens: ``prompt_chars / cpt`` rounded, at least 1 (what the service reports)."""
    return max(1, int(round(prompt_chars / resolve_chars_per_token(cpt))))


def request_input_tokens_array(prompt_chars: np.ndarray, cpt: float | None = None) -> np.ndarray:
    """:func:`request_input_tokens` of many requests (float array; NaN characters stay NaN)."""
    return np.maximum(1.0, np.round(estimated_input_tokens(prompt_chars, cpt)))


# --------------------------------------------------------------------------------------------------------------
# the price formula
# --------------------------------------------------------------------------------------------------------------
def usd(
    input_tokens: float,
    output_tokens: float,
    input_usd_per_1m: float,
    output_usd_per_1m: float,
    *,
    batch_discount: float = 0.0,
    batch: bool = False,
) -> float:
    """USD of one call (list price, or the batch price ``(1 - batch_discount) * list`` when ``batch``)."""
    list_usd = (input_tokens * input_usd_per_1m + output_tokens * output_usd_per_1m) / 1e6
    return list_usd * (1.0 - batch_discount) if batch else list_usd


def usd_array(
    input_tokens: np.ndarray,
    output_tokens: np.ndarray,
    input_usd_per_1m: float,
    output_usd_per_1m: float,
    *,
    batch_discount: float = 0.0,
    batch: bool = False,
) -> np.ndarray:
    """:func:`usd` element-wise over arrays of token counts (float array)."""
    i = np.asarray(input_tokens, dtype=float)
    o = np.asarray(output_tokens, dtype=float)
    list_usd = (i * input_usd_per_1m + o * output_usd_per_1m) / 1e6
    return list_usd * (1.0 - batch_discount) if batch else list_usd


def tier_usd(tier: Tier, input_tokens: float, output_tokens: float, *, batch: bool = False) -> float | None:
    """USD of one call to ``tier`` (see :func:`usd`); None when the catalog has no prices for it."""
    if tier.input_usd_per_1m is None or tier.output_usd_per_1m is None:
        return None
    return usd(
        input_tokens,
        output_tokens,
        tier.input_usd_per_1m,
        tier.output_usd_per_1m,
        batch_discount=tier.batch_discount,
        batch=batch,
    )


def tier_costs(
    tiers: Sequence[Tier],
    input_tokens: np.ndarray,
    output_tokens: np.ndarray | None = None,
    *,
    cost_model: CostModel | None = None,
    prompt_chars: np.ndarray | None = None,
) -> np.ndarray:
    """``[n, T]`` list-price USD of ``n`` calls on every tier: NaN (or absent) output tokens -> the tier's
    :func:`assumed_output_tokens`; a tier without prices -> the ``cost_model``'s USD for ``prompt_chars`` characters
    (:func:`cost_model_usd`) when both are given, else NaN."""
    i = np.asarray(input_tokens, dtype=float)
    o = np.full(len(i), np.nan) if output_tokens is None else np.asarray(output_tokens, dtype=float)
    out = np.full((len(i), len(tiers)), np.nan)
    for t, tier in enumerate(tiers):
        if tier.input_usd_per_1m is None or tier.output_usd_per_1m is None:
            continue
        filled = np.where(np.isnan(o), float(tier_output_tokens(tier)), o)
        out[:, t] = usd_array(i, filled, tier.input_usd_per_1m, tier.output_usd_per_1m)
    if cost_model is not None and prompt_chars is not None:
        fitted = cost_model_usd(cost_model, tiers, prompt_chars)
        out = np.where(np.isnan(out), fitted, out)
    return out


def cost_model_usd(
    cost_model: CostModel, tiers: Sequence[Tier], prompt_chars: np.ndarray | Sequence[int]
) -> np.ndarray:
    """``[n, T]`` USD per call of prompts of ``prompt_chars`` characters as the fitted ``cost_model`` predicts it
    (list price, before any batch discount); NaN for a tier the model never saw priced and for NaN lengths.

    Raises ValueError when the cost model was fitted for another number of tiers than ``tiers``.
    """
    if cost_model.n_tiers != len(tiers):
        raise ValueError(f"cost_model prices {cost_model.n_tiers} tiers but the catalog has {len(tiers)}")
    chars = np.asarray(prompt_chars, dtype=float).reshape(-1)
    ok = np.isfinite(chars)
    out = np.full((len(chars), len(tiers)), np.nan)
    if ok.any():
        out[ok] = cost_model.predict(chars[ok])
    out[:, ~np.asarray(cost_model.known, dtype=bool)] = np.nan
    return out


CostSource = Literal["list_price", "cost_model"]


class CallCost(BaseModel):
    """What one routed call is expected to cost (see the module doc for where each number comes from)."""

    tier: float | None = Field(description="USD of the call on the chosen tier, list price (None: unknown).")
    top_tier: float | None = Field(description="USD of the same call on the top tier, list price (None: unknown).")
    batch_tier: float | None = Field(description="USD on the chosen tier through the batch API (None: unknown).")
    batch_top_tier: float | None = Field(description="USD on the top tier through the batch API (None: unknown).")
    input_tokens: int = Field(description="Estimated input tokens (characters / chars-per-token).")
    output_tokens: int = Field(description="Assumed output tokens of the chosen tier.")
    source: CostSource | None = Field(
        description="Where the chosen tier's USD comes from: the catalog's list prices or the fitted cost model."
    )
    top_tier_source: CostSource | None = Field(description="The same for the top tier's USD.")


def _one_call(
    tier: Tier, t: int, input_tokens: int, output_tokens: int, fitted: np.ndarray | None, batch: bool
) -> tuple[float | None, CostSource | None]:
    listed = tier_usd(tier, input_tokens, output_tokens, batch=batch)
    if listed is not None:
        return listed, "list_price"
    if fitted is not None and np.isfinite(fitted[t]):
        # the log's costs were list prices paid: the provider's batch discount applies to them alike
        return float(fitted[t]) * ((1.0 - tier.batch_discount) if batch else 1.0), "cost_model"
    return None, None


def call_cost(
    tiers: Sequence[Tier],
    chosen: int,
    prompt_chars: int,
    *,
    chars_per_token: float | None = None,
    cost_model: CostModel | None = None,
) -> CallCost:
    """Expected USD of one call of ``prompt_chars`` characters on tier ``chosen`` and on the top tier: the list
    price of :func:`request_input_tokens` input and the tier's :func:`tier_output_tokens` output tokens; a tier
    without list prices is priced by ``cost_model`` (:func:`cost_model_usd`) when it knows the tier."""
    if not 0 <= chosen < len(tiers):
        raise ValueError(f"chosen must be a tier index in 0..{len(tiers) - 1}, got {chosen}")
    in_tok = request_input_tokens(prompt_chars, chars_per_token)
    top = len(tiers) - 1
    fitted = None
    if cost_model is not None and not (tiers[chosen].has_prices and tiers[top].has_prices):
        fitted = cost_model_usd(cost_model, tiers, [prompt_chars])[0]  # only when a list price is missing: hot path
    out_c, out_t = tier_output_tokens(tiers[chosen]), tier_output_tokens(tiers[top])
    usd_c, src_c = _one_call(tiers[chosen], chosen, in_tok, out_c, fitted, False)
    usd_t, src_t = _one_call(tiers[top], top, in_tok, out_t, fitted, False)
    batch_c, _ = _one_call(tiers[chosen], chosen, in_tok, out_c, fitted, True)
    batch_t, _ = _one_call(tiers[top], top, in_tok, out_t, fitted, True)
    return CallCost(
        tier=usd_c, top_tier=usd_t, batch_tier=batch_c, batch_top_tier=batch_t, input_tokens=in_tok,
        output_tokens=out_c, source=src_c, top_tier_source=src_t,
    )


def tier_output_tokens(tier: Tier) -> int:
    """:func:`assumed_output_tokens` of a catalog tier."""
    return assumed_output_tokens(tier.typical_output_tokens)


def usage_cost(
    tiers: Sequence[Tier],
    t: int,
    input_tokens: int,
    output_tokens: int,
    *,
    prompt_chars: int | None = None,
    cost_model: CostModel | None = None,
) -> tuple[float | None, CostSource | None]:
    """USD of a call to tier ``t`` that billed these tokens (an upstream's ``usage``): the catalog's list price;
    a tier without list prices falls back to the fitted ``cost_model``'s per-call USD for ``prompt_chars``
    characters (it knows lengths, not token counts). ``(None, None)`` when neither can price it."""
    listed = tier_usd(tiers[t], input_tokens, output_tokens)
    if listed is not None:
        return listed, "list_price"
    if cost_model is not None and prompt_chars is not None:
        fitted = cost_model_usd(cost_model, tiers, [prompt_chars])[0][t]
        if np.isfinite(fitted):
            return float(fitted), "cost_model"
    return None, None
