"""The bounds of the numbers one attempt (a feedback row, a logged attempt in a training log) may carry.

One table for the feedback API, the decision log's writer and export, the catalog and the training-log readers:
a value above these is a logging bug (no single call costs a million dollars or reads a billion tokens), and one such
value is enough to skew the prices every tier is trained on.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, cast

MAX_TOKENS = 10**9  # fits a 32-bit column in any database (SQLite's INTEGER overflows at 2**63, others at 2**31)
MAX_COST_USD = 1_000_000.0
MAX_LATENCY_MS = 7 * 24 * 3600 * 1000.0  # a week: provider batch APIs answer within a day

ATTEMPT_LIMITS: dict[str, float] = {
    "score": 1.0,
    "cost_usd": MAX_COST_USD,
    "input_tokens": float(MAX_TOKENS),
    "output_tokens": float(MAX_TOKENS),
    "latency_ms": MAX_LATENCY_MS,
}
"""Largest value (inclusive) per column; every one of them is at least 0."""
WHOLE_NUMBER_COLUMNS = frozenset({"input_tokens", "output_tokens"})


def attempt_number_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be the attempt's ``name`` (a column of :data:`ATTEMPT_LIMITS`), or None when it can
    (None itself is fine: not logged)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return f"{name} must be a number, not true/false"
    if not isinstance(value, numbers.Real):
        return f"{name} must be a number, got {type(value).__name__}"
    hi = ATTEMPT_LIMITS[name]
    finite = isinstance(value, numbers.Integral) or math.isfinite(value)  # isfinite(10**400) would overflow
    if not finite or not 0 <= cast(float, value) <= hi:
        return f"{name} must be a finite number in [0, {hi:g}], got {value!r}"
    if name in WHOLE_NUMBER_COLUMNS and not (isinstance(value, numbers.Integral) or float(value).is_integer()):
        return f"{name} must be a whole number, got {value!r}"
    return None
