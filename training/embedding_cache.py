"""On-disk cache of prompt embeddings, keyed by encoder identity and the sha256 of each prompt.

Layout (no prompt text is stored, only 32-byte sha256 digests)::

    <cache>/embeddings/<encoder cache key>/
        <shard>.vec.npy     float32 [n, dim]   written first
        <shard>.keys.npy    uint8   [n, 32]    written last: its presence commits the shard

The encoder cache key (:meth:`router.encoders.EncoderSpec.cache_key`) covers kind, source fingerprint, derived
weights digest and token window, so vectors from different encoders or windows never mix.

Crash safety: each file is written to a temporary name, fsynced and atomically renamed. A shard counts only when
its keys file exists and both files load with matching shapes, so a process killed mid-write leaves at most an
orphan or temporary file that readers ignore (and :meth:`EmbeddingCache.compact` removes). Several processes
may share a cache: shard names are unique and a reader rescans the folder on every call.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from router.atomic_io import TMP_SUFFIX, atomic_open
from router.progress import progress_bar

log = logging.getLogger(__name__)

KEYS_SUFFIX = ".keys.npy"
VEC_SUFFIX = ".vec.npy"
DIGEST_BYTES = 32
_STALE_TMP_SECONDS = 3600.0


def text_digest(text: str) -> bytes:
    """sha256 of a prompt's UTF-8 bytes (lone surrogates allowed)."""
    if not isinstance(text, str):
        raise TypeError(f"prompts must be str, got {type(text).__name__}")
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary ``*.tmp`` file in the same folder, fsync, then an atomic rename."""
    with atomic_open(path, mode=0o666, fsync=True) as fh:
        np.save(fh, array, allow_pickle=False)


@dataclass
class _Namespace:
    """In-memory index of one encoder's shards."""

    directory: Path
    dim: int
    shards: dict[str, np.ndarray] = field(default_factory=dict)  # shard name -> vectors (memory-mapped)
    index: dict[bytes, tuple[str, int]] = field(default_factory=dict)  # digest -> (shard, row)


