"""The ``model`` field of a gateway request: a virtual tierwise model (route, then call) or a catalog model (call it).

Syntax (one, listed by ``GET /v1/models``):

* ``tierwise``: route with the served model's own knob;
* ``tierwise:q<target>``: route for a quality target, the share of the best single tier's quality
  (``tierwise:q0.95``; the same as ``quality_target`` on ``/v1/route``);
* ``tierwise:t<threshold>``: route with an explicit knob in [0, 1] (``tierwise:t0.8``; ``threshold`` on
  ``/v1/route``);
* a catalog model (``demo-small``) or tier name (``small``): pass-through, no routing (still cached, logged and
  priced).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

VIRTUAL = "tierwise"
LISTED_QUALITY_TARGETS = (0.9, 0.95, 0.99)  # the quality-target names /v1/models lists (any target works)
_KNOB = re.compile(r"^tierwise:(?P<kind>[qt])(?P<value>\d+(?:\.\d+)?)$")


class ModelNameError(ValueError):
    """The ``model`` field names neither a virtual tierwise model nor a catalog model (``not_found``), or a virtual
    model with a knob out of range."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


@dataclass(frozen=True)
class ModelChoice:
    """What a request's ``model`` asks for: ``tier`` set = pass-through to that tier's model."""

    name: str
    tier: str | None = None
    threshold: float | None = None
    quality_target: float | None = None

    @property
    def routed(self) -> bool:
        return self.tier is None


def parse_model(name: str, tiers: list[str], models: list[str]) -> ModelChoice:
    """Resolve ``name`` against the served catalog (``tiers`` and their ``models``, cheapest first)."""
    if name == VIRTUAL:
        return ModelChoice(name)
    m = _KNOB.match(name)
    if m is not None:
        value = float(m["value"])
        if m["kind"] == "t":
            if not 0.0 <= value <= 1.0:
                raise ModelNameError(f"model {name!r}: the threshold after 't' must be in [0, 1]")
            return ModelChoice(name, threshold=value)
        if not 0.0 < value <= 1.5:  # an overlong number string reads as inf: refused here too
            raise ModelNameError(f"model {name!r}: the quality target after 'q' must be in (0, 1.5]")
        return ModelChoice(name, quality_target=value)
    if name in models:
        return ModelChoice(name, tier=tiers[models.index(name)])
    if name in tiers:
        return ModelChoice(name, tier=name)
    raise ModelNameError(
        f"unknown model {name!r}: use {VIRTUAL!r} (routed), '{VIRTUAL}:q0.95' (a quality target), "
        f"'{VIRTUAL}:t0.8' (a threshold) or a catalog model ({', '.join(models)})",
        not_found=True,
    )


def listed_models(models: list[str], has_threshold_table: bool) -> list[str]:
    """The ids ``GET /v1/models`` lists: the virtual models, then the catalog's models (pass-through)."""
    virtual = [VIRTUAL]
    if has_threshold_table:
        virtual += [f"{VIRTUAL}:q{q:g}" for q in LISTED_QUALITY_TARGETS]
    return virtual + list(models)
