"""The one definition of a number at tierwise's doors (API bodies, catalog YAML, training and gate settings).

JSON and YAML readers turn ``Infinity``, ``NaN`` and ``1e400`` into floats, and pydantic's lax mode reads ``true`` as
1 and ``"0.5"`` as 0.5. These types refuse all of that; each field adds its own bounds with ``Field(ge=..., le=...)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AllowInfNan, Strict

Number = Annotated[float, Strict(), AllowInfNan(False)]
"""A finite number (an int is accepted as a float); not a bool, not a string."""

Integer = Annotated[int, Strict()]
"""A whole number; not a bool, not a string, not a float."""


def whole_number(value: Any) -> Any:
    """812.0 is a whole number in JSON (and YAML): accept it as a count (strict int still refuses 812.5 and true)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def number_message(err: Mapping[str, Any]) -> str | None:
    """The message for a pydantic error about a Number / Integer in tierwise's words, or None for other errors
    (pydantic says "valid number" for true, and "valid integer" for Infinity in an integer field)."""
    kind, value = err.get("type"), err.get("input")
    if isinstance(value, bool) and kind in ("float_type", "int_type"):
        return "must be a number, not true/false"
    if kind == "finite_number" or (kind == "int_type" and isinstance(value, float) and not math.isfinite(value)):
        return "must be a finite number (not Infinity, NaN or beyond the float range)"
    return None
