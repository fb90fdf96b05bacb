"""Encoder latency benchmark: torch vs ONNX fp32 vs ONNX int8 all-MiniLM-L6-v2, at 1 and 2 threads.

Each (backend, threads) pair runs in a fresh subprocess so load time and peak RSS are its own. Prints a markdown
table: load time (imports + model), single-prompt p50/p95 for a short (~30 token) and a long (~400 token, which
the 256-token head+tail window cuts to 256) prompt, batch-64 throughput, and peak RSS.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/encoders.py [--threads 1 2] [--backends minilm-torch ...]

ONNX exports are built (or reused) in the tierwise cache first, so export time is not part of the measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("minilm-torch", "minilm-onnx-fp32", "minilm-onnx-int8")

SHORT = "Can you explain, in simple terms and with one concrete example, how a hash map handles two keys that collide?"
LONG_UNIT = (
    "The committee reviewed the quarterly figures, noted that shipping costs rose in every region, and asked the "
    "logistics team to compare carriers before the next planning cycle. "
)


def _batch_prompts(n: int = 64) -> list[str]:
    verbs = ("explain", "summarise", "translate", "debug", "compare", "outline", "critique", "rewrite")
    topics = ("a binary search tree", "the causes of inflation", "this SQL join", "photosynthesis", "a cover letter",
              "TCP congestion control", "the plot of Hamlet", "a unit test for a parser")
    return [f"Please {verbs[i % 8]} {topics[(i * 3) % 8]} for a beginner, in about {50 + i} words, variant {i}."
            for i in range(n)]


def _long_prompt(encoder: Any, target_tokens: int = 400) -> str:
    text = LONG_UNIT
    tok = encoder.window.tokenizer
    while len(tok.encode(text, add_special_tokens=False).ids) < target_tokens:
        text += LONG_UNIT
    return text + " What should the team do first?"


def _percentiles(samples: list[float]) -> tuple[float, float]:
    import numpy as np

    arr = np.asarray(samples) * 1e3
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 95))


def _time_single(encoder: Any, text: str, n: int, warmup: int = 10) -> tuple[float, float]:
    for _ in range(warmup):
        encoder.encode([text])
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        encoder.encode([text])
        samples.append(time.perf_counter() - t0)
    return _percentiles(samples)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def worker(backend: str, threads: int, repeats: int) -> dict[str, Any]:
    """Measure one backend at one thread count in this (fresh) process."""
    t0 = time.perf_counter()
    from router.encoders import build_encoder

    enc = build_encoder(backend, threads=threads)
    load_s = time.perf_counter() - t0
    long_text = _long_prompt(enc)
    short_p50, short_p95 = _time_single(enc, SHORT, n=20 * repeats)
    long_p50, long_p95 = _time_single(enc, long_text, n=5 * repeats, warmup=3)
    batch = _batch_prompts(64)
    enc.encode(batch, batch_size=64)
    t1 = time.perf_counter()
    for _ in range(repeats):
        enc.encode(batch, batch_size=64)
    per_batch = (time.perf_counter() - t1) / repeats
    return {
        "backend": backend,
        "threads": threads,
        "load_s": load_s,
        "short_tokens": len(enc.window.ids([SHORT])[0]),  # type: ignore[attr-defined]
        "long_tokens": len(enc.window.tokenizer.encode(long_text).ids),  # type: ignore[attr-defined]
        "short_p50": short_p50,
        "short_p95": short_p95,
        "long_p50": long_p50,
        "long_p95": long_p95,
        "batch64_ms": per_batch * 1e3,
        "batch64_per_s": 64 / per_batch,
        "rss_mb": _peak_rss_mb(),
    }


def _prepare_exports() -> None:
    """Build the ONNX exports once (in a subprocess, so this process stays light)."""
    code = "from router.encoders import export_onnx; export_onnx('minilm', 'onnx-int8')"
    subprocess.run([sys.executable, "-c", code], check=True, env=_env())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_all(backends: list[str], threads: list[int], repeats: int) -> list[dict[str, Any]]:
    if any("onnx" in b for b in backends):
        _prepare_exports()
    rows = []
    for backend in backends:
        for n in threads:
            cmd = [sys.executable, __file__, "--worker", backend, str(n), "--repeats", str(repeats)]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=_env())
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"done: {backend} x{n}", file=sys.stderr)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The results as a markdown table."""
    if not rows:
        return ""
    r0 = rows[0]
    head = (
        f"| backend | threads | load s | short ({r0['short_tokens']} tok) p50 / p95 ms "
        f"| long ({r0['long_tokens']} tok -> 256) p50 / p95 ms | batch-64 ms | texts/s (batch 64) | peak RSS MB |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['threads']} | {r['load_s']:.1f} | {r['short_p50']:.2f} / {r['short_p95']:.2f} "
            f"| {r['long_p50']:.1f} / {r['long_p95']:.1f} | {r['batch64_ms']:.0f} | {r['batch64_per_s']:.0f} "
            f"| {r['rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=10, help="scales the number of timed calls (default 10)")
    ap.add_argument("--json", type=Path, help="also write the raw results to this file")
    ap.add_argument("--worker", nargs=2, metavar=("BACKEND", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.repeats)))
        return
    rows = run_all(args.backends, args.threads, args.repeats)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    print(markdown(rows))


if __name__ == "__main__":
    main()
