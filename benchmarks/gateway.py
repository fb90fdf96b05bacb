"""What the OpenAI-compatible gateway adds to a chat completion: the real server and a real fake upstream over loopback.

    .venv/bin/python benchmarks/gateway.py                       # the test fixture bundle, 10 s per wrk run
    .venv/bin/python benchmarks/gateway.py --duration 5 --concurrency 1,8,32 --model-uri models:/tierwise@champion

What it does:

1. Starts the fake OpenAI upstream (``tests/fake_upstream.py``: zero latency, a short fixed answer, usage on) and
   ``tierwise serve`` (1 worker unless ``--workers``) with the fixture bundle (or ``--model-uri``), an upstreams file
   that maps every catalog model to the fake, and the in-process response cache on, in a temporary TIERWISE_HOME.
2. ``wrk -t1 --latency`` at each concurrency on five scenarios: ``direct`` (the fake itself: the baseline),
   ``route`` (``POST /v1/route``: the routing decision alone), ``gateway pass-through`` (``model: demo-small``, proxied
   without routing), ``gateway routed`` (``model: tierwise``) and ``cache hit`` (one body with ``temperature: 0``
   repeated after a priming request). Every other request body differs (a counter plus random words from wrk's Lua)
   and has no temperature, so nothing else is cached. One markdown table.
3. Overhead, sequentially from one httpx client (scenarios interleaved so a load change on a shared machine hits
   them all alike): client-measured latency and the ``x-tierwise-overhead-ms`` header of every gateway response.
4. Time to the first streamed ``data:`` line: direct vs the gateway (pass-through and routed), sequential.
5. The targets checked, the ``tierwise_gateway_overhead_seconds`` histogram from ``/metrics``, the worker's peak RSS
   and the machine (load average before and after: wrk, the fake and the server share its cores).

Needs ``wrk`` (``apt-get install -y wrk``) and psutil.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from fake_upstream import FakeUpstream  # noqa: E402 - the tests' fake OpenAI server
from harness import LUA_DONE, RssSampler, lua_distinct, make_prompt, percentile, run_wrk  # noqa: E402 - benchmarks/harness.py
from service_server import ServerProcess  # noqa: E402 - the tests' real-server helper

FIXTURE_BUNDLE = ROOT / "tests" / "fixtures" / "bundle_11c0253" / "bundle"
ANSWER = "Sure: here is a short fixed answer."
PASS_MODEL = "demo-small"  # the pass-through scenario's model (must be in the served catalog)
N_WORDS = 22  # ~30 tokens with the prefix, as benchmarks/latency.py's short prompts
CACHED_PROMPT = "Request cached: what is the capital of France and why did it become the capital?"

# Targets of the issue (same run, same machine, fake upstream with zero latency).
ROUTED_OVER_ROUTE_MS = 1.0
CACHE_HIT_P50_MS = 2.0
PROXIED_RPS_AT_32 = 400.0
TTFT_ADDED_MS = 5.0


def chat_body(model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


# --- wrk -----------------------------------------------------------------------------------------------------------
def lua_chat(model: str, seed: int) -> str:
    """Distinct bodies for ``POST /v1/route`` (``model`` "route") or a chat completion with ``model``."""
    if model == "route":
        return lua_distinct('{"prompt":"', '"}', N_WORDS, seed)
    return lua_distinct('{"model":"' + model + '","messages":[{"role":"user","content":"', '"}]}', N_WORDS, seed)


def lua_fixed(body: dict[str, Any]) -> str:
    """A script that sends the same body every time (the cache-hit scenario)."""
    text = json.dumps(body).replace("\\", "\\\\").replace("'", "\\'")
    return f"""
wrk.method = "POST"
wrk.body = '{text}'
wrk.headers["Content-Type"] = "application/json"
{LUA_DONE}"""




# --- the servers ---------------------------------------------------------------------------------------------------
def catalog_models(model_uri: str, tracking_uri: str | None) -> list[str]:
    """The served catalog's model names (the upstreams file must name every one before the server starts)."""
    from router.bundle import find_bundle
    from router.core import download_model, download_root, local_model_dir

    local = local_model_dir(model_uri)
    root: Path | None = None
    if local is None:
        fetched, _ = download_model(model_uri, tracking_uri=tracking_uri)
        root, local = download_root(fetched), fetched
    try:
        meta = json.loads((find_bundle(local) / "tierwise.json").read_text(encoding="utf-8"))
        return [str(t["model"]) for t in meta["catalog"]["tiers"]]
    finally:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


