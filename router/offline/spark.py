"""``tierwise route-log --engine spark``: route a log on Spark with the registered MLflow pyfunc.

The log is read by Spark (:func:`read_prompts`: CSV, JSON Lines, Parquet files or folders), checked
(:func:`check_prompts`), reduced to one row per distinct prompt id, and routed by the *registered* model through
``mlflow.pyfunc.spark_udf`` (the same :class:`router.pyfunc.TierwisePyfunc` the local engine calls, so the decisions
agree). The output has the columns of :func:`router.offline.route_log.output_columns`, written as a Parquet folder.

Python recipe (what :func:`route_log_spark` does)::

    from router.offline.spark import spark_session, route_log_spark
    spark = spark_session("local[2]")                       # or your cluster's master
    result = route_log_spark(spark, "logs.parquet", "decisions.parquet", model_uri="models:/tierwise@champion")

A registry alias is resolved to its version once, on the driver, so every executor routes with the same version
even if the alias moves during the job. Executors run the model in the driver's Python environment
(``env_manager="local"``; :func:`spark_session` points ``PYSPARK_PYTHON`` at this interpreter for a local master).

On a local path the folder is written beside ``out`` and renamed into place (:func:`router.atomic_io.build_dir_atomic`):
a failed job leaves no half-written output. Other file systems (``hdfs://``, ``s3a://``) rely on Spark's commit
protocol (``_SUCCESS`` marks a complete folder).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from router.log_format import MAX_SAMPLE, PROMPT_ID_HEX, check_renames, is_json_array, list_columns
from router.offline.reader import PROMPT_COLUMNS, PromptLog, PromptLogError, missing_prompt
from router.offline.route_log import output_columns, output_schema, summary_lines

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

DEFAULT_MASTER = "local[2]"
# pyspark 4.3 warns that pandas >= 3 is not fully supported; what tierwise uses of it (Arrow transfers of string,
# double and long columns, mapInPandas, mlflow's spark_udf) is tested on pandas 3 (tests/test_spark.py).
_PANDAS_WARNING = "PySpark does not yet fully support pandas >= 3"


def spark_session(
    master: str = DEFAULT_MASTER, *, app_name: str = "tierwise", conf: Mapping[str, str] | None = None
) -> SparkSession:
    """A SparkSession (the running one if there is one) with Arrow transfers on and the UI off.

    For a local master the Python workers run this interpreter (``PYSPARK_PYTHON`` = ``sys.executable``), so they see
    the same packages and tierwise as the driver. ``conf``: extra Spark settings (``spark.driver.memory`` ...).
    """
    if master.startswith("local"):
        os.environ["PYSPARK_PYTHON"] = sys.executable
    else:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    warnings.filterwarnings("ignore", message=_PANDAS_WARNING, category=FutureWarning)
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
    )
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def parse_conf(items: list[str] | None) -> dict[str, str]:
    """``["spark.driver.memory=4g", ...]`` as a dict (the CLI's repeated ``--spark-conf``)."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"bad --spark-conf {item!r}: expected KEY=VALUE, e.g. spark.driver.memory=4g")
        out[key.strip()] = value.strip()
    return out


# --------------------------------------------------------------------------------------------------------------
# reading and checking
# --------------------------------------------------------------------------------------------------------------
def read_prompts(spark: SparkSession, log: PromptLog) -> DataFrame:
    """The log as a Spark DataFrame with ``prompt`` and (when the log has them) ``prompt_id``, ``role`` and
    ``task`` as strings, renamed and filtered (``where`` is a Spark SQL condition here, e.g. ``task = 'math'``)."""
    from pyspark.sql import functions as F

    kind = log.kind()
    path = log.location
    reader = spark.read
    if kind == "csv":  # as pandas reads CSV: "" escapes a quote, quoted fields may span lines, every column text
        df = (
            reader.option("header", True)
            .option("multiLine", True)
            .option("escape", '"')
            .option("inferSchema", False)
            .option("mode", "FAILFAST")
            .csv(path)
        )
    elif kind in ("jsonl", "json"):
        array = kind == "json" and not log.is_uri and is_json_array(log.file)
        df = reader.option("mode", "FAILFAST").option("multiLine", array).json(path)
    else:
        df = reader.parquet(path)
    check_renames(log.columns, df.columns, source=path, error=PromptLogError, present=list_columns(df.columns))
    for src, dst in log.columns.items():
        df = df.withColumnRenamed(src, dst)
    if log.where is not None:
        try:
            df = df.where(log.where)
        except Exception as exc:  # AnalysisException, ParseException
            raise PromptLogError(f"{path}: where={log.where!r} failed: {type(exc).__name__}: {exc}") from exc
    if "prompt" not in df.columns:
        raise missing_prompt(log, list_columns(df.columns))
    cols = [F.col(c).cast("string").alias(c) for c in PROMPT_COLUMNS if c in df.columns]
    return df.select(*cols)


def normalise(df: DataFrame) -> DataFrame:
    """``prompt_id``, ``prompt``, ``role`` (lower case; missing: ``single``), ``task`` (null when absent)."""
    from pyspark.sql import functions as F

    role = F.lower(F.trim(F.col("role"))) if "role" in df.columns else F.lit(None).cast("string")
    role = F.when(role.isNull() | (role == ""), F.lit("single")).otherwise(role)
    task = F.col("task") if "task" in df.columns else F.lit(None).cast("string")
    pid = F.col("prompt_id") if "prompt_id" in df.columns else F.lit(None).cast("string")
    return df.select(pid.alias("prompt_id"), F.col("prompt"), role.alias("role"), task.alias("task"))


def check_prompts(df: DataFrame, log: PromptLog) -> int:
    """Raise :class:`PromptLogError` for blank prompts or ids, unknown roles and ids with two texts (naming the
    column and up to 5 prompt ids; Spark has no row numbers); return the number of rows."""
    from pyspark.sql import functions as F

    from router.decision import ROLES

    has_id = "prompt_id" in df.columns
    n = normalise(df)
    blank_prompt = F.col("prompt").isNull() | (F.trim(F.col("prompt")) == "")
    blank_id = F.col("prompt_id").isNull() | (F.trim(F.col("prompt_id")) == "") if has_id else F.lit(False)
    bad_role = ~F.col("role").isin(*ROLES)
    counts = n.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(blank_prompt.cast("long")).alias("blank_prompt"),
        F.sum(blank_id.cast("long")).alias("blank_id"),
        F.sum(bad_role.cast("long")).alias("bad_role"),
    ).first()
    assert counts is not None
    if not counts["rows"]:
        detail = f" after where={log.where!r}" if log.where else ""
        raise PromptLogError(f"{log.source}: the log has no rows{detail}")
    problems: list[str] = []
    checks = (
        ("blank_prompt", "prompt", blank_prompt, "null, empty or whitespace-only", "prompt_id"),
        ("blank_id", "prompt_id", blank_id, "null or empty", None),
        ("bad_role", "role", bad_role, f"not one of {', '.join(ROLES)}", "role"),
    )
    for key, column, cond, what, show in checks:
        bad = int(counts[key] or 0)
        if bad:
            shown = ""
            if show is not None and (show != "prompt_id" or has_id):
                sample = [r[0] for r in n.where(cond).select(show).limit(MAX_SAMPLE).collect()]
                shown = f" ({'ids' if show == 'prompt_id' else 'values'}: {', '.join(repr(s) for s in sample)})"
            problems.append(f"{log.source}: {log.label(column)}: {bad} row(s) {what}{shown}")
    if problems:
        raise PromptLogError("\n".join(problems))
    if has_id:
        clash = n.groupBy("prompt_id").agg(F.countDistinct("prompt").alias("texts")).where(F.col("texts") > 1)
        ids = [r[0] for r in clash.select("prompt_id").limit(MAX_SAMPLE).collect()]
        if ids:
            raise PromptLogError(
                f"{log.source}: {log.label('prompt')}: prompt_id(s) {', '.join(map(repr, ids))} have different "
                "prompt texts; one id must always carry the same prompt"
            )
    return int(counts["rows"])


