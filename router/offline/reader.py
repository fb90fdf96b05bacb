"""Stream the prompts of a log in chunks: what offline routing and featurisation read, never the whole file at once.

A log is anything ``tierwise train`` reads (``training.readers``: CSV, JSON Lines / JSON, Parquet; long or wide) or
any file with a ``prompt`` column: only ``prompt`` is required, and ``prompt_id``, ``role`` and ``task`` are used
when present (a long log's attempts of one prompt share its id; a wide log has one row per prompt). Other columns
are not read unless a ``where`` filter needs them.

Every chunk is a DataFrame with the columns ``_row`` (the file's 1-based data record: the CSV header and blank JSON
lines are not counted, as in ``training.readers``; for a Parquet folder, the row across its files in order),
``prompt`` (str), ``prompt_id`` (str, None when the log has no id column), ``role`` (one of
:data:`router.decision.ROLES`; missing or empty: ``single``) and ``task`` (str or None). Bad input raises
:class:`PromptLogError` naming the file, the column (as the file calls it) and up to 5 rows; prompt text is never
quoted in a message.

Reading is streamed: CSV by pandas chunks, JSON Lines line by line, Parquet by record batches (a file or a folder of
part files such as Spark writes). A ``.json`` file holding one JSON array is the exception: it is parsed whole.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from router.decision import ROLES

ROW = "_row"
PROMPT_COLUMNS = ("prompt_id", "prompt", "role", "task")
SUPPORTED_EXTENSIONS = (".csv", ".csv.gz", ".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz", ".json", ".parquet", ".pq")
"""The extensions ``training.readers`` reads (a folder is read as a Parquet dataset)."""
_KINDS = {".csv": "csv", ".csv.gz": "csv", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}
DEFAULT_READ_ROWS = 8192
_MAX_SAMPLE = 5
# pandas' default missing-value markers, for CSV columns other than the text ones (as training.readers reads them)
_CSV_NA_VALUES = (
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
)


class PromptLogError(ValueError):
    """A log cannot be read for routing; the message names the file, the column and sample rows."""


@dataclass
class PromptLog:
    """How to read one log: its path (a Spark job also takes a URI such as ``s3a://bucket/logs/``), renames (source
    column -> canonical name) and an optional row filter."""

    path: str | os.PathLike[str]
    columns: Mapping[str, str] = field(default_factory=dict)
    where: str | None = None

    def __post_init__(self) -> None:
        self.location = os.fspath(self.path)
        """The path or URI as given (``Path`` would fold a URI's ``//``)."""
        self.file = Path(self.location)
        self.columns = dict(self.columns)
        targets = list(self.columns.values())
        dupes = sorted({t for t in targets if targets.count(t) > 1})
        if dupes:
            raise PromptLogError(f"several columns renamed to the same name: {', '.join(dupes)}")
        self.where = self.where if self.where and self.where.strip() else None

    @property
    def source(self) -> str:
        return self.location

    @property
    def is_uri(self) -> bool:
        """A ``scheme://`` location (read by Spark only)."""
        return "://" in self.location

    def label(self, column: str) -> str:
        """A canonical column as the file calls it."""
        inverse = {dst: src for src, dst in self.columns.items()}
        if column in inverse:
            return f"column {inverse[column]!r} (renamed to {column!r})"
        return f"column {column!r}"

    def kind(self) -> str:
        """``csv``, ``jsonl``, ``json`` or ``parquet`` (by extension; a folder is a Parquet dataset)."""
        name = self.location.rstrip("/").lower()
        if not self.is_uri:
            if not self.file.exists():
                raise PromptLogError(f"{self.source}: log file not found")
            if self.file.is_dir():
                return "parquet"
        for ext in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
            if name.endswith(ext):
                return _KINDS.get(ext, "jsonl")
        if self.is_uri and "." not in name.rsplit("/", 1)[-1]:
            return "parquet"  # a folder of part files
        raise PromptLogError(
            f"{self.source}: unsupported file extension {''.join(self.file.suffixes[-2:]) or '(none)'!r}; supported: "
            f"{', '.join(SUPPORTED_EXTENSIONS)} or a folder of Parquet files"
        )

    def _wanted(self) -> set[str] | None:
        """Source columns to read (None: all of them, for ``where``)."""
        if self.where is not None:
            return None
        inverse = {dst: src for src, dst in self.columns.items()}
        return {inverse.get(c, c) for c in PROMPT_COLUMNS}

    def _text_sources(self) -> set[str]:
        inverse = {dst: src for src, dst in self.columns.items()}
        return {inverse.get(c, c) for c in PROMPT_COLUMNS}


def count_rows(log: PromptLog) -> int | None:
    """Data rows of a Parquet log from its metadata (None for other formats: they must be read to be counted)."""
    if log.kind() != "parquet" or log.is_uri:
        return None
    import pyarrow.dataset as ds

    try:
        return int(ds.dataset(str(log.file), format="parquet").count_rows())
    except Exception as exc:  # pyarrow raises its own types for corrupt files
        raise PromptLogError(f"{log.source}: cannot read as Parquet: {type(exc).__name__}: {exc}") from exc


def iter_chunks(log: PromptLog, rows: int = DEFAULT_READ_ROWS) -> Iterator[pd.DataFrame]:
    """The log's prompts in chunks of at most ``rows`` source rows (fewer after ``where``), canonical and checked."""
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    kind = log.kind()
    if log.is_uri:
        raise PromptLogError(f"{log.source}: this engine reads local files; read a URI with --engine spark")
    readers = {"csv": _csv_frames, "jsonl": _json_line_frames, "json": _json_frames, "parquet": _parquet_frames}
    state = _State()
    try:
        for raw in readers[kind](log, rows):
            frame = _canonical(_apply_where(_rename(raw, log, state), log), log, state)
            if len(frame):
                state.rows += len(frame)
                yield frame
    except PromptLogError:
        raise
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise PromptLogError(f"{log.source}: cannot read as {kind}: {exc}") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("pyarrow"):  # corrupt Parquet
            raise PromptLogError(f"{log.source}: cannot read as {kind}: {type(exc).__name__}: {exc}") from exc
        raise
    if state.rows == 0:
        detail = f" after where={log.where!r}" if log.where else ""
        raise PromptLogError(f"{log.source}: the log has no rows{detail}")


@dataclass
class _State:
    first: bool = True
    has_id: bool | None = None
    rows: int = 0


# --------------------------------------------------------------------------------------------------------------
# raw readers: source columns plus ROW
# --------------------------------------------------------------------------------------------------------------
def _csv_frames(log: PromptLog, rows: int) -> Iterator[pd.DataFrame]:
    header = [str(c) for c in pd.read_csv(log.file, nrows=0).columns]
    wanted = log._wanted()
    use = header if wanted is None else [c for c in header if c in wanted]
    text = log._text_sources()
    # text columns: only the empty field is missing (a prompt may read "NA" or "None"), as training.readers does
    na = {c: ([""] if c in text else list(_CSV_NA_VALUES)) for c in use}
    reader = pd.read_csv(
        log.file,
        chunksize=rows,
        usecols=use,
        dtype={c: "str" for c in use if c in text},
        keep_default_na=False,
        na_values=na,
    )
    with reader:
        for chunk in reader:
            chunk[ROW] = chunk.index.to_numpy() + 1  # the chunks' index continues: record numbers
            yield chunk


def _open_text(path: Path) -> Any:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _json_line_frames(log: PromptLog, rows: int) -> Iterator[pd.DataFrame]:
    wanted = log._wanted()
    records: list[dict[str, Any]] = []
    numbers: list[int] = []
    n = 0
    with _open_text(log.file) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            n += 1
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PromptLogError(f"{log.source}: line {lineno} is not valid JSON: {exc.msg}") from exc
            if not isinstance(rec, dict):
                raise PromptLogError(f"{log.source}: line {lineno}: expected a JSON object, got {type(rec).__name__}")
            records.append(rec if wanted is None else {k: v for k, v in rec.items() if k in wanted})
            numbers.append(n)
            if len(records) >= rows:
                yield _records_frame(records, numbers)
                records, numbers = [], []
    if records:
        yield _records_frame(records, numbers)


def _json_frames(log: PromptLog, rows: int) -> Iterator[pd.DataFrame]:
    with _open_text(log.file) as fh:
        head = fh.read(4096).lstrip()
    if not head.startswith("["):
        yield from _json_line_frames(log, rows)
        return
    with _open_text(log.file) as fh:  # one JSON array: parsed whole (convert to JSON Lines to stream)
        try:
            data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise PromptLogError(f"{log.source}: not valid JSON (line {exc.lineno}): {exc.msg}") from exc
    bad = [i + 1 for i, rec in enumerate(data) if not isinstance(rec, dict)]
    if bad:
        raise PromptLogError(
            f"{log.source}: JSON array elements must be objects; rows {', '.join(map(str, bad[:_MAX_SAMPLE]))} are not"
        )
    for start in range(0, len(data), rows):
        part = data[start : start + rows]
        yield _records_frame(part, list(range(start + 1, start + len(part) + 1)))


def _records_frame(records: list[dict[str, Any]], numbers: list[int]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(records, index=range(len(records)))
    frame[ROW] = np.asarray(numbers, dtype=np.int64)
    return frame


def _parquet_frames(log: PromptLog, rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(log.file), format="parquet")
    names = list(dataset.schema.names)
    wanted = log._wanted()
    use = names if wanted is None else [c for c in names if c in wanted]
    n = 0
    for fragment in dataset.get_fragments():  # files in order, so row numbers are stable
        for batch in fragment.to_batches(columns=use, batch_size=rows):
            frame = batch.to_pandas()
            frame[ROW] = np.arange(n + 1, n + len(frame) + 1, dtype=np.int64)
            n += len(frame)
            yield frame


# --------------------------------------------------------------------------------------------------------------
# renaming, filtering, checking
# --------------------------------------------------------------------------------------------------------------
def _columns_present(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns if c != ROW]
    return ", ".join(cols[:30]) + (f", ... ({len(cols)} in total)" if len(cols) > 30 else "") or "(none)"


def _rename(df: pd.DataFrame, log: PromptLog, state: _State) -> pd.DataFrame:
    renames = log.columns
    if not renames:
        return df
    if state.first:
        missing = [s for s in renames if s not in df.columns]
        if missing:
            raise PromptLogError(
                f"{log.source}: column(s) {', '.join(map(repr, missing))} named in the rename map are not in the "
                f"file; columns present: {_columns_present(df)}"
            )
        clashes = [d for s, d in renames.items() if d in df.columns and d not in renames]
        if clashes:
            raise PromptLogError(
                f"{log.source}: renaming would create duplicate column(s) {', '.join(map(repr, clashes))} (already "
                "in the file); rename or drop the existing one(s) too"
            )
    return df.rename(columns=renames)


def _apply_where(df: pd.DataFrame, log: PromptLog) -> pd.DataFrame:
    if log.where is None:
        return df
    try:
        out = df.query(log.where)
    except Exception as exc:  # query raises many kinds (SyntaxError, UndefinedVariableError, TypeError, ...)
        raise PromptLogError(
            f"{log.source}: where={log.where!r} failed: {type(exc).__name__}: {exc}; columns present: "
            f"{_columns_present(df)}"
        ) from exc
    if not isinstance(out, pd.DataFrame):
        raise PromptLogError(f"{log.source}: where={log.where!r} must be a boolean row filter")
    return out


def _canonical(df: pd.DataFrame, log: PromptLog, state: _State) -> pd.DataFrame:
    first, state.first = state.first, False
    if "prompt" not in df.columns:
        raise PromptLogError(
            f"{log.source}: missing required column 'prompt'; columns present: {_columns_present(df)} "
            "(use --columns SOURCE=prompt to rename)"
        )
    has_id = "prompt_id" in df.columns
    if first:
        state.has_id = has_id
    elif has_id and not state.has_id:
        raise PromptLogError(
            f"{log.source}: {log.label('prompt_id')} appears from row {int(df[ROW].iloc[0])} on but not in the rows "
            "before it: give every row an id, or none"
        )
    rows = df[ROW].to_numpy()
    problems: list[str] = []
    out = pd.DataFrame({ROW: rows})
    prompt = df["prompt"]
    _report(problems, log, "prompt", _is_blank(prompt), "null, empty or whitespace-only", rows, None)
    out["prompt"] = _texts(prompt)
    if state.has_id:
        ids = df["prompt_id"] if has_id else pd.Series([None] * len(df), index=df.index, dtype=object)
        _report(problems, log, "prompt_id", _is_blank(ids), "null or empty", rows, ids)
        out["prompt_id"] = _texts(ids)
    else:
        out["prompt_id"] = None
    if "role" in df.columns:
        raw = df["role"]
        role = pd.Series(
            ["single" if t is None or not t.strip() else t.strip().lower() for t in _texts(raw)], dtype=object
        )
        _report(problems, log, "role", ~role.isin(ROLES).to_numpy(), f"not one of {', '.join(ROLES)}", rows, raw)
        out["role"] = role.to_numpy()
    else:
        out["role"] = "single"
    out["task"] = _texts(df["task"]) if "task" in df.columns else None
    if problems:
        raise PromptLogError("\n".join(problems))
    return out


def _report(
    problems: list[str],
    log: PromptLog,
    column: str,
    mask: np.ndarray,
    what: str,
    rows: np.ndarray,
    values: pd.Series | None,
) -> None:
    """``logs.csv: column 'prompt': null, empty or whitespace-only (rows 4, 9)``; ``values`` are shown when given
    (never prompt text)."""
    idx = np.flatnonzero(np.asarray(mask, dtype=bool))
    if not idx.size:
        return
    sample = idx[:_MAX_SAMPLE]
    more = ", ..." if idx.size > _MAX_SAMPLE else ""
    shown = ""
    if values is not None:
        shown = ": " + ", ".join(_short(values.iloc[i]) for i in sample) + more
    noun = "row" if idx.size == 1 else "rows"
    problems.append(
        f"{log.source}: {log.label(column)}: {what} ({noun} {', '.join(str(rows[i]) for i in sample)}{more}{shown})"
    )


def _short(value: object, limit: int = 40) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "null"
    s = repr(value) if isinstance(value, str) else str(value)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _is_blank(s: pd.Series) -> np.ndarray:
    """Null, or a string that is empty after stripping whitespace."""
    null = s.isna().to_numpy()
    blank = np.fromiter((isinstance(v, str) and not v.strip() for v in s.astype(object)), dtype=bool, count=len(s))
    return null | blank


def _texts(s: pd.Series) -> np.ndarray:
    """Values as Python str (None where missing); a float column of whole numbers (ids read from JSON with nulls)
    prints them as integers, as ``training.readers`` does."""
    if pd.api.types.is_float_dtype(s.dtype):
        vals = s.to_numpy(dtype=float)
        finite = vals[~np.isnan(vals)]
        if finite.size and np.all(finite == np.round(finite)):
            s = s.astype("Int64")
    null = s.isna().to_numpy()
    return np.array([None if n else str(v) for v, n in zip(s.astype(object), null, strict=True)], dtype=object)