class EmbeddingCache:
    """Embeddings of prompts, computed once per (encoder, prompt) and kept on disk.

    ``flush_every``: new vectors are written as a shard at least this often (so an interrupted run keeps its
    progress). ``max_shards``: above this many shards a namespace is compacted into one after a write.
    """

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, *, flush_every: int = 4096, max_shards: int = 64
    ):
        self.directory = Path(directory).expanduser() if directory is not None else default_directory()
        self.flush_every = max(1, int(flush_every))
        self.max_shards = max(2, int(max_shards))
        self.last_hits = 0
        self.last_misses = 0
        self._spaces: dict[str, _Namespace] = {}

    @classmethod
    def default(cls) -> EmbeddingCache:
        """The cache under ``$TIERWISE_CACHE_DIR`` or ``$TIERWISE_HOME/cache`` (``embeddings/``)."""
        return cls(default_directory())

    # --- public API ------------------------------------------------------------------------------------------
    def embed(self, encoder: Any, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        """Vectors for ``texts`` in input order; only prompts not yet cached are encoded (and then stored).

        ``encoder`` is a :class:`router.encoders.Encoder`. Returns float32 ``[len(texts), encoder.dim]``.
        """
        texts = list(texts)
        digests = [text_digest(t) for t in texts]
        space = self._namespace(encoder)
        self._refresh(space)
        missing: dict[bytes, int] = {}  # digest -> index of its first occurrence
        for i, d in enumerate(digests):
            if d not in space.index and d not in missing:
                missing[d] = i
        self.last_misses = len(missing)
        self.last_hits = len(texts) - sum(1 for d in digests if d in missing)
        if missing:
            todo = [texts[i] for i in missing.values()]
            self._encode_missing(space, encoder, todo, list(missing), batch_size, progress)
        return self._gather(space, digests)

    def namespace_dir(self, encoder: Any) -> Path:
        """Folder holding ``encoder``'s shards."""
        return self.directory / encoder.spec.cache_key()

    def count(self, encoder: Any) -> int:
        """Number of distinct prompts cached for ``encoder``."""
        space = self._namespace(encoder)
        self._refresh(space)
        return len(space.index)

    def store(self, encoder: Any, digests: Sequence[bytes], vectors: np.ndarray) -> str | None:
        """Add vectors computed elsewhere (e.g. by Spark executors, :mod:`training.spark_features`) as one shard.

        ``digests``: :func:`text_digest` of each vector's prompt; ``vectors``: float32 ``[len(digests), encoder.dim]``
        from ``encoder`` (whose spec names the namespace). Nothing is compacted or rescanned, so many processes may
        store into one cache at once. Returns the shard's name (None when there is nothing to store).
        """
        vecs = np.asarray(vectors)
        space = self._namespace(encoder)
        if vecs.ndim != 2 or vecs.shape != (len(digests), space.dim):
            raise ValueError(f"vectors have shape {vecs.shape}, expected {(len(digests), space.dim)}")
        if not np.isfinite(vecs).all():
            raise ValueError("vectors must be finite")
        if any(len(d) != DIGEST_BYTES for d in digests):
            raise ValueError(f"digests must be {DIGEST_BYTES}-byte sha256 digests (text_digest)")
        if not len(digests):
            return None
        return self._write_shard(space, list(digests), np.ascontiguousarray(vecs, dtype=np.float32))

    def key_prefixes(self, encoder: Any) -> np.ndarray:
        """Sorted uint64 of the first 8 bytes of every digest cached for ``encoder`` (read from the committed shards'
        keys files only, 8 bytes per prompt: a cheap 'probably cached' test for processes that only add vectors)."""
        directory = self.namespace_dir(encoder)
        parts = []
        if directory.is_dir():
            for keys_path in sorted(directory.glob(f"*{KEYS_SUFFIX}")):
                try:
                    keys = np.load(keys_path, allow_pickle=False)
                except (OSError, ValueError, EOFError):
                    continue
                if keys.ndim == 2 and keys.shape[1] == DIGEST_BYTES and keys.dtype == np.uint8:
                    parts.append(np.ascontiguousarray(keys[:, :8]).view(">u8").ravel().astype(np.uint64))
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)

    def compact(self, encoder: Any) -> None:
        """Merge ``encoder``'s shards into one and remove orphans / stale temporary files."""
        space = self._namespace(encoder)
        self._refresh(space)
        self._compact(space)

    # --- internals --------------------------------------------------------------------------------------------
    def _namespace(self, encoder: Any) -> _Namespace:
        key = encoder.spec.cache_key()
        space = self._spaces.get(key)
        if space is None:
            space = _Namespace(self.directory / key, int(encoder.dim))
            self._spaces[key] = space
        return space

    def _refresh(self, space: _Namespace) -> None:
        """Load shards written since the last scan (by this or another process); skip incomplete ones."""
        if not space.directory.is_dir():
            return
        for keys_path in sorted(space.directory.glob(f"*{KEYS_SUFFIX}")):
            name = keys_path.name[: -len(KEYS_SUFFIX)]
            if name in space.shards or name.startswith("."):
                continue
            loaded = self._load_shard(space, name)
            if loaded is None:
                continue
            keys, vecs = loaded
            space.shards[name] = vecs
            for row, k in enumerate(keys):
                space.index[k.tobytes()] = (name, row)

    def _load_shard(self, space: _Namespace, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        keys_path = space.directory / f"{name}{KEYS_SUFFIX}"
        vec_path = space.directory / f"{name}{VEC_SUFFIX}"
        try:
            keys = np.load(keys_path, allow_pickle=False)
            vecs = np.load(vec_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            log.warning("ignoring unreadable embedding shard %s (%s)", keys_path, type(exc).__name__)
            return None
        ok = (
            keys.ndim == 2
            and keys.shape[1] == DIGEST_BYTES
            and keys.dtype == np.uint8
            and vecs.ndim == 2
            and vecs.shape == (keys.shape[0], space.dim)
            and vecs.dtype == np.float32
        )
        if not ok:
            log.warning("ignoring embedding shard %s: shapes %s / %s do not match", keys_path, keys.shape, vecs.shape)
            return None
        return keys, vecs

    def _encode_missing(
        self,
        space: _Namespace,
        encoder: Any,
        texts: list[str],
        digests: list[bytes],
        batch_size: int,
        progress: bool,
    ) -> None:
        """Encode in steps (progress updates), writing a shard every ``flush_every`` new vectors."""
        step = max(batch_size, 256)
        bar = progress_bar(progress and len(texts) > step, len(texts), "embedding prompts", unit="prompt")
        pending_k: list[bytes] = []
        pending_v: list[np.ndarray] = []
        try:
            for start in range(0, len(texts), step):
                chunk = texts[start : start + step]
                vecs = np.asarray(encoder.encode(chunk, batch_size=batch_size, progress=False), dtype=np.float32)
                if vecs.shape != (len(chunk), space.dim):
                    raise ValueError(f"encoder returned shape {vecs.shape}, expected {(len(chunk), space.dim)}")
                pending_k.extend(digests[start : start + step])
                pending_v.append(vecs)
                bar.update(len(chunk))
                if len(pending_k) >= self.flush_every:
                    self._write_shard(space, pending_k, np.concatenate(pending_v))
                    pending_k, pending_v = [], []
            if pending_k:
                self._write_shard(space, pending_k, np.concatenate(pending_v))
        finally:
            bar.close()
        if len(space.shards) > self.max_shards:
            self._compact(space)

    def _write_shard(self, space: _Namespace, digests: list[bytes], vecs: np.ndarray) -> str:
        """Write vectors then keys (the commit marker); register the shard in the index."""
        space.directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        keys = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), DIGEST_BYTES)
        _save_npy_atomic(space.directory / f"{name}{VEC_SUFFIX}", np.ascontiguousarray(vecs, dtype=np.float32))
        _save_npy_atomic(space.directory / f"{name}{KEYS_SUFFIX}", keys)
        space.shards[name] = vecs
        for row, d in enumerate(digests):
            space.index[d] = (name, row)
        return name

    def _gather(self, space: _Namespace, digests: list[bytes]) -> np.ndarray:
        """Vectors for ``digests`` in order, reading each shard with one fancy-indexing call."""
        out = np.empty((len(digests), space.dim), dtype=np.float32)
        by_shard: dict[str, tuple[list[int], list[int]]] = {}
        for i, d in enumerate(digests):
            name, row = space.index[d]
            pos, rows = by_shard.setdefault(name, ([], []))
            pos.append(i)
            rows.append(row)
        for name, (pos, rows) in by_shard.items():
            out[pos] = space.shards[name][rows]
        return out

    def _compact(self, space: _Namespace) -> None:
        """Write one shard with every cached vector, then delete the old shards (keys before vectors)."""
        old = list(space.shards)
        if len(old) > 1:
            digests = list(space.index)
            vecs = self._gather(space, digests)
            new_name = self._write_shard(space, digests, vecs)
            for name in old:
                (space.directory / f"{name}{KEYS_SUFFIX}").unlink(missing_ok=True)
                (space.directory / f"{name}{VEC_SUFFIX}").unlink(missing_ok=True)
                space.shards.pop(name, None)
            space.shards = {new_name: np.load(space.directory / f"{new_name}{VEC_SUFFIX}", mmap_mode="r")}
            space.index = {d: (new_name, row) for row, d in enumerate(digests)}
        self._remove_debris(space)

    def _remove_debris(self, space: _Namespace) -> None:
        """Delete vector files without a keys file and temporary files older than an hour."""
        if not space.directory.is_dir():
            return
        now = time.time()
        for p in space.directory.iterdir():
            try:
                age = now - p.stat().st_mtime
            except FileNotFoundError:
                continue
            if p.name.endswith(TMP_SUFFIX) and age > _STALE_TMP_SECONDS:
                p.unlink(missing_ok=True)
            elif p.name.endswith(VEC_SUFFIX) and age > _STALE_TMP_SECONDS:
                name = p.name[: -len(VEC_SUFFIX)]
                if not (space.directory / f"{name}{KEYS_SUFFIX}").exists():
                    p.unlink(missing_ok=True)


def default_directory() -> Path:
    """``<tierwise cache>/embeddings`` (``$TIERWISE_CACHE_DIR`` or ``$TIERWISE_HOME/cache``)."""
    from router.settings import home_settings

    return home_settings().cache_dir / "embeddings"