def distinct_prompts(df: DataFrame) -> DataFrame:
    """One row per prompt id (per text when the log has no ids): ``prompt_id`` (without one:
    :func:`router.log_format.text_prompt_id`, the SHA-1 of the text, as the local engine names it), ``prompt_hash``
    (SHA-256 hex, as the decision log stores it), ``prompt``, ``role`` and ``task`` (a prompt's first non-null ones)."""
    from pyspark.sql import functions as F

    n = normalise(df).withColumn("prompt_hash", F.sha2(F.col("prompt"), 256))
    text_id = F.substring(F.sha1(F.col("prompt")), 1, PROMPT_ID_HEX)
    n = n.withColumn("prompt_id", F.coalesce(F.col("prompt_id"), text_id))
    return n.groupBy("prompt_id").agg(
        F.first("prompt_hash").alias("prompt_hash"),
        F.first("prompt").alias("prompt"),
        F.first("role", ignorenulls=True).alias("role"),
        F.first("task", ignorenulls=True).alias("task"),
    )


# --------------------------------------------------------------------------------------------------------------
# routing
# --------------------------------------------------------------------------------------------------------------
@dataclass
class SparkRouteResult:
    """What :func:`route_log_spark` wrote."""

    out: str
    rows: int
    prompts: int
    model_uri: str
    router_version: str
    tiers: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        return summary_lines(self, f"on Spark with {self.router_version} ({self.model_uri})")


