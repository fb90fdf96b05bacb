"""Spark (one ``local[2]`` session for the whole file): featurising a training log on Spark fills the embedding cache
so that training embeds nothing and routes like a model trained locally, and ``route-log --engine spark`` runs the
registered pyfunc with the local engine's decisions."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from router.core import Router
from router.offline.reader import PromptLog, PromptLogError
from router.offline.route_log import output_columns, route_log
from router.offline.spark import route_log_spark, spark_session
from training import registry
from training.cli import app
from training.demo import demo_catalog, demo_log
from training.embedding_cache import EmbeddingCache
from training.pipeline import FittedRouter, PreparedData, TrainConfig, fit_router, prepare_data, save_bundle
from training.spark_features import training_encoder

N_PROMPTS = 2000
ROUTED = 500
CONFIG = TrainConfig(layout="linear", linear_bags=1)  # the features are under test, not the layout
NAME = "tierwise-spark"
FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_11c0253" / "bundle"  # a bundle, not an MLflow model
runner = CliRunner()


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    session = spark_session(
        "local[2]",
        conf={
            "spark.sql.shuffle.partitions": "2",
            "spark.sql.execution.arrow.maxRecordsPerBatch": "250",  # several batches per task
            "spark.ui.showConsoleProgress": "false",
        },
    )
    yield session
    session.stop()


@pytest.fixture(scope="module")
def log(work: Path) -> tuple[Path, PreparedData]:
    frame = demo_log(n_prompts=N_PROMPTS, seed=11)
    frame.to_parquet(work / "log.parquet")
    return work / "log.parquet", prepare_data(frame, demo_catalog())


@pytest.fixture(scope="module")
def encoder() -> object:
    return training_encoder(CONFIG)


@pytest.fixture(scope="module")
def trained(
    spark: object, log: tuple[Path, PreparedData], encoder: object, work: Path
) -> tuple[FittedRouter, FittedRouter]:
    """(trained from Spark-made features, trained locally): ``tierwise featurize --engine spark`` into a private
    cache, then a fit on that cache (which must embed nothing), and a fit on the usual cache."""
    path, prepared = log
    spark_cache = work / "spark-cache"
    res = runner.invoke(app, ["featurize", "--data", str(path), "--engine", "spark", "--cache-dir", str(spark_cache)])
    assert res.exit_code == 0, res.stderr
    distinct = prepared.labelled.prompts["prompt"].nunique()
    assert f"{distinct:,} distinct prompts ({len(pd.read_parquet(path)):,} rows): {distinct:,} embedded" in res.stdout
    # the encoder was loaded once per worker process, however many batches each embedded
    loads, procs, batches = map(
        int, re.search(r"loaded (\d+) time\(s\) in (\d+) .* for (\d+) batch", res.stdout).groups()
    )
    assert loads == procs and batches > procs
    cache = EmbeddingCache(spark_cache / "embeddings")
    assert cache.count(encoder) == distinct
    shards = sorted(p.name for p in cache.namespace_dir(encoder).iterdir())

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIERWISE_CACHE_DIR", str(spark_cache))
        from_spark = fit_router(prepared, CONFIG, progress=False, encoder=encoder)
    assert sorted(p.name for p in cache.namespace_dir(encoder).iterdir()) == shards  # train embedded nothing
    local = fit_router(prepared, CONFIG, progress=False, encoder=encoder)
    return from_spark, local


def _agreement(a: np.ndarray, b: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> tuple[float, float]:
    return float(np.mean(a == b)), float(np.abs(pa - pb).max())


def test_a_model_trained_on_spark_features_routes_like_a_local_one(
    trained: tuple[FittedRouter, FittedRouter], log: tuple[Path, PreparedData]
) -> None:
    from_spark, local = trained
    prompts = log[1].labelled.prompts["prompt"].tolist()
    vec_diff = float(np.abs(from_spark.embeddings - local.embeddings).max())
    proba_s = from_spark.classifier.predict_proba(from_spark.features)
    proba_l = local.classifier.predict_proba(local.features)
    tiers_s = from_spark.as_router().choose(proba_s, prompts=prompts)
    tiers_l = local.as_router().choose(proba_l, prompts=prompts)
    same, diff = _agreement(tiers_s, tiers_l, proba_s, proba_l)
    print(f"spark vs local features: max |vector diff| {vec_diff:.2e}; same tier {same:.2%}, max |P diff| {diff:.2e}")
    assert same >= 0.999 and diff <= 1e-3
    assert len(set(tiers_l)) > 1


def test_route_log_on_spark_matches_the_local_engine(
    spark: object, trained: tuple[FittedRouter, FittedRouter], log: tuple[Path, PreparedData], work: Path
) -> None:
    bundle = save_bundle(trained[0], work / "bundle", {}, {})
    store = f"sqlite:///{work / 'mlflow.db'}"
    registry.configure(store)
    mlflow.set_experiment(experiment_id=registry.ensure_experiment("spark-test", store))
    with mlflow.start_run():
        version = registry.log_router_model(bundle, registered_name=NAME, encoder_kind="onnx-int8")
    registry.promote(NAME, str(version), store)
    uri = f"models:/{NAME}@champion"

    # a CSV of the first ROUTED prompt ids' attempts (routing costs an encoder pass per prompt on each engine)
    frame = pd.read_parquet(log[0])
    subset = frame[frame["prompt_id"].isin(frame["prompt_id"].unique()[:ROUTED])]
    subset.to_csv(work / "subset.csv", index=False)
    result = route_log_spark(spark, work / "subset.csv", work / "spark.parquet", model_uri=uri, tracking_uri=store)  # type: ignore[arg-type]
    assert result.model_uri == f"models:/{NAME}/{version}" and result.router_version == f"{NAME}/{version}"
    router = Router.load(uri, tracking_uri=store)
    local = route_log(router, work / "subset.csv", work / "local.parquet")
    assert result.prompts == local.prompts == ROUTED and result.rows == local.rows == len(subset)

    s = pd.read_parquet(work / "spark.parquet").set_index("prompt_id").sort_index()
    lo = pd.read_parquet(work / "local.parquet").set_index("prompt_id").sort_index()
    assert list(s.reset_index().columns) == output_columns(router.tiers) == list(lo.reset_index().columns)
    assert s.index.equals(lo.index) and (s.dtypes == lo.dtypes).all()
    for col in ("prompt_hash", "role", "task", "router_version"):
        assert s[col].equals(lo[col]), col
    p = [f"p_acceptable.{t}" for t in router.tiers]
    same, diff = _agreement(s["tier"].to_numpy(), lo["tier"].to_numpy(), s[p].to_numpy(), lo[p].to_numpy())
    print(f"route-log spark vs local: {len(s)} prompts, same tier {same:.2%}, max |P diff| {diff:.2e}")
    assert same >= 0.999 and diff <= 1e-3

    # featurising with the registered model's own encoder finds the vectors of the training encoder: one cache key
    args = ["featurize", "--data", str(work / "subset.csv"), "--engine", "spark", "--model-uri", uri]
    res = runner.invoke(app, [*args, "--tracking-uri", store, "--cache-dir", str(work / "spark-cache")])
    texts = subset["prompt"].nunique()
    assert res.exit_code == 0 and f"0 embedded, {texts} already cached" in res.stdout, res.stdout + res.stderr


def test_spark_errors_name_the_file_and_column(spark: object, work: Path) -> None:
    bad = work / "bad.jsonl"
    pd.DataFrame({"prompt_id": ["a", "b", "c"], "prompt": ["x", " ", None]}).to_json(bad, orient="records", lines=True)
    from router.offline.spark import check_prompts, read_prompts

    with pytest.raises(PromptLogError, match=r"bad\.jsonl: column 'prompt': 2 row\(s\) null, empty") as err:
        check_prompts(read_prompts(spark, PromptLog(bad)), PromptLog(bad))  # type: ignore[arg-type]
    assert "'b'" in str(err.value) and "'c'" in str(err.value)  # the ids, never the text
    with pytest.raises(PromptLogError, match=r"missing required column 'prompt'; columns present: .*text"):
        read_prompts(spark, PromptLog(bad, {"prompt": "text"}))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not an MLflow model folder"):
        route_log_spark(spark, bad, work / "o", model_uri=str(FIXTURE_BUNDLE))  # type: ignore[arg-type]


def test_spark_names_prompts_without_ids_as_training_does(spark: object, work: Path) -> None:
    """A log without ids: Spark's prompt_id is text_prompt_id (SHA-1 of the UTF-8 text), the local engine's and
    training.readers' id, also for non-ASCII text."""
    from router.log_format import text_prompt_id
    from router.offline.spark import distinct_prompts, read_prompts

    lines = ['{"prompt": "Question one?"}', '{"prompt": "naïve café ✓ 数学"}', '{"prompt": "Question one?"}']
    lines.append('{"prompt": "a lone \\ud800 surrogate"}')  # no UTF-8 for it: '?' on both sides
    (work / "no_ids.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    texts = [json.loads(line)["prompt"] for line in lines]
    rows = distinct_prompts(read_prompts(spark, PromptLog(work / "no_ids.jsonl"))).collect()  # type: ignore[arg-type]
    assert sorted(r["prompt_id"] for r in rows) == sorted({text_prompt_id(t) for t in texts})
