"""What a call costs: the one place for the price formula and the token estimates behind it.

* USD of a call = ``(input_tokens * input_usd_per_1m + output_tokens * output_usd_per_1m) / 1e6``; the batch price
  is that times ``1 - batch_discount`` (:func:`usd`, :func:`usd_array`, :func:`tier_usd`, :func:`tier_costs`).
* Output tokens not logged or not known yet: the tier's ``typical_output_tokens`` when the catalog sets it (``0``
  included), else :data:`DEFAULT_OUTPUT_TOKENS` (:func:`assumed_output_tokens`).
* Input tokens not logged or not known yet: ``prompt characters / chars_per_token`` (:func:`estimated_input_tokens`); a
  request's estimate is that rounded to a whole number of at least 1 (:func:`request_input_tokens`). Training learns
  characters per token from the log and stores one value in the model bundle (``training["chars_per_token"]``);
  without it, :data:`DEFAULT_CHARS_PER_TOKEN` (:func:`resolve_chars_per_token`).

Used by the catalog (``Tier.price_usd``), training (:mod:`training.costs`, :mod:`training.reports`) and the service.
Pure functions, no I/O; this module imports nothing of tierwise at run time (the catalog imports it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from router.catalog import Tier

__all__ = [
    "DEFAULT_CHARS_PER_TOKEN",
    "DEFAULT_OUTPUT_TOKENS",
    "assumed_output_tokens",
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
    tiers: Sequence[Tier], input_tokens: np.ndarray, output_tokens: np.ndarray | None = None
) -> np.ndarray:
    """``[n, T]`` list-price USD of ``n`` calls on every tier: NaN (or absent) output tokens -> the tier's
    :func:`assumed_output_tokens`; a tier without prices -> NaN."""
    i = np.asarray(input_tokens, dtype=float)
    o = np.full(len(i), np.nan) if output_tokens is None else np.asarray(output_tokens, dtype=float)
    out = np.full((len(i), len(tiers)), np.nan)
    for t, tier in enumerate(tiers):
        if tier.input_usd_per_1m is None or tier.output_usd_per_1m is None:
            continue
        filled = np.where(np.isnan(o), float(tier_output_tokens(tier)), o)
        out[:, t] = usd_array(i, filled, tier.input_usd_per_1m, tier.output_usd_per_1m)
    return out


def tier_output_tokens(tier: Tier) -> int:
    """:func:`assumed_output_tokens` of a catalog tier."""
    return assumed_output_tokens(tier.typical_output_tokens)
