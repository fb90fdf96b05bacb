"""Build an encoder by name (:func:`build_encoder`) or rebuild a saved one (:func:`load_encoder`).

Loading imports only the backend the saved encoder needs. Building may export or distill (build-time work), so
:mod:`router.encoders.export` and :mod:`router.encoders.distill` are imported inside :func:`build_encoder`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from router.encoders.onnx_runtime import OnnxEncoder
from router.encoders.spec import (
    DEFAULT_ENCODER,
    ENCODER_NAMES,
    Encoder,
    EncoderSpec,
    normalise_source,
    read_encoder_json,
    resolve_layers,
)
from router.encoders.static import StaticEncoder
from router.encoders.torch_backend import SentenceTransformerEncoder


def _parse_name(name: str) -> tuple[str, str]:
    """``(kind, source)`` for an encoder name; ValueError listing the choices when unknown."""
    key = name.strip()
    low = key.lower()
    fixed = {
        "minilm": ("sentence-transformers", "minilm"),
        "minilm-torch": ("sentence-transformers", "minilm"),
        "minilm-onnx-int8": ("onnx-int8", "minilm"),
        "minilm-onnx-fp32": ("onnx-fp32", "minilm"),
        "minilm-static": ("static", "minilm"),
    }
    if low in fixed:
        return fixed[low]
    prefixes = (("st:", "sentence-transformers"), ("onnx-int8:", "onnx-int8"), ("onnx-fp32:", "onnx-fp32"),
                ("static:", "static"))
    for prefix, kind in prefixes:
        if low.startswith(prefix) and key[len(prefix) :].strip():
            return kind, key[len(prefix) :].strip()
    raise ValueError(f"unknown encoder {name!r}; choose one of: {', '.join(ENCODER_NAMES)}")


def build_encoder(
    name: str = DEFAULT_ENCODER,
    threads: int | None = None,
    *,
    max_tokens: int = 256,
    head_tokens: int = 32,
    cache_dir: Path | None = None,
    layers: str | Sequence[int] = "last",
) -> Encoder:
    """Build an encoder by name (see :mod:`router.encoders`); ONNX kinds are exported once, cached in ``cache_dir``.

    ``threads``: torch / onnxruntime intra-op threads (ONNX default 1, torch default: torch's own).
    ``layers``: ``"last"`` (the classic sentence embedding), ``"last+middle"`` or hidden-state indices
    (:func:`resolve_layers`). A static encoder has no layers to choose (its table is distilled from the sentence
    embedding) and ignores ``layers``.
    """
    kind, source = _parse_name(name)
    if kind == "sentence-transformers":
        return SentenceTransformerEncoder(
            source, max_tokens=max_tokens, head_tokens=head_tokens, threads=threads, layers=layers
        )
    if kind == "static":
        from router.encoders.distill import distill_static  # build-time work: never imported by load_encoder

        static = StaticEncoder.load(distill_static(source, cache_dir=cache_dir), threads=threads)
        window = {"source": normalise_source(source), "max_tokens": max_tokens, "head_tokens": head_tokens}
        if any(getattr(static.spec, k) != v for k, v in window.items()):
            static = static.with_spec(**window)
        return static
    from router.encoders.export import export_onnx  # build-time work: never imported by load_encoder

    directory = export_onnx(source, kind, cache_dir)
    enc = OnnxEncoder.load(directory, threads=threads)
    n_layers = int(read_encoder_json(directory)["onnx"]["n_layers"])
    wanted: dict[str, Any] = {
        "source": normalise_source(source),
        "max_tokens": max_tokens,
        "head_tokens": head_tokens,
        "layers": resolve_layers(layers, n_layers),
    }
    if any(getattr(enc.spec, k) != v for k, v in wanted.items()):  # the cache entry is shared by equal weights
        enc = enc.with_spec(**wanted)
    return enc


def load_encoder(directory: str | os.PathLike[str], threads: int | None = None) -> Encoder:
    """Rebuild a saved encoder; raises :class:`EncoderMismatchError` if its weights are not the recorded ones."""
    directory = Path(directory)
    spec = EncoderSpec.model_validate(read_encoder_json(directory)["spec"])
    if spec.kind == "sentence-transformers":
        return SentenceTransformerEncoder.from_spec(spec, threads=threads)
    if spec.kind == "static":
        return StaticEncoder.load(directory, threads=threads)
    return OnnxEncoder.load(directory, threads=threads)
