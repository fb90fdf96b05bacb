"""Aggregate throughput of ``POST /v1/route`` with 1, 2 and 3 replicas behind a real load balancer, on the
multi-machine setup of docs/deployment.md squeezed onto this box.

    .venv/bin/python benchmarks/replicas.py                            # nginx, 1/2/3 replicas, 15 s per row
    .venv/bin/python benchmarks/replicas.py --lb nginx,haproxy --replicas 1,2,3,4 --duration 20 --concurrency 64
    .venv/bin/python benchmarks/replicas.py --model-uri models:/tierwise@champion --tracking-uri http://host:5000

What it does:

1. The registry and the shared state: ``mlflow server`` on a fresh PostgreSQL database with its artifacts on disk
   (tests/mlflow_server.py; PostgreSQL at ``TIERWISE_TEST_PG_URL``, default ``postgresql://root@127.0.0.1:5432/
   postgres``), and a second fresh database for the replicas' shared decision log (``--decision-log sqlite`` gives
   each replica a SQLite file instead). The default configuration (default encoder, ``onnx-int8:minilm``) is trained
   on 1,000 prompts of the SYNTHETIC demo log and registered as ``tierwise-bench@champion`` through the server,
   unless ``--model-uri`` names a model already registered (then ``--tracking-uri`` is its store).
2. ``max(--replicas)`` replicas: ``tierwise serve`` processes with one worker each, all following
   ``models:/NAME@champion`` (``TIERWISE_POLL_SECONDS=5``), started once.
3. For each replica count N: the load balancer's configuration for the first N replicas is written to a temporary
   folder and the balancer runs in the foreground on a free port (``nginx -g 'daemon off;'`` or ``haproxy -db``; no
   system service): least-connections balancing, upstream keep-alive shorter than the replicas'
   (TIERWISE_KEEP_ALIVE_S). A 3 s warm-up,
   then ``wrk -t1 -cC -dD`` with distinct short prompts (benchmarks/harness.py; ~30 tokens, nothing cached).
   Also one row straight to replica 1 (no balancer) to show what the balancer costs.
4. One markdown table: requests/s, p50 / p99, errors, the CPU time per request of the replicas (and the cores they
   used together) and of the balancer, how busy the machine's cores were (all processes: wrk, PostgreSQL and
   anything else running share them), the peak RSS of each replica in the run and the 1-minute load average as the
   row started.

Needs ``wrk``, ``nginx`` or ``haproxy`` (Debian packages: ``apt-get install -y wrk nginx haproxy``), a running
PostgreSQL, and psutil.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from harness import RssSampler, lua_distinct, run_wrk  # noqa: E402 - benchmarks/harness.py
from mlflow_server import pg_database, running_mlflow_server  # noqa: E402 - the tests' registry helper
from service_server import ServerProcess, free_port  # noqa: E402 - the tests' real-server helper

from router.service.settings import ServiceSettings  # noqa: E402

NAME = "tierwise-bench"
SHORT_WORDS = 22  # ~30 tokens with the prefix, as benchmarks/latency.py's short prompts
# the replicas' idle keep-alive (ServiceSettings.keep_alive_s): the balancer must drop idle upstreams sooner
UVICORN_KEEP_ALIVE_S = ServiceSettings.model_fields["keep_alive_s"].default


class Replica(ServerProcess):
    """One ``tierwise serve`` replica (1 worker); ``processes()`` for the RSS sampler."""

    DEFAULT_ENV: dict[str, str] = {}  # MLflow's own retry defaults

    def processes(self) -> list[psutil.Process]:
        p = psutil.Process(self.proc.pid)
        return p.children(recursive=True) or [p]


def nginx_config(lb_dir: Path, port: int, upstreams: list[int]) -> list[str]:
    """Write ``nginx.conf`` for ``upstreams`` (loopback ports) into ``lb_dir``; the command that runs it."""
    servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=0;" for p in upstreams)
    temp = "\n".join(
        f"  {kind}_temp_path {lb_dir / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (lb_dir / "nginx.conf").write_text(
        f"""worker_processes 1;
