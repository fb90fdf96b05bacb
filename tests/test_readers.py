"""Tests for training.readers: formats, wide logs, options and every validation error."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from training.readers import (
    LogFileNotFoundError,
    LogOptions,
    LogValidationError,
    parse_column_map,
    read_log,
    validate_log,
)


def _long_rows() -> list[dict[str, object]]:
    return [
        {"prompt_id": "p1", "prompt": "What is 2+2?", "model": "m-small", "score": 1.0, "cost_usd": 0.001,
         "input_tokens": 5, "output_tokens": 3, "task": "math"},
        {"prompt_id": "p1", "prompt": "What is 2+2?", "model": "m-large", "score": 1.0, "cost_usd": 0.01,
         "input_tokens": 5, "output_tokens": 4, "task": "math"},
        {"prompt_id": "p2", "prompt": "Summarize: the cat sat.", "model": "m-small", "score": 0.4, "cost_usd": 0.002,
         "input_tokens": 8, "output_tokens": 9, "task": "summarize"},
        {"prompt_id": "p2", "prompt": "Summarize: the cat sat.", "model": "m-large", "score": 0.9, "cost_usd": 0.02,
         "input_tokens": 8, "output_tokens": 12, "task": "summarize"},
    ]


def _write(path: Path, rows: list[dict[str, object]] | pd.DataFrame) -> Path:
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    name = path.name
    if name.endswith(".csv.gz"):
        df.to_csv(path, index=False, compression="gzip")
    elif name.endswith(".csv"):
        df.to_csv(path, index=False)
    elif name.endswith((".jsonl", ".ndjson")):
        df.to_json(path, orient="records", lines=True)
    elif name.endswith(".json"):
        df.to_json(path, orient="records")
    elif name.endswith((".parquet", ".pq")):
        df.to_parquet(path, index=False)
    else:
        path.write_text("x")
    return path


def _error(path: Path, rows: list[dict[str, object]] | pd.DataFrame, options: LogOptions | None = None) -> str:
    _write(path, rows)
    with pytest.raises(LogValidationError) as info:
        read_log(path, options)
    return str(info.value)


# ---- formats ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["log.csv", "log.csv.gz", "log.jsonl", "log.ndjson", "log.json", "log.parquet", "log.pq"]
)
def test_round_trip_every_format(tmp_path: Path, name: str) -> None:
    df = read_log(_write(tmp_path / name, _long_rows()))
    assert isinstance(df.index, pd.RangeIndex)
    assert list(df.columns[:4]) == ["prompt_id", "prompt", "model", "score"]
    assert df["prompt_id"].tolist() == ["p1", "p1", "p2", "p2"]
    assert df["score"].tolist() == [1.0, 1.0, 0.4, 0.9]
    assert df["score"].dtype == np.float64
    for col in ("cost_usd", "input_tokens", "output_tokens"):
        assert df[col].dtype == np.float64
    for col in ("prompt_id", "prompt", "model", "task"):
        assert pd.api.types.is_string_dtype(df[col].dtype)
    assert df["input_tokens"].tolist() == [5.0, 5.0, 8.0, 8.0]


def test_json_lines_inside_dot_json_and_json_array(tmp_path: Path) -> None:
    rows = _long_rows()
    lines = tmp_path / "lines.json"
    lines.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    arr = tmp_path / "array.json"
    arr.write_text(json.dumps(rows, indent=2))
    pd.testing.assert_frame_equal(read_log(lines), read_log(arr))


def test_csv_keeps_text_ids_and_na_like_prompts(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("prompt_id,prompt,model,score\n007,NA,m,1\n008,None,m,0\n")
    df = read_log(path)
    assert df["prompt_id"].tolist() == ["007", "008"]
    assert df["prompt"].tolist() == ["NA", "None"]


def test_numeric_prompt_ids_become_text(tmp_path: Path) -> None:
    rows = [
        {"prompt_id": 1, "prompt": "a", "model": "m", "score": 1},
        {"prompt_id": 2, "prompt": "b", "model": "m", "score": 0},
    ]
    df = read_log(_write(tmp_path / "log.jsonl", rows))
    assert df["prompt_id"].tolist() == ["1", "2"]


def test_unknown_extension_names_file(tmp_path: Path) -> None:
    path = tmp_path / "log.xlsx"
    path.write_text("whatever")
    with pytest.raises(LogValidationError, match=r"log\.xlsx.*unsupported file extension"):
        read_log(path)


def test_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(LogFileNotFoundError, match=r"nope\.csv.*not found") as info:
        read_log(tmp_path / "nope.csv")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, LogValidationError)


def test_bad_json_line_names_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps(_long_rows()[0]) + "\n{not json\n")
    with pytest.raises(LogValidationError, match=r"log\.jsonl: line 2 is not valid JSON"):
        read_log(path)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text("\n")
    with pytest.raises(LogValidationError, match=r"log\.jsonl: the log has no rows"):
        read_log(path)


def test_csv_gz_extension_detected(tmp_path: Path) -> None:
    path = tmp_path / "log.CSV.GZ"
    with gzip.open(path, "wt") as fh:
        pd.DataFrame(_long_rows()).to_csv(fh, index=False)
    assert len(read_log(path)) == 4


# ---- validation errors --------------------------------------------------------------------------------------------
def test_missing_required_columns_lists_missing_and_present(tmp_path: Path) -> None:
    rows = [{"id": "p1", "text": "hi", "model": "m", "score": 1.0}]
    msg = _error(tmp_path / "logs.csv", rows)
    assert "logs.csv" in msg
    assert "missing required column(s): prompt_id, prompt" in msg
    assert "columns present: id, text, model, score" in msg


def test_missing_score_and_acceptable(tmp_path: Path) -> None:
    rows = [{"prompt_id": "p1", "prompt": "hi", "model": "m"}]
    assert "score (or acceptable)" in _error(tmp_path / "logs.csv", rows)


def test_score_out_of_range_message_format(tmp_path: Path) -> None:
    rows = [dict(r) for r in _long_rows() * 5]  # 20 rows
    for i, r in enumerate(rows):
        r["prompt_id"] = f"p{i}"
    rows[3]["score"] = 1.5
    rows[8]["score"] = None
    rows[16]["score"] = -0.2
    msg = _error(tmp_path / "logs.csv", rows)
    assert msg == "{}: column 'score': 3 rows outside [0,1] or NaN (rows 4, 9, 17: 1.5, nan, -0.2)".format(
        tmp_path / "logs.csv"
    )


def test_non_numeric_score(tmp_path: Path) -> None:
    rows = _long_rows()
    rows[1]["score"] = "good"
    msg = _error(tmp_path / "logs.jsonl", rows)
    assert "logs.jsonl: column 'score': 1 row outside [0,1] or NaN (row 2: 'good')" in msg


def test_sample_is_capped_at_five(tmp_path: Path) -> None:
    rows = [{"prompt_id": f"p{i}", "prompt": "x", "model": "m", "score": 2.0} for i in range(9)]
    msg = _error(tmp_path / "logs.csv", rows)
    assert "9 rows outside [0,1] or NaN (rows 1, 2, 3, 4, 5, ...:" in msg


def test_acceptable_only_log(tmp_path: Path) -> None:
    rows = [
        {"prompt_id": "a", "prompt": "x", "model": "m", "acceptable": v}
        for v in (True, False)
    ] + [
        {"prompt_id": "b", "prompt": "y", "model": "m", "acceptable": v}
        for v in ("true", "FALSE", "1", "0", "yes", "no")
    ]
    df = read_log(_write(tmp_path / "logs.csv", rows))
    assert df["score"].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert df["score"].dtype == np.float64


def test_acceptable_numeric_values(tmp_path: Path) -> None:
    rows = [{"prompt_id": "a", "prompt": "x", "model": m, "acceptable": v} for m, v in (("m1", 1), ("m2", 0))]
    assert read_log(_write(tmp_path / "logs.jsonl", rows))["score"].tolist() == [1.0, 0.0]


def test_unparseable_acceptable(tmp_path: Path) -> None:
    rows = [
        {"prompt_id": "a", "prompt": "x", "model": m, "acceptable": v} for m, v in (("m1", "true"), ("m2", "maybe"))
    ]
    msg = _error(tmp_path / "logs.csv", rows)
    assert "logs.csv: column 'acceptable': 1 row not a boolean" in msg and "(row 2: 'maybe')" in msg


def test_score_wins_over_acceptable(tmp_path: Path) -> None:
    rows = [{"prompt_id": "a", "prompt": "x", "model": "m", "score": 0.3, "acceptable": True}]
    df = read_log(_write(tmp_path / "logs.jsonl", rows))
    assert df["score"].tolist() == [0.3]
    assert "acceptable" in df.columns


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_empty_prompt(tmp_path: Path, bad: object) -> None:
    rows = _long_rows()
    rows[2]["prompt"] = bad
    rows[3]["prompt"] = bad
    msg = _error(tmp_path / "logs.jsonl", rows)
    assert "logs.jsonl: column 'prompt': 2 rows null, empty or whitespace-only (rows 3, 4:" in msg


@pytest.mark.parametrize("column", ["prompt_id", "model"])
def test_null_ids(tmp_path: Path, column: str) -> None:
    rows = _long_rows()
    rows[1][column] = None
    msg = _error(tmp_path / "logs.parquet", rows)
    assert f"logs.parquet: column '{column}': 1 row null or empty (row 2: " in msg


def test_same_prompt_id_different_text(tmp_path: Path) -> None:
    rows = _long_rows()
    rows[1]["prompt"] = "What is 3+3?"
    msg = _error(tmp_path / "logs.csv", rows)
    assert "logs.csv: column 'prompt': 1 prompt_id(s) with different prompt texts: 'p1'" in msg
    assert "row 1" in msg and "row 2" in msg


@pytest.mark.parametrize("column", ["cost_usd", "input_tokens", "output_tokens", "latency_ms"])
def test_negative_numbers(tmp_path: Path, column: str) -> None:
    rows = _long_rows()
    for r in rows:
        r.setdefault(column, 1.0)
    rows[2][column] = -3
    msg = _error(tmp_path / "logs.csv", rows)
    assert f"logs.csv: column '{column}': 1 row negative or not a number (row 3: -3" in msg


def test_non_numeric_cost(tmp_path: Path) -> None:
    rows = _long_rows()
    rows[0]["cost_usd"] = "cheap"
    assert "column 'cost_usd': 1 row negative or not a number (row 1: 'cheap')" in _error(tmp_path / "l.jsonl", rows)


def test_missing_costs_are_fine(tmp_path: Path) -> None:
    rows = _long_rows()
    rows[0]["cost_usd"] = None
    df = read_log(_write(tmp_path / "l.csv", rows))
    assert np.isnan(df["cost_usd"].iloc[0]) and df["cost_usd"].iloc[1] == 0.01


def test_roles(tmp_path: Path) -> None:
    rows = _long_rows()
    roles = ["Plan", None, " execute ", "verify"]
    for r, role in zip(rows, roles, strict=True):
        r["role"] = role
    df = read_log(_write(tmp_path / "l.jsonl", rows))
    assert df["role"].tolist() == ["plan", "single", "execute", "verify"]
    rows[3]["role"] = "critic"
    msg = _error(tmp_path / "l.jsonl", rows)
    assert "l.jsonl: column 'role': 1 row not one of single, plan, execute, verify (row 4: 'critic')" in msg


def test_split_normalisation(tmp_path: Path) -> None:
    rows = [
        {"prompt_id": f"p{i}", "prompt": f"q{i}", "model": "m", "score": 1.0, "split": s}
        for i, s in enumerate(["Train", "VAL", "valid", "validation", "dev", "calib", "test", " calibration "])
    ]
    df = read_log(_write(tmp_path / "l.csv", rows))
    assert df["split"].tolist() == ["train"] + ["calibration"] * 5 + ["test", "calibration"]


def test_unknown_split(tmp_path: Path) -> None:
    rows = _long_rows()
    for r, s in zip(rows, ["train", "train", "holdout", "holdout"], strict=True):
        r["split"] = s
    msg = _error(tmp_path / "l.csv", rows)
    assert "l.csv: column 'split': 2 rows not a known split" in msg and "(rows 3, 4: 'holdout', 'holdout')" in msg


def test_prompt_in_two_splits(tmp_path: Path) -> None:
    rows = _long_rows()
    for r, s in zip(rows, ["train", "test", "test", "test"], strict=True):
        r["split"] = s
    msg = _error(tmp_path / "l.csv", rows)
    assert "l.csv: column 'split': 1 prompt_id(s) with different splits: 'p1'" in msg


def test_repeated_attempts_are_allowed(tmp_path: Path) -> None:
    rows = _long_rows() + [dict(_long_rows()[0], score=0.0)]
    df = read_log(_write(tmp_path / "l.csv", rows))
    assert len(df) == 5
    assert df[(df.prompt_id == "p1") & (df.model == "m-small")]["score"].tolist() == [1.0, 0.0]


def test_timestamps(tmp_path: Path) -> None:
    rows = _long_rows()
    for r in rows:
        r["timestamp"] = "2025-03-01T12:00:00Z"
    rows[1]["timestamp"] = "2025-03-01 13:00:00+01:00"
    df = read_log(_write(tmp_path / "l.csv", rows))
    assert isinstance(df["timestamp"].dtype, pd.DatetimeTZDtype)
    assert df["timestamp"].iloc[0] == df["timestamp"].iloc[1]
    rows[2]["timestamp"] = "yesterday-ish"
    assert "column 'timestamp': 1 row not a timestamp" in _error(tmp_path / "l.csv", rows)


def test_extra_columns_pass_through(tmp_path: Path) -> None:
    rows = _long_rows()
    for i, r in enumerate(rows):
        r["judge"] = f"j{i}"
    df = read_log(_write(tmp_path / "l.parquet", rows))
    assert df["judge"].tolist() == ["j0", "j1", "j2", "j3"]


# ---- options ------------------------------------------------------------------------------------------------------
def test_parse_column_map() -> None:
    assert parse_column_map("sample_id=prompt_id, eval_name = task,") == {"sample_id": "prompt_id", "eval_name": "task"}
    assert parse_column_map("") == {}
    for bad in ("a", "a=b=c", "=b", "a=b,a=c"):
        with pytest.raises(ValueError):
            parse_column_map(bad)


def test_log_options_validation() -> None:
    assert LogOptions(columns="a=prompt_id").columns == {"a": "prompt_id"}  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        LogOptions(formt="wide")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        LogOptions(score_pattern="perf")
    with pytest.raises(ValidationError):
        LogOptions(cost_pattern="{model}_{model}")
    with pytest.raises(ValidationError):
        LogOptions(columns={"a": "prompt", "b": "prompt"})


def test_column_renames(tmp_path: Path) -> None:
    rows = [{"sid": r["prompt_id"], "text": r["prompt"], "llm": r["model"], "perf": r["score"], "eval": r["task"]}
            for r in _long_rows()]
    opts = LogOptions(columns={"sid": "prompt_id", "text": "prompt", "llm": "model", "perf": "score", "eval": "task"})
    df = read_log(_write(tmp_path / "l.csv", rows), opts)
    assert list(df.columns) == ["prompt_id", "prompt", "model", "score", "task"]
    assert df["task"].tolist() == ["math", "math", "summarize", "summarize"]
    rows[0]["perf"] = 7
    msg = _error(tmp_path / "l.csv", rows, opts)
    assert "l.csv: column 'perf' (renamed to 'score'): 1 row outside [0,1] or NaN (row 1: 7" in msg


def test_rename_of_absent_column(tmp_path: Path) -> None:
    msg = _error(tmp_path / "l.csv", _long_rows(), LogOptions(columns={"sample_id": "prompt_id"}))
    assert "l.csv: column(s) 'sample_id' named in the rename map are not in the file" in msg


def test_rename_clash(tmp_path: Path) -> None:
    rows = [dict(r, other_id="x") for r in _long_rows()]
    msg = _error(tmp_path / "l.csv", rows, LogOptions(columns={"other_id": "prompt_id"}))
    assert "duplicate column(s) 'prompt_id'" in msg


def test_where_filter(tmp_path: Path) -> None:
    rows = [dict(r, contaminated=i == 0) for i, r in enumerate(_long_rows())]
    rows[0]["score"] = 5.0  # bad row, but filtered out before validation
    path = _write(tmp_path / "l.parquet", rows)
    df = read_log(path, LogOptions(where="contaminated == False and task == 'math'"))
    assert df["model"].tolist() == ["m-large"]
    assert isinstance(df.index, pd.RangeIndex)


def test_where_errors(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.csv", _long_rows())
    with pytest.raises(LogValidationError, match=r"l\.csv: where='nosuch == 1' failed"):
        read_log(path, LogOptions(where="nosuch == 1"))
    with pytest.raises(LogValidationError, match=r"l\.csv: the log has no rows after where"):
        read_log(path, LogOptions(where="task == 'poetry'"))


def test_models_option_long(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.csv", _long_rows())
    assert set(read_log(path, LogOptions(models=["m-large"]))["model"]) == {"m-large"}
    with pytest.raises(LogValidationError, match=r"l\.csv: column 'model': model\(s\) 'gpt-9'.*models present"):
        read_log(path, LogOptions(models=["gpt-9"]))


# ---- wide format ------------------------------------------------------------------------------------------------
def _wide() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": ["s1", "s2", "s3"],
            "eval_name": ["arc", "mbpp", "arc"],
            "rsplit": ["train", "test", "val"],
            "prompt": ["Question one?", "Write code.", "Question three?"],
            "perf__org/m1": [1.0, 0.0, 1.0],
            "perf__m2": [0.0, 1.0, 1.0],
            "cost_usd__org/m1": [0.001, 0.002, 0.003],
            "cost_usd__m2": [0.01, 0.02, np.nan],
            "in_tok__m2": [10, 20, 30],
        }
    )


WIDE_OPTS = LogOptions(
    format="wide",
    columns={"sample_id": "prompt_id", "eval_name": "task", "rsplit": "split"},
    score_pattern="perf__{model}",
    cost_pattern="cost_usd__{model}",
    input_tokens_pattern="in_tok__{model}",
)


@pytest.mark.parametrize("name", ["wide.parquet", "wide.csv", "wide.jsonl"])
def test_wide_reader(tmp_path: Path, name: str) -> None:
    df = read_log(_write(tmp_path / name, _wide()), WIDE_OPTS)
    assert len(df) == 6
    assert df["prompt_id"].tolist() == ["s1", "s1", "s2", "s2", "s3", "s3"]
    assert df["model"].tolist() == ["org/m1", "m2"] * 3
    assert df["score"].tolist() == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert df["cost_usd"].tolist()[:5] == [0.001, 0.01, 0.002, 0.02, 0.003]
    assert np.isnan(df["cost_usd"].iloc[5])
    assert np.isnan(df["input_tokens"].iloc[0]) and df["input_tokens"].iloc[1] == 10.0
    assert df["split"].tolist() == ["train", "train", "test", "test", "calibration", "calibration"]
    assert df["task"].tolist() == ["arc", "arc", "mbpp", "mbpp", "arc", "arc"]
    assert not any(c.startswith(("perf__", "cost_usd__", "in_tok__")) for c in df.columns)


def test_wide_where_and_models(tmp_path: Path) -> None:
    path = _write(tmp_path / "wide.parquet", _wide())
    df = read_log(path, WIDE_OPTS.model_copy(update={"where": "task == 'arc' and model == 'm2'"}))
    assert df["prompt_id"].tolist() == ["s1", "s3"]
    df = read_log(path, WIDE_OPTS.model_copy(update={"models": ["m2"]}))
    assert df["model"].unique().tolist() == ["m2"] and len(df) == 3
    with pytest.raises(LogValidationError, match=r"model\(s\) 'm3' requested"):
        read_log(path, WIDE_OPTS.model_copy(update={"models": ["m3"]}))


def test_wide_derives_prompt_id_from_text(tmp_path: Path) -> None:
    wide = _wide().drop(columns=["sample_id"])
    opts = WIDE_OPTS.model_copy(update={"columns": {"eval_name": "task"}, "cost_pattern": None})
    df = read_log(_write(tmp_path / "wide.csv", wide), opts)
    expected = hashlib.sha1(b"Question one?").hexdigest()[:16]
    assert df["prompt_id"].iloc[0] == expected == df["prompt_id"].iloc[1]
    assert "cost_usd" not in df.columns
    assert df["prompt_id"].nunique() == 3


def test_wide_bad_score_names_source_column(tmp_path: Path) -> None:
    wide = _wide()
    wide.loc[1, "perf__m2"] = 3.0
    msg = _error(tmp_path / "wide.csv", wide, WIDE_OPTS)
    assert "wide.csv: column 'perf__m2' (score of model 'm2'): 1 row outside [0,1] or NaN (row 2: 3.0)" in msg


def test_wide_negative_cost_names_source_column(tmp_path: Path) -> None:
    wide = _wide()
    wide.loc[0, "cost_usd__org/m1"] = -1.0
    msg = _error(tmp_path / "wide.parquet", wide, WIDE_OPTS)
    assert "column 'cost_usd__org/m1' (cost_usd of model 'org/m1'): 1 row negative" in msg


def test_wide_without_matching_columns(tmp_path: Path) -> None:
    msg = _error(tmp_path / "wide.csv", _wide(), LogOptions(format="wide", score_pattern="score__{model}"))
    assert "wide.csv: format=wide but no column matches score_pattern 'score__{model}'" in msg
    assert "columns present: sample_id" in msg


def test_wide_with_cost_pattern_that_matches_nothing(tmp_path: Path) -> None:
    opts = WIDE_OPTS.model_copy(update={"cost_pattern": "price__{model}"})
    df = read_log(_write(tmp_path / "wide.csv", _wide()), opts)
    assert "cost_usd" not in df.columns


# ---- in-memory ------------------------------------------------------------------------------------------------------
def test_validate_log_does_not_mutate_input() -> None:
    src = pd.DataFrame(_long_rows(), index=[10, 11, 12, 13])
    src["split"] = ["Train", "Train", "VAL", "VAL"]
    before = src.copy(deep=True)
    out = validate_log(src)
    pd.testing.assert_frame_equal(src, before)
    assert isinstance(out.index, pd.RangeIndex)
    assert out["split"].tolist() == ["train", "train", "calibration", "calibration"]
    out.loc[0, "score"] = 0.0
    assert src["score"].iloc[0] == 1.0


def test_validate_log_reports_index_labels() -> None:
    src = pd.DataFrame(_long_rows(), index=[10, 11, 12, 13])
    src.loc[12, "score"] = 2.0
    with pytest.raises(LogValidationError, match=r"<dataframe>: column 'score': 1 row .* \(row 12: 2\.0\)"):
        validate_log(src)


# ---- non-finite and absurd numbers (issue 11) ---------------------------------------------------------------------
NUMERIC = ["score", "cost_usd", "input_tokens", "output_tokens", "latency_ms"]


def _with_numbers() -> list[dict[str, object]]:
    return [dict(r, latency_ms=100.0 + i) for i, r in enumerate(_long_rows())]


def _write_raw_infinity(path: Path, rows: list[dict[str, object]], column: str, literal: str, at: list[int]) -> None:
    """Write ``rows`` with the raw text ``literal`` (e.g. ``Infinity``, ``1e400``) as ``column`` in rows ``at``."""
    marker = 123456.789
    rows = [dict(r, **{column: marker}) if i in at else dict(r) for i, r in enumerate(rows)]
    name = path.name
    if name.endswith(".csv"):
        text = pd.DataFrame(rows).to_csv(index=False)
    elif name.endswith(".jsonl"):
        text = "\n".join(json.dumps(r) for r in rows) + "\n"
    else:  # .json array
        text = json.dumps(rows, indent=1)
    assert text.count(str(marker)) == len(at)
    path.write_text(text.replace(str(marker), literal))


@pytest.mark.parametrize("column", NUMERIC)
@pytest.mark.parametrize(
    ("name", "literal"),
    [("l.csv", "inf"), ("l.csv", "Infinity"), ("l.csv", "1e400"), ("l.jsonl", "Infinity"), ("l.jsonl", "1e400"),
     ("l.json", "Infinity"), ("l.json", "-Infinity"), ("l.csv", "-1e400"), ("l.jsonl", "1" + "0" * 400),
     ("l.csv", "1" + "0" * 400)],
)
def test_infinite_numbers_are_refused_naming_file_column_and_rows(
    tmp_path: Path, name: str, literal: str, column: str
) -> None:
    path = tmp_path / name
    _write_raw_infinity(path, _with_numbers(), column, literal, at=[1, 3])
    with pytest.raises(LogValidationError) as info:
        read_log(path)
    msg = str(info.value)
    assert f"{path}: column '{column}': 2 rows " in msg
    assert "(rows 2, 4: " in msg
    assert "inf" in msg.lower()


@pytest.mark.parametrize("column", NUMERIC)
def test_infinite_numbers_in_parquet_and_dataframes(tmp_path: Path, column: str) -> None:
    df = pd.DataFrame(_with_numbers())
    df[column] = df[column].astype(float)
    df.loc[2, column] = np.inf
    msg = _error(tmp_path / "l.parquet", df)
    assert f"l.parquet: column '{column}': 1 row " in msg and "(row 3: inf)" in msg
    with pytest.raises(LogValidationError, match=rf"<dataframe>: column '{column}': 1 row .*\(row 2: inf\)"):
        validate_log(df)


def test_infinite_cost_in_a_wide_log_names_the_source_column(tmp_path: Path) -> None:
    wide = _wide()
    wide.loc[1, "cost_usd__m2"] = np.inf
    wide["in_tok__m2"] = wide["in_tok__m2"].astype(float)
    wide.loc[2, "in_tok__m2"] = -np.inf
    msg = _error(tmp_path / "wide.parquet", wide, WIDE_OPTS)
    assert "wide.parquet: column 'cost_usd__m2' (cost_usd of model 'm2'): 1 row infinite" in msg
    assert "(row 2: inf)" in msg
    assert "column 'in_tok__m2' (input_tokens of model 'm2'): 1 row infinite" in msg and "(row 3: -inf)" in msg


@pytest.mark.parametrize(
    ("column", "value"),
    [("input_tokens", 2e9), ("output_tokens", 1_000_000_001), ("cost_usd", 5e6), ("latency_ms", 1e12)],
)
def test_absurd_numbers_are_refused(tmp_path: Path, column: str, value: float) -> None:
    from training.readers import ATTEMPT_LIMITS

    rows = _with_numbers()
    rows[0][column] = value
    msg = _error(tmp_path / "l.jsonl", rows)
    assert f"l.jsonl: column '{column}': 1 row above {ATTEMPT_LIMITS[column]:g}" in msg and "(row 1: " in msg
    rows[0][column] = ATTEMPT_LIMITS[column]  # the limit itself is allowed
    assert read_log(_write(tmp_path / "ok.jsonl", rows))[column].iloc[0] == ATTEMPT_LIMITS[column]


@pytest.mark.parametrize("column", ["cost_usd", "input_tokens", "output_tokens", "latency_ms"])
def test_booleans_are_not_numbers(tmp_path: Path, column: str) -> None:
    rows = _with_numbers()
    rows[1][column] = True
    msg = _error(tmp_path / "l.jsonl", rows)
    assert f"l.jsonl: column '{column}': 1 row true/false (must be a number) (row 2: True)" in msg
    assert "negative or not a number" not in msg  # a bool is neither: it gets its own message


@pytest.mark.parametrize("name", ["l.csv", "l.jsonl", "l.parquet"])
def test_nan_still_means_missing(tmp_path: Path, name: str) -> None:
    rows = _with_numbers()
    for col in ("cost_usd", "input_tokens", "output_tokens", "latency_ms"):
        rows[2][col] = np.nan
    df = read_log(_write(tmp_path / name, rows))
    for col in ("cost_usd", "input_tokens", "output_tokens", "latency_ms"):
        assert np.isnan(df[col].iloc[2]) and np.isfinite(df[col].drop(index=2)).all()
    raw = tmp_path / "raw.jsonl"  # JSON's NaN token, as Python's json module writes it
    raw.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert "NaN" in raw.read_text()
    assert np.isnan(read_log(raw)["cost_usd"].iloc[2])
    rows[2]["score"] = np.nan  # a missing score is still an error: it is the label
    assert "column 'score': 1 row outside [0,1] or NaN (row 3: nan)" in _error(tmp_path / name, rows)
