"""The gateway's response cache (``router.gateway.cache``) against a real Redis server.

Redis is required, not optional: without one at ``TIERWISE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``)
these tests fail, saying so. Every test writes under its own key prefix and deletes it afterwards. Two
:class:`ResponseCache` objects on one Redis stand for two gateway replicas.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from router.gateway.cache import (
    CacheConfig,
    CacheError,
    ResponseCache,
    StreamAssembler,
    cache_policy,
    exact_key,
    replay_sse,
    semantic_scope,
    uncacheable,
)

REDIS_URL = os.environ.get("TIERWISE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RESOLVED = "routed:tierwise:q0.95@test-router-v1"
SPACE = "test-router-v1"
PROMPT = "What is the capital of France? secret-prompt-marker"
ANSWER = "Paris. secret-answer-marker"
DIM = 32


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def redis_sync() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"test_gateway_cache needs a Redis server at {REDIS_URL} (set TIERWISE_TEST_REDIS_URL): "
                    f"{type(exc).__name__}: {exc}")
    yield client
    client.close()


@pytest.fixture
def prefix(redis_sync: redis.Redis) -> Iterator[str]:
    """A key prefix of this test alone; its keys are deleted afterwards."""
    p = f"tierwise-test:{uuid.uuid4().hex}"
    yield p
    names = list(redis_sync.scan_iter(match=f"{p}:*", count=1000))
    if names:
        redis_sync.delete(*names)


def redis_keys(client: redis.Redis, prefix: str) -> list[str]:
    return sorted(k.decode() for k in client.scan_iter(match=f"{prefix}:*", count=1000))


class Events(Counter[str]):
    def __call__(self, event: str) -> None:
        self[event] += 1


def make_cache(prefix: str | None = None, events: Events | None = None, **overrides: Any) -> ResponseCache:
    """A cache on the test Redis under ``prefix`` (None: L1 only)."""
    if prefix is not None:
        overrides.setdefault("redis_url", REDIS_URL)
        overrides.setdefault("redis_prefix", prefix)
    return ResponseCache(CacheConfig(**overrides), on_event=events)


def body(**fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": "tierwise",
        "messages": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": PROMPT},
        ],
        "temperature": 0,
    }
    out.update(fields)
    return out


def completion(content: str | None = ANSWER, finish: str = "stop", **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    message.update(extra)
    return {
        "id": "chatcmpl-original",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "up-demo-small",
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": 21, "completion_tokens": 3, "total_tokens": 24},
    }


TOOL_CALL: dict[str, Any] = {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}
META = {"cost_usd": 0.0001234, "tier": "small", "model": "demo-small"}


def unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def at_similarity(v: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector whose cosine similarity with unit ``v`` is ``cos``."""
    u = rng.standard_normal(DIM)
    u -= (u @ v) * v
    u /= np.linalg.norm(u)
    return (cos * v + np.sqrt(1 - cos**2) * u).astype(np.float32)


# --- policy and keys ---------------------------------------------------------------------------------------------
def test_policy_caches_only_deterministic_requests_unless_asked() -> None:
    p = cache_policy(body(), {})
    assert (p.lookup, p.store, p.reason, p.status) == (True, True, "deterministic", "miss")
    assert cache_policy(body(temperature=0.0), {}).lookup

    no_temperature = body()
    del no_temperature["temperature"]  # OpenAI's default is 1: not deterministic
    p = cache_policy(no_temperature, {})
    assert (p.lookup, p.store, p.reason, p.status) == (False, False, "temperature", "bypass")
    assert not cache_policy(body(temperature=None), {}).store
    assert not cache_policy(body(temperature=0.7), {}).store
    assert not cache_policy(body(temperature=False), {}).store  # a bool is not a temperature

    p = cache_policy(body(n=2), {})
    assert (p.lookup, p.store, p.reason) == (False, False, "n")
    assert cache_policy(body(n=1), {}).lookup

    for headers in ({"Cache-Control": "no-store"}, {"cache-control": "max-age=0, No-Store"}):
        p = cache_policy(body(), headers)
        assert (p.lookup, p.store, p.reason, p.status) == (False, False, "no_store", "bypass")
    p = cache_policy(body(), {"Cache-Control": "no-cache"})  # refresh: no lookup, the fresh answer is stored
    assert (p.lookup, p.store, p.reason, p.status) == (False, True, "no_cache", "bypass")
    assert cache_policy(body(), {"Pragma": "no-cache"}).reason == "no_cache"
    assert cache_policy(body(), {"Cache-Control": "max-age=60"}).lookup

    p = cache_policy(body(temperature=1.0, n=3), {}, opt_in=True)
    assert (p.lookup, p.store, p.reason) == (True, True, "opt_in")
    assert cache_policy(body(), {"Cache-Control": "no-store"}, opt_in=True).reason == "no_store"
    assert cache_policy(body(), {}, opt_out=True).reason == "opt_out"
    p = cache_policy(body(), {}, enabled=False)
    assert (p.lookup, p.store, p.status) == (False, False, "off")


