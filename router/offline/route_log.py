"""``tierwise route-log``: route a logged set of prompts offline ("what would the router have done", back-filling).

:func:`route_log` reads a log in chunks (:mod:`router.offline.reader`), routes each distinct prompt id once with a
:class:`router.core.Router` and writes one Parquet row per distinct prompt id:

==================================  ========  ====================================================================
column                              type      meaning
==================================  ========  ====================================================================
``prompt_id``                       string    the log's ``prompt_id``; without one, the first 16 hex digits of
                                              the SHA-1 of the prompt (:func:`router.log_format.text_prompt_id`:
                                              the id ``tierwise train`` gives it in a wide log without ids)
``prompt_hash``                     string    SHA-256 of the prompt (hex), the decision log's ``prompt_hash``
``prompt``                          string    only with ``include_prompt`` (``--include-prompt``)
``role``, ``task``                  string    what the decision was made for (role ``single`` when not logged)
``tier``, ``model``, ``reason``     string    the decision (as the pyfunc and ``/v1/route`` name them)
``threshold``                       double    the knob it used
``p_acceptable.<tier>``             double    P(acceptable) per tier, cheapest first
``estimated_cost_usd.tier``         double    expected USD on the chosen tier (null: no prices)
``estimated_cost_usd.top_tier``     double    ... and on the top tier
``estimated_cost_usd.input_tokens``  int64    tokens assumed
``estimated_cost_usd.output_tokens`` int64
``router_version``                  string    the model that decided (``NAME/VERSION`` or its directory)
==================================  ========  ====================================================================

The decision columns are the registered pyfunc's output (:class:`router.pyfunc.TierwisePyfunc`, the same code
path), so the local and the Spark engine (:mod:`router.offline.spark`) write the same columns.

Two passes over the log, both streamed: the first checks every row (blank prompts, unknown roles, one prompt id
with two texts: the error names the file, the column and the rows before any routing time is spent) and counts the
rows; the second routes the prompts not routed yet, ``chunk_size`` at a time, and appends the decisions to the
output. Memory is bounded by the chunk and the output row group, plus the set of prompt ids seen: 64-bit keys in
sorted numpy blocks, 24 bytes per distinct prompt id while checking (key, text key, first row) and 8 while routing
(10 million prompts: 240 MB, briefly twice that while two blocks merge), never the log itself.

The output is written to a temporary file beside ``out`` and renamed into place at the end
(:func:`router.atomic_io.atomic_path`): a failure or Ctrl-C leaves nothing half-written, and an existing ``out``
untouched.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from router.atomic_io import atomic_path
from router.log_format import text_prompt_id
from router.offline.reader import DEFAULT_READ_ROWS, ROW, PromptLog, PromptLogError, count_rows, iter_chunks
from router.progress import progress_bar
from router.pyfunc import COST_FIELDS

if TYPE_CHECKING:
    import pyarrow as pa

    from router.core import Router
    from router.offline.spark import SparkRouteResult

DEFAULT_CHUNK_SIZE = 1024
"""Prompts per routing call (one encoder and one classifier pass)."""
ROW_GROUP_ROWS = 65_536
"""Decisions buffered before a Parquet row group is written."""


class RouteLogError(PromptLogError):
    """The log or the options cannot be routed; the message names the file, the column and the rows."""


def output_columns(tier_names: Sequence[str], include_prompt: bool = False) -> list[str]:
    """The output's columns, in order (see the module doc)."""
    cols = ["prompt_id", "prompt_hash"] + (["prompt"] if include_prompt else []) + ["role", "task"]
    cols += ["tier", "model", "reason", "threshold"] + [f"p_acceptable.{t}" for t in tier_names]
    cols += [f"estimated_cost_usd.{k}" for k in COST_FIELDS] + ["router_version"]
    return cols