def pyfunc_uri(model_uri: str, tracking_uri: str | None = None) -> tuple[str, str, list[str], Any]:
    """``(uri, router_version, tiers, router)`` for a model Spark can run as a pyfunc: a registry alias becomes its
    version (so every executor routes with one version), a run URI or an MLflow model folder stays as it is. A bare
    bundle folder is refused: Spark runs the registered pyfunc (route it with the local engine)."""
    from router.core import Router, local_model_dir, parse_registry_uri

    local = local_model_dir(model_uri)
    if local is not None and not (local / "MLmodel").is_file():
        raise ValueError(
            f"{model_uri} is not an MLflow model folder (no MLmodel file): the Spark engine runs the registered "
            "pyfunc, so give models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... or an MLflow model folder "
            "(a bundle folder routes with --engine local)"
        )
    router = Router.load(model_uri, tracking_uri=tracking_uri)
    name, _, _ = parse_registry_uri(model_uri)
    uri = f"models:/{name}/{router.ref.version}" if name and router.ref.version else model_uri
    return uri, router.ref.label, router.tiers, router


def route_log_spark(
    spark: SparkSession,
    data: str | os.PathLike[str] | PromptLog,
    out: str | os.PathLike[str],
    *,
    model_uri: str,
    tracking_uri: str | None = None,
    threshold: float | None = None,
    quality_target: float | None = None,
    include_prompt: bool = False,
    partitions: int | None = None,
) -> SparkRouteResult:
    """Route every distinct prompt id of ``data`` on Spark with the registered pyfunc and write ``out`` (a Parquet
    folder with :func:`router.offline.route_log.output_columns`). ``partitions``: routing tasks (default: Spark's
    default parallelism, e.g. 2 on ``local[2]``)."""
    import mlflow
    import mlflow.pyfunc
    from pyspark.sql import functions as F

    from router.settings import resolve_tracking_uri

    started = time.monotonic()
    log = data if isinstance(data, PromptLog) else PromptLog(data)
    uri, version, tiers, router = pyfunc_uri(model_uri, tracking_uri)
    threshold = router.knob(threshold, quality_target)
    del router  # only its metadata was needed; the executors load the pyfunc

    df = read_prompts(spark, log)
    rows = check_prompts(df, log)
    prompts = distinct_prompts(df).repartition(partitions or spark.sparkContext.defaultParallelism)

    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    # env_manager="local" on purpose (the executors run this environment): mlflow's advice to rebuild it is noise
    quiet = [logging.getLogger(n) for n in ("mlflow.pyfunc", "mlflow.models.flavor_backend_registry")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        udf = mlflow.pyfunc.spark_udf(
            spark, uri, env_manager="local", params=None if threshold is None else {"threshold": threshold}
        )
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    decided = prompts.withColumn("_d", udf(F.struct("prompt", "role", "task")))
    schema = output_schema(tiers, include_prompt)
    cols = []
    for name in output_columns(tiers, include_prompt):
        if name in ("prompt_id", "prompt_hash", "prompt", "role", "task"):
            col = F.col(name)
        elif name == "router_version":
            col = F.lit(version)
        else:
            col = F.col("_d").getField(name)
        cols.append(col.cast(_spark_type(schema.field(name).type)).alias(name))
    result = decided.select(*cols)
    target = str(out)
    if _is_local(target):
        from router.atomic_io import build_dir_atomic

        local = Path(target.removeprefix("file://"))
        if local.is_file():
            raise ValueError(f"{local} is a file; the Spark engine writes a folder: remove it or choose another --out")
        build_dir_atomic(local, lambda tmp: result.write.mode("overwrite").parquet(str(tmp)))
    else:
        result.write.mode("errorifexists").parquet(target)
    written = spark.read.parquet(target)
    counts = {r["tier"]: int(r["count"]) for r in written.groupBy("tier").count().collect()}
    tier_counts = Counter({t: counts[t] for t in tiers if counts.get(t)})
    return SparkRouteResult(
        out=target,
        rows=rows,
        prompts=sum(counts.values()),
        model_uri=uri,
        router_version=version,
        tiers=tier_counts,
        seconds=time.monotonic() - started,
    )


def _is_local(target: str) -> bool:
    return "://" not in target or target.startswith("file://")


def _spark_type(arrow_type: Any) -> str:
    import pyarrow as pa

    if pa.types.is_float64(arrow_type):
        return "double"
    if pa.types.is_int64(arrow_type):
        return "long"
    return "string"
