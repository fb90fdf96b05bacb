"""Build-time work: export a sentence-transformers model to ONNX (fp32), verify it against torch, quantise it to
int8 and cache the result as a saved encoder directory (:func:`export_onnx`).

Never imported when serving: torch, sentence-transformers, onnx and ``onnxruntime.quantization`` are imported
inside the functions that need them, and :mod:`router.encoders` imports this module only on first use.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from router.encoders.onnx_runtime import OnnxEncoder
from router.encoders.spec import (
    ENCODER_JSON,
    ONNX_FILE,
    ONNX_KINDS,
    TOKENIZER_FILE,
    EncoderError,
    EncoderSpec,
    _build_cache_entry,
    _copy_atomic,
    _write_json_atomic,
    file_digest,
    fingerprint_dir,
    local_model_dir,
    normalise_source,
    onnx_cache_dir,
    read_encoder_json,
    resolve_source,
)
from router.encoders.torch_backend import _pad_id, _tokenizer_json, _transformer_module
from router.encoders.window import TokenWindow, _pad_batch

log = logging.getLogger(__name__)

EXPORT_VERSION = 2
"""Version of the ONNX export recipe; part of the export cache directory name so recipe changes re-export.
2: the graph also outputs every hidden layer (``hidden_0`` .. ``hidden_N``) after ``last_hidden_state``."""

# Probe prompts used to check an ONNX export / quantisation against its reference (not user data).
_PROBE_TEXTS = (
    "A man is eating food.",
    "Write a Python function that merges two sorted lists in linear time.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Summarise the following meeting notes for an executive audience: budget, hiring, roadmap, risks.",
    "Translate 'the weather is lovely today' into German and French.",
    "Prove that the square root of two is irrational.",
    "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 3;",
    "Compose a short poem about autumn leaves falling on a quiet river.",
    "Explain the difference between TCP and UDP to a new engineer.",
    "¿Cuál es la mejor manera de aprender a programar?",
    "Example 1: 2+2=4. Example 2: 3+5=8. Example 3: 7+6=13. Now: 12+30=?",
    "Classify the sentiment of this review: the battery died after two days and support never answered.",
)


def _check_pooling(st_model: Any) -> bool:
    """Validate Transformer -> Pooling(mean) [-> Normalize]; return whether the model normalises."""
    from sentence_transformers.models import Normalize, Pooling

    modules = list(st_model)
    if len(modules) < 2 or not isinstance(modules[1], Pooling):
        raise NotImplementedError(
            "ONNX export supports Transformer -> Pooling(mean) [-> Normalize]; got "
            f"{[type(m).__name__ for m in modules]}"
        )
    mode = modules[1].pooling_mode
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
    if modes != ("mean",):
        raise NotImplementedError(f"ONNX export supports mean pooling only; this model uses {modes}")
    rest = modules[2:]
    if any(not isinstance(m, Normalize) for m in rest):
        raise NotImplementedError(
            "ONNX export does not support modules after pooling other than Normalize: "
            f"{[type(m).__name__ for m in rest]}"
        )
    return bool(rest)


def _export_fp32(source: str, out_dir: Path) -> dict[str, Any]:
    """Export ``source``'s transformer to ``out_dir/model.onnx`` and verify it against torch; return metadata."""
    import warnings

    import torch
    from sentence_transformers import SentenceTransformer

    model_dir = local_model_dir(source)
    st = SentenceTransformer(resolve_source(source), device="cpu").eval()
    normalize = _check_pooling(st)
    hf = _transformer_module(st).eval()
    tok_json = _tokenizer_json(model_dir, st)
    window = TokenWindow.from_json(tok_json, 8, 0)
    pad_id = _pad_id(st, window.tokenizer)
    import inspect

    use_tt = "token_type_ids" in inspect.signature(hf.forward).parameters
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if use_tt else [])

    class _Wrapper(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.inner(**dict(zip(names, args, strict=True)), output_hidden_states=True)
            return (out.last_hidden_state, *out.hidden_states)

    ids = torch.randint(1000, 2000, (2, 16), dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # trace with padding so the attention-mask path is part of the graph
    ids[1, 9:] = pad_id
    dummy = (ids, mask) + ((torch.zeros_like(ids),) if use_tt else ())
    n_layers = int(hf.config.num_hidden_layers)
    outputs = ["last_hidden_state", *(f"hidden_{i}" for i in range(n_layers + 1))]
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, *outputs]}
    onnx_path = out_dir / ONNX_FILE
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Wrapper(hf).eval(),  # export restores the wrapper's mode recursively: keep it eval (no dropout)
            dummy,
            str(onnx_path),
            dynamo=False,  # the TorchScript exporter needs no extra packages (the dynamo one needs onnxscript)
            input_names=names,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=17,
            do_constant_folding=True,
        )
    (out_dir / TOKENIZER_FILE).write_text(tok_json, encoding="utf-8")
    _verify_export(hf.eval(), onnx_path, names, window, pad_id)
    return {
        "pad_id": pad_id,
        "normalize": normalize,
        "pooling": "mean",
        "inputs": names,
        "dim": int(st.get_embedding_dimension() or 0),
        "n_layers": n_layers,
        "fingerprint": fingerprint_dir(model_dir),
        "export_version": EXPORT_VERSION,
    }