def output_schema(tier_names: Sequence[str], include_prompt: bool = False) -> pa.Schema:
    """The output's Arrow schema (both engines write it)."""
    import pyarrow as pa

    types: dict[str, pa.DataType] = {f"p_acceptable.{t}": pa.float64() for t in tier_names}
    types |= {"threshold": pa.float64(), "estimated_cost_usd.tier": pa.float64()}
    types |= {"estimated_cost_usd.top_tier": pa.float64()}
    types |= {"estimated_cost_usd.input_tokens": pa.int64(), "estimated_cost_usd.output_tokens": pa.int64()}
    return pa.schema([(c, types.get(c, pa.string())) for c in output_columns(tier_names, include_prompt)])


@dataclass
class RouteLogResult:
    """What :func:`route_log` wrote."""

    out: Path
    rows: int
    """Rows of the log read (after ``where``)."""
    prompts: int
    """Distinct prompt ids routed: the output's rows."""
    tiers: Counter[str] = field(default_factory=Counter)
    router_version: str = ""
    seconds: float = 0.0

    def lines(self) -> list[str]:
        return summary_lines(self, f"with {self.router_version}")


def summary_lines(result: RouteLogResult | SparkRouteResult, engine: str) -> list[str]:
    """What ``tierwise route-log`` prints about a result of either engine (``engine``: how it routed)."""
    share = ", ".join(f"{t}={n / max(result.prompts, 1):.1%}" for t, n in result.tiers.items())
    return [
        f"routed {result.prompts:,} distinct prompts ({result.rows:,} rows) {engine} in {result.seconds:.1f}s: "
        f"{result.out}",
        f"tiers: {share}",
    ]


def route_log(
    router: Router,
    data: str | os.PathLike[str] | PromptLog,
    out: str | os.PathLike[str],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    threshold: float | None = None,
    quality_target: float | None = None,
    include_prompt: bool = False,
    progress: bool = False,
    read_rows: int = DEFAULT_READ_ROWS,
) -> RouteLogResult:
    """Route every distinct prompt id of ``data`` with ``router`` and write the decisions to ``out`` (Parquet).

    ``data``: a log path or a :class:`PromptLog` (renames, ``where``). ``threshold`` / ``quality_target``: the knob
    for every prompt (default: the model's). ``progress``: tqdm bars on stderr. See the module doc for the output.
    """
    started = time.monotonic()
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    log = data if isinstance(data, PromptLog) else PromptLog(data)
    if "://" in os.fspath(out):
        raise ValueError(f"{os.fspath(out)}: the local engine writes a local file; write to a URI with --engine spark")
    out = Path(out)
    if not out.name.lower().endswith((".parquet", ".pq")):
        raise ValueError(f"{out}: the output is Parquet: name it .parquet")
    if out.exists() and out.is_dir():
        raise ValueError(f"{out} is a folder; give a file name (a Spark run writes folders, the local engine a file)")
    threshold = router.knob(threshold, quality_target)

    total = check_log(log, progress=progress, read_rows=read_rows)
    schema = output_schema(router.tiers, include_prompt)
    decide = _Decider(router, threshold, include_prompt, schema)
    result = RouteLogResult(out=out, rows=total, prompts=0, router_version=router.ref.label)
    import pyarrow.parquet as pq

    with (
        atomic_path(out) as tmp,
        pq.ParquetWriter(tmp, schema) as writer,
        row_bar(progress, total, "routing") as bar,
    ):
        buffered: list[pa.Table] = []
        n_buffered = 0
        for table in _route_chunks(log, decide, chunk_size, read_rows, bar):
            result.prompts += table.num_rows
            result.tiers.update(table.column("tier").to_pylist())
            buffered.append(table)
            n_buffered += table.num_rows
            if n_buffered >= ROW_GROUP_ROWS:
                writer.write_table(_concat(buffered))
                buffered, n_buffered = [], 0
        if buffered:
            writer.write_table(_concat(buffered))
    result.tiers = Counter({t: result.tiers[t] for t in router.tiers if result.tiers[t]})
    result.seconds = time.monotonic() - started
    return result


