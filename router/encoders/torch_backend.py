"""The sentence-transformers (torch) backend: :class:`SentenceTransformerEncoder`, and the helpers the ONNX export
reuses to read a sentence-transformers model (its transformer, tokenizer and padding id).

torch and sentence-transformers are imported inside the functions that run them, never at module level.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from router.encoders.spec import (
    ENCODER_JSON,
    LAST_LAYER,
    TOKENIZER_FILE,
    EncoderError,
    EncoderMismatchError,
    EncoderSpec,
    _mismatch,
    _write_json_atomic,
    fingerprint_dir,
    local_model_dir,
    normalise_source,
    resolve_layers,
    resolve_source,
)
from router.encoders.window import TokenWindow, _join_blocks, _length_batches, _mean_pool, _pad_batch
from router.progress import progress_bar

if TYPE_CHECKING:  # pragma: no cover - typing only
    import tokenizers


class SentenceTransformerEncoder:
    """A sentence-transformers model run with torch on CPU, with tierwise's head+tail token window."""

    def __init__(
        self,
        source: str = "minilm",
        *,
        max_tokens: int = 256,
        head_tokens: int = 32,
        threads: int | None = None,
        layers: str | Sequence[int] = "last",
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        source = normalise_source(source)
        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))
        resolved = resolve_source(source)
        self.model = SentenceTransformer(resolved, device="cpu")
        self.model.eval()
        model_dir = local_model_dir(source)
        self.model_dir = model_dir
        self.layers = resolve_layers(layers, int(_transformer_module(self.model).config.num_hidden_layers))
        self.dim = int(self.model.get_embedding_dimension() or 0) * len(self.layers)
        _check_position_limit(self.model, max_tokens)
        self.tokenizer_json = _tokenizer_json(model_dir, self.model)
        self.window = TokenWindow.from_json(self.tokenizer_json, max_tokens, head_tokens)
        self.pad_id = _pad_id(self.model, self.window.tokenizer)
        self.spec = EncoderSpec(
            kind="sentence-transformers",
            source=source,
            fingerprint=fingerprint_dir(model_dir),
            dim=self.dim,
            max_tokens=max_tokens,
            head_tokens=head_tokens,
            layers=self.layers,
        )

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed ``texts`` (float32 ``[n, dim]``, unit rows); batches are formed by length to limit padding."""
        import torch

        out, seqs = self.window.encode_inputs(texts, self.dim)
        if not seqs:
            return out
        with progress_bar(progress, len(seqs), "embedding", unit="text") as bar, torch.inference_mode():
            for idx in _length_batches(seqs, batch_size):
                ids, mask = _pad_batch([seqs[i] for i in idx], self.pad_id)
                features = {
                    "input_ids": torch.from_numpy(ids),
                    "attention_mask": torch.from_numpy(mask),
                    "token_type_ids": torch.zeros_like(torch.from_numpy(ids)),
                }
                if self.layers == LAST_LAYER:
                    out[idx] = self.model(features)["sentence_embedding"].float().cpu().numpy()
                else:
                    states = _transformer_module(self.model)(**features, output_hidden_states=True).hidden_states
                    out[idx] = np.hstack([_mean_pool(states[i].float().cpu().numpy(), mask) for i in self.layers])
                bar.update(len(idx))
        return _join_blocks(out, len(self.layers))

    def save(self, directory: Path) -> None:
        """Write ``encoder.json`` (spec only: the weights are referenced by source + fingerprint, not copied)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(directory / ENCODER_JSON, {"spec": self.spec.model_dump(mode="json")})

    @classmethod
    def from_spec(cls, spec: EncoderSpec, threads: int | None = None) -> SentenceTransformerEncoder:
        """Rebuild from a saved spec, verifying that the source's weights still have the recorded fingerprint."""
        try:
            model_dir = local_model_dir(spec.source)
        except EncoderError as exc:
            raise EncoderMismatchError(f"cannot find the encoder this model was trained with: {exc}") from exc
        found = fingerprint_dir(model_dir)
        if found != spec.fingerprint:
            raise _mismatch(spec, f"the model at {model_dir}", f"fingerprint {found}")
        return cls(
            spec.source, max_tokens=spec.max_tokens, head_tokens=spec.head_tokens, threads=threads, layers=spec.layers
        )


def _tokenizer_json(model_dir: Path, st_model: Any) -> str:
    """Text of the model's fast tokenizer: the folder's tokenizer.json, else the loaded tokenizer's serialisation."""
    path = model_dir / TOKENIZER_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8")
    backend = getattr(getattr(st_model, "tokenizer", None), "backend_tokenizer", None)
    if backend is None:
        raise EncoderError(f"{model_dir} has no tokenizer.json and its tokenizer is not a fast tokenizer")
    return str(backend.to_str())


def _pad_id(st_model: Any, tokenizer: tokenizers.Tokenizer) -> int:
    """Padding token id: from the HF tokenizer if it has one, else [PAD]/<pad> in the vocabulary, else 0."""
    pid = getattr(getattr(st_model, "tokenizer", None), "pad_token_id", None)
    if isinstance(pid, int):
        return pid
    for tok in ("[PAD]", "<pad>"):
        tid = tokenizer.token_to_id(tok)
        if tid is not None:
            return int(tid)
    return 0


def _transformer_module(st_model: Any) -> Any:
    first = st_model[0]
    hf = getattr(first, "auto_model", None) or getattr(first, "model", None)
    if hf is None:
        raise NotImplementedError(f"first module {type(first).__name__} is not a transformers model")
    return hf


def _check_position_limit(st_model: Any, max_tokens: int) -> None:
    try:
        limit = getattr(_transformer_module(st_model).config, "max_position_embeddings", None)
    except NotImplementedError:
        return
    if isinstance(limit, int) and max_tokens > limit:
        raise ValueError(f"max_tokens={max_tokens} exceeds the model's position limit ({limit})")
