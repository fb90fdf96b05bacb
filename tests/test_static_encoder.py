"""The static (model2vec-style) encoder distilled from the real all-MiniLM-L6-v2: recipe, window, cache, bundle."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from fresh_process import encode_in_fresh_process
from pydantic import ValidationError

from router.encoders import (
    STATIC_FILE,
    EncoderMismatchError,
    EncoderSpec,
    StaticEncoder,
    build_encoder,
    distill_static,
    load_encoder,
    static_cache_dir,
)

# The recipe is checked on a table distilled afresh in every run from the first VOCAB_LIMIT token ids (the most
# frequent English word pieces follow BERT's reserved block: 1996 = "the"), which takes seconds. The encoder tests use
# the product's table of the whole vocabulary: distilled once under the tierwise cache (TIERWISE_CACHE_DIR, which
# tests/conftest.py keeps across runs) and loaded by every later run, as ``build_encoder("minilm-static")`` does.
VOCAB_LIMIT = 2500


def _long_prompt(middle_word: str = "green", last_word: str = "Paris") -> str:
    """> 1000 tokens: a few-shot head, a long middle (one word of which varies) and the question at the end."""
    head = "Answer the question after these examples. " * 4
    middle = " ".join(f"the {middle_word if i == 60 else 'green'} example number {i} is here." for i in range(200))
    return f"{head}{middle} Question: what is the capital city of France? I think it is {last_word}."


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return distill_static("minilm", vocab_limit=VOCAB_LIMIT, cache_dir=tmp_path_factory.mktemp("static-cache"))


@pytest.fixture(scope="module")
def full_dir() -> Path:
    """The product's table, every vocabulary token, in the default cache (distilled here on a machine's first run)."""
    return distill_static("minilm")


@pytest.fixture(scope="module")
def enc(full_dir: Path) -> StaticEncoder:
    return StaticEncoder.load(full_dir)


def test_distilled_table_follows_the_recipe(static_dir: Path, enc: StaticEncoder) -> None:
    meta = json.loads((static_dir / "encoder.json").read_text())
    assert meta["static"]["pca_dims"] == 256 and meta["static"]["sif"] == pytest.approx(1e-4)
    assert meta["static"]["tokens_distilled"] == VOCAB_LIMIT - 5  # [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103
    table = np.load(static_dir / STATIC_FILE)
    assert table.shape == (30522, 256) and table.dtype == np.float32
    # special tokens and tokens beyond the limit are not distilled: zero rows; the others carry a vector
    assert not table[0].any() and not table[101].any() and not table[VOCAB_LIMIT:].any()
    assert (np.linalg.norm(table[1996:VOCAB_LIMIT], axis=1) > 0).all()
    # the Zipf/SIF weight shrinks frequent (low-rank) tokens: "the" (1996) weighs less than rarer pieces
    norms = np.linalg.norm(enc.table, axis=1)
    assert norms[1996] < np.median(norms[4000:6000])
    assert enc.spec.kind == "static" and enc.dim == 256 and enc.spec.artifact is not None


def test_vectors_are_unit_norm_deterministic_and_a_mean_of_token_rows(enc: StaticEncoder) -> None:
    texts = ["The cat sat on the mat.", "A dog slept on the rug.", "Stock prices fell sharply in trading today.", ""]
    v = enc.encode(texts)
    assert v.shape == (4, 256) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v[:3], axis=1), 1.0, atol=1e-5)
    assert not v[3].any()  # an empty prompt has no tokens: the zero vector
    np.testing.assert_array_equal(enc.encode(texts[:1])[0], v[0])
    ids = enc.window.tokenizer.encode(texts[0], add_special_tokens=False).ids
    want = enc.table[ids].mean(axis=0)
    np.testing.assert_allclose(v[0], want / np.linalg.norm(want), atol=1e-6)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2])  # animals on a mat are nearer each other than markets


def test_long_prompt_uses_the_same_head_and_tail_window(enc: StaticEncoder) -> None:
    base, mid, end = enc.encode([_long_prompt(), _long_prompt(middle_word="purple"), _long_prompt(last_word="Rome")])
    np.testing.assert_array_equal(base, mid)  # the middle is cut out, as for the transformer
    assert float(base @ end) < 0.9999
    seq = enc.window.ids([_long_prompt()])[0]
    assert len(seq) == enc.spec.max_tokens


def test_distillation_is_cached_and_leaves_no_temp_folders(static_dir: Path) -> None:
    t0 = time.perf_counter()
    again = distill_static("minilm", vocab_limit=VOCAB_LIMIT, cache_dir=static_dir.parent)
    assert again == static_dir and time.perf_counter() - t0 < 2.0
    assert not [p for p in static_dir.parent.iterdir() if p.name.startswith(".")]


def test_bad_distillation_arguments_are_refused(tmp_path: Path) -> None:
    for kw in ({"dims": 3}, {"dims": True}, {"vocab_limit": 2}, {"vocab_limit": 1.5}):
        with pytest.raises(ValueError):
            distill_static("minilm", cache_dir=tmp_path, **kw)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def test_save_load_roundtrip_and_window(enc: StaticEncoder, tmp_path: Path) -> None:
    short = enc.with_spec(max_tokens=64, head_tokens=8)
    assert len(short.window.ids([_long_prompt()])[0]) == 64 and short.spec.cache_key() != enc.spec.cache_key()
    short.save(tmp_path / "enc")
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["encoder.json", STATIC_FILE, "tokenizer.json"]
    loaded = load_encoder(tmp_path / "enc")
    assert isinstance(loaded, StaticEncoder) and loaded.spec == short.spec
    texts = ["hello world", _long_prompt()]
    np.testing.assert_array_equal(loaded.encode(texts), short.encode(texts))


def test_tampered_table_is_rejected(enc: StaticEncoder, tmp_path: Path) -> None:
    enc.save(tmp_path / "enc")
    table = np.load(tmp_path / "enc" / STATIC_FILE)
    table[2000, 0] += 1.0
    np.save(tmp_path / "enc" / STATIC_FILE, table)
    with pytest.raises(EncoderMismatchError, match="differs from"):
        load_encoder(tmp_path / "enc")


def test_static_spec_needs_its_artifact() -> None:
    with pytest.raises(ValidationError, match="static"):
        EncoderSpec(kind="static", source="minilm", fingerprint="0" * 16, dim=256)
    with pytest.raises(ValidationError, match="static"):
        EncoderSpec(kind="static", source="minilm", fingerprint="0" * 16, dim=256, artifact="1" * 16, layers=(-1, 3))


def test_load_in_fresh_process_imports_no_torch(enc: StaticEncoder, tmp_path: Path) -> None:
    enc.save(tmp_path / "enc")
    expected = enc.encode(["hello world"])[0]
    heavy, vector = encode_in_fresh_process(tmp_path / "enc", "hello world")
    assert heavy == []  # not even onnxruntime: a table lookup
    np.testing.assert_allclose(vector, expected, atol=1e-6)


def test_product_encoder_distils_the_full_vocabulary_under_tierwise_home(full_dir: Path) -> None:
    """``build_encoder("minilm-static")``: the product default, every vocabulary token, cached under the tierwise
    cache like the ONNX export (the first run distils, later ones load)."""
    enc = build_encoder("minilm-static", max_tokens=128, head_tokens=16, layers="last+middle")
    assert isinstance(enc, StaticEncoder)
    assert enc.directory == full_dir and full_dir.parent == static_cache_dir()
    meta = json.loads((enc.directory / "encoder.json").read_text())["static"]
    assert meta["tokens_distilled"] == 30522 - 5  # all but [PAD], [UNK], [CLS], [SEP], [MASK]
    assert (enc.spec.max_tokens, enc.spec.head_tokens, enc.spec.layers) == (128, 16, (-1,))
    texts = [f"Question {i}: what is {i} plus {i + 1}? Explain your reasoning step by step." for i in range(2000)]
    enc.encode(texts[:10])
    t0 = time.perf_counter()
    v = enc.encode(texts)
    per_prompt_ms = 1000 * (time.perf_counter() - t0) / len(texts)
    assert v.shape == (2000, 256)
    assert per_prompt_ms < 1.0, per_prompt_ms  # a table lookup, not a forward pass (measured ~0.03-0.1 ms)