def check_log(log: PromptLog, *, progress: bool = False, read_rows: int = DEFAULT_READ_ROWS) -> int:
    """Read the whole log once (streamed) and raise :class:`RouteLogError` on the first bad rows: blank prompts or
    ids, unknown roles, one prompt id with two texts (naming both rows). Returns the number of rows."""
    seen = SeenKeys()
    total = 0
    with row_bar(progress, count_rows(log), "checking") as bar:
        for chunk in iter_chunks(log, read_rows):
            ids, texts = chunk_keys(chunk)
            rows = chunk[ROW].to_numpy(dtype=np.int64)
            first = _first_occurrences(ids)
            # within the chunk: every row's text must be its id's first row's text
            order = pd.Series(np.arange(len(ids))).groupby(ids).transform("first").to_numpy()
            clash = np.flatnonzero(texts != texts[order])
            if clash.size:
                i = int(clash[0])
                _conflict(log, chunk, i, int(rows[order[i]]), int(rows[i]))
            found, values = seen.lookup(ids[first])
            diff = np.flatnonzero(found & (values[:, 0] != texts[first]))
            if diff.size:
                i = int(first[diff[0]])
                _conflict(log, chunk, i, int(values[diff[0], 1]), int(rows[i]))
            new = first[~found]
            seen.add(ids[new], np.column_stack([texts[new], rows[new].astype(np.uint64)]))
            total += len(chunk)
            bar.update(len(chunk))
    return total


def _conflict(log: PromptLog, chunk: pd.DataFrame, i: int, first_row: int, row: int) -> None:
    pid = chunk["prompt_id"].iloc[i]
    raise RouteLogError(
        f"{log.source}: {log.label('prompt')}: prompt_id {pid!r} has different prompt texts (rows {first_row} and "
        f"{row}); one id must always carry the same prompt"
    )


def _route_chunks(log: PromptLog, decide: _Decider, chunk_size: int, read_rows: int, bar: Any) -> Iterator[pa.Table]:
    """Decisions for the prompts not routed yet, ``chunk_size`` at a time, as Arrow tables in output order."""
    routed = SeenKeys(width=0)
    pending: list[pd.DataFrame] = []
    n_pending = 0
    for chunk in iter_chunks(log, read_rows):
        ids, _ = chunk_keys(chunk)
        first = _first_occurrences(ids)
        found, _ = routed.lookup(ids[first])
        new = first[~found]
        routed.add(ids[new])
        if new.size:
            pending.append(chunk.iloc[new])
            n_pending += new.size
        if n_pending >= chunk_size:
            todo = pd.concat(pending, ignore_index=True)
            start = 0
            while len(todo) - start >= chunk_size:
                yield decide(todo.iloc[start : start + chunk_size])
                start += chunk_size
            rest = todo.iloc[start:]
            pending, n_pending = ([rest] if len(rest) else []), len(rest)
        bar.update(len(chunk))
    if n_pending:
        yield decide(pd.concat(pending, ignore_index=True))


