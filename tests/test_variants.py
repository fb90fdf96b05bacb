"""The research extension point (training.variants): named variants fit through the product's pipeline."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from router.encoders import build_encoder
from training.demo import demo_catalog, demo_log
from training.pipeline import TrainConfig, fit_router, prepare_data
from training.variants import Variant, fit_variant, get_variant, register_variant, variant_names


def test_the_product_registers_its_layouts_and_its_default() -> None:
    assert {"auto", "linear", "per_tier", "blend"} <= set(variant_names())
    assert get_variant("auto").train_config() == TrainConfig()
    assert get_variant("per_tier").train_config().layout == "per_tier"
    base = TrainConfig(seed=7)
    assert get_variant("linear").train_config(base).seed == 7  # overrides apply on top of a base config


def test_registration_validates_now_and_refuses_silent_redefinition() -> None:
    with pytest.raises(ValueError, match="group_shrink"):
        register_variant("bad-shrink", config={"layout": "linear", "group_shrink": -1})
    with pytest.raises(ValueError, match="extra|not_a_field"):
        register_variant("typo", config={"not_a_field": 1})
    assert "bad-shrink" not in variant_names() and "typo" not in variant_names()
    register_variant("test-shrink30", config={"layout": "linear", "group_shrink": 30.0})
    with pytest.raises(ValueError, match="already registered"):
        register_variant("test-shrink30", config={"layout": "linear"})
    register_variant("test-shrink30", config={"layout": "linear", "group_shrink": 3.0}, replace=True)
    assert get_variant("test-shrink30").train_config().group_shrink == 3.0
    with pytest.raises(KeyError, match="unknown variant 'nope'; registered: .*linear"):
        get_variant("nope")
    with pytest.raises(ValueError, match="non-empty"):
        register_variant(" ")


class Scaled:
    """A research encoder: the default encoder's vectors, doubled (the classifier sees other numbers). Its spec
    has its own fingerprint: the spec keys the embedding cache."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.dim = inner, inner.dim
        self.spec = inner.spec.model_copy(update={"fingerprint": "scaled-" + inner.spec.cache_key()[:16]})

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return 2.0 * self.inner.encode(texts, batch_size=batch_size, progress=progress)


def test_fit_variant_uses_the_variants_config_and_encoder() -> None:
    prepared = prepare_data(demo_log(n_prompts=400), demo_catalog())
    built: list[Scaled] = []

    def factory(config: TrainConfig) -> Scaled:
        inner = build_encoder(
            config.encoder,
            threads=1,
            max_tokens=config.encoder_max_tokens,
            head_tokens=config.encoder_head_tokens,
            layers=config.encoder_layers,
        )
        built.append(Scaled(inner))
        return built[-1]

    v = Variant("scaled-linear", {"layout": "linear", "linear_bags": 1}, factory)  # one fit: bagging is not tested
    fitted = fit_variant(prepared, v)
    assert len(built) == 1 and fitted.encoder is built[0]
    plain = fit_router(prepared, TrainConfig(layout="linear", linear_bags=1), progress=False)
    n_emb = plain.embeddings.shape[1]
    np.testing.assert_allclose(fitted.embeddings, 2.0 * plain.embeddings, rtol=1e-5, atol=1e-6)
    assert fitted.config.layout == "linear" and fitted.classifier.n_bags == 1
    assert fitted.features.shape[1] == plain.features.shape[1] >= n_emb
