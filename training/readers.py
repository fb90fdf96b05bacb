"""Read routing logs (CSV, JSON Lines, JSON, Parquet; long or wide) into the canonical long format.

The canonical long format has one row per **attempt** (one prompt sent to one model once):

=================  ==========  ===========================================================================
column             dtype       meaning
=================  ==========  ===========================================================================
``prompt_id``      str         required; the same id must always carry the same prompt text
``prompt``         str         required; non-empty
``model``          str         required; as named in the catalog (``Tier.model``)
``score``          float64     required (or ``acceptable``); in [0, 1]
``cost_usd``       float64     optional; in [0, 10^6] USD, NaN = not logged
``input_tokens``   float64     optional; in [0, 10^9]
``output_tokens``  float64     optional; in [0, 10^9]
``latency_ms``     float64     optional; in [0, 7 days]
``task``           str         optional
``role``           str         optional; one of single / plan / execute / verify (missing values -> single)
``split``          str         optional; train / calibration / test (val, valid, validation, dev, calib ->
                               calibration); a prompt must not be in two splits
``timestamp``      datetime    optional; ISO 8601 strings or datetimes (UTC), numbers = Unix seconds
=================  ==========  ===========================================================================

Numbers must be finite: ``inf``, ``Infinity``, ``-inf`` or a literal too large for a float (``1e400``) are
errors in every numeric column and every format, as are booleans in the cost, token and latency columns and values
above :data:`router.limits.ATTEMPT_LIMITS` (no single attempt costs a million dollars or reads a billion tokens;
such a value is a logging bug, and one of them is enough to skew the prices every tier is trained on). NaN (an
empty field, ``null``, ``NaN``) means "not logged".

Other columns pass through unchanged. When a log gives only ``acceptable`` (bool, 0/1, "true"/"false",
"yes"/"no"), ``score`` is 1.0 / 0.0; when it gives both, ``score`` is used and ``acceptable`` passes through.
Repeated attempts of the same prompt on the same model are allowed (the labeller averages them).

Processing order: read -> rename (``LogOptions.columns``) -> wide-to-long (``format="wide"``) -> ``models``
restriction -> ``where`` filter -> validation and typing. ``where`` therefore sees the renamed columns (and, for
wide logs, the ``model`` and ``score`` columns) before values are checked, so it can drop rows that would fail.

Wide logs (one row per prompt, one column per model and measure) name their columns with patterns such as
``score__{model}``; models are discovered from the columns that match ``score_pattern``. A wide log without a
``prompt_id`` column gets ``prompt_id`` = the first 16 hex digits of the SHA-1 of the prompt text
(:func:`router.log_format.text_prompt_id`: stable across runs and row orders; identical prompt texts share an id, so
their rows count as repeated attempts; ``tierwise route-log`` names prompts without ids the same way).

The rules this reader shares with ``tierwise route-log``'s reader and the decision log's export (extensions, CSV
missing values, renames, ``where``, JSON records, blank text, whole-number ids, the prompt id) are in
:mod:`router.log_format`.

Errors are :class:`LogValidationError` and name the file, the column and up to 5 offending rows. Row numbers are
the file's 1-based data records (the CSV header is not counted; for JSON Lines, blank lines are not counted); for an
in-memory DataFrame they are its index labels.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from router.decision import ROLES  # one list of roles for logs, routing and serving
from router.limits import ATTEMPT_LIMITS  # one table of bounds for logs, the feedback API and the decision log
from router.log_format import (  # one set of log file rules for training, route-log and the decision log's export
    CANONICAL_COLUMNS,
    MAX_SAMPLE,
    SUPPORTED_EXTENSIONS,
    apply_where,
    check_rename_targets,
    check_renames,
    column_label,
    csv_na_values,
    is_blank,
    json_array_records,
    json_line_record,
    list_columns,
    open_text,
    source_names,
    text_prompt_id,
    whole_numbers_as_int,
)

__all__ = [
    "ATTEMPT_LIMITS",
    "CANONICAL_COLUMNS",
    "LogFileNotFoundError",
    "LogOptions",
    "LogValidationError",
    "ROLES",
    "SPLITS",
    "SPLIT_ALIASES",
    "SUPPORTED_EXTENSIONS",
    "parse_column_map",
    "read_log",
    "validate_log",
]

REQUIRED_COLUMNS = ("prompt_id", "prompt", "model")
STRING_COLUMNS = ("prompt_id", "prompt", "model", "task", "role", "split")
NUMERIC_COLUMNS = ("cost_usd", "input_tokens", "output_tokens", "latency_ms")
SPLITS = ("train", "calibration", "test")
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "calibration": "calibration",
    "test": "test",
    "val": "calibration",
    "valid": "calibration",
    "validation": "calibration",
    "dev": "calibration",
    "calib": "calibration",
}
_TRUE = {"true", "t", "yes", "y", "1", "1.0"}
_FALSE = {"false", "f", "no", "n", "0", "0.0"}
_ROW = "__tierwise_row__"  # hidden column: the source row number of each record
_PATTERN_FIELDS = (
    "score_pattern",
    "cost_pattern",
    "input_tokens_pattern",
    "output_tokens_pattern",
    "latency_ms_pattern",
)
_PATTERN_TARGET = {
    "score_pattern": "score",
    "cost_pattern": "cost_usd",
    "input_tokens_pattern": "input_tokens",
    "output_tokens_pattern": "output_tokens",
    "latency_ms_pattern": "latency_ms",
}


class LogValidationError(ValueError):
    """A log file cannot be read or fails validation; the message names the file, the column and sample rows."""


class LogFileNotFoundError(LogValidationError, FileNotFoundError):
    """The log file does not exist (also a :class:`FileNotFoundError`)."""


class LogOptions(BaseModel):
    """How to read one log file.

    Attributes:
        format: ``long`` (one row per attempt) or ``wide`` (one row per prompt, one column per model and measure).
        columns: rename map, source column -> canonical name, applied first (e.g. ``{"sample_id": "prompt_id"}``).
            A string ``"a=b,c=d"`` is accepted too (see :func:`parse_column_map`).
        score_pattern, cost_pattern, input_tokens_pattern, output_tokens_pattern, latency_ms_pattern: wide format
            only; column-name patterns with one ``{model}`` placeholder. ``score_pattern`` discovers the models;
            the others are optional (``None`` = not in the file; a pattern that matches no column is ignored).
        where: a :meth:`pandas.DataFrame.query` expression applied after renaming (and after wide-to-long),
            before validation, e.g. ``"contaminated == False and task == 'mmlu'"``.
        models: keep only these models (error if one of them is not in the log).
    """

    model_config = ConfigDict(extra="forbid")

    format: Literal["long", "wide"] = "long"
    columns: dict[str, str] = Field(default_factory=dict)
    score_pattern: str = "score__{model}"
    cost_pattern: str | None = "cost_usd__{model}"
    input_tokens_pattern: str | None = None
    output_tokens_pattern: str | None = None
    latency_ms_pattern: str | None = None
    where: str | None = None
    models: list[str] | None = None

    @field_validator("columns", mode="before")
    @classmethod
    def _parse_columns(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_column_map(value)
        return value

    @field_validator("columns")
    @classmethod
    def _check_columns(cls, value: dict[str, str]) -> dict[str, str]:
        for src, dst in value.items():
            if not src.strip() or not dst.strip():
                raise ValueError(f"empty column name in rename {src!r} -> {dst!r}")
        check_rename_targets(value)
        return value

    @field_validator(*_PATTERN_FIELDS)
    @classmethod
    def _check_pattern(cls, value: str | None) -> str | None:
        if value is not None and value.count("{model}") != 1:
            raise ValueError(f"pattern {value!r} must contain the placeholder '{{model}}' exactly once")
        return value

    @field_validator("where")
    @classmethod
    def _blank_where(cls, value: str | None) -> str | None:
        return value if value is not None and value.strip() else None


def parse_column_map(text: str) -> dict[str, str]:
    """Parse a CLI rename list ``"sample_id=prompt_id,eval_name=task"`` into ``{"sample_id": "prompt_id", ...}``.

    Whitespace around names is ignored; an empty string gives ``{}``.
    Raises ValueError for items without exactly one ``=``, empty names or a source named twice.
    """
    out: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split("=")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ValueError(f"bad column rename {item!r}: expected SOURCE=CANONICAL, e.g. sample_id=prompt_id")
        src, dst = parts[0].strip(), parts[1].strip()
        if src in out:
            raise ValueError(f"column {src!r} is renamed twice")
        out[src] = dst
    return out


# ------------------------------------------------------------------------------------------------------------
# public entry points
# ------------------------------------------------------------------------------------------------------------
def read_log(path: str | os.PathLike[str], options: LogOptions | None = None) -> pd.DataFrame:
    """Read a log file and return it in the canonical long format (fresh DataFrame, RangeIndex).

    The reader is chosen by extension: ``.csv``, ``.csv.gz``, ``.jsonl`` / ``.ndjson`` (optionally ``.gz``),
    ``.json`` (JSON Lines or one JSON array of objects), ``.parquet`` / ``.pq``.

    Raises:
        LogFileNotFoundError: the file does not exist.
        LogValidationError: unknown extension, unreadable content or a validation failure.
    """
    opts = options if options is not None else LogOptions()
    p = Path(path)
    src = str(path)
    if not p.exists():
        raise LogFileNotFoundError(f"{src}: log file not found")
    if p.is_dir():
        raise LogValidationError(f"{src}: is a directory, expected a log file")
    raw = _read_table(p, src, _string_source_columns(opts))
    return _process(raw, opts, src)


def validate_log(df: pd.DataFrame, options: LogOptions | None = None, source: str = "<dataframe>") -> pd.DataFrame:
    """Apply :func:`read_log`'s renaming, reshaping, filtering and validation to an in-memory DataFrame.

    The input is not modified; row numbers in error messages are its index labels.
    """
    opts = options if options is not None else LogOptions()
    raw = df.copy()
    if _ROW in raw.columns:
        raise LogValidationError(f"{source}: column {_ROW!r} is reserved")
    raw[_ROW] = df.index.to_numpy()
    return _process(raw.reset_index(drop=True), opts, source)


def _process(raw: pd.DataFrame, opts: LogOptions, src: str) -> pd.DataFrame:
    ctx = _Context(src=src, options=opts)
    df = _rename(raw, ctx)
    if opts.format == "wide":
        df = _wide_to_long(df, ctx)
    else:  # (wide logs restrict models while reshaping)
        df = _restrict_models(df, ctx)
    df = _apply_where(df, ctx)
    return _canonicalise(df, ctx)


# ------------------------------------------------------------------------------------------------------------
# reading files
# ------------------------------------------------------------------------------------------------------------
def _extension(p: Path) -> str:
    name = p.name.lower()
    for ext in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    return "".join(p.suffixes[-2:]).lower() or "(none)"


def _string_source_columns(opts: LogOptions) -> set[str]:
    """Source column names that hold canonical string columns (read as text, only '' counts as missing)."""
    return source_names(opts.columns, STRING_COLUMNS)


def _read_table(p: Path, src: str, string_columns: set[str]) -> pd.DataFrame:
    ext = _extension(p)
    try:
        if ext in (".csv", ".csv.gz"):
            df = _read_csv(p, string_columns)
        elif ext in (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz"):
            df = _records_frame(_iter_json_lines(_read_text(p), src), src)
        elif ext == ".json":
            df = _read_json(p, src)
        elif ext in (".parquet", ".pq"):
            df = _read_parquet(p)
        else:
            raise LogValidationError(
                f"{src}: unsupported file extension {ext!r}; supported: {', '.join(SUPPORTED_EXTENSIONS)}"
            )
    except LogValidationError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise LogValidationError(f"{src}: cannot read as {ext}: {exc}") from exc
    except Exception as exc:  # pyarrow raises its own exception types for corrupt files
        raise LogValidationError(f"{src}: cannot read as {ext}: {type(exc).__name__}: {exc}") from exc
    if _ROW in df.columns:
        raise LogValidationError(f"{src}: column {_ROW!r} is reserved")
    df[_ROW] = np.arange(1, len(df) + 1)
    return df


def _read_text(p: Path) -> str:
    with open_text(p) as fh:
        return fh.read()


def _read_csv(p: Path, string_columns: set[str]) -> pd.DataFrame:
    header = pd.read_csv(p, nrows=0).columns
    text_cols = [c for c in header if c in string_columns]
    return pd.read_csv(
        p,
        dtype={c: "str" for c in text_cols},
        keep_default_na=False,
        na_values=csv_na_values(header, text_cols),
        low_memory=False,
    )


def _iter_json_lines(text: str, src: str) -> Iterable[dict[str, Any]]:
    n = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        n += 1
        yield json_line_record(line, lineno, source=src, error=LogValidationError)


def _records_frame(records: Iterable[dict[str, Any]], src: str) -> pd.DataFrame:
    recs = list(records)
    if not recs:
        return pd.DataFrame()
    return pd.DataFrame.from_records(recs)


def _read_json(p: Path, src: str) -> pd.DataFrame:
    text = _read_text(p)
    stripped = text.lstrip()
    if stripped.startswith("["):
        return _records_frame(json_array_records(text, source=src, error=LogValidationError), src)
    return _records_frame(_iter_json_lines(text, src), src)


def _read_parquet(p: Path) -> pd.DataFrame:
    df = pd.read_parquet(p)
    if isinstance(df.index, pd.RangeIndex) or all(n is None for n in df.index.names):
        return df.reset_index(drop=True)
    return df.reset_index()  # a named index (e.g. prompt_id saved as the index) becomes a column again


# ------------------------------------------------------------------------------------------------------------
# renaming, reshaping, filtering
# ------------------------------------------------------------------------------------------------------------
@dataclass
class _Context:
    src: str
    options: LogOptions
    wide_models: list[str] = field(default_factory=list)

    def label(self, column: str, model: str | None = None) -> str:
        """How to name a canonical column in a message: as it is called in the file."""
        opts = self.options
        if self.options.format == "wide" and model is not None:
            for fname, target in _PATTERN_TARGET.items():
                pattern = getattr(opts, fname)
                if target == column and pattern is not None:
                    return f"column {pattern.replace('{model}', model)!r} ({column} of model {model!r})"
        return column_label(opts.columns, column)


def _rename(df: pd.DataFrame, ctx: _Context) -> pd.DataFrame:
    renames = ctx.options.columns
    if not renames:
        return df
    check_renames(renames, df.columns, source=ctx.src, error=LogValidationError, present=_list_columns(df))
    return df.rename(columns=renames)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    before, after = pattern.split("{model}")
    return re.compile(f"^{re.escape(before)}(?P<model>.+){re.escape(after)}$")


def _wide_to_long(df: pd.DataFrame, ctx: _Context) -> pd.DataFrame:
    """Melt one-row-per-prompt into one-row-per-(prompt, model), prompt-major, models in column order."""
    opts = ctx.options
    rx = _pattern_regex(opts.score_pattern)
    models = [m.group("model") for c in df.columns if c != _ROW and (m := rx.match(str(c)))]
    if not models:
        raise LogValidationError(
            f"{ctx.src}: format=wide but no column matches score_pattern {opts.score_pattern!r}; "
            f"columns present: {_list_columns(df)}"
        )
    if opts.models is not None:
        unknown = [m for m in opts.models if m not in models]
        if unknown:
            raise LogValidationError(
                f"{ctx.src}: column {opts.score_pattern!r}: model(s) {', '.join(map(repr, unknown))} requested by "
                f"'models' are not in the file; models present: {', '.join(models)}"
            )
        models = [m for m in models if m in set(opts.models)]
    ctx.wide_models = models

    measures: dict[str, list[str | None]] = {}
    used: set[str] = set()
    for fname, target in _PATTERN_TARGET.items():
        pattern = getattr(opts, fname)
        if pattern is None:
            continue
        cols = [pattern.replace("{model}", m) for m in models]
        present = [c if c in df.columns else None for c in cols]
        if target == "score" or any(c is not None for c in present):
            measures[target] = present
        # every model-specific column of any discovered model is consumed, even for dropped models
        for m_col in df.columns:
            mm = _pattern_regex(pattern).match(str(m_col))
            if mm:
                used.add(m_col)
    id_cols = [c for c in df.columns if c not in used]
    clash = [c for c in ("model", *measures) if c in id_cols]
    if clash:
        raise LogValidationError(
            f"{ctx.src}: format=wide: column(s) {', '.join(map(repr, clash))} clash with the columns the wide "
            f"reader creates; rename them with 'columns'"
        )

    n, k = len(df), len(models)
    take = np.repeat(np.arange(n), k)
    out = df[id_cols].take(take).reset_index(drop=True)
    out.insert(0, "model", pd.array(np.tile(np.array(models, dtype=object), n), dtype="str"))
    for target, cols in measures.items():
        out[target] = _stack_measure(df, cols)
    if "prompt_id" not in out.columns and "prompt" in out.columns:
        ids = df["prompt"].map(text_prompt_id)
        out.insert(0, "prompt_id", pd.array(np.repeat(ids.to_numpy(dtype=object), k), dtype="str"))
    return out


def _stack_measure(df: pd.DataFrame, cols: list[str | None]) -> np.ndarray:
    """[n * k] values of one measure, prompt-major; NaN where the model has no such column."""
    n = len(df)
    arrays = [df[c].to_numpy() if c is not None else np.full(n, np.nan) for c in cols]
    try:
        mat = np.column_stack([np.asarray(a, dtype=float) for a in arrays])
    except (TypeError, ValueError):
        mat = np.column_stack([np.asarray(a, dtype=object) for a in arrays])
    return mat.reshape(-1)


def _restrict_models(df: pd.DataFrame, ctx: _Context) -> pd.DataFrame:
    wanted = ctx.options.models
    if wanted is None or "model" not in df.columns:
        return df
    present = set(df["model"].dropna().astype(str))
    unknown = [m for m in wanted if m not in present]
    if unknown:
        raise LogValidationError(
            f"{ctx.src}: {ctx.label('model')}: model(s) {', '.join(map(repr, unknown))} requested by 'models' "
            f"are not in the log; models present: {', '.join(sorted(present))}"
        )
    return df.loc[df["model"].astype(str).isin(set(wanted))]


def _apply_where(df: pd.DataFrame, ctx: _Context) -> pd.DataFrame:
    return apply_where(df, ctx.options.where, source=ctx.src, error=LogValidationError, present=_list_columns(df))


# ------------------------------------------------------------------------------------------------------------
# validation and typing
# ------------------------------------------------------------------------------------------------------------
def _canonicalise(df: pd.DataFrame, ctx: _Context) -> pd.DataFrame:
    src = ctx.src
    if len(df) == 0:
        detail = f" after where={ctx.options.where!r}" if ctx.options.where else ""
        raise LogValidationError(f"{src}: the log has no rows{detail}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if "score" not in df.columns and "acceptable" not in df.columns:
        missing.append("score (or acceptable)")
    if missing:
        hint = " (use LogOptions.columns / --columns SOURCE=CANONICAL to rename)"
        hint = hint if ctx.options.format == "long" else ""
        raise LogValidationError(
            f"{src}: missing required column(s): {', '.join(missing)}; columns present: {_list_columns(df)}{hint}"
        )

    df = df.reset_index(drop=True)
    rows = df[_ROW]
    models_for_msg = df["model"] if ctx.options.format == "wide" else None
    problems: list[str] = []
    out: dict[str, Any] = {}

    def report(column: str, mask: pd.Series | np.ndarray, what: str, values: pd.Series) -> None:
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        if models_for_msg is not None and column in _PATTERN_TARGET.values():
            # wide: one message per offending source column
            bad_models = pd.unique(models_for_msg[mask].astype(object))
            for m in bad_models[:MAX_SAMPLE]:
                sub = mask & (models_for_msg.astype(object) == m).to_numpy()
                problems.append(_message(src, ctx.label(column, str(m)), sub, what, rows, values))
            if len(bad_models) > MAX_SAMPLE:
                problems.append(f"{src}: ... and {len(bad_models) - MAX_SAMPLE} more model column(s) with {what}")
            return
        problems.append(_message(src, ctx.label(column), mask, what, rows, values))

    # --- identifiers and text ---------------------------------------------------------------------------------
    for col in ("prompt_id", "model"):
        s = df[col]
        blank = is_blank(s)
        report(col, blank, "null or empty", s)
        out[col] = _to_str(s)
    prompt = df["prompt"]
    report("prompt", is_blank(prompt), "null, empty or whitespace-only", prompt)
    out["prompt"] = _to_str(prompt)

    # --- score / acceptable -----------------------------------------------------------------------------------
    if "score" in df.columns:
        raw = df["score"]
        score = _to_float(raw)
        bad = score.isna() | (score < 0) | (score > 1)
        report("score", bad, "outside [0,1] or NaN", raw)
        out["score"] = score
    else:
        raw = df["acceptable"]
        acc, bad = _parse_bool(raw)
        report("acceptable", bad, "not a boolean (true/false, 1/0, yes/no)", raw)
        out["score"] = acc.astype("float64")

    # --- numbers ----------------------------------------------------------------------------------------------
    for col in NUMERIC_COLUMNS:
        if col in df.columns:
            raw = df[col]
            num = _to_float(raw)
            boolean = _is_bool(raw)  # read as 1.0 / 0.0 by _to_float: only this check sees them
            not_number = num.isna() & ~_is_null(raw)
            infinite = np.isinf(num.to_numpy())
            report(col, boolean, "true/false (must be a number)", raw)
            report(col, not_number | ((num < 0) & ~infinite), "negative or not a number", raw)
            report(col, infinite, "infinite (inf, Infinity or a literal too large for a float, e.g. 1e400)", raw)
            limit = ATTEMPT_LIMITS[col]
            report(col, (num > limit) & ~infinite & ~boolean, f"above {limit:g} (not plausible for one attempt)", raw)
            out[col] = num

    # --- categorical text -------------------------------------------------------------------------------------
    if "task" in df.columns:
        out["task"] = _to_str(df["task"])
    if "role" in df.columns:
        raw = df["role"]
        role = _to_str(raw).str.strip().str.lower()
        role = role.where(~is_blank(raw), "single")
        report("role", ~role.isin(ROLES), f"not one of {', '.join(ROLES)}", raw)
        out["role"] = role.astype("str")
    if "split" in df.columns:
        raw = df["split"]
        norm = _to_str(raw).str.strip().str.lower().map(SPLIT_ALIASES)
        report(
            "split",
            norm.isna(),
            f"not a known split (train, calibration, test; {', '.join(k for k in SPLIT_ALIASES if k not in SPLITS)} "
            "mean calibration)",
            raw,
        )
        out["split"] = norm.astype("str")
    if "timestamp" in df.columns:
        ts, bad = _parse_timestamp(df["timestamp"])
        report("timestamp", bad, "not a timestamp (ISO 8601 or Unix seconds)", df["timestamp"])
        out["timestamp"] = ts

    if problems:
        raise LogValidationError("\n".join(problems))

    # --- cross-row consistency (needs clean ids) --------------------------------------------------------------
    problems += _check_consistent(src, ctx, out["prompt_id"], out["prompt"], rows, "prompt", "different prompt texts")
    if "split" in out:
        problems += _check_consistent(src, ctx, out["prompt_id"], out["split"], rows, "split", "different splits")
    if problems:
        raise LogValidationError("\n".join(problems))

    result = pd.DataFrame(out)
    extras = [c for c in df.columns if c not in result.columns and c != _ROW and c != "acceptable"]
    if "acceptable" in df.columns:
        extras.append("acceptable")
    for c in extras:
        result[c] = df[c]  # same RangeIndex; copy-on-write keeps the source untouched
    order = [c for c in CANONICAL_COLUMNS if c in result.columns]
    order += [c for c in result.columns if c not in CANONICAL_COLUMNS]
    return result[order].reset_index(drop=True)


def _check_consistent(
    src: str, ctx: _Context, ids: pd.Series, values: pd.Series, rows: pd.Series, column: str, what: str
) -> list[str]:
    """Each prompt_id must map to one value of ``values``; name the offending ids (up to 5)."""
    frame = pd.DataFrame({"id": ids.to_numpy(), "v": values.to_numpy(), "row": rows.to_numpy()})
    counts = frame.groupby("id", sort=False)["v"].nunique(dropna=False)
    bad_ids = counts.index[counts > 1]
    if len(bad_ids) == 0:
        return []
    parts = []
    for pid in bad_ids[:MAX_SAMPLE]:
        sub = frame[frame["id"] == pid].drop_duplicates("v")
        shown = ", ".join(f"row {r}: {_short(v)}" for r, v in zip(sub["row"][:3], sub["v"][:3], strict=True))
        parts.append(f"{pid!r} ({shown})")
    return [
        f"{src}: {ctx.label(column)}: {len(bad_ids)} prompt_id(s) with {what}: {'; '.join(parts)}"
        + (" ..." if len(bad_ids) > MAX_SAMPLE else "")
    ]


def _message(src: str, label: str, mask: np.ndarray, what: str, rows: pd.Series, values: pd.Series) -> str:
    """``logs.csv: column 'score': 3 rows outside [0,1] or NaN (rows 4, 9, 17: 1.5, nan, -0.2)``."""
    idx = np.flatnonzero(mask)
    n = len(idx)
    sample = idx[:MAX_SAMPLE]
    row_list = ", ".join(str(rows.iloc[i]) for i in sample)
    val_list = ", ".join(_short(values.iloc[i]) for i in sample)
    more = ", ..." if n > MAX_SAMPLE else ""
    noun = "row" if n == 1 else "rows"
    return f"{src}: {label}: {n} {noun} {what} ({noun} {row_list}{more}: {val_list}{more})"


def _short(value: object, limit: int = 40) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return "nan" if isinstance(value, float) else "null"
    if isinstance(value, str):
        s = value if len(value) <= limit else value[: limit - 3] + "..."
        return repr(s)
    s = str(value)  # e.g. a 400-digit JSON integer
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _list_columns(df: pd.DataFrame) -> str:
    return list_columns(df.columns, _ROW)


def _is_null(s: pd.Series) -> pd.Series:
    return s.isna()


def _is_bool(s: pd.Series) -> np.ndarray:
    """True / False values (a JSON ``true`` in a cost column is a logging bug, not 1 USD)."""
    if pd.api.types.is_bool_dtype(s.dtype):
        return np.ones(len(s), dtype=bool)
    if not pd.api.types.is_object_dtype(s.dtype):
        return np.zeros(len(s), dtype=bool)
    return np.fromiter((isinstance(v, (bool, np.bool_)) for v in s), dtype=bool, count=len(s))


def _to_str(s: pd.Series) -> pd.Series:
    """Text dtype; integral floats (1.0 from JSON/Parquet with nulls) print as integers; nulls stay NaN."""
    s = whole_numbers_as_int(s)
    if pd.api.types.is_string_dtype(s.dtype) and not pd.api.types.is_object_dtype(s.dtype):
        return s.astype("str")
    null = s.isna().to_numpy()
    text = [np.nan if n else str(v) for v, n in zip(s.astype(object), null, strict=True)]
    return pd.Series(text, index=s.index, dtype="str")


def _to_float(s: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(s.dtype):
        return s.astype("float64")
    if pd.api.types.is_numeric_dtype(s.dtype):
        return pd.Series(s.to_numpy(dtype="float64", na_value=np.nan), index=s.index)
    return pd.to_numeric(s.astype(object).map(_bool_to_num), errors="coerce").astype("float64")


def _bool_to_num(v: object) -> object:
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    if isinstance(v, str):
        return v.strip()
    if isinstance(v, int) and abs(v) > 2**1023:  # a JSON integer beyond float range: as infinite as 1e400
        return float("inf") if v > 0 else float("-inf")
    return v


def _parse_bool(s: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """``acceptable`` -> bool Series and a mask of unparseable values (nulls are unparseable)."""

    def one(v: object) -> bool | None:
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if isinstance(v, (int, float, np.integer, np.floating)) and not (isinstance(v, float) and np.isnan(v)):
            return {1: True, 0: False}.get(int(v)) if float(v) in (0.0, 1.0) else None
        if isinstance(v, str):
            t = v.strip().lower()
            return True if t in _TRUE else False if t in _FALSE else None
        return None

    parsed = [one(v) for v in s.astype(object)]
    bad = np.array([p is None for p in parsed], dtype=bool)
    return pd.Series([bool(p) for p in parsed], index=s.index, dtype=bool), bad


def _parse_timestamp(s: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Timestamps to datetime64 (UTC). Strings: ISO 8601; numbers: Unix seconds. Nulls stay NaT."""
    null = s.isna().to_numpy()
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        return s.dt.tz_convert("UTC"), np.zeros(len(s), dtype=bool)
    if pd.api.types.is_datetime64_dtype(s.dtype):
        return s.dt.tz_localize("UTC"), np.zeros(len(s), dtype=bool)
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        ts = pd.to_datetime(s, unit="s", utc=True, errors="coerce")
        return ts, ts.isna().to_numpy() & ~null
    objs = s.astype(object)
    ts = pd.to_datetime(
        objs.map(lambda v: v.strip() if isinstance(v, str) else v), utc=True, errors="coerce", format="ISO8601"
    )
    return ts, ts.isna().to_numpy() & ~null
