"""EmbeddingCache with a real encoder (all-MiniLM-L6-v2 via torch), counted by a thin wrapper."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from router.encoders import Encoder, EncoderSpec, build_encoder
from training.embedding_cache import KEYS_SUFFIX, VEC_SUFFIX, EmbeddingCache, default_directory


class CountingEncoder:
    """Delegates to a real encoder and records how many texts it was asked to encode."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.spec: EncoderSpec = inner.spec
        self.dim = inner.dim
        self.calls = 0
        self.texts = 0

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        self.calls += 1
        self.texts += len(texts)
        return self.inner.encode(texts, batch_size=batch_size, progress=progress)

    def save(self, directory: Path) -> None:
        self.inner.save(directory)


@pytest.fixture(scope="module")
def real_encoder() -> Encoder:
    return build_encoder("minilm")


@pytest.fixture()
def enc(real_encoder: Encoder) -> CountingEncoder:
    return CountingEncoder(real_encoder)


TEXTS = [f"Question {i}: how do I {verb} a {noun}?" for i, (verb, noun) in enumerate(
    [(v, n) for v in ("paint", "fix", "sell", "clean") for n in ("bike", "fence", "laptop", "boat", "roof")]
)]


def test_hit_and_miss(enc: CountingEncoder, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    first = cache.embed(enc, TEXTS[:12], progress=False)
    assert enc.texts == 12 and (cache.last_hits, cache.last_misses) == (0, 12)
    np.testing.assert_allclose(first, enc.inner.encode(TEXTS[:12]), atol=1e-6)

    again = cache.embed(enc, TEXTS[:12], progress=False)
    assert enc.texts == 12 and enc.calls == 1  # second call encodes nothing
    assert (cache.last_hits, cache.last_misses) == (12, 0)
    np.testing.assert_array_equal(again, first)

    mixed = cache.embed(enc, TEXTS[8:16], progress=False)  # 4 cached + 4 new
    assert enc.texts == 16 and (cache.last_hits, cache.last_misses) == (4, 4)
    np.testing.assert_allclose(mixed, enc.inner.encode(TEXTS[8:16]), atol=1e-6)


def test_order_and_duplicates_preserved(enc: CountingEncoder, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    cache.embed(enc, TEXTS[:5], progress=False)
    query = [TEXTS[7], TEXTS[2], TEXTS[7], TEXTS[0], TEXTS[9], TEXTS[2]]
    out = cache.embed(enc, query, progress=False)
    assert enc.texts == 5 + 2  # only TEXTS[7] and TEXTS[9] are new, each encoded once
    np.testing.assert_allclose(out, enc.inner.encode(query), atol=1e-6)
    np.testing.assert_array_equal(out[0], out[2])
    assert cache.embed(enc, [], progress=False).shape == (0, enc.dim)


def test_persists_across_instances_and_stores_no_text(enc: CountingEncoder, tmp_path: Path) -> None:
    EmbeddingCache(tmp_path).embed(enc, TEXTS[:6], progress=False)
    fresh = EmbeddingCache(tmp_path)
    fresh.embed(enc, TEXTS[:6], progress=False)
    assert enc.texts == 6 and fresh.count(enc) == 6
    blob = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert b"Question" not in blob and b"paint" not in blob


def test_partial_and_corrupt_files_are_ignored(enc: CountingEncoder, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    cache.embed(enc, TEXTS[:4], progress=False)
    ns = cache.namespace_dir(enc)
    # a writer killed before its keys file (the commit marker) was renamed into place
    (ns / f"99999999999999999999-dead{VEC_SUFFIX}").write_bytes(b"\x93NUMPY garbage")
    (ns / f".99999999999999999999-dead{KEYS_SUFFIX}.1234.tmp").write_bytes(b"half")
    # a committed-looking shard whose vector file is truncated / whose shapes disagree
    (ns / f"99999999999999999998-bad{KEYS_SUFFIX}").write_bytes(b"not an npy file")
    np.save(ns / f"99999999999999999997-odd{VEC_SUFFIX}", np.zeros((3, enc.dim), np.float32))
    np.save(ns / f"99999999999999999997-odd{KEYS_SUFFIX}", np.zeros((2, 32), np.uint8))

    fresh = EmbeddingCache(tmp_path)
    out = fresh.embed(enc, TEXTS[:6], progress=False)
    assert enc.texts == 4 + 2 and fresh.count(enc) == 6
    np.testing.assert_allclose(out, enc.inner.encode(TEXTS[:6]), atol=1e-6)


def test_flush_and_compaction(enc: CountingEncoder, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, flush_every=1, max_shards=3)
    for i in range(0, 10, 2):
        cache.embed(enc, TEXTS[i : i + 2], progress=False)
    ns = cache.namespace_dir(enc)
    assert len(list(ns.glob(f"*{KEYS_SUFFIX}"))) <= 3  # compacted when it passed max_shards
    cache.compact(enc)
    assert len(list(ns.glob(f"*{KEYS_SUFFIX}"))) == 1 and len(list(ns.glob(f"*{VEC_SUFFIX}"))) == 1
    fresh = EmbeddingCache(tmp_path)
    out = fresh.embed(enc, TEXTS[:10], progress=False)
    assert enc.texts == 10 and fresh.count(enc) == 10
    np.testing.assert_allclose(out, enc.inner.encode(TEXTS[:10]), atol=1e-6)


def test_different_window_uses_a_different_namespace(real_encoder: Encoder, tmp_path: Path) -> None:
    a = CountingEncoder(real_encoder)
    b = CountingEncoder(real_encoder)
    b.spec = real_encoder.spec.model_copy(update={"head_tokens": 16})
    cache = EmbeddingCache(tmp_path)
    cache.embed(a, TEXTS[:3], progress=False)
    cache.embed(b, TEXTS[:3], progress=False)
    assert a.texts == 3 and b.texts == 3
    assert cache.namespace_dir(a) != cache.namespace_dir(b)


def test_progress_bar_path_and_default_directory(
    enc: CountingEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERWISE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TIERWISE_CACHE_DIR", raising=False)
    assert default_directory() == tmp_path / "home" / "cache" / "embeddings"
    cache = EmbeddingCache.default()
    many = [f"short prompt number {i}" for i in range(300)]
    out = cache.embed(enc, many, batch_size=64, progress=True)
    assert out.shape == (300, enc.dim) and enc.calls == 2  # steps of 256 prompts
    assert (tmp_path / "home" / "cache" / "embeddings").is_dir()
