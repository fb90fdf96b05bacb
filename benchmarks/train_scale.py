"""``tierwise train`` at scale: wall time per phase and peak memory from 10k to 100k prompts, cold and cached.

    python benchmarks/train_scale.py                                    # 10k, 25k, 50k, 100k (about 40 min idle)
    python benchmarks/train_scale.py --sizes 10000,100000 --cold-sizes 100000
    python benchmarks/train_scale.py --plot-only                        # redraw the figure from the JSON

For every size N it builds a log of N prompts by resampling a shared log (``--source``, default ``routellm``: the
routellm-evals MMLU, GSM8K and MT-Bench prompts, two tiers, 15,383 prompts; nothing is copied into the repository)
and writes it, with the source's catalog, to a temporary folder. Up to the source's size the log is a seeded
sample of its prompts; above it every prompt appears several times, copy k > 0 with the text
``<prompt>\\n\\n(Variant k.)``, so every text is distinct (and is embedded) and each copy keeps its source
prompt's scores, task and split (a copy of a test prompt is a test prompt). Then, like a user, it runs ``tierwise
train --data LOG --catalog CATALOG`` (the CLI's defaults) in a subprocess, twice:

* **cold**: a fresh ``TIERWISE_HOME`` and a fresh embedding cache (``TIERWISE_CACHE_DIR``; only the one-time ONNX
  export of the encoder is copied in, it is timed once and reported apart: it does not depend on N);
* **cached**: another fresh ``TIERWISE_HOME`` (a new MLflow store, so no champion to compare with, as in the cold
  run) and the embedding cache the cold run filled.

It records the process's wall time, the phase timings the run logs to MLflow (``time_*_s`` metrics:
:func:`training.pipeline.train`), the peak RSS of the process tree (sum over the processes, sampled every 0.2 s:
``harness.RssSampler``) and the load average before and after (the machine may be shared: figures taken under load
are pessimistic). Prints a table, writes ``<out>.json`` after every run (a partial run keeps what it measured) and
``<out>.png`` (time and peak memory against prompts, with the targets: 12 min cold, 5 min cached, 8 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import quality_data as QD  # noqa: E402
from harness import RssSampler  # noqa: E402

TARGET_COLD_S = 12 * 60
TARGET_CACHED_S = 5 * 60
TARGET_RSS_BYTES = 8 * 1024**3
DEFAULT_SIZES = (10_000, 25_000, 50_000, 100_000)
DEFAULT_OUT = QD.REPO_ROOT / "docs" / "figures" / "train_scale"
SEED = 0
LOG_COLUMNS = ("prompt_id", "prompt", "model", "score", "task", "split", "cost_usd", "input_tokens", "output_tokens")
PHASES = ("prepare", "embed", "features", "fit", "select", "evaluate", "log")
"""Phase timings (``time_<phase>_s`` MLflow metrics of the run) shown in the table; ``select`` is part of ``fit``."""

# Sources: the shared datasets (benchmarks/quality_data.py) whose prompts are resampled, and their catalog.
SOURCES: dict[str, tuple[tuple[str, ...], str]] = {
    "routellm": (("routellm-mmlu", "routellm-gsm8k", "routellm-mt-bench"), "routellm.yaml"),
    "routerbench-3task": (("routerbench-3task",), "routerbench-3task.yaml"),
    "llmrouter-nim9": (("llmrouter-nim9",), "llmrouter-nim9.yaml"),
}


# --------------------------------------------------------------------------------------------------------------
# The logs
# --------------------------------------------------------------------------------------------------------------
def load_source(name: str, shared_dir: Path) -> tuple[pd.DataFrame, Path]:
    """The source's attempts (canonical long columns, one log) and its catalog file."""
    datasets, catalog = SOURCES[name]
    frames = []
    for ds in datasets:
        df, _ = QD.DATASETS[ds].load(shared_dir)
        frames.append(df[[c for c in LOG_COLUMNS if c in df.columns]])
    attempts = pd.concat(frames, ignore_index=True)
    return attempts, QD.CATALOG_DIR / catalog


