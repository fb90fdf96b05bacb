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

What a log file is (extensions, CSV missing values, renames, ``where``, JSON records, blank text, whole-number ids)
follows :mod:`router.log_format`, the rules ``training.readers`` reads by too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from router.decision import ROLES
from router.log_format import (
    MAX_SAMPLE,
    SUPPORTED_EXTENSIONS,
    apply_where,
    check_rename_targets,
    check_renames,
    column_label,
    csv_na_values,
    is_blank,
    is_json_array,
    json_array_records,
    json_line_record,
    list_columns,
    open_text,
    source_names,
    whole_numbers_as_int,
)

ROW = "_row"
PROMPT_COLUMNS = ("prompt_id", "prompt", "role", "task")
_KINDS = {".csv": "csv", ".csv.gz": "csv", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}
DEFAULT_READ_ROWS = 8192


class PromptLogError(ValueError):
    """A log cannot be read for routing; the message names the file, the column and sample rows."""


def missing_prompt(log: PromptLog, present: str) -> PromptLogError:
    """The error for a log without a ``prompt`` column (``present``: its columns, as a message lists them)."""
    return PromptLogError(
        f"{log.source}: missing required column 'prompt'; columns present: {present} "
        "(use --columns SOURCE=prompt to rename)"
    )


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
        check_rename_targets(self.columns, PromptLogError)
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
        return column_label(self.columns, column)

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
        return self._text_sources()

    def _text_sources(self) -> set[str]:
        return source_names(self.columns, PROMPT_COLUMNS)


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
    reader = pd.read_csv(
        log.file,
        chunksize=rows,
        usecols=use,
        dtype={c: "str" for c in use if c in text},
        keep_default_na=False,
        na_values=csv_na_values(use, text),
    )
    with reader:
        for chunk in reader:
            chunk[ROW] = chunk.index.to_numpy() + 1  # the chunks' index continues: record numbers
            yield chunk


def _json_line_frames(log: PromptLog, rows: int) -> Iterator[pd.DataFrame]:
    wanted = log._wanted()
    records: list[dict[str, Any]] = []
    numbers: list[int] = []
    n = 0
    with open_text(log.file) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            n += 1
            rec = json_line_record(line, lineno, source=log.source, error=PromptLogError)
            records.append(rec if wanted is None else {k: v for k, v in rec.items() if k in wanted})
            numbers.append(n)
            if len(records) >= rows:
                yield _records_frame(records, numbers)
                records, numbers = [], []
    if records:
        yield _records_frame(records, numbers)


def _json_frames(log: PromptLog, rows: int) -> Iterator[pd.DataFrame]:
    if not is_json_array(log.file):
        yield from _json_line_frames(log, rows)
        return
    with open_text(log.file) as fh:  # one JSON array: parsed whole (convert to JSON Lines to stream)
        data = json_array_records(fh.read(), source=log.source, error=PromptLogError)
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
    return list_columns(df.columns, ROW) or "(none)"


def _rename(df: pd.DataFrame, log: PromptLog, state: _State) -> pd.DataFrame:
    renames = log.columns
    if not renames:
        return df
    if state.first:  # later chunks of JSON Lines may lack a column (no record of the chunk has it)
        check_renames(renames, df.columns, source=log.source, error=PromptLogError, present=_columns_present(df))
    return df.rename(columns=renames)


def _apply_where(df: pd.DataFrame, log: PromptLog) -> pd.DataFrame:
    if log.where is None:
        return df
    return apply_where(df, log.where, source=log.source, error=PromptLogError, present=_columns_present(df))


def _canonical(df: pd.DataFrame, log: PromptLog, state: _State) -> pd.DataFrame:
    first, state.first = state.first, False
    if "prompt" not in df.columns:
        raise missing_prompt(log, _columns_present(df))
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
    _report(problems, log, "prompt", is_blank(prompt), "null, empty or whitespace-only", rows, None)
    out["prompt"] = _texts(prompt)
    if state.has_id:
        ids = df["prompt_id"] if has_id else pd.Series([None] * len(df), index=df.index, dtype=object)
        _report(problems, log, "prompt_id", is_blank(ids), "null or empty", rows, ids)
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
    sample = idx[:MAX_SAMPLE]
    more = ", ..." if idx.size > MAX_SAMPLE else ""
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


def _texts(s: pd.Series) -> np.ndarray:
    """Values as Python str (None where missing); a float column of whole numbers (ids read from JSON with nulls)
    prints them as integers, as ``training.readers`` does."""
    s = whole_numbers_as_int(s)
    null = s.isna().to_numpy()
    return np.array([None if n else str(v) for v, n in zip(s.astype(object), null, strict=True)], dtype=object)