class Server(ServerProcess):
    """``tierwise serve`` with the gateway on (tests/service_server.py) plus what the benchmark reads from it."""

    DEFAULT_ENV: dict[str, str] = {}  # MLflow's own retry defaults

    def processes(self) -> list[Any]:
        import psutil

        p = psutil.Process(self.proc.pid)
        kids = p.children(recursive=True)
        return kids or [p]

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        out = {}
        for fam in text_string_to_metric_families(httpx.get(self.url + "/metrics", timeout=10).text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        return sum(
            v
            for (n, ls), v in self.samples().items()
            if n == name and all(dict(ls).get(k) == val for k, val in labels.items())
        )




def cpu_seconds(procs: list[Any]) -> float:
    """User + system CPU seconds of ``procs`` so far."""
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def reset_fake(fake: FakeUpstream) -> None:
    """Zero latency, a short fixed answer, usage on; forgets the calls recorded so far (they would pile up)."""
    fake.reset()
    fake.configure(content=ANSWER)


# --- sequential measurements ---------------------------------------------------------------------------------------
def interleaved(n: int, steps: dict[str, Callable[[int], Any]]) -> dict[str, list[Any]]:
    """Run every step once per round, n rounds, so a change of load on a shared machine hits every step alike."""
    out: dict[str, list[Any]] = {k: [] for k in steps}
    for i in range(n):
        for k, step in steps.items():
            out[k].append(step(i))
    return out


def check(r: httpx.Response, what: str) -> httpx.Response:
    if r.status_code != 200:
        raise RuntimeError(f"{what}: HTTP {r.status_code}: {r.text[:500]}")
    return r


def timed_post(client: httpx.Client, url: str, body: dict[str, Any], what: str) -> tuple[float, httpx.Response]:
    t0 = time.perf_counter()
    r = client.post(url, json=body)
    ms = (time.perf_counter() - t0) * 1000
    return ms, check(r, what)


def ttft(client: httpx.Client, url: str, body: dict[str, Any], what: str) -> float:
    """ms to the first ``data:`` line of a streamed answer (the rest is read to the end, then dropped)."""
    t0 = time.perf_counter()
    first = None
    with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"{what}: HTTP {r.status_code}: {r.text[:500]}")
        for line in r.iter_lines():
            if first is None and line.startswith("data:"):
                first = (time.perf_counter() - t0) * 1000
    if first is None:
        raise RuntimeError(f"{what}: the stream had no data: line")
    return first


def logged_calls(db: Path, request_ids: list[str], timeout: float = 10.0) -> dict[str, list[float]]:
    """The decision log's own timings of these requests: in-handler total, upstream wait, overhead (ms)."""
    import sqlite3

    wanted = set(request_ids)
    deadline = time.monotonic() + timeout
    while True:  # the writer commits in the background within milliseconds
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT request_id, latency_ms, upstream_ms, overhead_ms FROM calls").fetchall()
        rows = [r for r in rows if r[0] in wanted]
        if len(rows) == len(wanted) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return {k: [float(r[i]) for r in rows] for i, k in ((1, "latency"), (2, "upstream"), (3, "overhead"))}


def histogram_summary(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> dict[str, float]:
    """count, sum, mean and bucket-interpolated p50 / p99 (seconds) of a Prometheus histogram."""
    count = sum(v for (n, _), v in samples.items() if n == name + "_count")
    total = sum(v for (n, _), v in samples.items() if n == name + "_sum")
    buckets = sorted((float(dict(ls)["le"]), v) for (n, ls), v in samples.items() if n == name + "_bucket")
    out = {"count": count, "sum": total, "mean": total / count if count else float("nan")}
    for q in (50, 99):
        rank, prev_le, prev_c, est = count * q / 100, 0.0, 0.0, float("nan")
        for le, c in buckets:
            if c >= rank and count:
                est = le if le == float("inf") else prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9)
                break
            prev_le, prev_c = le, c
        out[f"p{q}"] = est
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