def resample(attempts: pd.DataFrame, n_prompts: int, seed: int = SEED) -> pd.DataFrame:
    """A log of ``n_prompts`` distinct prompts drawn from ``attempts`` (see the module doc): position i of a seeded
    permutation of the source prompts, copy ``i // n_source``; copy 0 is the prompt itself, copy k > 0 appends
    ``"\\n\\n(Variant k.)"``. Every attempt row of the source prompt follows it (same model, score, cost, task,
    split). Smaller sizes are prefixes of larger ones."""
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    ids = attempts["prompt_id"].drop_duplicates().to_numpy()
    order = np.random.default_rng(seed).permutation(len(ids))
    pick = np.arange(n_prompts)
    src, copy = ids[order[pick % len(ids)]], pick // len(ids)
    chosen = pd.DataFrame({"src": src, "copy": copy})
    rows = chosen.merge(attempts, left_on="src", right_on="prompt_id", how="left", sort=False)
    k = rows["copy"]
    copied = k > 0
    rows["prompt_id"] = rows["src"].astype(str).where(~copied, rows["src"].astype(str) + "~v" + k.astype(str))
    text = rows["prompt"].astype(str)
    rows["prompt"] = text.where(~copied, text + "\n\n(Variant " + k.astype(str) + ".)")
    return rows.drop(columns=["src", "copy"]).reset_index(drop=True)


def write_log(attempts: pd.DataFrame, path: Path) -> Path:
    attempts.to_parquet(path, index=False)
    return path


# --------------------------------------------------------------------------------------------------------------
# The runs
# --------------------------------------------------------------------------------------------------------------
class _Tree:
    """The processes of a running command (it and its descendants), for :class:`harness.RssSampler`."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)

    def processes(self) -> list[Any]:
        return [self.root, *self.root.children(recursive=True)]


def _cpu_model() -> str:
    """The CPU's model name (Linux), else the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _child_env(home: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIERWISE_", "MLFLOW_TRACKING"))}
    env.update(
        TIERWISE_HOME=str(home),
        TIERWISE_CACHE_DIR=str(cache),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def tierwise_command(cli: str | None = None) -> list[str]:
    """``cli`` split into words, else the ``tierwise`` entry point of this interpreter's environment."""
    if cli:
        return shlex.split(cli)
    exe = Path(sys.executable).parent / "tierwise"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from training.cli import app; app()"]


def export_encoder(cache: Path) -> float:
    """Build the default encoder's ONNX export into ``cache/onnx`` (one-time work per machine); its wall seconds."""
    code = "from router.encoders import build_encoder; build_encoder('minilm-onnx-int8')"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code],
        env=_child_env(cache.parent / "export-home", cache),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def run_train(
    log_path: Path, catalog: Path, home: Path, cache: Path, transcript: Path, cli: str | None = None
) -> dict[str, Any]:
    """``tierwise train --data LOG --catalog CATALOG`` in a subprocess: wall time, peak RSS of its process tree,
    load averages, and the run's ``time_*`` metrics from its MLflow store."""
    cmd = [*tierwise_command(cli), "train", "--data", str(log_path), "--catalog", str(catalog)]
    load_before = _load()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with transcript.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, env=_child_env(home, cache), stdout=out, stderr=subprocess.STDOUT, text=True)
        sampler = RssSampler(_Tree(proc.pid), total=True)
        sampler.start()
        code = proc.wait()
        wall = time.perf_counter() - start
        sampler.stop_event.set()
        sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    text = transcript.read_text(encoding="utf-8", errors="replace")
    if code != 0:
        raise RuntimeError(f"tierwise train exited with {code}; transcript {transcript}:\n{text[-3000:]}")
    run_id = re.search(r"^run: (\S+)", text, re.M)
    store = re.search(r"^tracking store: (\S+)", text, re.M)
    if run_id is None or store is None:
        raise RuntimeError(f"no run id / tracking store in the output of tierwise train ({transcript})")
    from mlflow.tracking import MlflowClient

    run = MlflowClient(store.group(1)).get_run(run_id.group(1))
    metrics = run.data.metrics
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 1),
        "peak_rss_bytes": int(sampler.peak),
        "load_before": load_before,
        "load_after": _load(),
        "phases_s": {k[len("time_") : -len("_s")]: round(v, 2) for k, v in metrics.items() if k.startswith("time_")},
        "embed_new_prompts": int(metrics.get("embed_new_prompts", 0)),
        "embed_prompts_per_s": round(metrics["embed_prompts_per_s"], 1) if "embed_prompts_per_s" in metrics else None,
        "layout": run.data.params.get("layout_used"),
        "gap_closed": metrics.get("gap_closed"),
        "aiq": metrics.get("aiq"),
    }


