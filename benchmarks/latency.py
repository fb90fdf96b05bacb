"""Latency and throughput of the routing service: the real server over loopback, measured with wrk.

    .venv/bin/python benchmarks/latency.py                      # trains the default demo model in a temp store
    .venv/bin/python benchmarks/latency.py --model-uri models:/tierwise@champion --tracking-uri sqlite:///...

What it does:

1. Gets a model: ``--model-uri`` (registry URI or directory), or trains the default configuration (default
   encoder and TrainConfig) on the SYNTHETIC demo log and registers it in a temporary SQLite MLflow store.
2. In-process: ``Router.route`` on 500 distinct short prompts (and 100 long ones), one at a time: p50 / p95 / p99.
3. Starts ``tierwise serve`` (1 worker unless ``--workers``), warms it up, and runs ``wrk -t1 --latency`` against
   ``POST /v1/route`` at concurrency 1 and 32 for short (~30 token) and long (~400 token) prompts. Every request
   carries a different prompt (a counter plus random words generated in wrk's Lua), so nothing is cached.
4. Prints one markdown table (requests/s, p50 / p95 / p99, errors, mean micro-batch size, server CPU per request, full
   garbage collections and total GC pause during the run)
   with the encoder, the machine and the peak RSS of the worker.

Needs ``wrk`` (``apt-get install -y wrk``) and psutil. wrk shares the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from harness import RssSampler, lua_distinct, make_prompt, percentile, run_wrk  # noqa: E402 - benchmarks/harness.py
from service_server import ServerProcess  # noqa: E402 - the tests' real-server helper

SHORT_WORDS = 22  # ~30 tokens with the prefix
LONG_WORDS = 360  # ~400 tokens


def lua_script(n_words: int, seed: int) -> str:
    return lua_distinct('{"prompt":"', '"}', n_words, seed)


def train_default_model(store: str) -> str:
    from training.demo import demo_catalog, demo_log
    from training.pipeline import train

    print("training the default configuration on the SYNTHETIC demo log (a few minutes) ...", file=sys.stderr)
    res = train(demo_log(), catalog=demo_catalog(), register="tierwise-bench", tracking_uri=store, progress=False)
    return f"models:/tierwise-bench/{res.model_version}"


def in_process(model_uri: str, tracking_uri: str | None, n_short: int, n_long: int) -> dict[str, object]:
    from router.core import Router

    r = Router.load(model_uri, tracking_uri=tracking_uri)  # deletes its download: the model is in memory
    rng = random.Random(1)
    for i in range(20):
        r.route(make_prompt(rng, -i, SHORT_WORDS))
    out: dict[str, object] = {
        "encoder": f"{r.meta.encoder.get('kind')}:{r.meta.encoder.get('source')}",
        "router": r.ref.label,
    }
    for label, n, words in (("short", n_short, SHORT_WORDS), ("long", n_long, LONG_WORDS)):
        if n == 0:
            continue
        prompts = [make_prompt(rng, i, words) for i in range(n)]
        tok = r.encoder.window.tokenizer
        out[f"{label}_tokens"] = statistics.mean(len(tok.encode(p).ids) for p in prompts[:50])
        times = []
        for p in prompts:
            t0 = time.perf_counter()
            r.route(p)
            times.append((time.perf_counter() - t0) * 1000)
        out[label] = {q: percentile(times, q) for q in (50, 95, 99)}
    return out


class Server(ServerProcess):
    """The test suite's server process (tests/service_server.py) plus what the benchmark reads from it."""

    DEFAULT_ENV: dict[str, str] = {}  # MLflow's own retry defaults

    def __init__(self, model_uri: str, tracking_uri: str | None, home: Path, workers: int, env: dict[str, str]):
        e = {**env, "TIERWISE_HOME": str(home), "TIERWISE_MODEL_URI": model_uri}
        if tracking_uri:
            e["TIERWISE_TRACKING_URI"] = tracking_uri
        super().__init__(e, home / "server.log", ["--workers", str(workers), "--log-level", "warning"])

    def processes(self) -> list:
        import psutil

        p = psutil.Process(self.proc.pid)
        kids = p.children(recursive=True)
        return kids or [p]

    def metric(self, name: str, label: str = "") -> float:
        """Sum of the samples of ``name`` (whose label set contains ``label``, e.g. 'generation="2"')."""
        import httpx

        total = 0.0
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if (line.startswith(name + " ") or line.startswith(name + "{")) and label in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def gc_totals(self) -> tuple[float, float]:
        """(full collections, seconds paused in all collections) so far."""
        return (
            self.metric("tierwise_gc_pause_seconds_count", 'generation="2"'),
            self.metric("tierwise_gc_pause_seconds_sum"),
        )