def test_exact_key_covers_everything_that_changes_the_answer() -> None:
    base = exact_key(body(), RESOLVED, "acme")
    assert len(base) == 64 and int(base, 16) >= 0

    def with_message(i: int, content: str) -> dict[str, Any]:
        b = body()
        b["messages"][i] = {**b["messages"][i], "content": content}
        return b

    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    variants = {
        "system prompt": exact_key(with_message(0, "Answer in two words."), RESOLVED, "acme"),
        "earlier user turn": exact_key(with_message(1, "Hi"), RESOLVED, "acme"),
        "earlier assistant turn": exact_key(with_message(2, "Hello."), RESOLVED, "acme"),
        "last turn": exact_key(with_message(3, PROMPT + "?"), RESOLVED, "acme"),
        "tools": exact_key(body(tools=[tool]), RESOLVED, "acme"),
        "tool_choice": exact_key(body(tool_choice="required"), RESOLVED, "acme"),
        "response_format": exact_key(body(response_format={"type": "json_object"}), RESOLVED, "acme"),
        "seed": exact_key(body(seed=7), RESOLVED, "acme"),
        "max_tokens": exact_key(body(max_tokens=5), RESOLVED, "acme"),
        "top_p": exact_key(body(top_p=0.5), RESOLVED, "acme"),
        "stop": exact_key(body(stop=["\n"]), RESOLVED, "acme"),
        "logit_bias": exact_key(body(logit_bias={"50256": -100}), RESOLVED, "acme"),
        "logprobs": exact_key(body(logprobs=True), RESOLVED, "acme"),
        "model field": exact_key(body(model="tierwise:q0.9"), RESOLVED, "acme"),
        "resolution": exact_key(body(), "model:demo-small", "acme"),
        "router version": exact_key(body(), "routed:tierwise:q0.95@test-router-v2", "acme"),
        "tenant": exact_key(body(), RESOLVED, "globex"),
        "no tenant": exact_key(body(), RESOLVED, None),
        "empty tenant": exact_key(body(), RESOLVED, ""),
    }
    assert base not in variants.values()
    assert len(set(variants.values())) == len(variants), "two different requests share a key"

    # Fields that do not change the answer, null fields, 0 vs 0.0 and key order do not change the key.
    same = [
        body(stream=True, stream_options={"include_usage": True}),
        body(user="user-123", metadata={"team": "x"}, store=False),
        body(tierwise={"role": "single", "tenant": "acme"}),
        body(temperature=0.0, seed=None),
        dict(reversed(list(body().items()))),
    ]
    for b in same:
        assert exact_key(b, RESOLVED, "acme") == base


def test_semantic_scope_is_the_exact_key_without_the_last_user_text() -> None:
    scope = semantic_scope(body(), RESOLVED, "acme", space=SPACE)
    assert scope is not None and len(scope) == 64

    def last(content: Any) -> dict[str, Any]:
        b = body()
        b["messages"][-1] = {"role": "user", "content": content}
        return b

    assert semantic_scope(last("Which city is France's capital?"), RESOLVED, "acme", space=SPACE) == scope
    assert semantic_scope(last([{"type": "text", "text": "other words"}]), RESOLVED, "acme", space=SPACE) == \
        semantic_scope(last([{"type": "text", "text": "different"}]), RESOLVED, "acme", space=SPACE)
    image = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "https://x/a.png"}}]
    other_image = [image[0], {"type": "image_url", "image_url": {"url": "https://x/b.png"}}]
    assert semantic_scope(last(image), RESOLVED, "acme", space=SPACE) != \
        semantic_scope(last(other_image), RESOLVED, "acme", space=SPACE)  # only the text may differ

    system = body()
    system["messages"][0] = {"role": "system", "content": "Answer at length."}
    earlier = body()
    earlier["messages"][1] = {"role": "user", "content": "Good morning"}
    others = [
        semantic_scope(system, RESOLVED, "acme", space=SPACE),
        semantic_scope(earlier, RESOLVED, "acme", space=SPACE),
        semantic_scope(body(seed=3), RESOLVED, "acme", space=SPACE),
        semantic_scope(body(), "model:demo-small", "acme", space=SPACE),
        semantic_scope(body(), RESOLVED, "globex", space=SPACE),
        semantic_scope(body(), RESOLVED, "acme", space="another-encoder"),
        exact_key(body(), RESOLVED, "acme"),
    ]
    assert scope not in others and len(set(others)) == len(others)
    assert semantic_scope(body(messages=[{"role": "system", "content": "x"}]), RESOLVED, "acme", space=SPACE) is None


