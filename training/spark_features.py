"""Featurise a training log ahead of ``tierwise train``: embed its prompts and store the vectors in the embedding
cache (:mod:`training.embedding_cache`), where training finds them, so a log of tens of millions of prompts trains
without embedding on one core.

* :func:`featurize_spark` (``tierwise featurize --engine spark``): Spark reads the log and keeps its distinct
  prompts; a ``mapInPandas`` function embeds them on the executors with the training's encoder (loaded once per
  executor process, not per batch) and writes the vectors as cache shards (sha256 of the text -> vector, no text).
* :func:`featurize_local` (``--engine local``): the same on this machine, streaming the log in chunks.

The encoder is the one training will use (:func:`training_encoder`: the ``TrainConfig``'s encoder and token window,
or a registered model's own encoder), so the shards land under the encoder cache key ``tierwise train`` looks up:
a following ``tierwise train`` on the same log (same ``TIERWISE_CACHE_DIR``) embeds nothing. Prompts already cached
are skipped, so featurising a grown log embeds only its new prompts.

The executors write straight into the cache folder: on a cluster it must be a path every executor and the training
machine see (a shared file system); on ``local[N]`` it is this machine's cache.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from router.offline.reader import DEFAULT_READ_ROWS, PromptLog, iter_chunks
from router.offline.route_log import SeenKeys, check_log, chunk_keys
from training.embedding_cache import EmbeddingCache, text_digest

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from router.encoders import Encoder
    from training.pipeline import TrainConfig

SHARD_ROWS = 32_768
"""Vectors per cache shard written by a featurising process (768 float32 each: 100 MB)."""
ENCODE_BATCH = 256
"""Prompts per encoder call."""


@dataclass
class FeaturizeReport:
    """What a featurising run did."""

    engine: str
    rows: int
    """Rows of the log read (after ``where``)."""
    prompts: int
    """Distinct prompt texts."""
    encoded: int
    """Prompts embedded by this run (the others were cached already)."""
    cache_dir: Path
    cache_key: str
    encoder_loads: dict[int, int] = field(default_factory=dict)
    """Encoder loads per worker process (Spark): one each, however many batches it embedded."""
    batches: int = 0
    seconds: float = 0.0

    @property
    def cached(self) -> int:
        return self.prompts - self.encoded

    def lines(self) -> list[str]:
        out = [
            f"{self.prompts:,} distinct prompts ({self.rows:,} rows): {self.encoded:,} embedded, {self.cached:,} "
            f"already cached, in {self.seconds:.1f}s ({self.engine})",
            f"embedding cache: {self.cache_dir / self.cache_key}",
        ]
        if self.encoder_loads:
            out.append(
                f"encoder loaded {sum(self.encoder_loads.values())} time(s) in {len(self.encoder_loads)} worker "
                f"process(es) for {self.batches} batch(es)"
            )
        return out


def training_encoder(
    config: TrainConfig | None = None, *, model_uri: str | None = None, tracking_uri: str | None = None
) -> Encoder:
    """The encoder ``tierwise train`` embeds with: ``config``'s (:func:`training.pipeline.encoder_for`, what
    :func:`training.pipeline.fit_router` builds), or with ``model_uri`` that model's own encoder (to retrain with
    a registered model's settings)."""
    if model_uri is not None:
        return _model_encoder(model_uri, tracking_uri)
    from training.pipeline import encoder_for

    return encoder_for(config)


def _model_encoder(model_uri: str, tracking_uri: str | None) -> Encoder:
    """A model's encoder, loaded from files that outlive the call (Spark ships them to the executors): a local
    bundle's own folder, or for a registry / run URI a private copy of the downloaded one (removed at exit)."""
    import atexit

    from router.bundle import find_bundle
    from router.core import download_model, download_root, local_model_dir
    from router.encoders import load_encoder

    local = local_model_dir(model_uri)
    if local is not None:
        return load_encoder(find_bundle(local) / "encoder", threads=2)
    path, _ = download_model(model_uri, tracking_uri=tracking_uri)
    copy = Path(tempfile.mkdtemp(prefix="tierwise-encoder-"))
    atexit.register(shutil.rmtree, copy, True)
    try:
        shutil.copytree(find_bundle(path) / "encoder", copy / "encoder")
    finally:
        shutil.rmtree(download_root(path), ignore_errors=True)
    return load_encoder(copy / "encoder", threads=2)