def measure(
    sizes: list[int],
    cold_sizes: set[int],
    source: str,
    shared_dir: Path,
    work: Path,
    out: Path,
    results: dict[str, Any],
    cli: str | None = None,
) -> None:
    """The cold runs (sizes in ``cold_sizes``, smallest first, each with a fresh cache), then a cached run of every
    size with the cache of the smallest cold run that holds its prompts (a smaller log is a prefix of a larger one);
    a size above every cold run first fills a cache with an untimed run. Results are saved after each run; runs
    already in ``results`` (``--resume``) are skipped, and their caches in ``work`` reused."""
    attempts, catalog = load_source(source, shared_dir)
    export_cache = work / "export" / "cache"
    seconds = round(export_encoder(export_cache), 1)
    results.setdefault("onnx_export_s", seconds)  # a resumed run's export was cached already
    print(f"one-time ONNX export of the encoder: {results['onnx_export_s']} s (not part of any run below)", flush=True)
    logs: dict[int, Path] = {}
    caches: dict[int, Path] = {}
    done = {(r["prompts"], r["run"]) for r in results["runs"]}

    def prepare(n: int) -> Path:
        if n not in logs:
            folder = work / f"n{n}"
            folder.mkdir(parents=True, exist_ok=True)
            logs[n] = write_log(resample(attempts, n), folder / "log.parquet")
        return logs[n]

    def fresh_cache(n: int) -> Path:
        cache = work / f"n{n}" / "cache"
        shutil.rmtree(cache, ignore_errors=True)  # what an interrupted run left
        shutil.copytree(export_cache / "onnx", cache / "onnx")
        caches[n] = cache
        return cache

    def fresh_home(n: int, kind: str) -> Path:
        home = work / f"n{n}" / f"home-{kind}"
        shutil.rmtree(home, ignore_errors=True)
        return home

    def record(row: dict[str, Any], n: int, kind: str) -> None:
        row.update(prompts=n, run=kind)
        results["runs"] = [r for r in results["runs"] if (r["prompts"], r["run"]) != (n, kind)] + [row]
        save_json(results, out)
        print(table_row(row), flush=True)

    for n in sorted(cold_sizes):
        if (n, "cold") in done and (work / f"n{n}" / "cache" / "embeddings").is_dir():
            caches[n] = work / f"n{n}" / "cache"
            continue
        log_path = prepare(n)
        cache = fresh_cache(n)
        row = run_train(log_path, catalog, fresh_home(n, "cold"), cache, work / f"n{n}" / "cold.log", cli)
        record(row, n, "cold")
    for n in sorted(sizes):
        if (n, "cached") in done:
            continue
        log_path = prepare(n)
        covering = [m for m in sorted(caches) if m >= n]
        if covering:
            cache = caches[covering[0]]
        else:  # no cold run holds these prompts: fill a cache first (untimed)
            cache = fresh_cache(n)
            run_train(log_path, catalog, fresh_home(n, "fill"), cache, work / f"n{n}" / "fill.log", cli)
        row = run_train(log_path, catalog, fresh_home(n, "cached"), cache, work / f"n{n}" / "cached.log", cli)
        record(row, n, "cached")


# --------------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------------
def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


