"""The tierwise CLI: one-line errors with a non-zero exit, label export, catalog drafting, real-data options."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from router.catalog import DEFAULT_CATALOG_PATH, Catalog
from training.cli import app
from training.demo import demo_log, write_demo_log

runner = CliRunner()
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_bad_log_exits_non_zero_with_one_line_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    frame = pd.DataFrame({"prompt_id": ["a"], "prompt": ["hi"], "model": ["demo-nano"], "score": [1.7]})
    frame.to_csv(bad, index=False)
    res = runner.invoke(app, ["train", "--data", str(bad), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "-q"])
    assert res.exit_code == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert "bad.csv" in err[0] and "score" in err[0]


def test_train_needs_data_or_demo() -> None:
    res = runner.invoke(app, ["train"])
    assert res.exit_code == 2 and "exactly one of --data PATH or --demo" in res.stderr


def test_missing_file_and_bad_catalog(tmp_path: Path) -> None:
    res = runner.invoke(app, ["label", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o.csv")])
    assert res.exit_code == 2 and "nope.csv" in res.stderr
    cat = tmp_path / "cat.yaml"
    cat.write_text("tiers: [{name: a}]\n")
    res = runner.invoke(app, ["catalog", "check", str(cat)])
    assert res.exit_code == 2 and "tiers.0.model" in res.stderr


def test_label_exports_one_row_per_prompt(tmp_path: Path) -> None:
    log = tmp_path / "demo.jsonl"
    write_demo_log(log, n_prompts=300, seed=2)
    out = tmp_path / "labelled.parquet"
    res = runner.invoke(app, ["label", "--data", str(log), "--out", str(out)])
    assert res.exit_code == 0, res.stderr
    df = pd.read_parquet(out)
    assert len(df) == demo_log(n_prompts=300, seed=2)["prompt_id"].nunique()
    assert {"label_tier", "no_acceptable", "score__nano", "cost_usd__large"} <= set(df.columns)
    assert "label share" in res.stdout


def test_catalog_init_drafts_ordered_tiers(tmp_path: Path) -> None:
    log = tmp_path / "demo.csv"
    write_demo_log(log, n_prompts=200, seed=1)
    out = tmp_path / "drafted.yaml"
    res = runner.invoke(app, ["catalog", "init", "--data", str(log), "--out", str(out)])
    assert res.exit_code == 0, res.stderr
    cat = Catalog.from_yaml(out)
    assert cat.models == ["demo-nano", "demo-small", "demo-medium", "demo-large"]
    again = runner.invoke(app, ["catalog", "init", "--data", str(log), "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.stderr


@pytest.mark.skipif(not (SHARED / "routerbench-3task").is_dir(), reason="shared routing data not present")
def test_real_logs_are_accepted_with_options_only(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    res = runner.invoke(
        app,
        [
            "label", "--data", str(SHARED / "routerbench-3task" / "routerbench_3task_wide.parquet"),
            "--format", "wide", "--columns", "sample_id=prompt_id,eval_name=task,routerdc_split=split",
            "--score-pattern", "perf__{model}", "--cost-pattern", "cost_usd__{model}",
            "--catalog", str(repo / "benchmarks" / "catalogs" / "routerbench-3task.yaml"),
            "--out", str(tmp_path / "rb.parquet"),
        ],
    )
    assert res.exit_code == 0, res.stderr
    assert len(pd.read_parquet(tmp_path / "rb.parquet")) == 3150
    res = runner.invoke(
        app,
        [
            "label", "--data", str(SHARED / "routellm-evals" / "routellm_evals_long.parquet"),
            "--where", "contaminated == False and task == 'gsm8k'",
            "--catalog", str(repo / "benchmarks" / "catalogs" / "routellm.yaml"),
            "--out", str(tmp_path / "gsm.parquet"),
        ],
    )
    assert res.exit_code == 0, res.stderr
    assert 1000 < len(pd.read_parquet(tmp_path / "gsm.parquet")) <= 1319


def test_train_reads_every_data_log_and_names_the_bad_one(tmp_path: Path) -> None:
    base = write_demo_log(tmp_path / "base.csv", n_prompts=120, seed=1)
    feedback = tmp_path / "feedback.csv"
    rows = demo_log(n_prompts=20, seed=2).head(6)
    rows.to_csv(feedback, index=False)
    feedback.write_text(feedback.read_text().replace(f",{rows['cost_usd'].iloc[4]},", ",Infinity,", 1))
    store = ["--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "-q"]
    res = runner.invoke(app, ["train", "--data", str(base), "--data", str(feedback), *store])
    assert res.exit_code == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {feedback}: column 'cost_usd': 1 row infinite")
    assert "(row 5: inf)" in err[0]
    res = runner.invoke(app, ["train", "--data", str(base), "--data", str(tmp_path / "nope.csv"), *store])
    assert res.exit_code == 2 and "nope.csv" in res.stderr and "not found" in res.stderr
    res = runner.invoke(app, ["train", "--demo", "--data", str(base), *store])
    assert res.exit_code == 2 and "exactly one of --data PATH or --demo" in res.stderr


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ('{"quality_target": Infinity}', "Infinity is not a finite number"),
        ('{"quality_target": NaN}', "NaN is not a finite number"),
        ('{"quality_target": 1e400}', "1e400 is not a finite number"),
        ('{"lgbm_params": {"learning_rate": -Infinity}}', "-Infinity is not a finite number"),
        ('{"quality_target": true}', "quality_target: Input should be a valid number"),
        ('{"n_estimators": 0}', "n_estimators: Input should be greater than or equal to 1"),
        ('[1, 2]', "--config must be a JSON object"),
    ],
)
def test_train_config_refuses_non_finite_and_non_numbers(tmp_path: Path, config: str, needle: str) -> None:
    # Before: json.loads accepted Infinity/NaN/1e400 and pydantic read true as 1.
    res = runner.invoke(
        app, ["train", "--demo", "--config", config, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "-q"]
    )
    assert res.exit_code == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    assert not (tmp_path / "m.db").exists()  # refused before anything was trained or stored


def test_catalog_init_without_costs_says_the_order_is_a_guess_and_writes_notes(tmp_path: Path) -> None:
    log = tmp_path / "nocost.csv"
    demo_log(n_prompts=50, seed=1).drop(columns=["cost_usd"]).to_csv(log, index=False)
    out = tmp_path / "drafted.yaml"
    res = runner.invoke(app, ["catalog", "init", "--data", str(log), "--out", str(out)])
    assert res.exit_code == 0, res.stderr
    assert "cheapest first" not in res.stdout  # before: alphabetical order announced as cheapest first
    assert "no costs" in res.stderr and "alphabetical" in res.stderr
    text = out.read_text()
    assert "ALPHABETICAL" in text and "# no logged cost" in text  # the notes reach the file (before: notes={})
    assert Catalog.from_yaml(out).tier_names == sorted(Catalog.from_yaml(out).tier_names)
    res = runner.invoke(app, ["catalog", "check", str(out)])
    assert res.exit_code == 0 and res.stdout.startswith("ok:")
    assert "warning:" in res.stderr and "'demo-large' (model 'demo-large') has no input_usd_per_1m" in res.stderr


def test_catalog_check_fails_on_an_inverted_price_order(tmp_path: Path) -> None:
    cat = tmp_path / "inverted.yaml"
    cat.write_text(
        "tiers:\n"
        "  - {name: large, model: m-large, input_usd_per_1m: 10, output_usd_per_1m: 30}\n"
        "  - {name: small, model: m-small, input_usd_per_1m: 0.5, output_usd_per_1m: 1.5}\n"
    )
    res = runner.invoke(app, ["catalog", "check", str(cat)])
    assert res.exit_code == 2  # before: "ok: 2 tiers"
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {cat}: tier 'small'") and "cheaper than tier 'large'" in err[0]


def test_forgotten_catalog_names_the_default_it_used(tmp_path: Path) -> None:
    log = tmp_path / "mine.csv"
    demo_log(n_prompts=40, seed=1).assign(model=lambda d: "acme/" + d["model"]).to_csv(log, index=False)
    res = runner.invoke(app, ["label", "--data", str(log), "--out", str(tmp_path / "o.csv")])
    assert res.exit_code == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "never appear in the log" in err[0]
    assert str(DEFAULT_CATALOG_PATH) in err[0] and "--catalog" in err[0] and "tierwise catalog init" in err[0]