def _cache(cache_dir: str | os.PathLike[str] | None) -> EmbeddingCache:
    """The embedding cache under a tierwise cache root (``TIERWISE_CACHE_DIR``; default: the one training uses)."""
    return (
        EmbeddingCache.default() if cache_dir is None else EmbeddingCache(Path(cache_dir).expanduser() / "embeddings")
    )


class _NewVectors:
    """Embed the prompts not cached yet and store them in shards of :data:`SHARD_ROWS` (one writer process)."""

    def __init__(self, encoder: Any, cache: EmbeddingCache) -> None:
        self.encoder = encoder
        self.cache = cache
        self.known = cache.key_prefixes(encoder)
        self.digests: list[bytes] = []
        self.vectors: list[np.ndarray] = []
        self.pending = 0
        self.encoded = 0

    def add(self, texts: list[str]) -> int:
        """Embed those of ``texts`` (distinct) not cached yet; returns how many."""
        digests = [text_digest(t) for t in texts]
        prefixes = np.frombuffer(b"".join(d[:8] for d in digests), dtype=">u8").astype(np.uint64)
        pos = np.minimum(np.searchsorted(self.known, prefixes), max(len(self.known) - 1, 0))
        cached = self.known[pos] == prefixes if len(self.known) else np.zeros(len(texts), dtype=bool)
        todo = np.flatnonzero(~cached)
        for start in range(0, todo.size, ENCODE_BATCH):
            part = todo[start : start + ENCODE_BATCH]
            vecs = self.encoder.encode([texts[i] for i in part], batch_size=64, progress=False)
            self.digests += [digests[i] for i in part]
            self.vectors.append(np.asarray(vecs, dtype=np.float32))
            self.pending += part.size
            if self.pending >= SHARD_ROWS:
                self.flush()
        self.encoded += int(todo.size)
        return int(todo.size)

    def flush(self) -> None:
        if self.pending:
            self.cache.store(self.encoder, self.digests, np.concatenate(self.vectors))
        self.digests, self.vectors, self.pending = [], [], 0


# --------------------------------------------------------------------------------------------------------------
# local
# --------------------------------------------------------------------------------------------------------------
def featurize_local(
    data: str | os.PathLike[str] | PromptLog,
    *,
    encoder: Any,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    read_rows: int = DEFAULT_READ_ROWS,
) -> FeaturizeReport:
    """Embed the distinct prompts of ``data`` not cached yet with ``encoder``, on this machine (streamed)."""
    from router.offline.route_log import row_bar

    started = time.monotonic()
    log = data if isinstance(data, PromptLog) else PromptLog(data)
    rows = check_log(log, progress=progress, read_rows=read_rows)
    cache = _cache(cache_dir)
    writer = _NewVectors(encoder, cache)
    seen = SeenKeys(width=0)
    prompts = 0
    with row_bar(progress, rows, "embedding") as bar:
        for chunk in iter_chunks(log, read_rows):
            _, texts = chunk_keys(chunk)
            _, first = np.unique(texts, return_index=True)
            found, _ = seen.lookup(texts[first])
            new = np.sort(first[~found])
            seen.add(texts[new])
            prompts += new.size
            writer.add([chunk["prompt"].iloc[i] for i in new])
            bar.update(len(chunk))
    writer.flush()
    return FeaturizeReport(
        engine="local",
        rows=rows,
        prompts=prompts,
        encoded=writer.encoded,
        cache_dir=cache.directory,
        cache_key=encoder.spec.cache_key(),
        seconds=time.monotonic() - started,
    )