# --- main ----------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-uri", default=str(FIXTURE_BUNDLE), help="Model to serve (default: the test fixture).")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI for a registry --model-uri.")
    ap.add_argument("--duration", type=int, default=10, help="Seconds per wrk run.")
    ap.add_argument("--concurrency", default="1,32", help="wrk connections, comma separated.")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--requests", type=int, default=300, help="Sequential requests per scenario (overhead).")
    ap.add_argument("--stream-requests", type=int, default=200, help="Sequential streams per scenario (TTFT).")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("error: wrk is not installed (apt-get install -y wrk)")
    try:
        concurrencies = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        sys.exit(f"error: --concurrency must be comma-separated integers, got {args.concurrency!r}")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    load0 = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="tierwise-gateway-bench-"))
    try:
        models = catalog_models(args.model_uri, args.tracking_uri)
        if PASS_MODEL not in models:
            sys.exit(f"error: the pass-through scenario calls {PASS_MODEL!r}, not in the catalog ({', '.join(models)})")
        with FakeUpstream(log_path=work / "fake.log") as fake:
            reset_fake(fake)
            ups = {m: {"base_url": fake.base_url} for m in models}
            upstreams = work / "upstreams.yaml"
            upstreams.write_text(yaml.safe_dump({"defaults": {"timeout_s": 10}, "upstreams": ups}), encoding="utf-8")
            env = {
                "TIERWISE_HOME": str(work / "home"),
                "TIERWISE_MODEL_URI": args.model_uri,
                "TIERWISE_UPSTREAMS": str(upstreams),
                "TIERWISE_CACHE": "true",
            }
            if args.tracking_uri:
                env["TIERWISE_TRACKING_URI"] = args.tracking_uri
            server = Server(env, work / "server.log", ["--workers", str(args.workers), "--log-level", "warning"])
            try:
                ready = server.wait_ready(timeout=300)
                results = measure(args, concurrencies, fake, server, work / "home")
            except BaseException:
                server.stop()
                print(f"server log (last lines):\n{server.log()[-3000:]}", file=sys.stderr)
                raise
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()
    report(args, concurrencies, ready, results, load0, load1)


