"""Replicas that move together (issue 14), end to end with real parts: one ``mlflow server`` on PostgreSQL
(tests/mlflow_server.py), one decision log in PostgreSQL, and two ``tierwise serve`` processes on their own ports,
each following ``models:/NAME@champion`` with a 1 s alias poll.

One scenario, in order:

1. Under a bounded open-loop load at a fixed rate (40 requests/s, alternating between the replicas), the champion
   alias moves from version 1 to version 2: every response is a 200 naming one of the two versions, and each replica
   answers with version 2 within its poll interval plus the time a load takes, and never with version 1 again.
2. One replica is SIGKILLed while the other is under load: the other answers everything.
3. The MLflow server stops; the killed replica restarts (same settings) and serves its last-good copy of the
   configured model (same name and alias, version 2), degraded; the other replica keeps serving version 2.
4. The shared decision log holds exactly the decisions answered by both replicas (the killed one's too).

Version 2 is a second registration of version 1's artifacts (a tiny model, trained here): the replicas must load it
from the registry to name it. Shared Redis (gateway cache and budgets) across replicas is tested in
tests/test_gateway_cache_keys.py.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from mlflow_server import MlflowServer, database_exists, pg_database, query, register_again, running_mlflow_server
from service_server import ServerProcess

from training import registry
from training.demo import demo_catalog, demo_log
from training.pipeline import TrainConfig, train

NAME = "tierwise-replicas"
V1, V2 = f"{NAME}/1", f"{NAME}/2"
POLL_S = 1.0
LOAD_SLACK_S = 20.0  # download, load and warm-up of the new version on a busy 2-core machine (measured: 4-8 s)
RATE = 40.0  # requests per second, all replicas together


@dataclass
class Answer:
    replica: int
    sent: float  # time.monotonic()
    done: float
    status: int | None  # None: no HTTP answer (connection error, timeout)
    version: str | None
    request_id: str | None
    error: str | None


async def fixed_rate_load(
    urls: list[str], rate: float, until: Callable[[], bool], max_s: float, answers: list[Answer]
) -> list[Answer]:
    """``POST /v1/route`` at ``rate`` per second on an open-loop schedule (request i leaves at t0 + i / rate, whether
    or not earlier ones have answered), round-robin over ``urls``, until ``until()`` or for ``max_s`` seconds. The
    answers are appended to ``answers`` as they come (``until`` may look at them)."""

    async def one(ac: httpx.AsyncClient, i: int) -> None:
        k = i % len(urls)
        sent = time.monotonic()
        try:
            r = await ac.post(f"{urls[k]}/v1/route", json={"prompt": f"Request {i}: what is {i} plus {i + 1}?"})
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            error = None if r.status_code == 200 else r.text[:300]
            answers.append(
                Answer(
                    k, sent, time.monotonic(), r.status_code, body.get("router_version"), body.get("request_id"), error
                )
            )
        except httpx.HTTPError as exc:
            answers.append(Answer(k, sent, time.monotonic(), None, None, None, f"{exc!r} (cause {exc.__cause__!r})"))

    # Pooled keep-alive connections, as a load balancer keeps them: the replicas keep idle connections open for
    # TIERWISE_KEEP_ALIVE_S (75 s), so none is closed under a request while this test runs.
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=30, limits=limits) as ac:
        t0 = time.monotonic()
        tasks = []
        i = 0
        while i / rate <= max_s and not until():
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(ac, i)))
            i += 1
        await asyncio.gather(*tasks)
    return answers


def failures(answers: list[Answer]) -> list[Answer]:
    return [a for a in answers if a.status != 200 or a.version not in (V1, V2)]


@pytest.fixture(scope="module")
def mlflow_server(work: Path) -> Iterator[MlflowServer]:
    with running_mlflow_server(work / "mlflow", "tw_test_replicas") as srv:
        yield srv
    assert not database_exists(srv.backend_uri)


@pytest.fixture(scope="module")
def decision_log() -> Iterator[str]:
    """The replicas' shared decision log: a PostgreSQL database of this module's (the replicas migrate it)."""
    with pg_database("tw_test_replicas_decisions") as url:
        yield url
    assert not database_exists(url)


@pytest.fixture(scope="module")
def versions(mlflow_server: MlflowServer) -> tuple[str, str]:
    """Version 1 (champion) and version 2 (a second registration of it, not promoted) of NAME."""
    url = mlflow_server.url
    result = train(
        demo_log(n_prompts=200, seed=5),
        catalog=demo_catalog(),
        register=NAME,
        tracking_uri=url,
        config=TrainConfig(layout="per_tier", n_estimators=20),
        progress=False,
    )
    assert result.model_version == "1" and registry.alias_version(NAME, "champion", url) == "1"
    return "1", register_again(url, NAME, "1")


def test_replicas_follow_the_alias_together_and_survive_a_crash_and_a_registry_outage(
    work: Path, mlflow_server: MlflowServer, decision_log: str, versions: tuple[str, str]
) -> None:
    assert versions == ("1", "2")
    envs = [
        {
            "TIERWISE_HOME": str(work / f"replica-{k}"),  # its own last-good copy
            "TIERWISE_TRACKING_URI": mlflow_server.url,
            "TIERWISE_MODEL_URI": f"models:/{NAME}@champion",
            "TIERWISE_POLL_SECONDS": str(POLL_S),
            "TIERWISE_DECISION_LOG": decision_log,
            "TIERWISE_INFERENCE_THREADS": "1",
        }
        for k in (0, 1)
    ]
    replicas = [ServerProcess(env, work / f"replica-{k}.log") for k, env in enumerate(envs)]
    restarted: ServerProcess | None = None
    answers: list[Answer] = []
    try:
        for srv in replicas:
            assert srv.wait_ready()["router_version"] == V1
        urls = [srv.url for srv in replicas]

        # 1. promote under load: every answer a 200 naming v1 or v2, each replica on v2 within poll + load time
        promoted: dict[str, float] = {}
        switched: dict[int, float] = {}

        def both_switched_a_second_ago() -> bool:
            for a in answers:
                if a.version == V2:
                    switched.setdefault(a.replica, a.done)
            return len(switched) == 2 and time.monotonic() > max(switched.values()) + 1.0

        async def promote_under_load() -> None:
            max_s = 1.5 + POLL_S + LOAD_SLACK_S + 2
            load = asyncio.create_task(fixed_rate_load(urls, RATE, both_switched_a_second_ago, max_s, answers))
            await asyncio.sleep(1.5)
            await asyncio.to_thread(registry.promote, NAME, "2", mlflow_server.url)
            promoted["at"] = time.monotonic()
            await load

        asyncio.run(promote_under_load())
        bad = failures(answers)
        assert not bad, f"{len(bad)} of {len(answers)} requests failed, e.g. {bad[:3]}"
        sent = [a.sent for a in answers]
        rate = (len(sent) - 1) / (max(sent) - min(sent))
        assert rate > 0.8 * RATE, (rate, len(answers))  # the client kept to its schedule
        for k in (0, 1):
            mine = [a for a in answers if a.replica == k]
            first_v2 = min((a.done for a in mine if a.version == V2), default=None)
            assert first_v2 is not None, f"replica {k} never answered with {V2}:\n{replicas[k].log()[-3000:]}"
            delay = first_v2 - promoted["at"]
            assert delay <= POLL_S + LOAD_SLACK_S, (k, delay)
            assert any(a.version == V1 for a in mine)  # it served v1 before the promotion
            late_v1 = [a for a in mine if a.sent > first_v2 and a.version != V2]
            assert not late_v1, (k, late_v1[:3])  # once on v2, never back
            print(f"replica {k}: on {V2} {delay:.2f} s after the promotion ({len(mine)} answers)")
        slowest = max(a.done - a.sent for a in answers)
        print(f"{len(answers)} requests at {rate:.1f}/s, all 200 (slowest {slowest:.2f} s)")
        for srv in replicas:
            ready = httpx.get(f"{srv.url}/readyz", timeout=10).json()
            assert (ready["router_version"], ready["source"], ready["degraded"]) == (V2, "registry", False), ready

        # 2. SIGKILL one replica while the other is under load: the other answers everything
        async def kill_under_load() -> list[Answer]:
            load = asyncio.create_task(fixed_rate_load([urls[1]], RATE / 2, lambda: False, 2.0, []))
            await asyncio.sleep(0.5)
            await asyncio.to_thread(replicas[0].kill)
            return await load

        after_kill = asyncio.run(kill_under_load())
        assert replicas[0].proc.returncode == -9
        assert len(after_kill) >= 30 and not failures(after_kill), failures(after_kill)[:3]
        assert {a.version for a in after_kill} == {V2}
        answers += [replace(a, replica=1) for a in after_kill]

        # 3. registry down: the killed replica restarts on its last-good copy of the configured model
        mlflow_server.stop()
        restarted = ServerProcess(envs[0], work / "replica-0-restart.log")
        ready = restarted.wait_ready()
        assert ready["degraded"] is True and ready["source"] == "last-good-copy", ready
        assert (ready["model_uri"], ready["name"], ready["version"]) == (f"models:/{NAME}@champion", NAME, "2"), ready
        assert "registry unavailable" in ready["detail"]
        for k, srv in ((0, restarted), (1, replicas[1])):
            r = httpx.post(f"{srv.url}/v1/route", json={"prompt": "Is the registry down?"}, timeout=30)
            assert r.status_code == 200 and r.json()["router_version"] == V2, r.text
            answers.append(Answer(k, 0.0, 0.0, 200, V2, r.json()["request_id"], None))

        # 4. one decision log: every answered decision of both replicas, the killed one's included
        want = Counter(a.version for a in answers)
        deadline = time.monotonic() + 15
        while True:
            rows = query(decision_log, "SELECT request_id, router_version FROM decisions")
            if {r[0] for r in rows} == {a.request_id for a in answers} or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(rows) == len(answers) and {r[0] for r in rows} == {a.request_id for a in answers}
        assert Counter(r[1] for r in rows) == want, want
    finally:
        for srv in [*replicas, *([restarted] if restarted else [])]:
            srv.stop()
