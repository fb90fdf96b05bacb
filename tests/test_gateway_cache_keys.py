"""The gateway's response cache, client keys and budgets end to end: two real ``tierwise serve`` replicas sharing the
real Redis (127.0.0.1:6379) and one fake OpenAI upstream, driven with the official ``openai`` SDK.

Tenants get a fresh name per run, so entries another run left in Redis can never answer these requests.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis
from fake_upstream import FakeUpstream
from service_server import ServerProcess, metric
from test_gateway import FIXTURE_BUNDLE, KEY, KEY_ENV, call_row, upstreams_file

from router.gateway.keys import add_key

REDIS_URL = "redis://127.0.0.1:6379/0"
RUN = uuid.uuid4().hex[:8]
ACME, BETA, CAPPED = f"acme-{RUN}", f"beta-{RUN}", f"capped-{RUN}"
ADMIN = "cache-admin-token"
Q = [{"role": "user", "content": "What is the capital city of France?"}]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:  # the project's machines run Redis; .ci/run starts it
        raise RuntimeError(f"these tests need the Redis server at {REDIS_URL}: {exc}") from exc
    return tmp_path_factory.mktemp("gateway-cache")


@pytest.fixture(scope="module")
def keys(work: Path) -> dict[str, str]:
    path = work / "client_keys.yaml"
    return {
        ACME: add_key(path, ACME, name="acme-test"),
        BETA: add_key(path, BETA, budget_usd=0.002, period="day"),
        CAPPED: add_key(path, CAPPED, max_tier="small"),
    }


@pytest.fixture(scope="module")
def fake(work: Path) -> Iterator[FakeUpstream]:
    with FakeUpstream(log_path=work / "fake.log") as f:
        yield f


@pytest.fixture(scope="module")
def replicas(work: Path, fake: FakeUpstream, keys: dict[str, str]) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    common = {
        "TIERWISE_MODEL_URI": str(FIXTURE_BUNDLE),
        "TIERWISE_UPSTREAMS": str(upstreams_file(work, fake)),
        "TIERWISE_CLIENT_KEYS": str(work / "client_keys.yaml"),
        "TIERWISE_CACHE_URL": REDIS_URL,
        "TIERWISE_ADMIN_TOKEN": ADMIN,
        KEY_ENV: KEY,
    }
    a = ServerProcess(
        {**common, "TIERWISE_HOME": str(work / "a"), "TIERWISE_DECISION_LOG": str(work / "decisions.db"),
         "TIERWISE_CACHE_SEMANTIC": "true"},
        work / "a.log",
    )
    b = ServerProcess(
        {**common, "TIERWISE_HOME": str(work / "b"), "TIERWISE_DECISION_LOG": str(work / "decisions-b.db")},
        work / "b.log",
    )
    try:
        a.wait_ready()
        b.wait_ready()
        yield a, b
    finally:
        for srv in (a, b):
            with httpx.Client(base_url=srv.url) as c:  # leave nothing of this run's tenants in Redis
                for tenant in (ACME, BETA, CAPPED):
                    c.post("/admin/cache/purge", json={"tenant": tenant}, headers={"authorization": f"Bearer {ADMIN}"})
            srv.stop()
    for srv in (a, b):
        log = srv.log()
        assert all(k not in log for k in keys.values()) and "capital city" not in log  # no keys, no prompts


def sdk(srv: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key=key, max_retries=0, timeout=30)


def test_keys_are_required(replicas: tuple[ServerProcess, ServerProcess], keys: dict[str, str]) -> None:
    a, _ = replicas
    with pytest.raises(openai.AuthenticationError) as info:
        sdk(a, "tw-not-a-key").chat.completions.create(model="tierwise", messages=Q)
    assert info.value.status_code == 401 and info.value.response.headers["www-authenticate"] == "Bearer"
    r = httpx.post(f"{a.url}/v1/chat/completions", json={"model": "tierwise", "messages": Q})  # no key at all
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        sdk(a, "tw-not-a-key").models.list()
    assert "tierwise" in [m.id for m in sdk(a, keys[ACME]).models.list()]


def test_exact_cache_across_replicas_and_tenants(
    replicas: tuple[ServerProcess, ServerProcess], fake: FakeUpstream, keys: dict[str, str], work: Path
) -> None:
    a, b = replicas
    fake.reset()
    ask = {"model": "demo-small", "messages": [{"role": "user", "content": f"Spell {RUN} backwards."}],
           "temperature": 0}
    first = sdk(a, keys[ACME]).chat.completions.with_raw_response.create(**ask)
    assert first.headers["x-tierwise-cache"] == "miss" and len(fake.calls()) == 1
    again = sdk(a, keys[ACME]).chat.completions.with_raw_response.create(**ask)
    assert again.headers["x-tierwise-cache"] == "hit-l1" and len(fake.calls()) == 1  # no upstream call
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert again.headers["x-tierwise-cost-usd"] == "0"
    row = call_row(work, again.headers["x-tierwise-request-id"])
    assert row["cache"] == "hit-l1" and row["cost_usd"] == 0 and row["upstream"] is None
    other = sdk(b, keys[ACME]).chat.completions.with_raw_response.create(**ask)  # the other replica: Redis
    assert other.headers["x-tierwise-cache"] == "hit-l2" and len(fake.calls()) == 1
    # the same request as a stream is the same answer, replayed as server-sent events
    stream = sdk(b, keys[ACME]).chat.completions.create(**ask, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == first.parse().choices[0].message.content and len(fake.calls()) == 1
    # another tenant never receives it, on either replica
    for srv in (a, b):
        r = sdk(srv, keys[BETA]).chat.completions.with_raw_response.create(**ask)
        assert r.headers["x-tierwise-cache"] in ("miss", "hit-l1", "hit-l2")
    assert len(fake.calls()) == 2  # beta paid once (its own miss), then hit its own entry
    # not deterministic, or told not to: no cache
    r = sdk(a, keys[ACME]).chat.completions.with_raw_response.create(**{**ask, "temperature": 0.7})
    assert r.headers["x-tierwise-cache"] == "bypass"
    r = sdk(a, keys[ACME]).chat.completions.with_raw_response.create(**ask, extra_headers={"cache-control": "no-store"})
    assert r.headers["x-tierwise-cache"] == "bypass" and len(fake.calls()) == 4
    with httpx.Client(base_url=a.url) as c:
        assert metric(c, "tierwise_cache_requests_total", result="hit-l1") >= 1
        assert metric(c, "tierwise_cache_saved_usd_total") > 0


def test_semantic_cache_is_per_tenant(
    replicas: tuple[ServerProcess, ServerProcess], fake: FakeUpstream, keys: dict[str, str]
) -> None:
    a, _ = replicas
    fake.reset()
    first = sdk(a, keys[ACME]).chat.completions.with_raw_response.create(model="tierwise", messages=Q, temperature=0)
    assert first.headers["x-tierwise-cache"] == "miss" and len(fake.calls()) == 1
    near = [{"role": "user", "content": "What is the capital city of France ?"}]
    hit = sdk(a, keys[ACME]).chat.completions.with_raw_response.create(model="tierwise", messages=near, temperature=0)
    assert hit.headers["x-tierwise-cache"] == "hit-semantic", hit.headers
    assert len(fake.calls()) == 1
    other = sdk(a, keys[CAPPED]).chat.completions.with_raw_response.create(
        model="tierwise", messages=near, temperature=0
    )
    assert other.headers["x-tierwise-cache"] == "miss" and len(fake.calls()) == 2
    far = [{"role": "user", "content": "Write a limerick about a cat who learns to fly a plane."}]
    miss = sdk(a, keys[ACME]).chat.completions.with_raw_response.create(model="tierwise", messages=far, temperature=0)
    assert miss.headers["x-tierwise-cache"] == "miss" and len(fake.calls()) == 3


def test_purge_removes_a_tenants_answers(
    replicas: tuple[ServerProcess, ServerProcess], fake: FakeUpstream, keys: dict[str, str]
) -> None:
    a, b = replicas
    fake.reset()
    ask = {"model": "demo-nano", "messages": [{"role": "user", "content": f"purge me {RUN}"}], "temperature": 0}
    sdk(a, keys[ACME]).chat.completions.create(**ask)
    auth = {"authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=b.url) as c:
        assert c.post("/admin/cache/purge", json={"tenant": ACME}).status_code == 401
        r = c.post("/admin/cache/purge", json={"tenant": ACME}, headers=auth)
    assert r.status_code == 200 and r.json()["removed"] >= 1, r.text
    r2 = sdk(b, keys[ACME]).chat.completions.with_raw_response.create(**ask)  # b's memory never had it; Redis is empty
    assert r2.headers["x-tierwise-cache"] == "miss" and len(fake.calls()) == 2


def test_budget_is_enforced_with_a_clear_429(
    replicas: tuple[ServerProcess, ServerProcess], fake: FakeUpstream, keys: dict[str, str], work: Path
) -> None:
    a, b = replicas
    fake.reset()
    ids, refused = [], None
    for i in range(30):  # alternate replicas: the budget is kept in Redis, shared by both
        srv = (a, b)[i % 2]
        try:
            raw = sdk(srv, keys[BETA]).chat.completions.with_raw_response.create(
                model="demo-large", messages=[{"role": "user", "content": f"tell me {i}"}], max_tokens=5
            )
            ids.append((srv, raw.headers["x-tierwise-request-id"]))
        except openai.RateLimitError as exc:
            refused = exc
            break
    assert refused is not None and ids, "the budget never ran out"
    assert BETA in refused.message and "budget" in refused.message
    assert int(refused.response.headers["retry-after"]) > 0
    dbs = {a.url: work / "decisions.db", b.url: work / "decisions-b.db"}
    costs = [call_row(dbs[srv.url].parent, rid, db=dbs[srv.url])["cost_usd"] for srv, rid in ids]
    # a request is admitted while the spend is under the budget, so one at a time the overshoot is at most the
    # last request (beta's cached answers of the test above cost nothing)
    assert sum(costs[:-1]) < 0.002 and sum(costs) >= 0.002 - 1e-4 and len(fake.calls()) == len(ids)


def test_tier_cap(replicas: tuple[ServerProcess, ServerProcess], fake: FakeUpstream, keys: dict[str, str]) -> None:
    a, _ = replicas
    fake.reset()
    raw = sdk(a, keys[CAPPED]).chat.completions.with_raw_response.create(model="tierwise:t1", messages=Q)
    assert raw.headers["x-tierwise-tier"] in ("nano", "small")
    with pytest.raises(openai.PermissionDeniedError):
        sdk(a, keys[CAPPED]).chat.completions.create(model="demo-large", messages=Q)
    with httpx.Client(base_url=a.url) as c:
        assert metric(c, "tierwise_tenant_spend_usd_total", tenant=CAPPED) > 0