def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-uri", help="Model to serve (default: train the default demo model).")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI for --model-uri.")
    ap.add_argument("--duration", type=int, default=10, help="Seconds per wrk run.")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--skip-long", action="store_true")
    ap.add_argument("--env", action="append", default=[], help="Extra server env, e.g. TIERWISE_BATCH_WINDOW_MS=2")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("error: wrk is not installed (apt-get install -y wrk)")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    work = Path(tempfile.mkdtemp(prefix="tierwise-bench-"))
    os.environ.setdefault("TIERWISE_HOME", str(work / "home"))
    tracking = args.tracking_uri
    model_uri = args.model_uri
    if model_uri is None:
        tracking = f"sqlite:///{work / 'mlflow.db'}"
        model_uri = train_default_model(tracking)

    load0 = os.getloadavg()
    print("in-process Router.route ...", file=sys.stderr)
    inproc = in_process(model_uri, tracking, 500, 0 if args.skip_long else 100)

    env = dict(e.split("=", 1) for e in args.env)
    (work / "serve").mkdir()
    server = Server(model_uri, tracking, work / "serve", args.workers, env)
    rows = []
    try:
        ready = server.wait_ready(timeout=300)
        scripts = {}
        for label, words in (("short", SHORT_WORDS), ("long", LONG_WORDS)):
            scripts[label] = work / f"{label}.lua"
            scripts[label].write_text(lua_script(words, seed=7), encoding="utf-8")
        url = server.url + "/v1/route"
        subprocess.run(["wrk", "-t1", "-c8", "-d3s", "-s", str(scripts["short"]), url], capture_output=True, check=True)
        sampler = RssSampler(server)
        sampler.start()
        for label in ("short",) + (() if args.skip_long else ("long",)):
            for conc in (int(c) for c in args.concurrency.split(",")):
                print(f"wrk {label} c={conc} ...", file=sys.stderr)
                b_count, b_sum = (
                    server.metric("tierwise_microbatch_size_count"),
                    server.metric("tierwise_microbatch_size_sum"),
                )
                gc0 = server.gc_totals()
                cpu0 = sum(sum(p.cpu_times()[:2]) for p in server.processes())
                res = run_wrk(url, scripts[label], conc, args.duration)
                cpu1 = sum(sum(p.cpu_times()[:2]) for p in server.processes())
                gc1 = server.gc_totals()
                res["full_gc"], res["gc_ms"] = gc1[0] - gc0[0], (gc1[1] - gc0[1]) * 1000
                calls = server.metric("tierwise_microbatch_size_count") - b_count
                prompts = server.metric("tierwise_microbatch_size_sum") - b_sum
                res["batch"] = prompts / calls if calls else float("nan")
                res["cpu_ms"] = (cpu1 - cpu0) * 1000 / max(res["requests"], 1)
                rows.append((label, conc, res))
        sampler.stop_event.set()
        sampler.join()
        peak_rss = sampler.peak
        frozen = server.metric("tierwise_gc_frozen_objects")
    finally:
        server.stop()
    load1 = os.getloadavg()

    enc = inproc["encoder"]
    print()
    print(
        f"tierwise latency benchmark: model {inproc['router']}, encoder **{enc}**, "
        f"server `tierwise serve --workers {args.workers}` (uvicorn, httptools, uvloop) "
        f"{' '.join(args.env)}".rstrip()
    )
    print(
        f"machine: {os.cpu_count()} CPU cores shared by server and wrk; load average before/after "
        f"{load0[0]:.2f}/{load1[0]:.2f}; prompts: short ~{inproc['short_tokens']:.0f} tokens"
        + ("" if args.skip_long else f", long ~{inproc['long_tokens']:.0f} tokens (encoder window 256)")
    )
    print()
    print(
        "| where | prompts | concurrency | requests/s | p50 ms | p95 ms | p99 ms | errors | mean batch "
        "| server CPU ms/req | full GCs / GC ms | encoder |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label in ("short", "long"):
        if label in inproc and isinstance(inproc[label], dict) and inproc[label]:
            q = inproc[label]
            print(
                f"| in-process `Router.route` | {label} | 1 | - | {q[50]:.2f} | {q[95]:.2f} | "
                f"{q[99]:.2f} | 0 | 1 | - | - | {enc} |"
            )
    for label, conc, r in rows:
        print(
            f"| HTTP `POST /v1/route` | {label} | {conc} | {r['rps']:.0f} | {r['p50'] / 1000:.2f} | "
            f"{r['p95'] / 1000:.2f} | {r['p99'] / 1000:.2f} | {r['errors']:.0f} | {r['batch']:.1f} | "
            f"{r['cpu_ms']:.2f} | {r['full_gc']:.0f} / {r['gc_ms']:.0f} | {enc} |"
        )
    print()
    print(
        f"peak RSS of the worker process(es): {peak_rss / 2**20:.0f} MiB "
        f"(model {ready.get('router_version')}, encoder {enc}); heap objects frozen after the model load "
        f"(TIERWISE_FREEZE_HEAP): {frozen:,.0f}"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
