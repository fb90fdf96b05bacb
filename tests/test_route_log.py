"""``tierwise route-log`` on the local engine: the output's columns, the same decisions as ``Router.route_batch``,
chunking that changes nothing, errors that name the file, the column and the row, no prompt text by default, and
an output that is never half-written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from router.core import Router
from router.log_format import text_prompt_id
from router.offline.reader import PromptLog, PromptLogError
from router.offline.route_log import _Decider, output_columns, route_log
from router.service.decision_log import prompt_hash
from training.cli import app
from training.demo import demo_catalog, demo_log
from training.pipeline import TrainConfig, fit_router, prepare_data, save_bundle

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle(work: Path) -> Path:
    """A small trained bundle: the default (int8 ONNX) encoder, the linear layout."""
    prepared = prepare_data(demo_log(n_prompts=300, seed=4), demo_catalog())
    fitted = fit_router(prepared, TrainConfig(layout="linear", linear_bags=1), progress=False)
    return save_bundle(fitted, work / "bundle", {}, {})


@pytest.fixture(scope="module")
def router(bundle: Path) -> Router:
    return Router.load(bundle)


@pytest.fixture(scope="module")
def log(work: Path) -> pd.DataFrame:
    """A long log (one row per attempt, four per prompt) with roles and tasks."""
    frame = demo_log(n_prompts=90, seed=7)
    frame.to_csv(work / "log.csv", index=False)
    return frame


@pytest.fixture(scope="module")
def routed(router: Router, log: pd.DataFrame, work: Path) -> pd.DataFrame:
    result = route_log(router, work / "log.csv", work / "one_chunk.parquet", chunk_size=10_000)
    assert result.rows == len(log) and result.prompts == log["prompt_id"].nunique()
    return pd.read_parquet(work / "one_chunk.parquet")


def test_one_row_per_prompt_id_with_the_decisions_of_route_batch(
    routed: pd.DataFrame, router: Router, log: pd.DataFrame
) -> None:
    assert list(routed.columns) == output_columns(router.tiers)
    assert "prompt" not in routed.columns
    first = log.drop_duplicates("prompt_id").set_index("prompt_id")
    assert sorted(routed["prompt_id"]) == sorted(first.index)
    prompts = first.loc[routed["prompt_id"], "prompt"].tolist()
    roles = first.loc[routed["prompt_id"], "role"].tolist()
    tasks = first.loc[routed["prompt_id"], "task"].tolist()
    decisions = router.route_batch(prompts, roles=roles, tasks=tasks)
    assert routed["tier"].tolist() == [d.tier for d in decisions]
    assert routed["model"].tolist() == [d.model for d in decisions]
    assert routed["reason"].tolist() == [d.reason for d in decisions]
    assert routed["role"].tolist() == roles and routed["task"].tolist() == tasks
    for t in router.tiers:
        np.testing.assert_allclose(routed[f"p_acceptable.{t}"], [d.p_acceptable[t] for d in decisions], atol=1e-6)
    costs = [d.estimated_cost_usd for d in decisions]
    np.testing.assert_allclose(routed["estimated_cost_usd.tier"], [c.tier for c in costs], rtol=1e-9)
    assert routed["estimated_cost_usd.input_tokens"].tolist() == [c.input_tokens for c in costs]
    assert routed["prompt_hash"].tolist() == [prompt_hash(p) for p in prompts]
    assert set(routed["router_version"]) == {router.ref.label}
    assert len(set(routed["tier"])) > 1  # the check above compares real decisions, not one constant tier
    # no prompt text anywhere in the output by default
    text = {str(v) for c in routed.columns for v in routed[c]}
    assert not text & set(prompts)


def test_chunking_formats_and_include_prompt_change_nothing(
    routed: pd.DataFrame, router: Router, log: pd.DataFrame, work: Path
) -> None:
    """Tiny chunks (reading 13 rows, routing 7 prompts at a time) give the one-chunk decisions; a wide Parquet log
    without ids gives the same decisions, its prompts named as training.readers names them, and --include-prompt
    adds the text."""
    route_log(router, work / "log.csv", work / "small.parquet", chunk_size=7, read_rows=13)
    small = pd.read_parquet(work / "small.parquet")
    pd.testing.assert_frame_equal(small, routed, check_exact=False, atol=1e-9)
    assert pq.ParquetFile(work / "small.parquet").metadata.num_row_groups == 1

    wide = log.drop_duplicates("prompt")[["prompt", "role", "task"]].reset_index(drop=True)
    wide.to_parquet(work / "wide.parquet")
    route_log(router, work / "wide.parquet", work / "wide_out.parquet", include_prompt=True, chunk_size=32)
    out = pd.read_parquet(work / "wide_out.parquet")
    assert list(out.columns) == output_columns(router.tiers, include_prompt=True)
    assert out["prompt_id"].tolist() == [text_prompt_id(p) for p in out["prompt"]]  # as tierwise train names them
    assert out["prompt"].tolist() == wide["prompt"].tolist()
    by_hash = routed.drop_duplicates("prompt_hash").set_index("prompt_hash")
    same = by_hash.loc[out["prompt_hash"]]
    assert out["tier"].tolist() == same["tier"].tolist()
    np.testing.assert_allclose(out[[f"p_acceptable.{t}" for t in router.tiers]], same.filter(like="p_acceptable"))
    # --where keeps the rows it selects (a pandas query on the renamed columns)
    math = route_log(router, PromptLog(work / "log.csv", where="task == 'math'"), work / "math.parquet")
    kept = pd.read_parquet(work / "math.parquet")
    assert math.rows == int((log["task"] == "math").sum()) and set(kept["task"]) == {"math"}
    assert kept["tier"].tolist() == routed.set_index("prompt_id").loc[kept["prompt_id"], "tier"].tolist()


def _write(path: Path, frame: pd.DataFrame) -> Path:
    if path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False)
    return path


def test_bad_input_names_file_column_and_row(router: Router, bundle: Path, tmp_path: Path) -> None:
    base = pd.DataFrame(
        {
            "prompt_id": ["a", "b", "c", "a"],
            "prompt": ["secret 1", "secret 2", "secret 3", "secret 1"],
            "role": ["plan", "", "x", None],
        }
    )
    out = tmp_path / "o.parquet"
    cases = [
        (base.assign(role="single", prompt=["secret 1", "  ", "secret 3", "secret 1"]), "column 'prompt'", "row 2"),
        (base, "column 'role'", "row 3"),
        (
            base.assign(role="single", prompt=["secret 1", "secret 2", "secret 3", "secret 4"]),
            "prompt_id 'a'",
            "rows 1 and 4",
        ),
        (base.rename(columns={"prompt": "text"}), "missing required column 'prompt'", "columns present: prompt_id"),
    ]
    for i, (frame, column, where) in enumerate(cases):
        path = _write(tmp_path / f"bad{i}.{'jsonl' if i % 2 else 'csv'}", frame)
        with pytest.raises(PromptLogError) as err:
            route_log(router, path, out)
        assert str(path) in str(err.value) and column in str(err.value) and where in str(err.value), str(err.value)
        assert "secret" not in str(err.value)  # prompt text is never quoted
        assert not out.exists()
    # a rename reaches the file's own column name, and the CLI prints every problem with exit code 2
    renamed = _write(tmp_path / "renamed.csv", base.rename(columns={"prompt": "text"}).assign(role="single"))
    ok = runner.invoke(
        app,
        [
            "route-log",
            "--data",
            str(renamed),
            "--out",
            str(out),
            "--model-uri",
            str(bundle),
            "--columns",
            "text=prompt",
            "-q",
        ],
    )
    assert ok.exit_code == 0, ok.stderr
    assert "routed 3 distinct prompts (4 rows)" in ok.stdout and len(pd.read_parquet(out)) == 3
    bad = _write(tmp_path / "twice.csv", base.assign(prompt=["secret 1", " ", "secret 3", "secret 1"]))
    res = runner.invoke(
        app, ["route-log", "--data", str(bad), "--out", str(tmp_path / "x.parquet"), "--model-uri", str(bundle)]
    )
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"error: {bad}: column") for line in lines)
    assert "'prompt'" in lines[0] and "row 2" in lines[0] and "'role'" in lines[1] and "row 3" in lines[1]
    for args, message in [
        (["--data", str(tmp_path / "nope.csv")], "nope.csv: log file not found"),
        (["--data", str(renamed), "--engine", "dask"], "--engine must be local or spark"),
        (["--data", str(renamed), "--threshold", "0.5", "--quality-target", "0.9"], "not both"),
    ]:
        res = runner.invoke(app, ["route-log", "--out", str(tmp_path / "y.parquet"), "--model-uri", str(bundle), *args])
        assert res.exit_code == 2 and message in res.stderr, res.stderr


def test_an_interrupted_run_leaves_the_previous_output_untouched(
    router: Router, work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "decisions.parquet"
    out.write_bytes(b"previous run")
    real = _Decider.__call__
    calls = []

    def interrupted(self: _Decider, frame: pd.DataFrame) -> object:
        calls.append(len(frame))
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the third chunk is routed
        return real(self, frame)

    monkeypatch.setattr(_Decider, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        route_log(router, PromptLog(work / "log.csv"), out, chunk_size=20)
    assert calls == [20, 20, 20]
    assert out.read_bytes() == b"previous run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decisions.parquet"]  # no temporary file left


def test_featurize_locally_then_training_finds_every_vector(log: pd.DataFrame, work: Path, tmp_path: Path) -> None:
    """``tierwise featurize`` (local engine) fills the cache training reads: the training's encoder then hits the
    cache for every prompt, and a second run embeds nothing new."""
    from training.embedding_cache import EmbeddingCache
    from training.spark_features import training_encoder

    args = ["featurize", "--data", str(work / "log.csv"), "--cache-dir", str(tmp_path), "-q"]
    res = runner.invoke(app, args)
    distinct = log["prompt"].nunique()
    assert res.exit_code == 0 and f"{distinct} distinct prompts ({len(log)} rows): {distinct} embedded" in res.stdout
    assert f"TIERWISE_CACHE_DIR={tmp_path} tierwise train" in res.stdout
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and f"0 embedded, {distinct} already cached" in again.stdout, again.stdout
    cache = EmbeddingCache(tmp_path / "embeddings")
    encoder = training_encoder()
    vectors = cache.embed(encoder, log["prompt"].tolist(), progress=False)
    assert (cache.last_hits, cache.last_misses) == (len(log), 0)
    np.testing.assert_allclose(vectors[:5], encoder.encode(log["prompt"].tolist()[:5]), atol=1e-6)