# --------------------------------------------------------------------------------------------------------------
# Spark
# --------------------------------------------------------------------------------------------------------------
_WORKER_ENCODERS: dict[str, Any] = {}  # per executor process: encoder spec (JSON) -> the loaded encoder
_WORKER_LOADS: Counter[str] = Counter()
_WORKER_WRITERS: dict[str, _NewVectors] = {}  # per process and job: its snapshot of the cache's keys


def _worker_encoder(encoder_file: str, spec_json: str) -> Any:
    """The shipped encoder, loaded once per executor process (Python workers are reused across tasks)."""
    enc = _WORKER_ENCODERS.get(spec_json)
    if enc is None:
        from pyspark import SparkFiles

        from router.encoders import EncoderSpec, load_encoder

        enc = load_encoder(SparkFiles.get(encoder_file), threads=1)
        if enc.spec != EncoderSpec.model_validate_json(spec_json):
            raise RuntimeError(f"the shipped encoder's spec {enc.spec} is not the driver's {spec_json}")
        _WORKER_ENCODERS[spec_json] = enc
        _WORKER_LOADS[spec_json] += 1
    return enc


def _embed_batches(
    batches: Iterator[pd.DataFrame], *, encoder_file: str, spec_json: str, cache_dir: str, job: str
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: embed each batch's prompts that are not cached yet and store them; one stats row per
    batch (process id, encoder loads so far, prompts, embedded)."""
    enc = _worker_encoder(encoder_file, spec_json)
    writer = _WORKER_WRITERS.get(job)
    if writer is None:  # a new job: a fresh snapshot of the cache's keys (earlier jobs' are dropped)
        _WORKER_WRITERS.clear()
        writer = _WORKER_WRITERS[job] = _NewVectors(enc, EmbeddingCache(cache_dir))
    try:
        for frame in batches:
            texts = frame["prompt"].astype(str).tolist()
            done = writer.add(texts)
            yield pd.DataFrame(
                {"pid": [os.getpid()], "loads": [_WORKER_LOADS[spec_json]], "prompts": [len(texts)], "encoded": [done]}
            )
    finally:
        writer.flush()  # every task ends with its vectors on disk


def featurize_spark(
    spark: SparkSession,
    data: str | os.PathLike[str] | PromptLog,
    *,
    encoder: Any,
    cache_dir: str | os.PathLike[str] | None = None,
    partitions: int | None = None,
) -> FeaturizeReport:
    """Embed the distinct prompts of ``data`` not cached yet with ``encoder`` on Spark (see the module doc).

    ``partitions``: embedding tasks (default: Spark's default parallelism, e.g. 2 on ``local[2]``).
    """
    from router.offline.spark import check_prompts, read_prompts

    started = time.monotonic()
    log = data if isinstance(data, PromptLog) else PromptLog(data)
    cache = _cache(cache_dir)
    df = read_prompts(spark, log)
    rows = check_prompts(df, log)
    prompts = df.select("prompt").distinct().repartition(partitions or spark.sparkContext.defaultParallelism)
    staging = Path(tempfile.mkdtemp(prefix="tierwise-encoder-"))
    try:
        shipped = staging / f"encoder-{uuid.uuid4().hex[:12]}"
        encoder.save(shipped)
        spark.sparkContext.addFile(str(shipped), recursive=True)
        job = partial(
            _embed_batches,
            encoder_file=shipped.name,
            spec_json=encoder.spec.model_dump_json(),
            cache_dir=str(cache.directory.resolve()),
            job=uuid.uuid4().hex,
        )
        stats = pd.DataFrame(prompts.mapInPandas(job, "pid long, loads long, prompts long, encoded long").toPandas())
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    loads = {int(pid): int(n) for pid, n in stats.groupby("pid")["loads"].max().items()}
    return FeaturizeReport(
        engine="spark",
        rows=rows,
        prompts=int(stats["prompts"].sum()),
        encoded=int(stats["encoded"].sum()),
        cache_dir=cache.directory,
        cache_key=encoder.spec.cache_key(),
        encoder_loads=loads,
        batches=len(stats),
        seconds=time.monotonic() - started,
    )
