"""The registry of the multi-machine setup (docs/deployment.md): a real ``mlflow server`` on PostgreSQL with its
artifacts on disk, proxied by the server (``--serve-artifacts``). ``tierwise train`` registers through it, ``tierwise
promote`` moves the champion alias, and the champion loads from it. Serving replicas that follow that alias are
tests/test_replicas.py. The module's database is its own and is dropped afterwards (tests/mlflow_server.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow_server import MlflowServer, database_exists, query, register_again, running_mlflow_server

from router.core import Router
from training import registry
from training.demo import demo_catalog, write_demo_catalog, write_demo_log

REPO = Path(__file__).resolve().parent.parent
NAME = "tierwise-remote"
TINY = '{"layout": "per_tier", "n_estimators": 20}'  # a small LightGBM fit: the registry is under test here


@pytest.fixture(scope="module")
def mlflow_server(work: Path) -> Iterator[MlflowServer]:
    with running_mlflow_server(work / "mlflow", "tw_test_mlflow_server") as srv:
        yield srv
    assert not database_exists(srv.backend_uri)  # the module's database is gone


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``tierwise ARGS`` as a user runs it (a fresh process, TIERWISE_HOME ``home``); fails the test with its output
    on a non-zero exit."""
    env = {**os.environ, "TIERWISE_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)  # the server is named by --tracking-uri alone
    proc = subprocess.run(
        [sys.executable, "-m", "training.cli", *args], capture_output=True, text=True, cwd=REPO, env=env
    )
    assert proc.returncode == 0, f"tierwise {args[0]} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc


def test_cli_train_register_promote_and_load_through_a_postgres_backed_server(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    url = mlflow_server.url
    log = write_demo_log(tmp_path / "log.csv", n_prompts=300, seed=3)
    catalog = write_demo_catalog(tmp_path / "catalog.yaml")
    home = tmp_path / "home"
    out = cli(
        home,
        "train",
        "--data",
        str(log),
        "--catalog",
        str(catalog),
        "--register",
        NAME,
        "--tracking-uri",
        url,
        "--config",
        TINY,
        "-q",
    ).stdout
    assert f"registered: models:/{NAME}/1 (alias challenger)" in out and "champion: moved to v1" in out, out
    assert f"tracking store: {url}" in out
    assert registry.alias_version(NAME, "champion", url) == "1"

    # the registry lives in the server's PostgreSQL database, the model files under its artifact destination
    db = mlflow_server.backend_uri
    assert query(db, "SELECT version FROM model_versions WHERE name = %s", (NAME,)) == [(1,)]
    assert query(db, "SELECT alias, version FROM registered_model_aliases WHERE name = %s ORDER BY alias", (NAME,)) == [
        ("challenger", 1),
        ("champion", 1),
    ]
    stored = list(mlflow_server.artifacts.rglob("tierwise.json"))
    assert len(stored) == 1 and (stored[0].parent / "encoder").is_dir(), stored
    assert not (home / "mlflow.db").exists() and not list(home.rglob("MLmodel"))  # nothing in the local default store

    # a second registration of the same artifacts (version 2), made champion by `tierwise promote`
    assert register_again(url, NAME, "1") == "2"
    assert (
        cli(home, "promote", "2", "--name", NAME, "--tracking-uri", url).stdout.strip()
        == f"{NAME}@champion -> version 2"
    )
    assert query(
        db, "SELECT version FROM registered_model_aliases WHERE name = %s AND alias = 'champion'", (NAME,)
    ) == [(2,)]

    router = Router.load(f"models:/{NAME}@champion", tracking_uri=url)  # downloaded through the artifact proxy
    assert (router.ref.name, router.ref.version) == (NAME, "2")
    d = router.route("Classify the sentiment of: 'the update broke everything'")
    assert d.tier in demo_catalog().tier_names