def measure(
    args: argparse.Namespace, concurrencies: list[int], fake: FakeUpstream, server: Server, home: Path
) -> dict[str, Any]:
    direct_url = fake.base_url + "/chat/completions"
    chat_url = server.url + "/v1/chat/completions"
    route_url = server.url + "/v1/route"
    cached_body = chat_body("tierwise", CACHED_PROMPT, temperature=0)
    scripts_dir = Path(tempfile.mkdtemp(prefix="lua-", dir=server.log_path.parent))
    scripts = {
        "direct": lua_chat(PASS_MODEL, 1),
        "route": lua_chat("route", 2),
        "gateway pass-through": lua_chat(PASS_MODEL, 3),
        "gateway routed": lua_chat("tierwise", 4),
        "cache hit": lua_fixed(cached_body),
    }
    urls = {"direct": direct_url, "route": route_url, "cache hit": chat_url}
    paths = {}
    for name, text in scripts.items():
        paths[name] = scripts_dir / (name.replace(" ", "_") + ".lua")
        paths[name].write_text(text, encoding="utf-8")

    rng = random.Random(11)
    with httpx.Client(timeout=30) as c:
        # correctness first: each scenario answers 200 and the cached body is a hit from the second time on
        check(c.post(route_url, json={"prompt": make_prompt(rng, -1, N_WORDS)}), "route")
        r = check(c.post(chat_url, json=chat_body(PASS_MODEL, make_prompt(rng, -2, N_WORDS))), "pass-through")
        if (
            r.headers.get("x-tierwise-cache") not in ("bypass", "miss", "off")
            or r.json()["choices"][0]["message"]["content"] != ANSWER
        ):
            raise RuntimeError(f"pass-through: unexpected answer or cache status {r.headers.get('x-tierwise-cache')}")
        check(c.post(chat_url, json=cached_body), "cache priming")
        r = check(c.post(chat_url, json=cached_body), "cache hit")
        if not r.headers.get("x-tierwise-cache", "").startswith("hit"):
            raise RuntimeError(
                f"the repeated temperature-0 body was not a cache hit: {r.headers.get('x-tierwise-cache')}"
            )
    print("warming up ...", file=sys.stderr)
    for name in ("route", "gateway routed"):
        run_wrk(urls.get(name, chat_url), paths[name], 8, 3)
    reset_fake(fake)

    import psutil

    assert fake.proc is not None
    fake_proc = psutil.Process(fake.proc.pid)
    sampler = RssSampler(server)
    sampler.start()
    rows = []
    for conc in concurrencies:
        for name, path in paths.items():
            print(f"wrk {name} c={conc} ...", file=sys.stderr)
            hits0 = server.metric("tierwise_cache_requests_total", result="hit-l1")
            b0 = server.metric("tierwise_microbatch_size_count"), server.metric("tierwise_microbatch_size_sum")
            cpu0 = cpu_seconds(server.processes()), cpu_seconds([fake_proc])
            res = run_wrk(urls.get(name, chat_url), path, conc, args.duration)
            cpu1 = cpu_seconds(server.processes()), cpu_seconds([fake_proc])
            hits = server.metric("tierwise_cache_requests_total", result="hit-l1") - hits0
            calls = server.metric("tierwise_microbatch_size_count") - b0[0]
            res["batch"] = (server.metric("tierwise_microbatch_size_sum") - b0[1]) / calls if calls else float("nan")
            n = max(res["requests"], 1)
            # wrk does not count the requests still in flight when it stops; the server does
            res["hit_share"] = min(hits / n, 1.0)
            res["server_cpu_ms"] = (cpu1[0] - cpu0[0]) * 1000 / n
            res["fake_cpu_ms"] = (cpu1[1] - cpu0[1]) * 1000 / n
            rows.append((name, conc, res))
            reset_fake(fake)

    print("sequential overhead ...", file=sys.stderr)
    request_ids: dict[str, list[str]] = {}
    with httpx.Client(timeout=30) as c:

        def gateway_step(model: str) -> Callable[[int], tuple[float, float, str]]:
            def step(i: int) -> tuple[float, float, str]:
                ms, r = timed_post(c, chat_url, chat_body(model, make_prompt(rng, i, N_WORDS)), model)
                request_ids.setdefault(model, []).append(r.headers["x-tierwise-request-id"])
                return ms, float(r.headers["x-tierwise-overhead-ms"]), r.headers.get("x-tierwise-cache", "")

            return step

        def cached_step(i: int) -> tuple[float, float, str]:
            ms, r = timed_post(c, chat_url, cached_body, "cache hit")
            return ms, float(r.headers["x-tierwise-overhead-ms"]), r.headers.get("x-tierwise-cache", "")

        def direct_step(i: int) -> tuple[float, float, str]:
            return timed_post(c, direct_url, chat_body(PASS_MODEL, make_prompt(rng, i, N_WORDS)), "direct")[0], 0.0, ""

        def route_step(i: int) -> tuple[float, float, str]:
            ms, r = timed_post(c, route_url, {"prompt": make_prompt(rng, i, N_WORDS)}, "route")
            return ms, float(r.headers["x-tierwise-latency-ms"]), ""

        seq = interleaved(
            args.requests,
            {
                "direct": direct_step,
                "route": route_step,
                "gateway pass-through": gateway_step(PASS_MODEL),
                "gateway routed": gateway_step("tierwise"),
                "cache hit": cached_step,
            },
        )
        reset_fake(fake)

        print("sequential time to first token ...", file=sys.stderr)

        def stream_step(url: str, model: str) -> Callable[[int], float]:
            def step(i: int) -> float:
                return ttft(c, url, chat_body(model, make_prompt(rng, i, N_WORDS), stream=True), f"stream {model}")

            return step

        streams = interleaved(
            args.stream_requests,
            {
                "direct": stream_step(direct_url, PASS_MODEL),
                "gateway pass-through": stream_step(chat_url, PASS_MODEL),
                "gateway routed": stream_step(chat_url, "tierwise"),
            },
        )
    sampler.stop_event.set()
    sampler.join()
    samples = server.samples()
    shutil.rmtree(scripts_dir, ignore_errors=True)
    logged = {model: logged_calls(home / "decisions.db", ids) for model, ids in request_ids.items()}
    return {
        "rows": rows,
        "seq": seq,
        "streams": streams,
        "peak_rss": sampler.peak,
        "logged": logged,
        "hist": histogram_summary(samples, "tierwise_gateway_overhead_seconds"),
        "dropped": sum(v for (n, _), v in samples.items() if n == "tierwise_decision_log_dropped_total"),
        "cache": {dict(ls).get("result"): v for (n, ls), v in samples.items() if n == "tierwise_cache_requests_total"},
    }