def _verify_export(hf: Any, onnx_path: Path, names: list[str], window: TokenWindow, pad_id: int) -> None:
    """Compare ONNX and torch hidden states on padded batches of several lengths; raise if they differ."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    long_window = TokenWindow(window.tokenizer, 256, 32)
    seqs = long_window.ids(list(_PROBE_TEXTS[:4]) + [" ".join(_PROBE_TEXTS) * 3])
    for batch in (seqs[:1], seqs[1:4], seqs):
        ids, mask = _pad_batch(batch, pad_id)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        feeds = {k: v for k, v in feeds.items() if k in names}
        got = sess.run(None, feeds)[0]
        with torch.no_grad():
            want = hf(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
        err = float(np.abs((got - want) * mask[..., None]).max())
        if err > 1e-3:
            raise EncoderError(f"ONNX export does not reproduce the torch model (max abs diff {err:.2e})")


@contextlib.contextmanager
def _drop_root_log(prefix: str) -> Iterator[None]:
    """Temporarily drop root-logger records whose message starts with ``prefix``."""

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not str(record.msg).startswith(prefix)

    flt = _Filter()
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _quantize_int8(fp32_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Dynamic int8 quantisation (per-channel QInt8 weights, 7-bit range so non-VNNI CPUs do not saturate)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _drop_root_log("Please consider to run pre-processing"):  # ORT's advice does not apply to dynamic quant
        quantize_dynamic(
            str(fp32_dir / ONNX_FILE),
            str(out_dir / ONNX_FILE),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
        )
    _copy_atomic(fp32_dir / TOKENIZER_FILE, out_dir / TOKENIZER_FILE)
    meta = dict(read_encoder_json(fp32_dir)["onnx"])
    meta["quantization"] = {"method": "dynamic", "weight_type": "QInt8", "per_channel": True, "reduce_range": True}
    return meta


def _int8_fidelity(fp32_dir: Path, int8_dir: Path) -> float:
    """Min cosine between int8 and fp32 vectors on the built-in probe prompts."""
    a = OnnxEncoder.load(fp32_dir, verify=False).encode(list(_PROBE_TEXTS))
    b = OnnxEncoder.load(int8_dir, verify=False).encode(list(_PROBE_TEXTS))
    return float((a * b).sum(axis=1).min())


def export_onnx(source: str, kind: str = "onnx-int8", cache_dir: Path | None = None) -> Path:
    """Directory of a cached ONNX export of ``source`` (exporting / quantising on first use).

    The directory (``<cache>/<fingerprint>-<kind>-e<export version>/``) is a complete saved encoder with the
    default window; it is built in a temporary folder and renamed into place, so a killed export leaves no
    half-written cache entry and concurrent builders do not clash.
    """
    if kind not in ONNX_KINDS:
        raise ValueError(f"kind must be one of {ONNX_KINDS}, got {kind!r}")
    source = normalise_source(source)
    root = onnx_cache_dir(cache_dir)
    fp = fingerprint_dir(local_model_dir(source))
    final = root / f"{fp}-{kind}-e{EXPORT_VERSION}"
    if (final / ENCODER_JSON).is_file():
        return final
    fp32_dir = export_onnx(source, "onnx-fp32", cache_dir) if kind == "onnx-int8" else None

    def build(tmp: Path) -> None:
        t0 = time.perf_counter()
        if fp32_dir is None:
            meta = _export_fp32(source, tmp)
        else:
            meta = _quantize_int8(fp32_dir, tmp)
        digest = file_digest(tmp / ONNX_FILE)
        spec = EncoderSpec(kind=kind, source=source, fingerprint=fp, dim=int(meta["dim"]), artifact=digest)  # type: ignore[arg-type]
        meta["build_seconds"] = round(time.perf_counter() - t0, 2)
        _write_json_atomic(tmp / ENCODER_JSON, {"spec": spec.model_dump(mode="json"), "onnx": meta})
        if fp32_dir is not None:
            cos = _int8_fidelity(fp32_dir, tmp)
            meta["min_cosine_vs_fp32"] = round(cos, 5)
            _write_json_atomic(tmp / ENCODER_JSON, {"spec": spec.model_dump(mode="json"), "onnx": meta})
            if cos < 0.95:
                raise EncoderError(f"int8 quantisation is too lossy (min cosine vs fp32 {cos:.4f} < 0.95)")
            if cos < 0.98:
                log.warning("int8 encoder: min cosine vs fp32 on probe prompts is %.4f", cos)
        log.info("built %s encoder for %s in %.1fs", kind, source, meta["build_seconds"])

    return _build_cache_entry(final, build)