def test_uncacheable_answers() -> None:
    assert uncacheable(completion()) is None
    assert uncacheable(completion(None, "tool_calls", tool_calls=[TOOL_CALL])) is None
    assert uncacheable(completion(finish="length")) == "an unfinished choice"
    assert uncacheable(completion(finish="content_filter")) == "an unfinished choice"
    assert uncacheable({**completion(), "choices": []}) == "no choices"
    assert uncacheable({"error": {"message": "boom", "type": "server_error"}}) == "an error"
    assert uncacheable({**completion(), "object": "chat.completion.chunk"}) == "not a chat.completion"


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="ttl_s must be a finite number > 0") as err:
        CacheConfig(ttl_s=0, redis_url="redis://:hunter2@localhost:6379", semantic_min_similarity=1.5)
    assert "semantic_min_similarity" in str(err.value) and "hunter2" not in str(err.value)
    with pytest.raises(ValueError, match="redis_url must start with"):
        CacheConfig(redis_url="http://localhost:6379")
    with pytest.raises(ValueError, match="redis_prefix"):
        CacheConfig(redis_prefix="tierwise:*")  # would widen a purge's SCAN pattern
    assert not CacheConfig(l1_entries=0).enabled and CacheConfig(l1_entries=0, redis_url=REDIS_URL).enabled


# --- levels ------------------------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_l1_hit_is_a_fresh_copy_with_the_original_usage_and_meta() -> None:
    events = Events()
    cache = make_cache(events=events)
    key = exact_key(body(), RESOLVED, "acme")
    assert await cache.lookup(key, "acme") is None
    assert events == {"miss": 1}
    assert await cache.put(key, "acme", completion(), meta=META)

    hit = await cache.lookup(key, "acme")
    assert hit is not None and hit.level == "l1" and hit.status == "hit-l1" and hit.similarity is None
    assert hit.meta == META and 0 <= hit.age_s < 5
    c = hit.completion
    assert c["choices"][0]["message"]["content"] == ANSWER
    assert c["usage"] == completion()["usage"]
    assert c["id"].startswith("chatcmpl-") and c["id"] != "chatcmpl-original"
    assert abs(c["created"] - time.time()) < 5
    ChatCompletion.model_validate(c)

    c["choices"][0]["message"]["content"] = "mutated by the caller"
    again = await cache.get(key, "acme")
    assert again is not None and again.completion["choices"][0]["message"]["content"] == ANSWER
    assert again.completion["id"] != c["id"]
    assert events == {"miss": 1, "store": 1, "hit_l1": 2}
    await cache.aclose()


@pytest.mark.anyio
async def test_l2_hit_from_another_replica_refills_l1(prefix: str, redis_sync: redis.Redis) -> None:
    ev_a, ev_b = Events(), Events()
    a, b = make_cache(prefix, ev_a), make_cache(prefix, ev_b)
    key = exact_key(body(), RESOLVED, "acme")
    assert await a.put(key, "acme", completion(), meta=META)

    hit = await b.lookup(key, "acme")
    assert hit is not None and hit.level == "l2" and hit.meta == META
    assert hit.completion["choices"][0]["message"]["content"] == ANSWER
    assert b.stats()["l1_entries"] == 1
    hit = await b.lookup(key, "acme")
    assert hit is not None and hit.level == "l1"
    assert ev_b == {"hit_l2": 1, "hit_l1": 1} and ev_a == {"store": 1}

    # Keys hold hashes only: no tenant name, prompt or answer text.
    names = redis_keys(redis_sync, prefix)
    assert names and all("acme" not in n and "secret" not in n and "France" not in n for n in names)
    assert all(n.startswith(f"{prefix}:") and len(n.split(":")[-1]) == 64 for n in names)
    await a.aclose()
    await b.aclose()


