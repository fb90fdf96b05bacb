"""Sentence encoders: turn prompts into L2-normalised float32 vectors, identically at training and serving time.

An encoder is part of a trained router. Its :class:`EncoderSpec` (kind, source, fingerprint, dimension, token
window) travels with the model bundle, and ``Encoder.save(dir)`` writes what is needed to rebuild it there:

* ``"sentence-transformers"`` (torch): only ``encoder.json``. The 90 MB weights are not copied; on load the
  source is resolved again and its fingerprint (sha256 of weight, tokenizer and config files) must match.
* ``"onnx-fp32"`` / ``"onnx-int8"``: ``model.onnx`` + ``tokenizer.json`` + ``encoder.json``. Self-contained:
  serving imports neither torch nor sentence-transformers (only onnxruntime, tokenizers and numpy).
* ``"static"``: ``static.npy`` (a ``[vocab, dim]`` token table distilled once from the model, model2vec-style;
  :class:`StaticEncoder`, :func:`distill_static`) + ``tokenizer.json`` + ``encoder.json``. Serving needs only
  tokenizers and numpy; a prompt costs a table lookup, not a forward pass.

Layers: by default a vector is the mean-pooled last hidden layer, like sentence-transformers.
``layers="last+middle"`` (tierwise's training default, see :func:`resolve_layers`) instead pools two hidden layers
of the same forward pass, L2-normalises each and concatenates them (scaled so the row is unit-norm again): the
middle layer carries more of the surface form (numbers, syntax) that says how hard a prompt is, the last layer
mostly its topic. It costs no extra encoding time.

Long prompts: the model sees at most ``max_tokens`` tokens including the special tokens. A longer prompt keeps
its first ``head_tokens`` content tokens and its last ``max_tokens - specials - head_tokens`` ones (few-shot
prefixes come first; the informative question is at the end). Both backends window token ids with the same
function, :func:`window_token_ids`, on ids from the model folder's ``tokenizer.json``.

Names for :func:`build_encoder`: ``minilm`` / ``minilm-torch``, ``minilm-onnx-fp32``, ``minilm-onnx-int8``
(default), ``minilm-static``, ``st:<name-or-path>``, ``onnx-fp32:<name-or-path>``, ``onnx-int8:<name-or-path>``,
``static:<name-or-path>``.

One module per job:

* :mod:`~router.encoders.spec`: the spec, errors, names and file constants, the :class:`Encoder` protocol, layer
  choice, source resolution, fingerprints, ``encoder.json`` and cache helpers;
* :mod:`~router.encoders.window`: the token window and the batching / pooling steps the backends share;
* :mod:`~router.encoders.onnx_runtime`: :class:`OnnxEncoder` (serving);
* :mod:`~router.encoders.static`: :class:`StaticEncoder` (serving);
* :mod:`~router.encoders.torch_backend`: :class:`SentenceTransformerEncoder`;
* :mod:`~router.encoders.export`: ONNX export, verification and int8 quantisation (build time);
* :mod:`~router.encoders.distill`: the static table's distillation (build time);
* :mod:`~router.encoders.factory`: :func:`build_encoder` and :func:`load_encoder`.

Heavy libraries (torch, sentence-transformers, onnxruntime, tokenizers) are imported lazily, inside the functions
that need them, so ``import router.encoders`` is cheap and loading an ONNX or static encoder imports neither torch
nor the build-time modules (``export``, ``distill``: their names are re-exported here on first use).
Prompt text is never logged.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from router.encoders.factory import build_encoder, load_encoder
from router.encoders.onnx_runtime import OnnxEncoder
from router.encoders.spec import (
    DEFAULT_ENCODER,
    ENCODER_JSON,
    ENCODER_NAMES,
    FORMAT_VERSION,
    LAST_LAYER,
    LAYER_CHOICES,
    MINILM_ALIASES,
    ONNX_FILE,
    ONNX_KINDS,
    TOKENIZER_FILE,
    Encoder,
    EncoderError,
    EncoderKind,
    EncoderMismatchError,
    EncoderSpec,
    LayerChoice,
    default_cache_dir,
    file_digest,
    fingerprint_dir,
    local_model_dir,
    minilm_path,
    normalise_source,
    onnx_cache_dir,
    read_encoder_json,
    resolve_layers,
    resolve_source,
    static_cache_dir,
)
from router.encoders.static import STATIC_FILE, StaticEncoder
from router.encoders.torch_backend import SentenceTransformerEncoder
from router.encoders.window import TokenWindow, special_affixes, window_token_ids
from router.encoders.window import _pad_batch as _pad_batch  # used by benchmarks/finetune_probe.py

if TYPE_CHECKING:  # pragma: no cover - typing only; at run time these come from __getattr__ below
    from router.encoders.distill import STATIC_DIMS, STATIC_SIF, STATIC_VERSION, distill_static
    from router.encoders.export import EXPORT_VERSION, export_onnx

# Build-time names, re-exported lazily so that importing this package (and loading a saved encoder) never imports
# the export or distillation modules.
_LAZY = {
    "EXPORT_VERSION": "router.encoders.export",
    "export_onnx": "router.encoders.export",
    "STATIC_DIMS": "router.encoders.distill",
    "STATIC_SIF": "router.encoders.distill",
    "STATIC_VERSION": "router.encoders.distill",
    "distill_static": "router.encoders.distill",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "DEFAULT_ENCODER",
    "ENCODER_JSON",
    "ENCODER_NAMES",
    "EXPORT_VERSION",
    "FORMAT_VERSION",
    "LAST_LAYER",
    "LAYER_CHOICES",
    "MINILM_ALIASES",
    "ONNX_FILE",
    "ONNX_KINDS",
    "STATIC_DIMS",
    "STATIC_FILE",
    "STATIC_SIF",
    "STATIC_VERSION",
    "TOKENIZER_FILE",
    "Encoder",
    "EncoderError",
    "EncoderKind",
    "EncoderMismatchError",
    "EncoderSpec",
    "LayerChoice",
    "OnnxEncoder",
    "SentenceTransformerEncoder",
    "StaticEncoder",
    "TokenWindow",
    "build_encoder",
    "default_cache_dir",
    "distill_static",
    "export_onnx",
    "file_digest",
    "fingerprint_dir",
    "load_encoder",
    "local_model_dir",
    "minilm_path",
    "normalise_source",
    "onnx_cache_dir",
    "read_encoder_json",
    "resolve_layers",
    "resolve_source",
    "special_affixes",
    "static_cache_dir",
    "window_token_ids",
]
