"""The rules of a log file that every reader of logs shares, in one place.

Three places follow them: ``training.readers`` (``tierwise train``: the canonical long format),
:mod:`router.offline.reader` (``tierwise route-log`` and ``tierwise featurize``: the prompts of a log, in chunks) and
the decision log's export (:mod:`router.service.decision_log.export`, which writes the canonical long format).
They live in ``router/`` because ``router/`` must not import ``training/``; ``training.readers`` imports them.

* which files are logs (:data:`SUPPORTED_EXTENSIONS`) and the canonical long format's columns
  (:data:`CANONICAL_COLUMNS`);
* CSV: which fields are missing (:func:`csv_na_values`: in a text column only the empty field, elsewhere pandas'
  default markers);
* renames (source column -> canonical name): :func:`check_rename_targets`, :func:`check_renames`,
  :func:`source_names`, :func:`column_label`;
* reading: :func:`open_text` (UTF-8, ``.gz`` decompressed), :func:`is_json_array`, ``where`` filters
  (:func:`apply_where`), JSON records (:func:`json_line_record`, :func:`json_array_records`);
* text values: :func:`is_blank`, :func:`whole_numbers_as_int` (ids read as floats print as integers);
* :func:`text_prompt_id`: the id of a prompt that a log gives without one.

Functions that refuse input raise the caller's exception class (``error``) with the caller's ``source`` (the file)
first, so each reader keeps its own error type and every reader words a problem the same way.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas and numpy are imported where they are used: the decision log imports this module
    import numpy as np
    import pandas as pd

SUPPORTED_EXTENSIONS = (".csv", ".csv.gz", ".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz", ".json", ".parquet", ".pq")
"""The extensions of a log file (the reader is chosen by extension)."""
CANONICAL_COLUMNS = (
    "prompt_id",
    "prompt",
    "model",
    "score",
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "latency_ms",
    "task",
    "role",
    "split",
    "timestamp",
)
"""The canonical long format's columns, in order (one row per attempt; see ``training.readers``)."""
CSV_NA_VALUES = (
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
"""pandas' default missing-value markers (``read_csv``): missing in every CSV column except the text ones."""
MAX_SAMPLE = 5
"""Offending rows (or values, ids) a message names at most."""
PROMPT_ID_HEX = 16
"""Hex digits of a prompt id made from a hash: :func:`text_prompt_id`, and the decision log's export (the first
digits of ``prompt_hash``)."""

ErrorType = type[Exception]


def text_prompt_id(text: object) -> str:
    """The id of a prompt a log gives without one: the first 16 hex digits of the SHA-1 of its UTF-8 text (null
    counts as the empty text; a lone surrogate, which UTF-8 cannot hold, as ``?``, as Spark's ``sha1`` reads it).
    Stable across runs and row orders; identical texts share an id.

    The train / calibration / test split is a seeded hash of the prompt id (``training.labels.assign_splits``), so
    this function must not change: it would move the split, and so the evaluation, of every log read with it.
    (The decision log names a prompt differently: ``prompt_hash`` is the SHA-256 of the text.)"""
    s = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    return hashlib.sha1(s.encode("utf-8", "replace")).hexdigest()[:PROMPT_ID_HEX]


def csv_na_values(columns: Iterable[str], text_columns: Collection[str]) -> dict[str, list[str]]:
    """``na_values`` for ``pandas.read_csv(..., keep_default_na=False)``: in a text column only the empty field is
    missing (a prompt may read "NA" or "None"), in the others every marker of :data:`CSV_NA_VALUES`."""
    return {c: ([""] if c in text_columns else list(CSV_NA_VALUES)) for c in columns}


def check_rename_targets(renames: Mapping[str, str], error: ErrorType = ValueError) -> None:
    """Refuse a rename map that renames several columns to one name."""
    targets = list(renames.values())
    dupes = sorted({t for t in targets if targets.count(t) > 1})
    if dupes:
        raise error(f"several columns renamed to the same name: {', '.join(dupes)}")


def source_names(renames: Mapping[str, str], columns: Iterable[str]) -> set[str]:
    """What the file calls the canonical ``columns`` under ``renames`` (source -> canonical)."""
    inverse = {dst: src for src, dst in renames.items()}
    return {inverse.get(c, c) for c in columns}


def column_label(renames: Mapping[str, str], column: str) -> str:
    """A canonical column as a message names it: ``column 'sample_id' (renamed to 'prompt_id')`` or
    ``column 'prompt'``."""
    inverse = {dst: src for src, dst in renames.items()}
    if column in inverse:
        return f"column {inverse[column]!r} (renamed to {column!r})"
    return f"column {column!r}"


def list_columns(columns: Iterable[object], hidden: object = None, limit: int = 30) -> str:
    """The columns for ``columns present: ...`` (the first ``limit``, then how many in all; ``hidden``: a reader's
    own column, not shown). Empty when there are none."""
    cols = [str(c) for c in columns if c != hidden]
    return ", ".join(cols[:limit]) + (f", ... ({len(cols)} in total)" if len(cols) > limit else "")


def check_renames(
    renames: Mapping[str, str], columns: Collection[object], *, source: str, error: ErrorType, present: str
) -> None:
    """Refuse renaming a file with ``columns`` by ``renames``: a source column the file lacks, or a new name the
    file already has (``present``: the columns as the message lists them)."""
    missing = [s for s in renames if s not in columns]
    if missing:
        raise error(
            f"{source}: column(s) {', '.join(map(repr, missing))} named in the rename map are not in the file; "
            f"columns present: {present}"
        )
    clashes = [d for d in renames.values() if d in columns and d not in renames]
    if clashes:
        raise error(
            f"{source}: renaming would create duplicate column(s) {', '.join(map(repr, clashes))} "
            "(already in the file); rename or drop the existing one(s) too"
        )


def apply_where(df: pd.DataFrame, where: str | None, *, source: str, error: ErrorType, present: str) -> pd.DataFrame:
    """The rows of ``df`` that the :meth:`pandas.DataFrame.query` expression ``where`` keeps (all without one)."""
    import pandas as pd

    if where is None:
        return df
    try:
        out = df.query(where)
    except Exception as exc:  # query raises many kinds (SyntaxError, UndefinedVariableError, TypeError, ...)
        raise error(
            f"{source}: where={where!r} failed: {type(exc).__name__}: {exc}; columns present: {present}"
        ) from exc
    if not isinstance(out, pd.DataFrame):
        raise error(f"{source}: where={where!r} must be a boolean row filter")
    return out


def open_text(path: Path) -> IO[str]:
    """A log file opened as UTF-8 text; a ``.gz`` file decompressed."""
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def is_json_array(path: Path) -> bool:
    """Whether a ``.json`` file holds one JSON array (its first non-blank character is ``[``), not JSON Lines."""
    if path.is_dir():
        return False
    with open_text(path) as fh:
        return fh.read(4096).lstrip().startswith("[")


def json_line_record(line: str, lineno: int, *, source: str, error: ErrorType) -> dict[str, Any]:
    """One JSON Lines record (a JSON object); ``lineno``: the file's line number, for the message."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        raise error(f"{source}: line {lineno} is not valid JSON: {exc.msg}") from exc
    if not isinstance(rec, dict):
        raise error(f"{source}: line {lineno}: expected a JSON object, got {type(rec).__name__}")
    return rec


def json_array_records(text: str, *, source: str, error: ErrorType) -> list[dict[str, Any]]:
    """The records of a ``.json`` file holding one JSON array of objects."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{source}: not valid JSON (line {exc.lineno}): {exc.msg}") from exc
    bad = [i + 1 for i, rec in enumerate(data) if not isinstance(rec, dict)]
    if bad:
        raise error(
            f"{source}: JSON array elements must be objects; rows {', '.join(map(str, bad[:MAX_SAMPLE]))} are not"
        )
    return list(data)


def is_blank(s: pd.Series) -> np.ndarray:
    """Null, or a string that is empty after stripping whitespace."""
    import numpy as np
    import pandas as pd

    null = s.isna().to_numpy()
    if pd.api.types.is_string_dtype(s.dtype) and not pd.api.types.is_object_dtype(s.dtype):
        return null | (s.str.strip() == "").fillna(False).to_numpy(dtype=bool)
    text = s.astype(object).where(~s.isna(), "")
    blank = np.fromiter((isinstance(v, str) and not v.strip() for v in text), dtype=bool, count=len(s))
    return null | blank


def whole_numbers_as_int(s: pd.Series) -> pd.Series:
    """A float column of whole numbers (ids read from JSON or Parquet with nulls: ``1.0``) as nullable integers,
    so that they print as ``1``; any other column as it is."""
    import numpy as np
    import pandas as pd

    if pd.api.types.is_float_dtype(s.dtype):
        vals = s.to_numpy(dtype=float)
        finite = vals[~np.isnan(vals)]
        if finite.size and np.all(finite == np.round(finite)):
            return s.astype("Int64")
    return s
