"""The static (model2vec-style) encoder used when serving: :class:`StaticEncoder` loads a distilled token table and
encodes with tokenizers + numpy only. Distilling the table is build-time work (:mod:`router.encoders.distill`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router.encoders.spec import TOKENIZER_FILE, EncoderError, EncoderSpec, _save_copy, _saved_spec
from router.encoders.window import TokenWindow, _l2_normalise
from router.progress import progress_bar

STATIC_FILE = "static.npy"
_STATIC_ENCODE_BLOCK = 256  # prompts tokenised per call


class StaticEncoder:
    """Static token vectors distilled from a sentence-transformers model (model2vec-style): a prompt's vector is
    the mean of its tokens' rows in a ``[vocab, dim]`` table, L2-normalised.

    The table (:func:`distill_static`) holds every vocabulary token embedded alone by the model, reduced by PCA
    and down-weighted by a Zipf estimate of its frequency from its vocabulary rank (frequent tokens say little; a
    rough estimate: BERT's ids are only loosely frequency-ordered). It sees the same head + tail token window as
    the transformer; no neural network runs at encode time (tokenizers + numpy only): after tokenisation, a prompt
    costs a table lookup and a mean. The table and the tokenizer are saved with the bundle, like an ONNX model.
    """

    def __init__(self, directory: Path, spec: EncoderSpec, *, threads: int | None = None) -> None:
        directory = Path(directory)
        self.directory = directory
        self.spec = spec
        self.dim = spec.dim
        self.threads = threads  # unused: encoding is a table lookup; kept for the factory's signature
        self.table = np.load(directory / STATIC_FILE, allow_pickle=False).astype(np.float32)
        if self.table.ndim != 2 or self.table.shape[1] != spec.dim:
            raise EncoderError(f"{directory / STATIC_FILE} has shape {self.table.shape}, expected [vocab, {spec.dim}]")
        self.window = TokenWindow.from_json(
            (directory / TOKENIZER_FILE).read_text(encoding="utf-8"), spec.max_tokens, spec.head_tokens
        )
        if self.window.tokenizer.get_vocab_size(with_added_tokens=True) > self.table.shape[0]:
            raise EncoderError(f"{directory}: the token table has fewer rows than the tokenizer's vocabulary")

    @classmethod
    def load(cls, directory: Path, threads: int | None = None, *, verify: bool = True) -> StaticEncoder:
        """Open a saved static encoder; with ``verify``, check its table against the recorded artifact digest."""
        directory = Path(directory)
        spec = _saved_spec(directory, ("static",), "a static", STATIC_FILE, verify)
        return cls(directory, spec, threads=threads)

    def with_spec(self, **updates: Any) -> StaticEncoder:
        """The same table under another token window or source label (shares the files)."""
        spec = EncoderSpec.model_validate({**self.spec.model_dump(), **updates})
        if (spec.kind, spec.fingerprint, spec.artifact, spec.dim) != (
            self.spec.kind, self.spec.fingerprint, self.spec.artifact, self.spec.dim
        ):
            raise ValueError("with_spec cannot change the encoder's kind, weights or dimension")
        out = StaticEncoder.__new__(StaticEncoder)
        out.__dict__.update(self.__dict__)
        out.spec = spec
        out.window = TokenWindow(self.window.tokenizer, spec.max_tokens, spec.head_tokens)
        return out

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed ``texts`` (float32 ``[n, dim]``, unit rows; an empty prompt gets the zero vector)."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        lo, hi = len(self.window.prefix), len(self.window.suffix)
        with progress_bar(progress, len(texts), "embedding", unit="text") as bar:
            for start in range(0, len(texts), _STATIC_ENCODE_BLOCK):
                seqs = self.window.ids(texts[start : start + _STATIC_ENCODE_BLOCK])
                for i, s in enumerate(seqs, start):
                    content = s[lo : len(s) - hi]
                    if content:  # one prompt's rows at a time stay in cache (a gather of the block's did not)
                        out[i] = self.table[content].mean(axis=0)
                bar.update(len(seqs))
        return _l2_normalise(out)

    def save(self, directory: Path) -> None:
        """Copy the token table and tokenizer.json into ``directory``, then write encoder.json (last)."""
        _save_copy(self.directory, Path(directory), (STATIC_FILE, TOKENIZER_FILE), self.spec, "static")
