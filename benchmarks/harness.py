"""What the HTTP benchmarks share: prompts, wrk scripts and runs (every script prints ``TW ...`` summary lines),
percentiles, and the peak RSS of the server's processes."""

from __future__ import annotations

import random
import subprocess
import threading
from pathlib import Path
from typing import Any, Protocol

WORDS = (
    "the customer asked whether our quarterly revenue report could include a breakdown by region and product line "
    "please write python code that parses the invoice table computes totals per month and flags any duplicate "
    "entries before the deadline explain why the database query is slow when the index on created at is missing "
    "summarise this meeting about hiring budget roadmap risks and the migration of the billing service to the new "
    "cluster translate the following paragraph into german keeping the tone formal and the numbers unchanged"
).split()
# Every script counts responses with status >= 400 in the thread (`bad`) and prints one parseable summary line.
LUA_DONE = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
bad = 0
response = function(status, headers, body)
  if status >= 400 then bad = bad + 1 end
end
done = function(summary, latency, requests)
  local e = summary.errors
  local b = 0
  for _, t in ipairs(threads) do b = b + t:get("bad") end
  io.write(string.format("TW requests %d duration_us %d bad %d\n", summary.requests, summary.duration, b))
  io.write(string.format("TW p50 %d p95 %d p99 %d max %d\n", latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max))
  io.write(string.format("TW connect %d read %d write %d status %d timeout %d\n", e.connect, e.read, e.write,
    e.status, e.timeout))
end
"""


def lua_distinct(head: str, tail: str, n_words: int, seed: int) -> str:
    """A wrk script whose every request body is new: ``head`` + a counter and ``n_words`` random :data:`WORDS` +
    ``tail`` (e.g. ``'{"prompt":"'`` and ``'"}'``), then :data:`LUA_DONE`."""
    words = ", ".join(f'"{w}"' for w in WORDS)
    return f"""
local words = {{{words}}}
local counter = 0
math.randomseed({seed})
request = function()
  counter = counter + 1
  local t = {{}}
  for i = 1, {n_words} do t[i] = words[math.random(#words)] end
  local body = '{head}Request ' .. counter .. ': ' .. table.concat(t, ' ') .. '?{tail}'
  return wrk.format("POST", nil, {{["Content-Type"] = "application/json"}}, body)
end
{LUA_DONE}"""


def make_prompt(rng: random.Random, i: int, n_words: int) -> str:
    """The Python twin of :func:`lua_distinct`'s prompts."""
    return f"Request {i}: " + " ".join(rng.choice(WORDS) for _ in range(n_words)) + "?"


class _HasProcesses(Protocol):
    def processes(self) -> list[Any]: ...


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100, linear interpolation); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def run_wrk(url: str, script: Path, conc: int, duration: int) -> dict[str, float]:
    """One ``wrk -t1`` run: the numbers of the script's ``TW key value ...`` line, plus ``rps``, ``socket_errors``
    (connect, read, write, timeout), ``http_errors`` (status >= 400 as the script and wrk count them) and
    ``errors`` (both)."""
    cmd = ["wrk", "-t1", f"-c{conc}", f"-d{duration}s", "--latency", "--timeout", "10s", "-s", str(script), url]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    out = proc.stdout
    nums: dict[str, float] = {}
    for line in out.splitlines():
        if line.startswith("TW "):
            toks = line.split()[1:]
            for k, v in zip(toks[::2], toks[1::2], strict=True):
                nums[k] = float(v)
        elif "Non-2xx or 3xx responses:" in line:
            nums["non2xx"] = float(line.rsplit(":", 1)[1])
    if proc.returncode != 0 or "requests" not in nums:
        raise RuntimeError(f"wrk failed ({proc.returncode}) on {url}:\n{out}\n{proc.stderr}")
    nums["rps"] = nums["requests"] / (nums["duration_us"] / 1e6)
    nums["socket_errors"] = sum(nums.get(k, 0.0) for k in ("connect", "read", "write", "timeout"))
    # wrk's own status count and the script's agree; take the larger in case one of them missed something
    nums["http_errors"] = max(nums.get("bad", 0.0), nums.get("status", 0.0), nums.get("non2xx", 0.0))
    nums["errors"] = nums["socket_errors"] + nums["http_errors"]
    return nums


class RssSampler(threading.Thread):
    """Samples the server's processes' RSS every 0.2 s; ``peak`` holds the largest seen (of one process, or with
    ``total`` of their sum in one sample)."""

    def __init__(self, server: _HasProcesses, total: bool = False) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.total = total
        self.peak = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                rss = [p.memory_info().rss for p in self.server.processes()]
                self.peak = max(self.peak, sum(rss) if self.total else max(rss, default=0))
            except Exception:  # noqa: BLE001 - a process gone between listing and reading it
                pass
            self.stop_event.wait(0.2)
