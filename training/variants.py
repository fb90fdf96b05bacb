"""Named router variants: the extension point for research on top of the product's pipeline.

A *variant* is a named way to train a router: ``TrainConfig`` overrides, and optionally an encoder built in-process
(an embedding the product does not ship, e.g. two encoders' vectors side by side). The product registers the
layouts per-log selection chooses from (``linear``, ``per_tier``, ``blend``) and its default (``auto``); benchmarks
and ablations register their own variants here instead of patching the pipeline, in the way RouteLLM registers its
routers by name::

    from training.variants import fit_variant, register_variant

    register_variant("linear-shrink30", config={"layout": "linear", "group_shrink": 30.0},
                     description="linear layout, group prior shrunk by 30 pseudo-observations")
    fitted = fit_variant(prepared, "linear-shrink30")     # a FittedRouter, as fit_router returns

A variant with an ``encoder`` factory fits and evaluates in-process; such a router is research, not a bundle a
service can load (the bundle stores only encoders :func:`router.encoders.load_encoder` can rebuild). The encoder's
``spec`` keys the embedding cache: give a new encoder a spec with its own ``fingerprint``, or it is served the
vectors cached for the encoder whose spec it copied.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router.encoders import Encoder
    from training.pipeline import FittedRouter, PreparedData, TrainConfig

EncoderFactory = Callable[["TrainConfig"], "Encoder"]
"""Builds the variant's encoder from the resolved config (its encoder settings: window, threads, layers)."""


@dataclass(frozen=True)
class Variant:
    """A named way to train a router (see the module doc)."""

    name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    """``TrainConfig`` overrides of the product defaults."""
    encoder: EncoderFactory | None = None
    """Research: an encoder built in-process instead of ``config["encoder"]`` (not saveable in a bundle)."""
    description: str = ""

    def train_config(self, base: TrainConfig | None = None) -> TrainConfig:
        """The variant's ``TrainConfig``: ``base`` (default: the product defaults) with the overrides applied and
        validated like any ``--config``."""
        from training.pipeline import TrainConfig

        merged = {**(base.model_dump() if base is not None else {}), **self.config}
        return TrainConfig(**merged)


_REGISTRY: dict[str, Variant] = {}


def register_variant(
    name: str,
    *,
    config: Mapping[str, Any] | None = None,
    encoder: EncoderFactory | None = None,
    description: str = "",
    replace: bool = False,
) -> Variant:
    """Register a variant under ``name`` and return it. The overrides are validated now (a typo in a field name or
    a bad value fails at registration, not hours into a benchmark). ``replace``: allow redefining a name."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("variant name must be a non-empty string")
    if name in _REGISTRY and not replace:
        raise ValueError(f"variant {name!r} is already registered (pass replace=True to redefine it)")
    variant = Variant(name, MappingProxyType(dict(config or {})), encoder, description)
    variant.train_config()  # validates the overrides
    _REGISTRY[name] = variant
    return variant


def get_variant(name: str) -> Variant:
    """The registered variant ``name``; KeyError listing the registered names when unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown variant {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def variant_names() -> list[str]:
    """Registered variant names, in registration order."""
    return list(_REGISTRY)


def fit_variant(
    prepared: PreparedData, variant: str | Variant, *, base: TrainConfig | None = None, progress: bool = False
) -> FittedRouter:
    """Fit a variant through the product's pipeline (:func:`training.pipeline.fit_router`): its config, and its
    encoder when it brings one."""
    from training.pipeline import fit_router

    v = get_variant(variant) if isinstance(variant, str) else variant
    config = v.train_config(base)
    encoder = None if v.encoder is None else v.encoder(config)
    return fit_router(prepared, config, progress=progress, encoder=encoder)


# The product's own variants: the layouts per-log selection chooses from, and the default that chooses.
register_variant("auto", description="the product default: per-log selection among linear, per_tier and blend")
register_variant("linear", config={"layout": "linear"}, description="logistic stack over embedding and task prior")
register_variant("per_tier", config={"layout": "per_tier"}, description="LightGBM per tier, Platt-calibrated")
register_variant("blend", config={"layout": "blend"}, description="mean of linear and out-of-fold LightGBM")

__all__ = ["EncoderFactory", "Variant", "fit_variant", "get_variant", "register_variant", "variant_names"]
