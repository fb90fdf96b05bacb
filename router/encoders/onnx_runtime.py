"""The ONNX backend used when serving: :class:`OnnxEncoder` runs a saved ``model.onnx`` with onnxruntime and
tokenizers (imported lazily); no torch, no onnx export library.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from router.encoders.spec import (
    LAST_LAYER,
    ONNX_FILE,
    ONNX_KINDS,
    TOKENIZER_FILE,
    EncoderError,
    EncoderSpec,
    _save_copy,
    _saved_spec,
    read_encoder_json,
    resolve_layers,
)
from router.encoders.window import TokenWindow, _join_blocks, _length_batches, _mean_pool, _pad_batch
from router.progress import progress_bar

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnxruntime


class OnnxEncoder:
    """A transformer exported to ONNX (fp32 or dynamically quantised int8), run with onnxruntime + tokenizers.

    Pooling is mean over the attention mask followed by L2 normalisation. int8 models quantise activations
    dynamically with one scale per tensor, so a text's vector would depend on the other texts of its batch: they
    are therefore always run one text per call (no padding), which keeps each vector a function of its text only.
    ``threads`` sets onnxruntime's intra-op threads (default 1, best behind a server); an int8 ``encode`` of many
    texts with ``threads > 1`` instead runs that many single-threaded calls in parallel.
    """

    def __init__(self, directory: Path, spec: EncoderSpec, *, threads: int | None = None) -> None:
        directory = Path(directory)
        meta = read_encoder_json(directory).get("onnx", {})
        self.directory = directory
        self.spec = spec
        self.dim = spec.dim
        self.threads = 1 if threads is None else max(1, int(threads))
        self.pad_id = int(meta.get("pad_id", 0))
        self.window = TokenWindow.from_json(
            (directory / TOKENIZER_FILE).read_text(encoding="utf-8"), spec.max_tokens, spec.head_tokens
        )
        self.session: onnxruntime.InferenceSession = self._new_session(self.threads)
        self._pool_session: onnxruntime.InferenceSession | None = None  # intra-op 1, for per-text parallelism
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_names = self._layer_outputs([o.name for o in self.session.get_outputs()])

    def _layer_outputs(self, outputs: list[str]) -> list[str]:
        """Graph outputs holding the spec's layers (``last_hidden_state`` alone for the classic embedding)."""
        if self.spec.layers == LAST_LAYER:
            return outputs[:1]
        n_layers = sum(o.startswith("hidden_") for o in outputs) - 1
        if n_layers < 1:
            raise EncoderError(
                f"{self.directory / ONNX_FILE} outputs only the last hidden layer, but this encoder pools layers "
                f"{list(self.spec.layers)}: re-export it (tierwise exports every layer since export version 2)"
            )
        return [f"hidden_{i % (n_layers + 1)}" for i in resolve_layers(self.spec.layers, n_layers)]

    def _new_session(self, intra_op_threads: int) -> onnxruntime.InferenceSession:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = intra_op_threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        return ort.InferenceSession(str(self.directory / ONNX_FILE), so, providers=["CPUExecutionProvider"])

    @classmethod
    def load(cls, directory: Path, threads: int | None = None, *, verify: bool = True) -> OnnxEncoder:
        """Open a saved ONNX encoder; with ``verify``, check model.onnx against the recorded artifact digest."""
        directory = Path(directory)
        spec = _saved_spec(directory, ONNX_KINDS, "an ONNX", ONNX_FILE, verify)
        return cls(directory, spec, threads=threads)

    def with_spec(self, **updates: Any) -> OnnxEncoder:
        """The same weights under an updated spec (e.g. another token window, layers or source label); shares the
        files. ``dim`` follows the number of layers."""
        if "layers" in updates:
            updates["dim"] = self.spec.dim // len(self.spec.layers) * len(updates["layers"])
        spec = EncoderSpec.model_validate({**self.spec.model_dump(), **updates})
        if (spec.kind, spec.fingerprint, spec.artifact) != (self.spec.kind, self.spec.fingerprint, self.spec.artifact):
            raise ValueError("with_spec cannot change the encoder's kind or weights")
        return OnnxEncoder(self.directory, spec, threads=self.threads)

    def _run(self, seqs: Sequence[Sequence[int]], session: onnxruntime.InferenceSession | None = None) -> np.ndarray:
        """Mean-pooled (not yet normalised) vectors for a batch of id lists, one block per layer."""
        ids, mask = _pad_batch(seqs, self.pad_id)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        states = (session or self.session).run(self.output_names, feeds)
        return np.hstack([_mean_pool(h, mask) for h in states])

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed ``texts`` (float32 ``[n, dim]``, unit rows). int8 runs one text per call (see class doc)."""
        out, seqs = self.window.encode_inputs(texts, self.dim)
        if not seqs:
            return out
        with progress_bar(progress, len(seqs), "embedding", unit="text") as bar:
            if self.spec.kind == "onnx-int8" and self.threads > 1 and len(seqs) > 1:
                self._encode_parallel(seqs, out, bar)
            else:
                bs = 1 if self.spec.kind == "onnx-int8" else max(1, batch_size)
                for idx in _length_batches(seqs, bs):
                    out[idx] = self._run([seqs[i] for i in idx])
                    bar.update(len(idx))
        return _join_blocks(out, len(self.spec.layers))

    def _encode_parallel(self, seqs: list[list[int]], out: np.ndarray, bar: Any) -> None:
        """int8, several texts, several threads: one text per call, ``threads`` calls at a time (each 1 thread).

        Faster than intra-op threading for short single-text calls; vectors are identical either way.
        """
        from concurrent.futures import ThreadPoolExecutor

        if self._pool_session is None:
            self._pool_session = self._new_session(1)
        session = self._pool_session

        def one(i: int) -> int:
            out[i] = self._run([seqs[i]], session)[0]
            return i

        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            for _ in pool.map(one, range(len(seqs))):
                bar.update(1)

    def save(self, directory: Path) -> None:
        """Copy model.onnx and tokenizer.json into ``directory``, then write encoder.json (last)."""
        _save_copy(self.directory, Path(directory), (ONNX_FILE, TOKENIZER_FILE), self.spec, "onnx")
