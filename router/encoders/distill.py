"""Build-time work: distil a static (model2vec-style) token table from a sentence-transformers model and cache it
as a saved static encoder directory (:func:`distill_static`).

Never imported when serving: torch and sentence-transformers are imported inside the functions that run them, and
:mod:`router.encoders` imports this module only on first use.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from router.encoders.spec import (
    ENCODER_JSON,
    TOKENIZER_FILE,
    EncoderError,
    EncoderSpec,
    _build_cache_entry,
    _write_json_atomic,
    file_digest,
    fingerprint_dir,
    local_model_dir,
    normalise_source,
    resolve_source,
    static_cache_dir,
)
from router.encoders.static import STATIC_FILE
from router.encoders.window import TokenWindow

log = logging.getLogger(__name__)

STATIC_VERSION = 1
"""Version of the static distillation recipe; part of its cache directory name so recipe changes rebuild."""
STATIC_DIMS = 256
STATIC_SIF = 1e-4
_STATIC_BATCH = 512  # tokens per forward pass while distilling


def _token_vectors(source: str, token_ids: np.ndarray, window: TokenWindow) -> np.ndarray:
    """The model's sentence embedding of each token alone (``[CLS] token [SEP]``), ``[len(token_ids), dim]``."""
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(resolve_source(source), device="cpu").eval()
    out = []
    with torch.inference_mode():
        for start in range(0, token_ids.size, _STATIC_BATCH):
            ids = [window.prefix + [int(t)] + window.suffix for t in token_ids[start : start + _STATIC_BATCH]]
            ids_t = torch.tensor(ids, dtype=torch.long)
            features = {
                "input_ids": ids_t,
                "attention_mask": torch.ones_like(ids_t),
                "token_type_ids": torch.zeros_like(ids_t),
            }
            out.append(st(features)["sentence_embedding"].float().numpy())
    return np.vstack(out)


def _distil_table(vectors: np.ndarray, vocab_size: int, token_ids: np.ndarray, dims: int, sif: float) -> np.ndarray:
    """PCA to ``dims`` (centred, no whitening), then the Zipf/SIF weight ``sif / (sif + p(rank))`` per token, with
    the vocabulary order as the frequency rank (WordPiece and BPE vocabularies are roughly frequency-ordered).
    Tokens not distilled keep a zero row."""
    x = vectors.astype(np.float64)
    x -= x.mean(axis=0)
    if not 0 < dims <= min(x.shape):
        raise EncoderError(f"cannot reduce {x.shape[0]} token vectors of {x.shape[1]} dimensions to {dims}")
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comp = vt[:dims]
    comp *= np.where(comp[np.arange(dims), np.abs(comp).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]  # fixed signs
    reduced = x @ comp.T
    inv_rank = 1.0 / np.arange(2, vocab_size + 2)
    p = inv_rank / inv_rank.sum()
    weight = sif / (sif + p)
    table = np.zeros((vocab_size, dims), dtype=np.float32)
    table[token_ids] = (reduced * weight[token_ids][:, None]).astype(np.float32)
    return table


def distill_static(
    source: str = "minilm",
    dims: int = STATIC_DIMS,
    *,
    vocab_limit: int | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """Directory of a cached static encoder distilled from ``source`` (distilling on first use, a minute or two).

    Every vocabulary token except the special ones (or, with ``vocab_limit``, the first ``vocab_limit`` token ids:
    for tests) is embedded alone by the model. The directory
    (``<cache>/static/<fingerprint>-d<dims>[-v<limit>]-s<version>/``) is a complete saved encoder with the default
    window, built in a temporary folder and renamed into place, so a killed build leaves no half-written entry.
    """
    if isinstance(dims, bool) or not isinstance(dims, int) or not 8 <= dims <= 4096:
        raise ValueError(f"dims must be an integer in 8..4096, got {dims!r}")
    bad_limit = isinstance(vocab_limit, bool) or not isinstance(vocab_limit, int) or vocab_limit < 16
    if vocab_limit is not None and bad_limit:
        raise ValueError(f"vocab_limit must be an integer >= 16 (or None: the whole vocabulary), got {vocab_limit!r}")
    source = normalise_source(source)
    model_dir = local_model_dir(source)
    fp = fingerprint_dir(model_dir)
    root = static_cache_dir(cache_dir)
    final = root / f"{fp}-d{dims}{'' if vocab_limit is None else f'-v{vocab_limit}'}-s{STATIC_VERSION}"
    if (final / ENCODER_JSON).is_file():
        return final

    def build(tmp: Path) -> None:
        t0 = time.perf_counter()
        path = model_dir / TOKENIZER_FILE
        if not path.is_file():
            raise EncoderError(f"{model_dir} has no {TOKENIZER_FILE}: a static encoder needs a fast tokenizer")
        tok_json = path.read_text(encoding="utf-8")
        window = TokenWindow.from_json(tok_json, 8, 0)
        vocab = window.tokenizer.get_vocab_size(with_added_tokens=True)
        special = {int(i) for i in window.prefix + window.suffix}
        for tok in json.loads(tok_json).get("added_tokens", []):
            if tok.get("special"):
                special.add(int(tok["id"]))
        last = vocab if vocab_limit is None else min(vocab, vocab_limit)
        ids = np.asarray([i for i in range(last) if i not in special])
        table = _distil_table(_token_vectors(source, ids, window), vocab, ids, dims, STATIC_SIF)
        with (tmp / STATIC_FILE).open("wb") as fh:
            np.save(fh, table, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        (tmp / TOKENIZER_FILE).write_text(tok_json, encoding="utf-8")
        digest = file_digest(tmp / STATIC_FILE)
        spec = EncoderSpec(kind="static", source=source, fingerprint=fp, dim=table.shape[1], artifact=digest)
        meta = {
            "recipe": "token alone through the sentence-transformers model, PCA, Zipf/SIF weight",
            "pca_dims": int(table.shape[1]),
            "sif": STATIC_SIF,
            "tokens_distilled": int(ids.size),
            "vocab_size": int(vocab),
            "static_version": STATIC_VERSION,
            "build_seconds": round(time.perf_counter() - t0, 2),
        }
        _write_json_atomic(tmp / ENCODER_JSON, {"spec": spec.model_dump(mode="json"), "static": meta})
        log.info("distilled a static encoder from %s in %.1fs", source, meta["build_seconds"])

    return _build_cache_entry(final, build)
