"""The product's defaults, in one place.

Every function and class that takes one of these options uses the constant here as its default, so calling a
building block without options behaves like ``tierwise train`` and ``tierwise serve`` (the variants the README
reports as losing stay available by name). Training's own default layout is per-log selection
(``training.pipeline.TrainConfig.layout = "auto"``), which chooses among fitted layouts and falls back to
:data:`LAYOUT`.
"""

from __future__ import annotations

from typing import Literal

DecisionRule = Literal["threshold", "utility"]

DECISION_RULE: DecisionRule = "utility"
"""Route to the tier with the best P(acceptable) minus the knob-weighted relative cost (router.decision)."""

LEGACY_DECISION_RULE: DecisionRule = "threshold"
"""The rule of bundles written before the rule was stored in them (they were trained and tuned for it)."""

LAYOUT: Literal["linear"] = "linear"
"""The classifier layout fitted when none is chosen (and per-log selection's fallback)."""


def default_calibration(layout: str) -> Literal["none", "sigmoid"]:
    """The calibration a layout uses unless told otherwise: none for the layouts whose out-of-fold stacker is
    calibrated already (``linear``, ``blend``), Platt (sigmoid) for the LightGBM ones."""
    return "none" if layout in ("linear", "blend", "auto") else "sigmoid"
