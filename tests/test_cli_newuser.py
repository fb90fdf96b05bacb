"""A new user's path through the CLI: train without promoting, follow the printed hints, route with the knobs the
HTTP API has, the MLflow model's signature and metadata, and the errors when no model is registered.

One CLI-trained model (module scope) serves every test: fitting is the slow part."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from router.core import Router
from training.cli import app
from training.demo import demo_catalog, write_demo_log

runner = CliRunner()
NAME = "newuser"
WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}  # rich wraps --help at 80 columns otherwise


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('newuser') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def trained(store: str, tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("newuser-data")
    log = write_demo_log(d / "support_logs.csv", n_prompts=600, seed=3)
    cat = demo_catalog().save(d / "catalog.yaml")
    res = runner.invoke(
        app,
        [
            "train", "--data", str(log), "--catalog", str(cat), "--register", NAME, "--no-promote",
            "--tracking-uri", store, "--config", '{"layout": "linear"}',
        ],
    )
    assert res.exit_code == 0, res.stderr
    return res


def test_train_says_it_is_fitting_and_its_hint_names_a_model_that_exists(trained, store: str) -> None:
    assert "fitting classifier (layout linear" in trained.stderr  # before: ~30 s of silence
    hint = next(line for line in trained.stdout.splitlines() if line.startswith("next: "))
    assert "@champion" not in hint.split("(")[0]  # --no-promote: there is no champion to route with
    route_cmd = shlex.split(hint.removeprefix("next: ").split("|")[0])
    assert route_cmd[:2] == ["tierwise", "route"]
    res = runner.invoke(app, route_cmd[1:])  # the printed command, as a user would paste it
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["router_version"] == f"{NAME}/1"


def test_route_without_the_model_says_how_to_train_one(trained, store: str, tmp_path: Path) -> None:
    res = runner.invoke(app, ["route", "hi", "--model-uri", f"models:/{NAME}@champion", "--tracking-uri", store])
    assert res.exit_code == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "has no alias 'champion'" in err[0] and "challenger" in err[0]
    assert "tierwise train --demo" in err[0]
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    res = runner.invoke(app, ["route", "hi", "--tracking-uri", empty])
    assert res.exit_code == 2 and "no model named 'tierwise' is registered" in res.stderr
    assert "tierwise train --demo" in res.stderr and "Traceback" not in res.stderr


def test_route_takes_task_quality_target_and_the_model_uri_from_the_environment(trained, store: str) -> None:
    r = Router.load(f"models:/{NAME}/1", tracking_uri=store)
    table = sorted((row["quality_target"], row["threshold"]) for row in r.meta.training["threshold_table"])
    target, expected = table[len(table) // 2]
    task = sorted(r.known_tasks)[0]
    env = {"TIERWISE_MODEL_URI": f"models:/{NAME}/1"}
    args = ["route", "Write a SQL query that counts orders per day.", "--tracking-uri", store]
    res = runner.invoke(app, [*args, "--quality-target", str(target), "--task", task], env=env)
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["router_version"] == f"{NAME}/1"  # from TIERWISE_MODEL_URI
    assert out["threshold"] == pytest.approx(expected)
    d = r.route("Write a SQL query that counts orders per day.", threshold=expected, task=task)
    assert out["tier"] == d.tier and out["p_acceptable"] == pytest.approx(d.p_acceptable)
    res = runner.invoke(app, [*args, "--quality-target", "0.9", "--threshold", "0.5"], env=env)
    assert res.exit_code == 2 and "either --threshold or --quality-target" in res.stderr
    res = runner.invoke(app, [*args, "--quality-target", str(table[-1][0] + 0.01)], env=env)
    assert res.exit_code == 2 and "--quality-target" in res.stderr
    assert ("highest target" if table[-1][0] + 0.01 <= 1 else "in [0, 1]") in res.stderr
    # the Python API applies the same rule (one implementation behind CLI, HTTP and Router)
    assert r.threshold_for(target) == pytest.approx(expected)
    assert r.route("Write a SQL query.", quality_target=target).threshold == pytest.approx(expected)
    with pytest.raises(ValueError, match="not both"):
        r.route("Write a SQL query.", threshold=0.5, quality_target=target)
    with pytest.raises(ValueError, match="quality_target must be a number"):
        r.threshold_for(True)


def test_registered_model_has_signature_input_example_and_descriptions(trained, store: str) -> None:
    mlflow.set_tracking_uri(store)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    sig = model.metadata.signature
    assert sig is not None and sig.inputs.input_names()[0] == "prompt"
    assert "p_acceptable.nano" in sig.outputs.input_names() and sig.params is not None
    assert "model_code_path" in model.metadata.flavors["python_function"]  # models-from-code, no cloudpickle
    example = model.metadata.load_input_example(model.metadata.get_model_info().artifact_path)
    assert isinstance(example, pd.DataFrame) and list(example.columns) == ["prompt"]
    out = model.predict(example)
    assert list(out["tier"]) and out["tier"].iloc[0] in demo_catalog().tier_names
    # the same names as the HTTP response, flattened: p_acceptable.<tier>, estimated_cost_usd.<field>
    assert list(out.columns) == sig.outputs.input_names()
    r = Router.load(f"models:/{NAME}/1", tracking_uri=store)
    d = r.route(example["prompt"].iloc[0])
    assert out["p_acceptable.nano"].iloc[0] == pytest.approx(d.p_acceptable["nano"])
    assert d.estimated_cost_usd is not None
    assert out["estimated_cost_usd.tier"].iloc[0] == pytest.approx(d.estimated_cost_usd.tier)
    assert out["estimated_cost_usd.input_tokens"].iloc[0] == d.estimated_cost_usd.input_tokens
    from mlflow.models import validate_serving_input

    served = validate_serving_input(f"models:/{NAME}/1", json.dumps({"inputs": {"prompt": ["hello there"]}}))
    assert served["tier"].iloc[0] in demo_catalog().tier_names  # the `mlflow models serve` "inputs" format
    client = MlflowClient(tracking_uri=store)
    version = client.get_model_version(NAME, "1")
    assert "support_logs.csv" in version.description and "layout linear" in version.description
    assert "gap closed" in version.description
    run = client.get_run(version.run_id)
    assert re.fullmatch(r"train-support_logs-linear-\d{8}T\d{6}Z", run.info.run_name), run.info.run_name


def test_version_and_flags_look_like_flags() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and re.fullmatch(r"tierwise \d+\.\d+\.\S+.*\n", res.stdout)
    res = runner.invoke(app, ["train", "--help"], env=WIDE)
    assert res.exit_code == 0
    for flag in ("--demo", "--no-promote", "--quiet", "--force", "--help"):
        line = next(x for x in res.stdout.splitlines() if f"{flag} " in x)
        assert "<bool>" not in line, line
    assert "<str>" in res.stdout  # options that take a value still show its type
    for cmd in ([], ["serve"], ["catalog"], ["catalog", "init"], ["decisions", "savings"]):
        res = runner.invoke(app, [*cmd, "--help"], env=WIDE)
        assert res.exit_code == 0 and "--help" in res.stdout and "<bool>" not in res.stdout, (cmd, res.stdout)


def test_serve_without_a_model_exits_3_with_a_hint(trained, store: str, tmp_path: Path) -> None:
    # README: "with neither [model nor last-good copy], it exits with code 3 and a one-line error: message"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TIERWISE_HOME": str(tmp_path / "home"), "TMPDIR": str(scratch)}
    env.pop("TIERWISE_MODEL_URI", None)
    cmd = [sys.executable, "-m", "training.cli", "serve", "--model-uri", f"models:/{NAME}@champion",
           "--tracking-uri", store, "--port", "0"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 3, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "has no alias 'champion'" in last and "tierwise train --demo" in last
    assert not list(scratch.glob("tierwise-*")), "serve left its temp folders behind"


def test_serve_stopped_by_sigterm_removes_its_temp_folders(trained, store: str, tmp_path: Path) -> None:
    """A scheduler or container stops the service with SIGTERM: the graceful shutdown runs and nothing is left in
    the temp folder (uvicorn re-raises the signal after its shutdown, which would end the process before cleanup)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from service_server import running_server

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"TIERWISE_HOME": str(tmp_path / "home"), "TMPDIR": str(scratch), "TIERWISE_TRACKING_URI": store,
           "TIERWISE_MODEL_URI": f"models:/{NAME}/1"}
    with running_server(env, tmp_path / "serve.log") as srv:
        assert list(scratch.glob("tierwise-serve-*")), "the server keeps its state folder while it runs"
    assert srv.proc.returncode is not None
    assert not list(scratch.glob("tierwise-*")), srv.log()[-2000:]