@pytest.mark.anyio
async def test_entries_expire_after_their_ttl(prefix: str, redis_sync: redis.Redis) -> None:
    a = make_cache(prefix, ttl_s=0.4)
    key = exact_key(body(), RESOLVED, None)
    assert await a.put(key, None, completion(), meta=META)
    assert (await a.get(key, None)) is not None
    assert redis_sync.pttl(redis_keys(redis_sync, prefix)[0]) <= 400
    await asyncio.sleep(0.6)
    assert await a.get(key, None) is None  # L1
    b = make_cache(prefix)
    assert await b.get(key, None) is None  # L2
    assert redis_keys(redis_sync, prefix) == []

    l1_only = make_cache(ttl_s=0.2)
    assert await l1_only.put(key, None, completion(), meta=META)
    await asyncio.sleep(0.3)
    assert await l1_only.get(key, None) is None and l1_only.stats()["l1_entries"] == 0
    for c in (a, b, l1_only):
        await c.aclose()


@pytest.mark.anyio
async def test_with_redis_l1_keeps_entries_at_most_l1_ttl(prefix: str) -> None:
    a = make_cache(prefix, l1_ttl_s=0.2)
    key = exact_key(body(), RESOLVED, None)
    assert await a.put(key, None, completion(), meta=META)
    assert (hit := await a.get(key, None)) is not None and hit.level == "l1"
    await asyncio.sleep(0.3)
    hit = await a.get(key, None)  # gone from L1, still in Redis (the day-long TTL)
    assert hit is not None and hit.level == "l2"
    await a.aclose()


@pytest.mark.anyio
async def test_unfinished_and_error_answers_are_never_stored(prefix: str, redis_sync: redis.Redis) -> None:
    events = Events()
    cache = make_cache(prefix, events)
    refused = [
        completion(finish="length"),
        completion(finish="content_filter"),
        {**completion(), "choices": []},
        {"error": {"message": "overloaded", "type": "server_error", "param": None, "code": None}},
        {**completion(), "choices": [{**completion()["choices"][0], "finish_reason": None}]},
    ]
    for i, c in enumerate(refused):
        key = exact_key(body(seed=i), RESOLVED, "acme")
        assert await cache.put(key, "acme", c, meta=META) is False
        assert await cache.get(key, "acme") is None
    assert redis_keys(redis_sync, prefix) == [] and cache.stats()["l1_entries"] == 0
    assert "store" not in events
    await cache.aclose()


@pytest.mark.anyio
async def test_size_caps(prefix: str, redis_sync: redis.Redis) -> None:
    keys = [exact_key(body(seed=i), RESOLVED, None) for i in range(5)]

    by_entries = make_cache(l1_entries=3)
    for k in keys[:3]:
        assert await by_entries.put(k, None, completion(), meta=META)
    assert await by_entries.get(keys[0], None) is not None  # now the most recently used
    assert await by_entries.put(keys[3], None, completion(), meta=META)
    present = [await by_entries.get(k, None) is not None for k in keys[:4]]
    assert present == [True, False, True, True]  # the least recently used went
    assert by_entries.stats()["l1_entries"] == 3

    # an entry records when it was stored, and the clock's digits change its size by a byte or two: a fixed clock
    # makes every entry the same size, so the caps below sit exactly on entry boundaries
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("router.gateway.cache.time.time", lambda: 1_800_000_000.25)
        probe = make_cache()
        assert await probe.put(keys[0], None, completion(), meta=META)
        one = probe.stats()["l1_bytes"]  # what one entry counts
        cap = 2 * one + one // 2  # room for two entries, not three
        by_bytes = make_cache(l1_bytes=cap)
        for k in keys[:3]:
            assert await by_bytes.put(k, None, completion(), meta=META)
        assert [await by_bytes.get(k, None) is not None for k in keys[:3]] == [False, True, True]
        assert by_bytes.stats()["l1_entries"] == 2 and by_bytes.stats()["l1_bytes"] <= cap
        assert await make_cache(l1_bytes=one - 1).put(keys[0], None, completion(), meta=META) is False  # never fits
        assert await make_cache(l1_bytes=one).put(keys[0], None, completion(), meta=META) is True  # just fits

    capped = make_cache(prefix, max_entry_bytes=4000)
    assert await capped.put(keys[4], None, completion("x" * 2000), meta=META)
    big = exact_key(body(seed=99), RESOLVED, None)
    assert await capped.put(big, None, completion("x" * 5000), meta=META) is False
    assert await capped.get(big, None) is None
    assert len(redis_keys(redis_sync, prefix)) == 1  # only the small one reached Redis
    for c in (by_entries, by_bytes, capped):
        await c.aclose()