TABLE_HEAD = (
    "| prompts | run | wall | CPU | prepare | embed (new prompts/s) | structural features | fit (of which selection) "
    "| evaluate | log + register | peak RSS | layout | load avg before -> after |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def table_row(r: dict[str, Any]) -> str:
    ph = r["phases_s"]
    rate = f" ({r['embed_prompts_per_s']:.0f}/s)" if r.get("embed_new_prompts") else " (cached)"
    sel = f" ({ph['select']:.0f} s)" if "select" in ph else ""
    load = f"{r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f}"
    return (
        f"| {r['prompts']:,} | {r['run']} | {_minutes(r['wall_s'])} | {_minutes(r['cpu_s'])} | "
        f"{ph.get('prepare', 0):.0f} s | {ph.get('embed', 0):.0f} s{rate} | {ph.get('features', 0):.0f} s | "
        f"{ph.get('fit', 0):.0f} s{sel} | {ph.get('evaluate', 0):.0f} s | {ph.get('log', 0):.0f} s | "
        f"{r['peak_rss_bytes'] / 1024**3:.2f} GB | {r.get('layout')} | {load} |"
    )


def save_json(results: dict[str, Any], out: Path) -> Path:
    from router.atomic_io import write_json_atomic

    path = out.with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    results["runs"] = sorted(results["runs"], key=lambda r: (r["prompts"], r["run"] != "cold"))
    write_json_atomic(path, results, mode=0o644)
    return path


def plot(results: dict[str, Any], out: Path) -> Path:
    """Wall time (minutes) and peak RSS (GB) against prompts, cold and cached, with the targets."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from training.plots import save_figure

    fig = Figure(figsize=(11, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_t, ax_m = fig.subplots(1, 2)
    styles = {"cold": ("tab:blue", "o"), "cached": ("tab:orange", "s")}
    for kind, (color, marker) in styles.items():
        runs = [r for r in results["runs"] if r["run"] == kind]
        if not runs:
            continue
        n = [r["prompts"] for r in runs]
        ax_t.plot(n, [r["wall_s"] / 60 for r in runs], marker=marker, color=color, label=f"{kind} embeddings")
        ax_t.plot(n, [r["cpu_s"] / 120 for r in runs], ls=":", color=color, label=f"{kind}: CPU time / 2")
        ax_m.plot(n, [r["peak_rss_bytes"] / 1024**3 for r in runs], marker=marker, color=color, label=kind)
        for r in runs:
            ax_t.annotate(
                f"load {r['load_before'][0]:.1f}",
                (r["prompts"], r["wall_s"] / 60),
                fontsize=7,
                textcoords="offset points",
                xytext=(4, -10),
                color=color,
            )
    ax_t.axhline(TARGET_COLD_S / 60, color="tab:blue", ls="--", lw=1, label="target cold: 12 min")
    ax_t.axhline(TARGET_CACHED_S / 60, color="tab:orange", ls="--", lw=1, label="target cached: 5 min")
    ax_m.axhline(TARGET_RSS_BYTES / 1024**3, color="tab:red", ls="--", lw=1, label="target: 8 GB")
    ax_t.set(
        xlabel="prompts in the log",
        ylabel="wall time of tierwise train (minutes)",
        xlim=(0, None),
        ylim=(0, None),
        title="Time",
    )
    ax_m.set(
        xlabel="prompts in the log",
        ylabel="peak RSS of the process tree (GB)",
        xlim=(0, None),
        ylim=(0, None),
        title="Peak memory",
    )
    for ax in (ax_t, ax_m):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
        ax.xaxis.set_major_formatter(lambda x, _pos: f"{x / 1000:g}k")
    fig.suptitle(
        f"tierwise train on {results['source']} resampled ({results['cpus']} CPUs, {results['machine']}); "
        "load: 1-min load average as the run started (a previous run's tail counts in it)",
        fontsize=9,
    )
    return save_figure(fig, out.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="prompts per log, comma-separated")
    ap.add_argument(
        "--cold-sizes",
        default=None,
        help="sizes that also get a cold run (default: every size); the others fill the cache untimed",
    )
    ap.add_argument("--source", default="routellm", choices=list(SOURCES), help="shared log to resample")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="path prefix of the .json and .png written")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--shared-dir", type=Path, default=QD.DEFAULT_SHARED_DIR)
    ap.add_argument("--plot-only", action="store_true", help="redraw <out>.png from <out>.json")
    ap.add_argument("--cli", default=None, help="command that runs the tierwise CLI (default: this venv's tierwise)")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in <out>.json and do the others (with the same --work, whose caches are reused)",
    )
    args = ap.parse_args(argv)
    out = args.out.with_suffix("") if args.out.suffix in (".json", ".png") else args.out
    if args.plot_only:
        results = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    else:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
        cold = set(sizes) if args.cold_sizes is None else {int(s) for s in args.cold_sizes.split(",") if s.strip()}
        results = {
            "command": "python benchmarks/train_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "source": args.source,
            "seed": SEED,
            "cpus": os.cpu_count(),
            "machine": _cpu_model(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "runs": [],
        }
        if args.resume:
            if args.work is None:
                ap.error("--resume needs the --work folder of the interrupted run")
            previous = out.with_suffix(".json")
            if previous.is_file():
                earlier = json.loads(previous.read_text(encoding="utf-8"))
                if (earlier.get("source"), earlier.get("seed")) != (args.source, SEED):
                    ap.error(f"{previous} measured --source {earlier.get('source')}, not {args.source}")
                results = {**earlier, "resumed": results["started"]}
        work = Path(tempfile.mkdtemp(prefix="tierwise-scale-")) if args.work is None else args.work
        try:
            measure(sizes, cold, args.source, args.shared_dir, work, out, results, args.cli)
        finally:
            if args.work is None:
                shutil.rmtree(work, ignore_errors=True)
    print(TABLE_HEAD)
    for r in results["runs"]:
        print(table_row(r))
    print(f"wrote {save_json(results, out)} and {plot(results, out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