pid {lb_dir / "nginx.pid"};
error_log {lb_dir / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temp}
  upstream tierwise {{
    least_conn;
{servers}
    keepalive 128;
    keepalive_timeout {UVICORN_KEEP_ALIVE_S - 1}s;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://tierwise;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_read_timeout 60s;
    }}
  }}
}}
""",
        encoding="utf-8",
    )
    return [
        "nginx",
        "-p",
        str(lb_dir),
        "-c",
        str(lb_dir / "nginx.conf"),
        "-e",
        str(lb_dir / "error.log"),
        "-g",
        "daemon off;",
    ]


def haproxy_config(lb_dir: Path, port: int, upstreams: list[int]) -> list[str]:
    """Write ``haproxy.cfg`` for ``upstreams`` into ``lb_dir``; the command that runs it in the foreground."""
    servers = "\n".join(f"  server r{i} 127.0.0.1:{p}" for i, p in enumerate(upstreams))
    (lb_dir / "haproxy.cfg").write_text(
        f"""global
  maxconn 4096
  nbthread 1
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive {UVICORN_KEEP_ALIVE_S - 1}s
  retry-on conn-failure empty-response
  retries 2
frontend tierwise
  bind 127.0.0.1:{port}
  default_backend replicas
backend replicas
  balance leastconn
  http-reuse safe
{servers}
""",
        encoding="utf-8",
    )
    return ["haproxy", "-f", str(lb_dir / "haproxy.cfg"), "-db"]


class Balancer:
    """nginx or HAProxy in the foreground on a free loopback port, in front of ``upstreams``."""

    def __init__(self, kind: str, work: Path, upstreams: list[int]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=work))
        self.dir.chmod(0o755)  # nginx's workers run as an unprivileged user when started as root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = (nginx_config if kind == "nginx" else haproxy_config)(self.dir, self.port, upstreams)
        self._log = open(self.dir / "stdout.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{kind} exited with {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{kind} did not answer /healthz in 20 s: {self.log()}")

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in self.dir.glob("*.log"))

    def processes(self) -> list[psutil.Process]:
        p = psutil.Process(self.proc.pid)
        return [p, *p.children(recursive=True)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def stop_all(servers: list[Replica]) -> None:
    for srv in servers:
        srv.stop()


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def machine_busy_seconds() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def measure(
    url: str, script: Path, conc: int, duration: int, replicas: list[Replica], lb: Balancer | None
) -> dict[str, Any]:
    """Warm up for 3 s, then one wrk run against ``url`` with CPU and RSS accounting."""
    subprocess.run(
        ["wrk", "-t1", f"-c{conc}", "-d3s", "-s", str(script), f"{url}/v1/route"], capture_output=True, check=True
    )
    load = os.getloadavg()[0]
    samplers = [RssSampler(r) for r in replicas]
    for s in samplers:
        s.start()
    rep_procs = [p for r in replicas for p in r.processes()]
    lb_procs = lb.processes() if lb else []
    cpu0, lb0, busy0, t0 = cpu_seconds(rep_procs), cpu_seconds(lb_procs), machine_busy_seconds(), time.monotonic()
    res: dict[str, Any] = dict(run_wrk(f"{url}/v1/route", script, conc, duration))
    wall = time.monotonic() - t0
    res["replica_cpu_ms"] = (cpu_seconds(rep_procs) - cpu0) * 1000 / max(res["requests"], 1)
    res["lb_cpu_ms"] = (cpu_seconds(lb_procs) - lb0) * 1000 / max(res["requests"], 1) if lb else float("nan")
    res["busy_cores"] = (machine_busy_seconds() - busy0) / wall
    for s in samplers:
        s.stop_event.set()
        s.join()
    res["rss_mib"] = [s.peak / 2**20 for s in samplers]
    res["load"] = load
    return res


def train_model(tracking_uri: str) -> str:
    from training.demo import demo_catalog, demo_log
    from training.pipeline import train

    print("training the default configuration on 1,000 prompts of the SYNTHETIC demo log ...", file=sys.stderr)
    res = train(
        demo_log(n_prompts=1000), catalog=demo_catalog(), register=NAME, tracking_uri=tracking_uri, progress=False
    )
    return f"models:/{NAME}@champion" if res.promoted else f"models:/{NAME}/{res.model_version}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lb", default="nginx", help="Load balancer(s): nginx, haproxy or both (nginx,haproxy).")
    ap.add_argument("--replicas", default="1,2,3", help="Replica counts to measure, e.g. 1,2,3.")
    ap.add_argument("--concurrency", type=int, default=32, help="wrk connections (the same for every row).")
    ap.add_argument("--duration", type=int, default=15, help="Seconds per wrk run.")
    ap.add_argument(
        "--decision-log",
        choices=("postgresql", "sqlite"),
        default="postgresql",
        help="One shared PostgreSQL decision log (default) or a SQLite file per replica.",
    )
    ap.add_argument("--model-uri", help="A registered model to serve (default: train one through a new server).")
    ap.add_argument("--tracking-uri", help="The MLflow server of --model-uri.")
    args = ap.parse_args()
    counts = sorted({int(n) for n in args.replicas.split(",")})
    balancers = args.lb.split(",")
    if not set(balancers) <= {"nginx", "haproxy"}:
        sys.exit(f"error: --lb takes nginx and/or haproxy, got {args.lb!r}")
    for tool in ("wrk", *balancers):
        if shutil.which(tool) is None:
            sys.exit(f"error: {tool} is not installed (apt-get install -y {tool})")
    if args.model_uri and not args.tracking_uri:
        sys.exit("error: --model-uri needs --tracking-uri (the MLflow server it is registered in)")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    work = Path(tempfile.mkdtemp(prefix="tierwise-replicas-"))
    work.chmod(0o755)
    os.environ.setdefault("TIERWISE_HOME", str(work / "home"))
    load0 = os.getloadavg()
    rows: list[tuple[str, int, dict[str, Any]]] = []
    with ExitStack() as stack:
        if args.model_uri:
            tracking, model_uri = args.tracking_uri, args.model_uri
        else:
            print("starting mlflow server on PostgreSQL ...", file=sys.stderr)
            server = stack.enter_context(running_mlflow_server(work / "mlflow", "tw_bench_registry"))
            tracking = server.url
            model_uri = train_model(tracking)
        decision_db = None
        if args.decision_log == "postgresql":
            decision_db = stack.enter_context(pg_database("tw_bench_decisions"))
        replicas: list[Replica] = []
        stack.callback(stop_all, replicas)
        for k in range(max(counts)):
            env = {
                "TIERWISE_HOME": str(work / f"replica-{k}"),
                "TIERWISE_TRACKING_URI": tracking,
                "TIERWISE_MODEL_URI": model_uri,
                "TIERWISE_POLL_SECONDS": "5",
                "TIERWISE_DECISION_LOG": decision_db or str(work / f"decisions-{k}.db"),
            }
            replicas.append(Replica(env, work / f"replica-{k}.log", ["--log-level", "warning"]))
        print(f"starting {len(replicas)} replicas of {model_uri} ...", file=sys.stderr)
        ready = [r.wait_ready(timeout=300) for r in replicas]
        script = work / "short.lua"
        script.write_text(lua_distinct('{"prompt":"', '"}', SHORT_WORDS, seed=7), encoding="utf-8")

        print(f"wrk c={args.concurrency}: 1 replica, no balancer ...", file=sys.stderr)
        rows.append(
            ("none (direct)", 1, measure(replicas[0].url, script, args.concurrency, args.duration, replicas[:1], None))
        )
        for kind in balancers:
            for n in counts:
                lb = Balancer(kind, work, [r.port for r in replicas[:n]])
                try:
                    print(f"wrk c={args.concurrency}: {n} replica(s) behind {kind} ...", file=sys.stderr)
                    rows.append((kind, n, measure(lb.url, script, args.concurrency, args.duration, replicas[:n], lb)))
                finally:
                    lb.stop()
    load1 = os.getloadavg()

    print()
    print(
        f"tierwise replicas benchmark: model {ready[0]['router_version']} (encoder {ready[0]['encoder']}), "
        f"`tierwise serve` replicas with 1 worker each, decision log: {args.decision_log}"
        f"{' (shared)' if args.decision_log == 'postgresql' else ' (one file per replica)'}; "
        f"wrk -t1 -c{args.concurrency} -d{args.duration}s, distinct short prompts (~30 tokens)"
    )
    print(
        f"machine: {os.cpu_count()} CPU cores shared by wrk, the balancer, the replicas, PostgreSQL, the MLflow "
        f"server and any other work; load average (1 min) before/after {load0[0]:.2f}/{load1[0]:.2f}"
    )
    print()
    print(
        "| balancer | replicas | requests/s | p50 ms | p99 ms | errors | replica CPU ms/req | replicas' cores "
        "| balancer CPU ms/req "
        "| busy cores | peak RSS per replica MiB | load average |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for lb_name, n, r in rows:
        lb_cpu = "-" if lb_name.startswith("none") else f"{r['lb_cpu_ms']:.2f}"
        cores = r["replica_cpu_ms"] * r["rps"] / 1000
        print(
            f"| {lb_name} | {n} | {r['rps']:.0f} | {r['p50'] / 1000:.1f} | {r['p99'] / 1000:.1f} | {r['errors']:.0f} "
            f"| {r['replica_cpu_ms']:.2f} | {cores:.2f} | {lb_cpu} | {r['busy_cores']:.2f} "
            f"| {' / '.join(f'{m:.0f}' for m in r['rss_mib'])} | {r['load']:.1f} |"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