# --- semantic matches and tenants -----------------------------------------------------------------------------
@pytest.mark.anyio
async def test_semantic_matches_above_the_threshold_only(prefix: str) -> None:
    rng = np.random.default_rng(0)
    v = unit(rng)
    events = Events()
    a = make_cache(prefix, events, semantic=True)
    key = exact_key(body(), RESOLVED, "acme")
    scope = semantic_scope(body(), RESOLVED, "acme", space=SPACE)
    assert scope is not None
    assert await a.put(key, "acme", completion(), meta=META, scope=scope, vector=v, semantic_ok=True)

    other = body()
    other["messages"][-1] = {"role": "user", "content": "Which city is the capital of France?"}
    other_key = exact_key(other, RESOLVED, "acme")
    assert semantic_scope(other, RESOLVED, "acme", space=SPACE) == scope

    close = at_similarity(v, 0.985, rng)
    hit = await a.lookup(other_key, "acme", scope=scope, vector=close, semantic_ok=True)
    assert hit is not None and hit.level == "semantic" and hit.status == "hit-semantic"
    assert hit.similarity == pytest.approx(0.985, abs=1e-4) and hit.meta == META
    assert hit.completion["choices"][0]["message"]["content"] == ANSWER

    assert await a.lookup(other_key, "acme", scope=scope, vector=at_similarity(v, 0.95, rng), semantic_ok=True) \
        is None
    assert await a.lookup(other_key, "acme", scope=scope, vector=close, semantic_ok=False) is None
    other_scope = semantic_scope(body(seed=1), RESOLVED, "acme", space=SPACE)
    assert other_scope is not None
    assert await a.lookup(other_key, "acme", scope=other_scope, vector=v, semantic_ok=True) is None
    assert await a.get_semantic(scope, np.zeros(DIM, np.float32), "acme") is None  # no direction: no match
    assert await a.get_semantic(scope, v[: DIM // 2] / np.linalg.norm(v[: DIM // 2]), "acme") is None  # other size
    assert events == {"store": 1, "hit_semantic": 1, "miss": 3}

    # Another replica finds it in Redis, and then in its own L1.
    b = make_cache(prefix, semantic=True)
    hit = await b.get_semantic(scope, close, "acme")
    assert hit is not None and hit.level == "semantic" and b.stats()["l1_scopes"] == 1
    assert await b.get_semantic(scope, close, "acme") is not None
    await b.aclose()
    b = make_cache(prefix, semantic=True, redis_url=None)
    assert await b.get_semantic(scope, close, "acme") is None  # nothing local: it was Redis that answered

    exact_only = make_cache(prefix, semantic=False)
    assert await exact_only.get_semantic(scope, v, "acme") is None
    assert await exact_only.get(key, "acme") is not None
    for c in (a, b, exact_only):
        await c.aclose()


@pytest.mark.anyio
async def test_semantic_index_keeps_the_most_recent_per_scope(prefix: str) -> None:
    rng = np.random.default_rng(1)
    vectors = [unit(rng) for _ in range(3)]  # random 32-d vectors: far apart
    a = make_cache(prefix, semantic=True, semantic_per_scope=2)
    scope = semantic_scope(body(), RESOLVED, None, space=SPACE)
    assert scope is not None
    keys = [exact_key(body(messages=[{"role": "user", "content": f"q{i}"}]), RESOLVED, None) for i in range(3)]
    for k, v in zip(keys, vectors, strict=True):
        assert await a.put(k, None, completion(), meta=META, scope=scope, vector=v, semantic_ok=True)
    b = make_cache(prefix, semantic=True, semantic_per_scope=2)
    for cache in (a, b):  # L1, then L2
        assert await cache.get_semantic(scope, vectors[0], None) is None
        assert await cache.get_semantic(scope, vectors[2], None) is not None
        assert await cache.get_semantic(scope, vectors[1], None) is not None
    assert await b.get(keys[0], None) is not None  # out of the index, not out of the cache
    await a.aclose()
    await b.aclose()


@pytest.mark.anyio
async def test_tenants_never_see_each_others_answers(prefix: str) -> None:
    v = unit(np.random.default_rng(2))
    a = make_cache(prefix, semantic=True)
    key_a = exact_key(body(), RESOLVED, "acme")
    scope_a = semantic_scope(body(), RESOLVED, "acme", space=SPACE)
    assert scope_a is not None
    assert await a.put(key_a, "acme", completion(), meta=META, scope=scope_a, vector=v, semantic_ok=True)

    key_b = exact_key(body(), RESOLVED, "globex")
    scope_b = semantic_scope(body(), RESOLVED, "globex", space=SPACE)
    assert scope_b is not None
    replica = make_cache(prefix, semantic=True)
    for cache in (a, replica):  # L1 and L2
        for tenant in ("globex", None, ""):
            assert await cache.get(key_a, tenant) is None  # even handed tenant A's key
            assert await cache.get_semantic(scope_a, v, tenant) is None  # even handed A's scope and vector
        assert await cache.lookup(key_b, "globex", scope=scope_b, vector=v, semantic_ok=True) is None
    assert (await replica.get(key_a, "acme")) is not None
    assert (await replica.get_semantic(scope_a, v, "acme")) is not None
    await a.aclose()
    await replica.aclose()


@pytest.mark.anyio
async def test_purge_tenant_removes_that_tenant_only(prefix: str, redis_sync: redis.Redis) -> None:
    rng = np.random.default_rng(3)
    a, b = make_cache(prefix, semantic=True), make_cache(prefix, semantic=True)
    stored: dict[str, list[tuple[str, str, np.ndarray]]] = {}
    for tenant in ("acme", "globex"):
        for i in range(2):
            req = body(seed=i)
            key, v = exact_key(req, RESOLVED, tenant), unit(rng)
            scope = semantic_scope(req, RESOLVED, tenant, space=SPACE)
            assert scope is not None
            assert await a.put(key, tenant, completion(), meta=META, scope=scope, vector=v, semantic_ok=True)
            stored.setdefault(tenant, []).append((key, scope, v))
    assert await b.get(stored["acme"][0][0], "acme") is not None  # replica b holds one in its L1 too
    keys_before = len(redis_keys(redis_sync, prefix))

    assert await a.purge_tenant("acme") == 2
    fresh = make_cache(prefix, semantic=True)
    for key, scope, v in stored["acme"]:
        assert await a.get(key, "acme") is None and await fresh.get(key, "acme") is None
        assert await a.get_semantic(scope, v, "acme") is None and await fresh.get_semantic(scope, v, "acme") is None
    for key, scope, v in stored["globex"]:
        assert await a.get(key, "globex") is not None and await fresh.get(key, "globex") is not None
        assert await fresh.get_semantic(scope, v, "globex") is not None
    assert len(redis_keys(redis_sync, prefix)) == keys_before // 2  # entries and scope indexes of globex
    assert await b.purge_tenant("acme") == 1  # its L1 copy (Redis has none left)
    assert await a.purge_tenant("nobody") == 0
    assert await make_cache().purge_tenant("acme") == 0
    for c in (a, b, fresh):
        await c.aclose()


# --- a Redis that fails --------------------------------------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.anyio
async def test_a_dead_redis_is_a_quick_miss_then_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tierwise.gateway.cache")
    silent = socket.socket()  # accepts connections (the kernel does), never answers: every read times out
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        for url in (f"redis://127.0.0.1:{closed_port()}/0", f"redis://127.0.0.1:{silent.getsockname()[1]}/0"):
            events = Events()
            cache = ResponseCache(CacheConfig(redis_url=url, l1_entries=0, redis_timeout_s=0.25, redis_backoff_s=30,
                                              semantic=True), on_event=events)
            key = exact_key(body(), RESOLVED, "acme")
            scope = semantic_scope(body(), RESOLVED, "acme", space=SPACE)
            v = unit(np.random.default_rng(4))
            t0 = time.perf_counter()
            for _ in range(5):
                assert await cache.put(key, "acme", completion(), meta=META, scope=scope, vector=v,
                                       semantic_ok=True) is False
                assert await cache.lookup(key, "acme", scope=scope, vector=v, semantic_ok=True) is None
            assert time.perf_counter() - t0 < 1.0, url
            assert events == {"redis_error": 1, "miss": 5}, url  # one failure, then the back-off
            with pytest.raises(CacheError, match="could not reach redis"):
                await cache.purge_tenant("acme")
            await cache.aclose()
    finally:
        silent.close()
    assert "secret" not in caplog.text and "acme" not in caplog.text
    assert "redis cache failed" in caplog.text


@pytest.mark.anyio
async def test_redis_is_tried_again_after_the_back_off(prefix: str) -> None:
    events = Events()
    dead = ResponseCache(CacheConfig(redis_url=f"redis://127.0.0.1:{closed_port()}/0", redis_backoff_s=0.2),
                         on_event=events)
    key = exact_key(body(), RESOLVED, None)
    assert await dead.get(key, None) is None and await dead.get(key, None) is None
    assert events["redis_error"] == 1
    await asyncio.sleep(0.3)
    assert await dead.get(key, None) is None
    assert events["redis_error"] == 2
    assert await dead.put(key, None, completion(), meta=META)  # L1 took it although Redis did not
    await dead.aclose()


# --- streaming ----------------------------------------------------------------------------------------------------
def parse_sse(lines: list[bytes]) -> list[ChatCompletionChunk]:
    assert lines[-1] == b"data: [DONE]\n\n"
    out = []
    for line in lines[:-1]:
        assert line.startswith(b"data: ") and line.endswith(b"\n\n")
        out.append(ChatCompletionChunk.model_validate(json.loads(line[6:])))
    return out


def test_replay_sse_reassembles_with_the_openai_sdk() -> None:
    original = completion()
    chunks = parse_sse(replay_sse(original, "demo-small"))
    assert {c.model for c in chunks} == {"demo-small"} and {c.id for c in chunks} == {"chatcmpl-original"}
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)  # no usage chunk unasked
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"

    with_usage = replay_sse(original, "demo-small", include_usage=True)
    chunks = parse_sse(with_usage)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump(exclude_none=True) == original["usage"]
    assert all(c.usage is None for c in chunks[:-1])
    assert all(b'"usage":null' in line for line in with_usage[:-2])  # as OpenAI sends them

    tool = completion(None, "tool_calls", tool_calls=[TOOL_CALL, {**TOOL_CALL, "id": "call_2"}])
    chunks = parse_sse(replay_sse(tool, "demo-small"))
    calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for tc in c.choices[0].delta.tool_calls or []:
            call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += tc.id or ""
            if tc.function is not None:
                call["name"] += tc.function.name or ""
                call["arguments"] += tc.function.arguments or ""
    assert calls == {i: {"id": f"call_{i + 1}", "name": "get_weather", "arguments": TOOL_CALL["function"]["arguments"]}
                     for i in range(2)}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_stream_assembler_inverts_replay_and_reads_a_piecewise_stream() -> None:
    for original in (completion(), completion(None, "tool_calls", tool_calls=[TOOL_CALL])):
        asm = StreamAssembler(max_bytes=1_000_000)
        for line in replay_sse(original, "up-demo-small", include_usage=True)[:-1]:
            asm.add(json.loads(line[6:]))
        assert asm.result() == original

    # As a provider streams it: the role first, then pieces of the content / of a tool call's arguments.
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    args = TOOL_CALL["function"]["arguments"]
    stream = [chunk({"role": "assistant", "content": None,
                     "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                     "function": {"name": "get_weather", "arguments": ""}}]})]
    stream += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i:i + 8]}}]})
               for i in range(0, len(args), 8)]
    asm = StreamAssembler(max_bytes=1_000_000)
    for c in [*stream, chunk({}, "tool_calls")]:
        asm.add(c)
    result = asm.result()
    assert result is not None and uncacheable(result) is None
    assert result["choices"][0]["message"]["tool_calls"] == [TOOL_CALL]
    assert "usage" not in result

    cut = StreamAssembler(max_bytes=1_000_000)
    for c in stream:  # no finish_reason: a cut stream is never an answer
        cut.add(c)
    assert cut.result() is None

    small = StreamAssembler(max_bytes=300)
    for c in [chunk({"role": "assistant", "content": "x" * 200}), chunk({"content": "y" * 200}), chunk({}, "stop")]:
        small.add(c)
    assert small.overflow and small.result() is None
