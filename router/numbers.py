"""The one definition of a number at tierwise's doors (API bodies, catalog YAML, training and gate settings).

JSON and YAML readers turn ``Infinity``, ``NaN`` and ``1e400`` into floats, and pydantic's lax mode reads ``true`` as
1 and ``"0.5"`` as 0.5. These types refuse all of that; each field adds its own bounds with ``Field(ge=..., le=...)``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AllowInfNan, Strict

Number = Annotated[float, Strict(), AllowInfNan(False)]
"""A finite number (an int is accepted as a float); not a bool, not a string."""

Integer = Annotated[int, Strict()]
"""A whole number; not a bool, not a string, not a float."""