def report(
    args: argparse.Namespace,
    concurrencies: list[int],
    ready: dict[str, Any],
    res: dict[str, Any],
    load0: tuple[float, float, float],
    load1: tuple[float, float, float],
) -> None:
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
    p50 = lambda v: percentile(v, 50)  # noqa: E731 - read many times below
    print()
    print(
        f"tierwise gateway benchmark: model {ready.get('router_version', args.model_uri)}, "
        f"`tierwise serve --workers {args.workers}` (uvicorn), TIERWISE_CACHE=true (in process); upstream: "
        f"tests/fake_upstream.py (1 uvicorn worker, zero latency, a {len(ANSWER.split())}-word answer, usage on)"
    )
    print(
        f"machine: {machine()}; shared by wrk, the fake upstream and the server; load average (1 min) "
        f"before/after {load0[0]:.2f}/{load1[0]:.2f}; {wrk_version[0].split(' [')[0] if wrk_version else 'wrk'}"
    )
    print(f"prompts: ~30 tokens, a counter plus {N_WORDS} random words, every body distinct except the cache hit")
    print()
    print(f"wrk -t1 --latency, {args.duration} s per run:")
    print()
    print(
        "| scenario | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors | cache hits "
        "| mean encoder batch | server CPU ms/req | fake CPU ms/req |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    by: dict[tuple[str, int], dict[str, float]] = {}
    for name, conc, r in res["rows"]:
        by[(name, conc)] = r
        errors = f"{r['http_errors']:.0f}" + (f" (+{r['socket_errors']:.0f} socket)" if r["socket_errors"] else "")
        hits = "-" if name in ("direct", "route") else f"{100 * r['hit_share']:.0f}%"
        batch = f"{r['batch']:.1f}" if name in ("route", "gateway routed") else "-"  # the others never encode
        print(
            f"| {name} | {conc} | {r['rps']:.0f} | {r['p50'] / 1000:.2f} | {r['p95'] / 1000:.2f} | "
            f"{r['p99'] / 1000:.2f} | {errors} | {hits} | {batch} | {r['server_cpu_ms']:.2f} | "
            f"{r['fake_cpu_ms']:.2f} |"
        )

    seq = res["seq"]

    def col(name: str, i: int) -> list[float]:
        return [r[i] for r in seq[name]]

    print()
    print(f"Sequential, one httpx client, {args.requests} requests per scenario (interleaved):")
    print()
    print("| scenario | client p50 ms | client p99 ms | header p50 ms | header p99 ms | x-tierwise-cache |")
    print("|---|---|---|---|---|---|")
    for name, rows in seq.items():
        statuses = sorted({r[2] for r in rows if r[2]})
        h50 = h99 = "-"
        if name != "direct":
            h50, h99 = f"{p50(col(name, 1)):.3f}", f"{percentile(col(name, 1), 99):.3f}"
        print(
            f"| {name} | {p50(col(name, 0)):.2f} | {percentile(col(name, 0), 99):.2f} | {h50} | {h99} | "
            f"{', '.join(statuses) or '-'} |"
        )
    print()
    print(
        "header: `x-tierwise-overhead-ms` for the gateway (time in the handler minus the time waiting for the "
        "upstream), `x-tierwise-latency-ms` for `/v1/route` (the routing decision inside the server)"
    )
    for model, label in ((PASS_MODEL, "pass-through"), ("tierwise", "routed")):
        lg = res["logged"].get(model)
        if lg and lg["latency"]:
            print(
                f"- decision log `calls` rows of the sequential {label} requests ({len(lg['latency'])}): in-handler "
                f"total p50 {p50(lg['latency']):.2f} ms = upstream wait p50 {p50(lg['upstream']):.2f} ms + "
                f"overhead p50 {p50(lg['overhead']):.2f} ms"
            )
    direct_wrk = by.get(("direct", 1), {}).get("p50", float("nan")) / 1000
    print(
        f"- the same upstream called directly: wrk p50 at c=1 {direct_wrk:.2f} ms, this sequential httpx client "
        f"p50 {p50(col('direct', 0)):.2f} ms"
    )

    streams = res["streams"]
    d50 = p50(streams["direct"])
    print()
    print(f"Time to the first streamed `data:` line, sequential httpx, {args.stream_requests} streams per scenario:")
    print()
    print("| scenario | TTFT p50 ms | TTFT p99 ms | added p50 ms (vs direct) |")
    print("|---|---|---|---|")
    for name, vals in streams.items():
        added = "-" if name == "direct" else f"{p50(vals) - d50:+.2f}"
        print(f"| {name} | {p50(vals):.2f} | {percentile(vals, 99):.2f} | {added} |")

    routed_hdr, route_hdr = p50(col("gateway routed", 1)), p50(col("route", 1))
    routed_added = p50(col("gateway routed", 0)) - p50(col("direct", 0))
    route_client = p50(col("route", 0))
    route_wrk = by.get(("route", 1), {}).get("p50", float("nan")) / 1000
    print()
    print("Targets (fake upstream with zero latency; same run):")
    print()
    print(f"- routed proxy overhead p50 <= routing decision + {ROUTED_OVER_ROUTE_MS:g} ms:")
    print(
        f"  - in the server, same sequential phase: routed `x-tierwise-overhead-ms` {routed_hdr:.2f} ms vs "
        f"`/v1/route` `x-tierwise-latency-ms` {route_hdr:.2f} + 1 = {route_hdr + 1:.2f} ms "
        f"{verdict(routed_hdr <= route_hdr + ROUTED_OVER_ROUTE_MS)}"
    )
    print(
        f"  - end to end, same sequential phase: routed minus direct (client) {routed_added:.2f} ms vs `/v1/route` "
        f"over HTTP (client) {route_client:.2f} + 1 = {route_client + 1:.2f} ms "
        f"{verdict(routed_added <= route_client + ROUTED_OVER_ROUTE_MS)}"
    )
    print(
        f"  - header vs the wrk `/v1/route` p50 at c=1 (a different phase of the run): {routed_hdr:.2f} vs "
        f"{route_wrk:.2f} + 1 = {route_wrk + 1:.2f} ms {verdict(routed_hdr <= route_wrk + ROUTED_OVER_ROUTE_MS)}"
    )
    pt_added = p50(col("gateway pass-through", 0)) - p50(col("direct", 0))
    print(
        f"- (no target) pass-through overhead p50: header {p50(col('gateway pass-through', 1)):.2f} ms; "
        f"end to end (pass-through minus direct, client) {pt_added:.2f} ms"
    )
    cache_wrk = by.get(("cache hit", 1), {}).get("p50", float("nan")) / 1000
    cache_httpx = p50(col("cache hit", 0))
    print(
        f"- cache hit p50 <= {CACHE_HIT_P50_MS:g} ms, client-measured: wrk at c=1 {cache_wrk:.2f} ms "
        f"{verdict(cache_wrk <= CACHE_HIT_P50_MS)}; sequential httpx {cache_httpx:.2f} ms "
        f"{verdict(cache_httpx <= CACHE_HIT_P50_MS)} (httpx's own share: its direct call takes "
        f"{p50(col('direct', 0)) - direct_wrk:.2f} ms more than wrk's); in the server "
        f"{p50(col('cache hit', 1)):.3f} ms"
    )
    top = 32 if ("gateway pass-through", 32) in by else max(concurrencies)
    pt, rt = by[("gateway pass-through", top)]["rps"], by[("gateway routed", top)]["rps"]
    print(
        f"- >= {PROXIED_RPS_AT_32:g} proxied req/s at concurrency {top}: pass-through (the proxy alone: the reading "
        f"the target is checked against) {pt:.0f} {verdict(pt >= PROXIED_RPS_AT_32)}; routed (routing + proxy) "
        f"{rt:.0f} {verdict(rt >= PROXIED_RPS_AT_32)}; direct to the fake {by[('direct', top)]['rps']:.0f}"
        + ("" if top == 32 else " (no c=32 run: read at the highest concurrency run)")
    )
    pts, rts = p50(streams["gateway pass-through"]) - d50, p50(streams["gateway routed"]) - d50
    print(
        f"- time to first token adds <= {TTFT_ADDED_MS:g} ms: pass-through {pts:+.2f} ms "
        f"{verdict(pts <= TTFT_ADDED_MS)}; routed {rts:+.2f} ms {verdict(rts <= TTFT_ADDED_MS)}"
    )
    h = res["hist"]
    print()
    print(
        f"/metrics `tierwise_gateway_overhead_seconds` (whole run, every gateway scenario, cache hits included): "
        f"count {h['count']:.0f}, sum {h['sum']:.2f} s, mean {1000 * h['mean']:.2f} ms, bucket-interpolated "
        f"p50 {1000 * h['p50']:.2f} ms / p99 {1000 * h['p99']:.2f} ms; cache requests by result "
        + ", ".join(f"{k} {v:.0f}" for k, v in sorted(res["cache"].items()))
        + f"; decision-log rows dropped {res['dropped']:.0f}"
    )
    print(f"peak RSS of the worker process(es): {res['peak_rss'] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