class _Decider:
    """Route a frame of canonical prompts with the pyfunc's code path; return the output rows as an Arrow table."""

    def __init__(self, router: Router, threshold: float | None, include_prompt: bool, schema: pa.Schema) -> None:
        from router.pyfunc import TierwisePyfunc

        self.model = TierwisePyfunc()
        self.model.router = router  # what load_context sets: the same predict() the registered model runs
        self.params = None if threshold is None else {"threshold": threshold}
        self.include_prompt = include_prompt
        self.schema = schema
        self.version = router.ref.label

    def __call__(self, frame: pd.DataFrame) -> pa.Table:
        import pyarrow as pa

        from router.service.decision_log import prompt_hash

        prompts = frame["prompt"].tolist()
        decisions = self.model.predict(None, frame[["prompt", "role", "task"]].reset_index(drop=True), self.params)
        hashes = [prompt_hash(p) for p in prompts]
        ids = [text_prompt_id(p) if pid is None else pid for pid, p in zip(frame["prompt_id"], prompts, strict=True)]
        cols: dict[str, Any] = {"prompt_id": ids, "prompt_hash": hashes}
        if self.include_prompt:
            cols["prompt"] = prompts
        cols["role"] = frame["role"].tolist()
        cols["task"] = frame["task"].tolist()
        for c in self.schema.names:
            if c not in decisions.columns:
                continue
            values = decisions[c]
            if c.endswith("_tokens"):
                cols[c] = [None if pd.isna(v) else int(v) for v in values]
            elif c.startswith("estimated_cost"):  # NaN: no price (null in the output)
                cols[c] = [None if pd.isna(v) else float(v) for v in values]
            else:
                cols[c] = values.to_numpy()
        cols["router_version"] = [self.version] * len(frame)
        return pa.Table.from_pydict(cols, schema=self.schema)


def _concat(tables: list[pa.Table]) -> pa.Table:
    import pyarrow as pa

    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


# --------------------------------------------------------------------------------------------------------------
# prompt keys: which rows are the same prompt
# --------------------------------------------------------------------------------------------------------------
def _key64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def chunk_keys(chunk: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """64-bit keys of each row's prompt id (its text when the log has no ids) and of its text."""
    texts = np.fromiter((_key64(t) for t in chunk["prompt"]), dtype=np.uint64, count=len(chunk))
    pids = chunk["prompt_id"]
    if pids.isna().all():
        return texts, texts
    ids = np.fromiter((_key64("id\0" + str(p)) for p in pids), dtype=np.uint64, count=len(chunk))
    return ids, texts


def _first_occurrences(keys: np.ndarray) -> np.ndarray:
    """Positions of each key's first occurrence, in order."""
    _, first = np.unique(keys, return_index=True)
    return np.sort(first)


class SeenKeys:
    """A set of 64-bit keys, each with ``width`` uint64 values, in sorted numpy blocks merged like a binary counter
    (O(log n) blocks; 8 bytes per key and per value, no Python object per key)."""

    def __init__(self, width: int = 2) -> None:
        self.width = width
        self.blocks: list[tuple[np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return sum(len(k) for k, _ in self.blocks)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(found, values)`` for ``keys`` (values are zero where not found)."""
        found = np.zeros(len(keys), dtype=bool)
        values = np.zeros((len(keys), self.width), dtype=np.uint64)
        for bkeys, bvals in self.blocks:
            pos = np.minimum(np.searchsorted(bkeys, keys), len(bkeys) - 1)
            hit = bkeys[pos] == keys
            values[hit] = bvals[pos[hit]]
            found |= hit
        return found, values

    def add(self, keys: np.ndarray, values: np.ndarray | None = None) -> None:
        """Add keys not in the set yet (distinct)."""
        if not len(keys):
            return
        vals = np.zeros((len(keys), self.width), dtype=np.uint64) if values is None else values.astype(np.uint64)
        order = np.argsort(keys, kind="stable")
        self.blocks.append((keys[order], vals[order]))
        while len(self.blocks) > 1 and len(self.blocks[-1][0]) >= len(self.blocks[-2][0]):
            (k2, v2), (k1, v1) = self.blocks.pop(), self.blocks.pop()
            k, v = np.concatenate([k1, k2]), np.concatenate([v1, v2])
            order = np.argsort(k, kind="stable")
            self.blocks.append((k[order], v[order]))


def row_bar(progress: bool, total: int | None, desc: str) -> Any:
    """A progress bar of log rows on stderr (:func:`router.progress.progress_bar`; a no-op without ``progress``)."""
    return progress_bar(progress, total, desc, "row", unit_scale=True, leave=False)
