"""The ``tierwise`` command line (typer).

Every command exits non-zero with a one-line ``error: ...`` on bad input, so a scheduler sees why a job failed:
exit code 2 for bad input or a failed command, 3 when ``tierwise serve`` cannot start (no model and no last-good copy).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core


class _FlagHelp:
    """typer labels its own ``--help`` option ``<bool>`` too: show it as the value-less flag it is."""

    def get_help_option(self, ctx: Any) -> Any:
        opt = super().get_help_option(ctx)  # type: ignore[misc]
        if opt is not None:
            opt.metavar = FLAG
        return opt


class _Command(_FlagHelp, typer.core.TyperCommand):
    pass


class _Group(_FlagHelp, typer.core.TyperGroup):
    pass


def _typer(**kwargs: Any) -> typer.Typer:
    """A typer app whose groups and commands show ``--help`` without a type."""
    return typer.Typer(cls=_Group, **kwargs)


app = _typer(
    name="tierwise",
    help="tierwise: learn from your own LLM logs which model tier is the cheapest one that answers acceptably.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
catalog_app = _typer(help="Draft and check tier catalogs.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")

# typer shows every option's type (``<bool>``) in --help; a flag takes no value, so it shows none.
FLAG = ""
TRAIN_HINT = "tierwise train --demo (the quick start) or tierwise train --data LOG --catalog CATALOG"


def _package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("tierwise")
    except metadata.PackageNotFoundError:  # a source checkout that was never installed
        from router.bundle import BundleMeta

        return str(BundleMeta.model_fields["tierwise_version"].default) + " (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"tierwise {_package_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool | None,
        typer.Option("--version", metavar=FLAG, callback=_print_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    """tierwise: learn from your own LLM logs which model tier is the cheapest one that answers acceptably."""

DataOpt = Annotated[Path | None, typer.Option("--data", help="Log file: .csv, .jsonl, .json or .parquet.")]
FormatOpt = Annotated[str, typer.Option("--format", help="long (one row per attempt) or wide (one row per prompt).")]
ColumnsOpt = Annotated[
    str | None, typer.Option("--columns", help="Renames SOURCE=CANONICAL, comma separated, e.g. sample_id=prompt_id.")
]
ScorePatOpt = Annotated[
    str | None, typer.Option("--score-pattern", help="Wide format: score column, e.g. perf__{model}.")
]
CostPatOpt = Annotated[
    str | None,
    typer.Option("--cost-pattern", help="Wide format: cost column, e.g. cost_usd__{model}; 'none' if absent."),
]
WhereOpt = Annotated[
    str | None, typer.Option("--where", help="pandas query applied to the log, e.g. \"task == 'mmlu'\".")
]
CatalogOpt = Annotated[Path | None, typer.Option("--catalog", help="Catalog YAML (default: models/catalog.yaml).")]
TrackingOpt = Annotated[
    str | None,
    typer.Option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or local SQLite)."),
]


def _fail(exc: BaseException) -> None:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):  # name every bad field, not pydantic's "1 validation error" header
        msg = f"invalid {exc.title}: " + "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()
        )
    else:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def _json_object(text: str, option: str) -> dict[str, Any]:
    """A JSON object from an option; NaN and Infinity (which Python's json accepts) are refused."""

    def refuse(token: str) -> Any:
        raise ValueError(f"{option}: {token} is not a finite number")

    def finite(token: str) -> float:
        value = float(token)
        return value if math.isfinite(value) else refuse(token)  # 1e400 parses as inf

    value = json.loads(text, parse_constant=refuse, parse_float=finite)
    if not isinstance(value, dict):
        raise ValueError(f"{option} must be a JSON object, got {type(value).__name__}")
    return value


def _setup_logging(verbose: bool) -> None:
    # Third-party libraries log through the root logger (onnxruntime's quantiser prints per-tensor INFO lines):
    # keep the root at WARNING and only tierwise's own loggers at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for ours in ("tierwise", "router", "training"):
        logging.getLogger(ours).setLevel(logging.INFO if verbose else logging.WARNING)
    for noisy in ("mlflow", "alembic", "urllib3", "httpx", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _env_defaults() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _log_options(
    fmt: str, columns: str | None, score_pattern: str | None, cost_pattern: str | None, where: str | None
) -> Any:
    from training.readers import LogOptions, parse_column_map

    if fmt not in ("long", "wide"):
        raise ValueError(f"--format must be long or wide, got {fmt!r}")
    kw: dict[str, Any] = {"format": fmt, "where": where}
    if columns:
        kw["columns"] = parse_column_map(columns)
    if score_pattern:
        kw["score_pattern"] = score_pattern
    if cost_pattern:
        kw["cost_pattern"] = None if cost_pattern.lower() == "none" else cost_pattern
    return LogOptions(**kw)


@app.command(cls=_Command)
def train(
    data: Annotated[
        list[Path] | None,
        typer.Option(
            "--data",
            help="Log file: .csv, .jsonl, .json or .parquet. Repeat to train on several logs (e.g. a base log and a "
            "'decisions export'); --format, --columns, --where and the patterns apply to every one.",
        ),
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", metavar=FLAG, help="Train on the embedded SYNTHETIC demo log.")
    ] = False,
    fmt: FormatOpt = "long",
    columns: ColumnsOpt = None,
    score_pattern: ScorePatOpt = None,
    cost_pattern: CostPatOpt = None,
    where: WhereOpt = None,
    catalog: CatalogOpt = None,
    register: Annotated[str, typer.Option("--register", help="Registered model name.")] = "tierwise",
    no_promote: Annotated[
        bool, typer.Option("--no-promote", metavar=FLAG, help="Never move the champion alias.")
    ] = False,
    encoder: Annotated[str | None, typer.Option("--encoder", help="Encoder, e.g. minilm-onnx-int8, minilm.")] = None,
    quality_target: Annotated[
        float | None, typer.Option("--quality-target", help="Default threshold target (share of best tier quality).")
    ] = None,
    tracking_uri: TrackingOpt = None,
    config_json: Annotated[
        str | None, typer.Option("--config", help="TrainConfig overrides as JSON, e.g. '{\"n_estimators\": 200}'.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar=FLAG, help="No progress bars or info logs.")] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", metavar=FLAG, help="Make the new version the champion even when the promotion gate says no."
        ),
    ] = False,
    min_compare: Annotated[
        int | None,
        typer.Option(
            "--min-compare-prompts", min=1, help="Fewest held-out prompts the gate compares models on (default 200)."
        ),
    ] = None,
    margin: Annotated[
        float | None,
        typer.Option(
            "--promotion-margin", min=0.0, max=1.0,
            help="How far below 0 the AIQ difference's 95% lower bound may reach and still promote (default 0.005).",
        ),
    ] = None,
) -> None:
    """Train a router on a log, register it in MLflow and (if the promotion gate finds it at least as good as the
    champion on the same held-out prompts) make it the champion."""
    _env_defaults()
    _setup_logging(not quiet)
    try:
        from training.pipeline import TrainConfig
        from training.pipeline import train as run_train
        from training.promotion import GateConfig

        if demo == bool(data):
            raise ValueError("give exactly one of --data PATH or --demo")
        overrides: dict[str, Any] = _json_object(config_json, "--config") if config_json else {}
        if encoder:
            overrides["encoder"] = encoder
        if quality_target is not None:
            overrides["quality_target"] = quality_target
        config = TrainConfig(**overrides)
        gate = GateConfig(
            force=force,
            **({} if min_compare is None else {"min_prompts": min_compare}),
            **({} if margin is None else {"margin": margin}),
        )
        if demo:
            from training.demo import demo_catalog, demo_log

            source: Any = demo_log()
            cat: Any = catalog or demo_catalog()
            typer.echo("training on the embedded SYNTHETIC demo log (see training/demo.py)", err=True)
        else:
            assert data is not None
            # one log stays a path (the run records it as given); several are merged by training.pipeline.read_sources
            source, cat = (data[0] if len(data) == 1 else [str(d) for d in data]), catalog
        if not quiet:  # reading, embedding and fitting print nothing for a while
            typer.echo(
                f"fitting classifier (layout {config.layout}, encoder {config.encoder}); this can take a minute...",
                err=True,
            )
        result = run_train(
            source,
            catalog=cat,
            log_options=None if demo else _log_options(fmt, columns, score_pattern, cost_pattern, where),
            config=config,
            register=register,
            promote=not no_promote,
            tracking_uri=tracking_uri,
            progress=not quiet,
            gate=gate,
        )
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - one-line reason for schedulers; traceback with -v via logging
        logging.getLogger("tierwise").debug("training failed", exc_info=True)
        _fail(exc if demo or catalog is not None else _with_catalog_hint(exc, data or []))
        return
    m = result.metrics
    typer.echo(f"run: {result.run_id}")
    typer.echo(f"registered: {result.model_uri} (alias challenger)")
    moved = "moved to v" + str(result.model_version) if result.promoted else "unchanged"
    typer.echo(f"champion: {moved} ({result.promotion_reason})")
    if result.gate is not None and math.isfinite(result.gate.delta):  # the gate compared two models
        typer.echo(f"promotion gate: {result.gate.describe()}")
    if result.selection is not None:
        typer.echo(f"model selection: {result.selection.chosen} ({result.selection.reason})")
    typer.echo(f"tracking store: {result.tracking_uri}")
    keys = ("aiq", "aiq_zero", "aiq_oracle", "gap_closed", "cost_at_95pct", "default_quality", "default_cost_pct")
    shown = ", ".join(f"{k}={m[k]:.4g}" for k in keys if k in m)
    typer.echo(f"test metrics: {shown}")
    typer.echo(f"default threshold: {result.threshold:.4f}")
    typer.echo("next: " + _next_hint(register, result.model_version, result.promoted, tracking_uri))


def _next_hint(register: str, version: str | None, promoted: bool, tracking_uri: str | None) -> str:
    """The commands that route with the model just trained: the champion when it moved, else this version."""
    uri = f"models:/{register}@champion" if promoted else f"models:/{register}/{version}"
    store = f" --tracking-uri {shlex.quote(tracking_uri)}" if tracking_uri else ""
    uri = shlex.quote(uri)
    route_opts = "" if uri == "models:/tierwise@champion" and not store else f" --model-uri {uri}{store}"
    hint = f'tierwise route "your prompt"{route_opts}   |   tierwise serve --model-uri {uri}{store}'
    if not promoted:
        hint += f"   (the champion did not move; models:/{register}@challenger is this version too)"
    return hint


def _with_catalog_hint(exc: BaseException, data: list[Path]) -> BaseException:
    """A catalog problem when no --catalog was given names the catalog that was used instead, since the default
    (the repository's demo catalog) rarely matches a user's log."""
    from router.catalog import DEFAULT_CATALOG_PATH
    from training.pipeline import catalog_sidecars

    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "catalog" not in msg or hasattr(exc, "errors"):  # pydantic errors keep their own per-field message
        return exc
    # training.pipeline.resolve_catalog's choice: the log's sidecar catalog, else models/catalog.yaml
    used = (catalog_sidecars(data) or [DEFAULT_CATALOG_PATH])[0]
    first = data[0] if data else "LOG"
    return ValueError(
        f"{msg} [no --catalog given, so the catalog used was {used}; pass --catalog FILE, or draft one from the "
        f"log with: tierwise catalog init --data {first} --out catalog.yaml]"
    )


@app.command(cls=_Command)
def label(
    data: DataOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output file (.csv, .parquet or .jsonl).")] = None,
    fmt: FormatOpt = "long",
    columns: ColumnsOpt = None,
    score_pattern: ScorePatOpt = None,
    cost_pattern: CostPatOpt = None,
    where: WhereOpt = None,
    catalog: CatalogOpt = None,
) -> None:
    """Export the labelled data: one row per prompt with its cheapest acceptable tier and per-tier outcomes."""
    _env_defaults()
    _setup_logging(False)
    try:
        if data is None or out is None:
            raise ValueError("--data and --out are required")
        from training.pipeline import prepare_data

        prepared = prepare_data(data, catalog, _log_options(fmt, columns, score_pattern, cost_pattern, where))
        frame = prepared.labelled.to_frame()
        from router.atomic_io import write_frame_atomic

        write_frame_atomic(frame, out)
    except Exception as exc:  # noqa: BLE001
        _fail(exc if catalog is not None or data is None else _with_catalog_hint(exc, [data]))
        return
    s = prepared.labelled.summary()
    typer.echo(f"wrote {len(frame)} labelled prompts to {out}")
    typer.echo("label share: " + ", ".join(f"{k}={v:.1%}" for k, v in s["label_share"].items()))
    typer.echo(f"no acceptable tier: {s['no_acceptable_share']:.1%}")


@catalog_app.command("init", cls=_Command)
def catalog_init(
    data: DataOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Where to write the drafted catalog.")] = Path("catalog.yaml"),
    fmt: FormatOpt = "long",
    columns: ColumnsOpt = None,
    score_pattern: ScorePatOpt = None,
    cost_pattern: CostPatOpt = None,
    where: WhereOpt = None,
    force: Annotated[bool, typer.Option("--force", metavar=FLAG, help="Overwrite an existing file.")] = False,
) -> None:
    """Draft a catalog from a log: one tier per model, ordered by mean observed cost (alphabetically when the log
    has no costs); the YAML says what to review and fill in."""
    _env_defaults()
    try:
        if data is None:
            raise ValueError("--data is required")
        if out.exists() and not force:
            raise ValueError(f"{out} exists; use --force to overwrite")
        from router.atomic_io import write_text_atomic
        from training.catalog_draft import catalog_to_commented_yaml, draft
        from training.readers import read_log

        df = read_log(data, _log_options(fmt, columns, score_pattern, cost_pattern, where))
        drafted = draft(df)
        cat = drafted.catalog
        write_text_atomic(out, catalog_to_commented_yaml(cat, drafted.notes, header=drafted.header(str(data))))
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
        return
    if len(drafted.uncosted) == len(cat.tiers):
        typer.echo(f"wrote {out} with {len(cat.tiers)} tiers: {', '.join(cat.tier_names)}")
        typer.echo(
            "warning: the log has no costs, so this order is alphabetical, a guess: reorder the tiers cheapest "
            f"first in {out}",
            err=True,
        )
    else:
        typer.echo(f"wrote {out} with {len(cat.tiers)} tiers (cheapest first): {', '.join(cat.tier_names)}")
        if drafted.uncosted:
            typer.echo(
                f"warning: no logged cost for {', '.join(drafted.uncosted)}: placed last alphabetically, a guess; "
                f"move them to their place in {out}",
                err=True,
            )
    missing = [t.name for t in cat.tiers if not t.has_prices]
    if missing:
        typer.echo(f"fill in prices for: {', '.join(missing)} (needed where the log has no cost_usd)")
    typer.echo(f"then check it: tierwise catalog check {out}")


@catalog_app.command("check", cls=_Command)
def catalog_check(path: Annotated[Path, typer.Argument(help="Catalog YAML to validate.")]) -> None:
    """Validate a catalog file: fields, names, and the cheapest-first order of the priced tiers (exit 2 when a
    pricier tier is listed before a cheaper one); tiers without prices are warnings."""
    from router.catalog import Catalog

    try:
        cat = Catalog.from_yaml(path)
        errors, warnings = cat.review()
        for w in warnings:
            typer.echo(f"warning: {path}: {w}", err=True)
        if errors:
            raise ValueError(f"{path}: " + "; ".join(errors))
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
        return
    noted = f" ({len(warnings)} warning(s) above)" if warnings else ""
    typer.echo(f"ok: {len(cat.tiers)} tiers: {', '.join(cat.tier_names)}{noted}")


@app.command(cls=_Command)
def route(
    prompt: Annotated[str, typer.Argument(help="The prompt to route.")],
    model_uri: Annotated[
        str, typer.Option("--model-uri", envvar="TIERWISE_MODEL_URI", help="Registry URI or local directory.")
    ] = "models:/tierwise@champion",
    threshold: Annotated[
        float | None, typer.Option("--threshold", min=0.0, max=1.0, help="P(acceptable) the chosen tier needs.")
    ] = None,
    quality_target: Annotated[
        float | None,
        typer.Option(
            "--quality-target", min=0.0, max=1.5,
            help="Instead of --threshold: share of the best single tier's quality to aim for (the model's table).",
        ),
    ] = None,
    task: Annotated[
        str | None, typer.Option("--task", help="The prompt's task, as named in the training log's task column.")
    ] = None,
    role: Annotated[str | None, typer.Option("--role", help="single, plan, execute or verify.")] = None,
    min_tier: Annotated[str | None, typer.Option("--min-tier")] = None,
    max_tier: Annotated[str | None, typer.Option("--max-tier")] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Route one prompt with a registered router and print the decision as JSON."""
    _env_defaults()
    _setup_logging(False)
    try:
        from router.core import Router

        if threshold is not None and quality_target is not None:
            raise ValueError("give either --threshold or --quality-target, not both")
        try:
            r = Router.load(model_uri, tracking_uri=tracking_uri)
        except Exception as exc:
            why = _missing_model(model_uri, tracking_uri)
            if why is None:
                raise
            raise ValueError(_no_model_hint(why)) from exc
        if quality_target is not None:
            try:
                threshold = r.threshold_for(quality_target)
            except ValueError as exc:
                raise ValueError(f"--quality-target: {exc}") from exc
        d = r.route(prompt, threshold=threshold, role=role, min_tier=min_tier, max_tier=max_tier, task=task)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
        return
    out = d.model_dump()
    out["router_version"] = r.ref.label
    typer.echo(json.dumps(out, indent=2))


@app.command(cls=_Command)
def batch(
    input_path: Annotated[
        Path | None,
        typer.Option(
            "--input",
            help="Requests in OpenAI's Batch format (JSONL): custom_id, method POST, url /v1/chat/completions and a "
            "chat completion body whose model is tierwise, tierwise:q0.95, tierwise:t0.8 or a catalog model.",
        ),
    ] = None,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            "--work-dir",
            help="Folder of the job: one batch file per upstream, state.json (which request went in which batch), "
            "the downloaded results and retry.jsonl.",
        ),
    ] = None,
    model_uri: Annotated[
        str, typer.Option("--model-uri", envvar="TIERWISE_MODEL_URI", help="Registry URI or local directory.")
    ] = "models:/tierwise@champion",
    tracking_uri: TrackingOpt = None,
    upstreams: Annotated[
        Path | None,
        typer.Option(
            "--upstreams", help="Upstreams file: where each catalog model is served (env TIERWISE_UPSTREAMS)."
        ),
    ] = None,
    submit: Annotated[
        bool,
        typer.Option(
            "--submit", metavar=FLAG,
            help="Upload the files and create the batches (requests submitted before are skipped).",
        ),
    ] = False,
    collect: Annotated[
        bool,
        typer.Option("--collect", metavar=FLAG, help="Read the finished batches and write the merged results."),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="Merged results, JSONL in input order (default WORK_DIR/results.jsonl)."),
    ] = None,
    wait: Annotated[
        float, typer.Option("--wait", min=0.0, help="With --collect: wait up to this many seconds for running batches.")
    ] = 0.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar=FLAG, help="No progress bars.")] = False,
) -> None:
    """Route a file of chat completion requests and run them on the upstreams' batch APIs (their batch discount).

    Without --submit or --collect: route every request, write one batch file per upstream (upstream model names
    filled in) and print the tiers chosen and the estimated batch cost against the top tier. --submit uploads them and
    creates the batches; --collect reads the finished ones and writes one JSONL in input order with each request's
    tier, answer, tokens and cost at batch prices. Requests that failed or expired go to WORK_DIR/retry.jsonl.

    Exit codes: 0 done, 1 some requests need a retry, 2 bad input or a failed command, 4 batches still running.
    """
    _env_defaults()
    _setup_logging(False)
    from router.gateway.batch import BatchError

    code = 0
    try:
        from router.gateway import batch as jobs
        from router.gateway.upstreams import UPSTREAMS_ENV, load_upstreams

        if input_path is None or work_dir is None:
            raise ValueError("--input and --work-dir are required")
        if wait and not collect:
            raise ValueError("--wait goes with --collect")
        upstreams_path = upstreams or os.environ.get(UPSTREAMS_ENV)
        if not upstreams_path:
            raise ValueError(
                f"give --upstreams FILE (or set {UPSTREAMS_ENV}): it says which upstream serves each catalog model"
            )
        config = load_upstreams(upstreams_path)
        lines = jobs.read_input(input_path)
        work = jobs.WorkDir(work_dir)
        with work.locked():
            if submit or not collect:
                from router.core import Router

                try:
                    router = Router.load(model_uri, tracking_uri=tracking_uri)
                except Exception as exc:
                    why = _missing_model(model_uri, tracking_uri)
                    if why is None:
                        raise
                    raise ValueError(_no_model_hint(why)) from exc
                routed = jobs.route_lines(router, lines, config, progress=not quiet)
                to_send = [r for r in routed if work.pending(r.custom_id)]
                summary = jobs.summarize(to_send, router.catalog, skipped=len(routed) - len(to_send))
                for text in summary.lines():
                    typer.echo(text)
                if not submit:
                    files = jobs.write_upstream_files(work, routed)
                    listed = ", ".join(f"{p.name} ({len(ids)})" for p, ids in files.values()) or "none"
                    typer.echo(f"batch files in {work.upstreams_dir}: {listed}")
                    if files:
                        typer.echo("next: the same command with --submit, then --collect")
                else:
                    sent = jobs.submit(work, routed, config, router.catalog, router_version=router.ref.label)
                    for s in sent.submitted:
                        typer.echo(f"submitted {s.requests} request(s) to upstream {s.upstream}: batch {s.batch_id}")
                    for note in sent.notes:
                        typer.echo(f"note: {note}", err=True)
                    if sent.problems:
                        raise BatchError(sent.problems)
                    if not sent.submitted:
                        typer.echo("nothing to submit: every request was submitted before")
                    elif not collect:
                        typer.echo("next: the same command with --collect (--wait SECONDS waits for the batches)")
            if collect:
                report = jobs.collect(
                    work, lines, config, output or work.default_output, wait_s=wait, progress=not quiet
                )
                for text in report.lines():
                    typer.echo(text)
                code = 4 if report.pending_batches else 1 if report.retry else 0
    except BatchError as exc:  # every problem, each on its own line (a file can have several bad lines)
        for problem in exc.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
        return
    if code:
        raise typer.Exit(code)


EngineOpt = Annotated[
    str, typer.Option("--engine", help="local (this process, streamed in chunks) or spark (a Spark job).")
]
SparkMasterOpt = Annotated[str, typer.Option("--spark-master", help="Spark master with --engine spark.")]
SparkConfOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--spark-conf", help="Spark setting KEY=VALUE with --engine spark (repeat), e.g. spark.driver.memory=4g."
    ),
]
OfflineWhereOpt = Annotated[
    str | None,
    typer.Option(
        "--where", help="Row filter: a pandas query (--engine local) or a Spark SQL condition (--engine spark)."
    ),
]
NoProgressOpt = Annotated[
    bool, typer.Option("--quiet", "-q", "--no-progress", metavar=FLAG, help="No progress bars.")
]
OfflineDataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="Log: .csv, .jsonl, .json or .parquet file, or a folder of Parquet files; with --engine spark also a URI "
        "(hdfs://, s3a://).",
    ),
]


def _offline_errors(exc: BaseException) -> None:
    """Every line of a log problem (a log can have several), else the usual one-line error; exit code 2."""
    from router.offline.reader import PromptLogError

    if isinstance(exc, PromptLogError):
        for problem in str(exc).strip().splitlines():
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2) from None
    _fail(exc)


def _engine(engine: str) -> str:
    if engine not in ("local", "spark"):
        raise ValueError(f"--engine must be local or spark, got {engine!r}")
    return engine


def _spark(master: str, conf: list[str] | None, progress: bool) -> Any:
    from router.offline.spark import parse_conf, spark_session

    settings = {"spark.ui.showConsoleProgress": "true" if progress else "false", **parse_conf(conf)}
    return spark_session(master, conf=settings)


@app.command("route-log", cls=_Command)
def route_log_command(
    data: OfflineDataOpt = None,
    out: Annotated[
        str | None,
        typer.Option(
            "--out", help="Decisions as Parquet: a file (--engine local) or a folder (--engine spark; also a URI)."
        ),
    ] = None,
    model_uri: Annotated[
        str,
        typer.Option(
            "--model-uri", "--model", envvar="TIERWISE_MODEL_URI",
            help="Registry URI or local directory (--engine spark: a registry URI or an MLflow model folder).",
        ),
    ] = "models:/tierwise@champion",
    tracking_uri: TrackingOpt = None,
    columns: ColumnsOpt = None,
    where: OfflineWhereOpt = None,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", min=0.0, max=1.0, help="The knob for every prompt (default: the model's)."),
    ] = None,
    quality_target: Annotated[
        float | None,
        typer.Option(
            "--quality-target", min=0.0, max=1.5, help="Instead of --threshold: the model's knob for this target."
        ),
    ] = None,
    chunk_size: Annotated[
        int, typer.Option("--chunk-size", min=1, help="Prompts per routing call (--engine local).")
    ] = 1024,
    include_prompt: Annotated[
        bool,
        typer.Option("--include-prompt", metavar=FLAG, help="Also write the prompt text (default: its hash only)."),
    ] = False,
    engine: EngineOpt = "local",
    spark_master: SparkMasterOpt = "local[2]",
    spark_conf: SparkConfOpt = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Encoder threads (--engine local).")] = 1,
    quiet: NoProgressOpt = False,
) -> None:
    """Route every distinct prompt of a log offline (what the router would have done) and write one Parquet row per
    prompt id: tier, model, reason, P(acceptable) per tier, estimated cost and router version (no prompt text
    unless --include-prompt). --engine spark runs the registered pyfunc on Spark."""
    _env_defaults()
    _setup_logging(False)
    try:
        from router.offline.reader import PromptLog
        from training.readers import parse_column_map

        if data is None or out is None:
            raise ValueError("--data and --out are required")
        if threshold is not None and quality_target is not None:
            raise ValueError("give either --threshold or --quality-target, not both")
        log = PromptLog(data, parse_column_map(columns) if columns else {}, where)
        progress = not quiet and sys.stderr.isatty()
        if _engine(engine) == "spark":
            from router.offline.spark import route_log_spark

            result: Any = route_log_spark(
                _spark(spark_master, spark_conf, progress), log, out, model_uri=model_uri, tracking_uri=tracking_uri,
                threshold=threshold, quality_target=quality_target, include_prompt=include_prompt,
            )
        else:
            from router.core import Router
            from router.offline.route_log import route_log

            try:
                router = Router.load(model_uri, tracking_uri=tracking_uri, threads=threads)
            except Exception as exc:
                why = _missing_model(model_uri, tracking_uri)
                if why is None:
                    raise
                raise ValueError(_no_model_hint(why)) from exc
            result = route_log(
                router, log, out, chunk_size=chunk_size, threshold=threshold, quality_target=quality_target,
                include_prompt=include_prompt, progress=progress,
            )
    except Exception as exc:  # noqa: BLE001
        _offline_errors(exc)
        return
    for line in result.lines():
        typer.echo(line)


@app.command(cls=_Command)
def featurize(
    data: OfflineDataOpt = None,
    columns: ColumnsOpt = None,
    where: OfflineWhereOpt = None,
    engine: EngineOpt = "local",
    spark_master: SparkMasterOpt = "local[2]",
    spark_conf: SparkConfOpt = None,
    encoder: Annotated[str | None, typer.Option("--encoder", help="Encoder, as for tierwise train.")] = None,
    config_json: Annotated[
        str | None,
        typer.Option("--config", help="TrainConfig overrides as JSON, as for tierwise train (its encoder settings)."),
    ] = None,
    model_uri: Annotated[
        str | None,
        typer.Option("--model-uri", help="Embed with this model's encoder instead (retraining with its settings)."),
    ] = None,
    tracking_uri: TrackingOpt = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir", help="tierwise cache folder (default: TIERWISE_CACHE_DIR or ~/.tierwise/cache, where "
            "tierwise train looks); vectors go to its embeddings/ folder.",
        ),
    ] = None,
    quiet: NoProgressOpt = False,
) -> None:
    """Embed a training log's prompts ahead of tierwise train (on Spark with --engine spark) into the embedding
    cache, so that training on the same log embeds nothing. Prompts already cached are skipped."""
    _env_defaults()
    _setup_logging(False)
    try:
        from router.offline.reader import PromptLog
        from training.pipeline import TrainConfig
        from training.readers import parse_column_map
        from training.spark_features import featurize_local, featurize_spark, training_encoder

        if data is None:
            raise ValueError("--data is required")
        if model_uri is not None and (encoder or config_json):
            raise ValueError("give --model-uri or --encoder/--config, not both")
        overrides: dict[str, Any] = _json_object(config_json, "--config") if config_json else {}
        if encoder:
            overrides["encoder"] = encoder
        log = PromptLog(data, parse_column_map(columns) if columns else {}, where)
        progress = not quiet and sys.stderr.isatty()
        enc = training_encoder(TrainConfig(**overrides), model_uri=model_uri, tracking_uri=tracking_uri)
        if _engine(engine) == "spark":
            report = featurize_spark(_spark(spark_master, spark_conf, progress), log, encoder=enc, cache_dir=cache_dir)
        else:
            report = featurize_local(log, encoder=enc, cache_dir=cache_dir, progress=progress)
    except Exception as exc:  # noqa: BLE001
        _offline_errors(exc)
        return
    for line in report.lines():
        typer.echo(line)
    env = f"TIERWISE_CACHE_DIR={shlex.quote(str(cache_dir))} " if cache_dir is not None else ""
    typer.echo(f"next: {env}tierwise train --data {shlex.quote(str(data))} ... (the same encoder settings)")


def _no_model_hint(why: str) -> str:
    """``why`` (from :func:`training.registry.describe_missing`) with what to do about it."""
    if "has no alias" in why and "(v" in why:  # versions exist: one of them can be made champion
        return f"{why}; promote one with: tierwise promote VERSION, or train one: {TRAIN_HINT}"
    return f"{why}; train one first: {TRAIN_HINT}"


def _missing_model(model_uri: str, tracking_uri: str | None) -> str | None:
    """Why a registry URI names no model (None: it exists, is not a registry URI, or the store cannot tell)."""
    try:
        from router.settings import resolve_tracking_uri
        from training.registry import describe_missing

        return describe_missing(model_uri, resolve_tracking_uri(tracking_uri))
    except Exception:  # noqa: BLE001 - the store itself is unreachable: the original error says more
        return None


@app.command(cls=_Command)
def promote(
    version: Annotated[str, typer.Argument(help="Model version to make champion.")],
    name: Annotated[str, typer.Option("--name", help="Registered model name.")] = "tierwise",
    tracking_uri: TrackingOpt = None,
) -> None:
    """Move the champion alias to a version by hand (e.g. after a catalog change)."""
    _env_defaults()
    try:
        from training import registry

        turi = registry.configure(tracking_uri)
        registry.promote(name, version, turi)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
        return
    typer.echo(f"{name}@champion -> version {version}")


@app.command(cls=_Command)
def serve(
    model_uri: Annotated[
        str | None, typer.Option("--model-uri", help="Registry URI or local directory (env TIERWISE_MODEL_URI).")
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Interface (env TIERWISE_HOST, default 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="TCP port (env TIERWISE_PORT, default 8000).")] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Worker processes (env TIERWISE_WORKERS, default 1).")
    ] = None,
    tracking_uri: TrackingOpt = None,
    poll_seconds: Annotated[
        float | None, typer.Option("--poll-seconds", help="Reload when the alias moves; checked every N s (0 = off).")
    ] = None,
    log_level: Annotated[str | None, typer.Option("--log-level", help="critical/error/warning/info/debug.")] = None,
    upstreams: Annotated[
        Path | None,
        typer.Option(
            "--upstreams",
            help="Upstreams file: enables the OpenAI-compatible gateway, POST /v1/chat/completions (env "
            "TIERWISE_UPSTREAMS).",
        ),
    ] = None,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", metavar=FLAG, help="uvicorn access log.")
    ] = True,
) -> None:
    """Serve the router over HTTP (FastAPI + uvicorn): /v1/route, /v1/route/batch, /v1/route/plan, /v1/feedback,
    and with --upstreams the OpenAI-compatible /v1/chat/completions.

    Every other setting comes from TIERWISE_* environment variables (see the README's Serving section).
    """
    import shutil
    import tempfile

    _env_defaults()
    given = {
        "model_uri": model_uri, "host": host, "port": port, "workers": workers, "tracking_uri": tracking_uri,
        "poll_seconds": poll_seconds, "log_level": log_level, "upstreams": upstreams,
    }
    for key, value in given.items():
        if value is not None:
            os.environ[f"TIERWISE_{key.upper()}"] = str(value)
    try:
        from router.service.settings import STATE_DIR_ENV, ServiceSettings

        settings = ServiceSettings()
    except Exception as exc:  # noqa: BLE001
        errors = getattr(exc, "errors", None)
        if callable(errors) and errors():
            e = errors()[0]
            exc = ValueError(f"TIERWISE_{str(e['loc'][0]).upper() if e['loc'] else ''}: {e['msg']}")
        _fail(exc)
        return
    state_dir = tempfile.mkdtemp(prefix="tierwise-serve-")
    os.environ[STATE_DIR_ENV] = state_dir
    scratch = [state_dir]  # removed when the server stops
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # every worker writes its samples here, so /metrics adds up all workers
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tierwise-metrics-")
        scratch.append(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    try:
        code = _run_server(settings, access_log, state_dir)
    finally:
        for d in scratch:
            shutil.rmtree(d, ignore_errors=True)
    if code:
        raise typer.Exit(code)


def _run_server(settings: Any, access_log: bool, state_dir: str) -> int:
    """Run uvicorn until it stops; the exit code, with the start-up error (if any) printed with a hint."""
    import signal

    import uvicorn

    def stopped(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with the handler it found: this one
    # (instead of the default, which ends the process at once) lets the caller remove its temp folders
    signal.signal(signal.SIGTERM, stopped)
    code = 0
    try:
        uvicorn.run(
            "router.service:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level,
            access_log=access_log,
            timeout_keep_alive=settings.keep_alive_s,
            timeout_graceful_shutdown=10,
        )
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    err = Path(state_dir, "startup-error.txt")
    if err.is_file():
        message = err.read_text(encoding="utf-8").strip().removeprefix("tierwise: ")
        why = _missing_model(settings.model_uri, settings.tracking_uri)
        if why is not None:
            message += f". {_no_model_hint(why[0].upper() + why[1:])}"
        typer.echo("error: " + message, err=True)
        code = code or 3
    return code


keys_app = _typer(help="Client API keys of the gateway (hashed in a keys file).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("add", cls=_Command)
def keys_add(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant the key belongs to (created when new).")],
    file: Annotated[
        Path | None, typer.Option("--file", help="Keys file (default: TIERWISE_CLIENT_KEYS or HOME/client_keys.yaml).")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="A name for the key, for humans (e.g. acme-prod).")] = None,
    budget_usd: Annotated[
        float | None, typer.Option("--budget-usd", help="The tenant's budget in USD per --period.")
    ] = None,
    period: Annotated[str | None, typer.Option("--period", help="Budget period: day, week or month (UTC).")] = None,
    max_tier: Annotated[
        str | None, typer.Option("--max-tier", help="The most expensive tier the tenant's requests may use.")
    ] = None,
) -> None:
    """Create a client key: its SHA-256 goes to the keys file, the key itself is printed once (store it now)."""
    _env_defaults()
    try:
        from router.gateway.keys import add_key
        from router.service.settings import ServiceSettings

        settings = ServiceSettings()
        path = file or settings.client_keys or settings.home / "client_keys.yaml"
        key = add_key(path, tenant, name=name, budget_usd=budget_usd, period=period, max_tier=max_tier)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
        return
    typer.echo(key)
    typer.echo(f"stored its hash for tenant {tenant!r} in {path}; serve with TIERWISE_CLIENT_KEYS={path}", err=True)


DecisionLogOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        "--decision-log",
        help="Decision log: a SQLite file or a database URL, e.g. postgresql+psycopg://USER:PASSWORD@HOST/DB "
        "(default: TIERWISE_DECISION_LOG or HOME/decisions.db).",
    ),
]


def _decision_log(given: str | None) -> str:
    from router.service.settings import ServiceSettings

    return given or ServiceSettings().decision_log_target


def _fail_log(exc: BaseException) -> None:
    """:func:`_fail` for the decision log's commands: a database error as its driver's first line, credentials in
    URLs hidden."""
    from pydantic import ValidationError

    from router.service.decision_log.store import is_database_error, reason
    from router.service.errors import redact

    if isinstance(exc, ValidationError):  # a bad TIERWISE_* setting: _fail names the field
        _fail(exc)
    text = f"decision log: {reason(exc)}" if is_database_error(exc) else redact(str(exc).strip())
    _fail(RuntimeError(text or type(exc).__name__))


decisions_app = _typer(help="The service's decision log (decisions + feedback).", no_args_is_help=True)
app.add_typer(decisions_app, name="decisions")


@decisions_app.command("export", cls=_Command)
def decisions_export(
    out: Annotated[Path, typer.Option("--out", help="Output log: .csv, .csv.gz, .jsonl or .parquet.")],
    db: DecisionLogOpt = None,
    router_version: Annotated[
        str | None, typer.Option("--router-version", help="Only decisions of this router version, e.g. tierwise/3.")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only feedback recorded at or after this UTC time, e.g. 2026-11-01.")
    ] = None,
    catalog: Annotated[
        Path | None,
        typer.Option("--catalog", help="Catalog YAML for router versions logged before the service stored catalogs."),
    ] = None,
) -> None:
    """Export feedback joined with its decisions as a training log (the canonical long format), with the catalog
    it was routed with beside it (OUT's stem + .catalog.yaml).

    Only decisions whose prompt text was stored (TIERWISE_STORE_PROMPTS=true) can be exported: training needs the
    text. Exits non-zero, writing nothing, when no row can be trained on or the rows span different catalogs.
    Train on the result with: tierwise train --data OUT
    """
    _env_defaults()
    try:
        from router.service.decision_log import export_for_training

        path = _decision_log(db)
        frame, summary = export_for_training(path, out, router_version=router_version, since=since, catalog=catalog)
    except Exception as exc:  # noqa: BLE001
        _fail_log(exc)
        return
    typer.echo(f"{summary.describe()} -> {out}")


@decisions_app.command("savings", cls=_Command)
def decisions_savings(
    db: DecisionLogOpt = None,
    router_version: Annotated[
        str | None,
        typer.Option("--router-version", help="Router version to report, e.g. tierwise/3 (default: the latest)."),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only decisions at or after this UTC time, e.g. 2026-11-01.")
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="Only decisions before this UTC time.")] = None,
    catalog: Annotated[
        Path | None,
        typer.Option("--catalog", help="Catalog YAML (default: the one the service stored for that version)."),
    ] = None,
    model_uri: Annotated[
        str | None,
        typer.Option(
            "--model-uri",
            help="The version's model, to price tiers without list prices with its cost model and count tokens "
            "with its characters per token (optional).",
        ),
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Also write the savings chart here (.png).")] = None,
) -> None:
    """What routing saved: spend of the routed calls plus the escalations the feedback records, against always
    using each tier, for one router version (the decision log can span several catalogs). When the gateway served
    calls, also what they actually cost (the upstreams' usage) against the same tokens on the top tier."""
    _env_defaults()
    _setup_logging(False)
    try:
        from router.atomic_io import atomic_path
        from router.catalog import Catalog
        from router.service.decision_log import reading
        from training import reports

        path = _decision_log(db)
        with reading(path):  # fail now when there is no log there (or its database is unreachable)
            pass
        chars_per_token = cost_model = None
        if model_uri is not None:
            from router.core import Router

            r = Router.load(model_uri, tracking_uri=tracking_uri)
            chars_per_token, cost_model = r.chars_per_token, r.cost_model
        actual = reports.actual_spend(
            reports.read_decision_log(path), router_version=router_version, since=since, until=until
        )
        if actual is not None:
            typer.echo(f"actual spend through the gateway, router version {actual.attrs.get('router_version')}:")
            typer.echo(actual.to_string())
        try:
            frame = reports.spend_frame_from_log(
                path, None if catalog is None else Catalog.from_yaml(catalog), chars_per_token,
                router_version=router_version, since=since, until=until, cost_model=cost_model,
            )
        except ValueError as exc:
            if actual is not None:  # e.g. gateway calls without feedback: the actual table is the report
                typer.echo(f"note: no routing-savings table ({exc})", err=True)
                return
            raise
        summary = reports.savings_summary(frame)
        if frame.attrs.get("note"):
            typer.echo(f"note: {frame.attrs['note']}", err=True)
        typer.echo(f"router version {frame.attrs.get('router_version')}: {len(frame)} requests")
        typer.echo(summary.to_string())
        if plot is not None:
            title = str(frame.attrs.get("router_version"))
            fig = reports.plot_savings(summary, reports.savings_breakdown(frame), title=title)
            with atomic_path(plot) as tmp:
                fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
            typer.echo(f"chart -> {plot}")
    except Exception as exc:  # noqa: BLE001
        _fail_log(exc)
        return


@decisions_app.command("prune", cls=_Command)
def decisions_prune(
    before: Annotated[
        str, typer.Option("--before", help="Delete what is older than this UTC date or time, e.g. 2026-06-01.")
    ],
    db: DecisionLogOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", metavar=FLAG, help="Only count what would be deleted.")] = False,
    batch_rows: Annotated[
        int | None,
        typer.Option("--batch-rows", min=1, help="Requests per table per transaction (default 500)."),
    ] = None,
) -> None:
    """Delete decisions made before --before with all their feedback, and older gateway calls; print the counts.

    A decision's time decides: its feedback goes with it, even feedback recorded after the cut-off. Older feedback
    whose decision is gone goes too. Deletes run in short transactions, so a running service keeps writing. The
    service can prune by itself: TIERWISE_DECISION_RETENTION_DAYS."""
    _env_defaults()
    try:
        from router.service.decision_log import describe, prune

        path = _decision_log(db)
        if batch_rows is None:  # the product's default
            counts = prune(path, before, dry_run=dry_run)
        else:
            counts = prune(path, before, dry_run=dry_run, batch_rows=batch_rows)
    except Exception as exc:  # noqa: BLE001
        _fail_log(exc)
        return
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"{describe(path)}: {verb} {counts.describe()} older than {before}")


db_app = _typer(help="The decision log's database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade", cls=_Command)
def db_upgrade(db: DecisionLogOpt = None) -> None:
    """Create or migrate the decision log's tables to this tierwise's schema (the service also does it at start).

    Run it ahead of a rolling upgrade, or to check a database URL. A log written before migrations is upgraded in
    place. Safe while services run, and from several machines at once (the second waits, then has nothing to do)."""
    _env_defaults()
    try:
        from router.service.decision_log import describe, make_engine, resolve, upgrade

        path = _decision_log(db)
        engine = make_engine(resolve(path))
        try:
            before, after = upgrade(engine)
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001
        _fail_log(exc)
        return
    if before == after:
        typer.echo(f"{describe(path)}: schema at {after} (the newest), nothing to do")
    else:
        typer.echo(f"{describe(path)}: schema upgraded from {before or 'none'} to {after}")


@db_app.command("current", cls=_Command)
def db_current(db: DecisionLogOpt = None) -> None:
    """Print the decision log's schema revision; exit 1 when it is not this tierwise's newest (tierwise db upgrade)."""
    _env_defaults()
    try:
        from router.service.decision_log import current, describe, head, reading

        path = _decision_log(db)
        with reading(path) as conn:
            rev = current(conn)
        newest = head()
    except Exception as exc:  # noqa: BLE001
        _fail_log(exc)
        return
    if rev == newest:
        typer.echo(f"{describe(path)}: schema {rev} (the newest)")
        return
    typer.echo(
        f"{describe(path)}: schema {rev or 'none (never migrated)'}; this tierwise's is {newest}: run "
        "tierwise db upgrade"
    )
    raise typer.Exit(1)


@app.command("demo-data", cls=_Command)
def demo_data(
    out: Annotated[Path, typer.Option("--out", help="Where to write the SYNTHETIC demo log.")] = Path("demo_log.csv"),
) -> None:
    """Write the embedded SYNTHETIC demo log to a file (to try the readers and the label command)."""
    try:
        from training.demo import write_demo_log

        write_demo_log(out)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
        return
    typer.echo(f"wrote the synthetic demo log to {out}")


if __name__ == "__main__":  # pragma: no cover
    app()
