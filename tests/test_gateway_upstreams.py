"""The gateway's upstreams file (router.gateway.upstreams) and its HTTP client (router.gateway.upstream_client).

The client tests call a real fake OpenAI server (tests/fake_upstream.py, a uvicorn process on loopback): no mocks of
the HTTP layer. Async code runs under ``asyncio.run`` (pytest-asyncio is not a dependency).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fake_upstream import FakeUpstream
from service_server import free_port

from router.gateway.upstream_client import (
    Attempt,
    CircuitBreaker,
    UpstreamBadResponse,
    UpstreamClient,
    UpstreamConnectError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamStreamBroken,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from router.gateway.upstreams import UpstreamsConfig, UpstreamsError, load_upstreams

T = TypeVar("T")
KEY = "sk-test-secret-0123456789"
BODY: dict[str, Any] = {"model": "tier-model", "messages": [{"role": "user", "content": "hello there"}]}

VALID_YAML = """\
defaults:
  timeout_s: 20
  connect_timeout_s: 2
  max_concurrency: 8
upstreams:
  demo-nano:
    base_url: http://127.0.0.1:8001/v1/
    api_key_env: NANO_KEY
    model: gpt-4.1-nano
    headers: {x-team: search}
    params: {api-version: 2024-06-01}
    timeout_s: 30
    max_concurrency: 16
    fallbacks: [demo-nano-backup, alt]
  demo-nano-backup:
    base_url: https://backup.example/v1
    fallbacks: [alt]
  alt:
    base_url: https://alt.example/v1
    api_key_env: ALT_KEY
    api_key_header: api-key
  demo-large:
    base_url: https://large.example/v1
  spare:
    base_url: https://spare.example/v1
circuit_breaker: {failures: 3, cooldown_s: 10}
"""


def write(tmp_path: Path, text: str, name: str = "upstreams.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(tmp_path: Path, text: str, name: str = "upstreams.yaml") -> str:
    with pytest.raises(UpstreamsError) as info:
        load_upstreams(write(tmp_path, text, name))
    return str(info.value)


# --- the upstreams file --------------------------------------------------------------------------------------------
def test_valid_file_loads_with_defaults_and_depth_first_chain(tmp_path: Path) -> None:
    env = {"NANO_KEY": KEY, "ALT_KEY": "alt-" + KEY}
    config = load_upstreams(write(tmp_path, VALID_YAML), environ=env)
    nano = config.upstream("demo-nano")
    assert nano.base_url == "http://127.0.0.1:8001/v1" and nano.url == "http://127.0.0.1:8001/v1/chat/completions"
    assert nano.model == "gpt-4.1-nano"
    assert dict(nano.headers) == {"x-team": "search", "Authorization": f"Bearer {KEY}"}
    assert dict(nano.params) == {"api-version": "2024-06-01"}  # an unquoted YAML date is the text it looks like
    assert (nano.timeout_s, nano.connect_timeout_s, nano.max_concurrency) == (30, 2, 16)
    backup = config.upstream("demo-nano-backup")
    assert (backup.model, backup.timeout_s, backup.max_concurrency, dict(backup.headers)) == (
        "demo-nano-backup",
        20,
        8,
        {},
    )
    assert dict(config.upstream("alt").headers) == {"api-key": "alt-" + KEY}  # Azure style: the raw key
    # depth first, each upstream once: demo-nano -> backup -> (alt) ; then alt already visited
    assert [u.name for u in config.chain("demo-nano")] == ["demo-nano", "demo-nano-backup", "alt"]
    assert [u.name for u in config.chain("demo-large")] == ["demo-large"]
    assert config.circuit_breaker.failures == 3 and config.circuit_breaker.cooldown_s == 10
    assert config.total_concurrency == 16 + 8 * 4

    as_json = json.dumps({"upstreams": {"m": {"base_url": "https://x.example/v1"}}})
    assert load_upstreams(write(tmp_path, as_json, "u.json")).chain("m")[0].timeout_s == 60  # built-in default


def test_literal_keys_are_refused_wherever_they_are(tmp_path: Path) -> None:
    for text in (
        "upstreams:\n  m: {base_url: 'https://x.example/v1', api_key: sk-live-abc}\n",
        "upstreams:\n  m: {base_url: 'https://x.example/v1', headers: {api-key: sk-live-abc}}\n",
        "defaults: {token: sk-live-abc}\nupstreams:\n  m: {base_url: 'https://x.example/v1'}\n",
    ):
        message = refused(tmp_path, text)
        assert "upstreams.yaml" in message and "api_key_env" in message, message
        assert "sk-live-abc" not in message
    message = refused(tmp_path, "upstreams:\n  m: {base_url: 'https://x.example/v1', api_key: sk-live-abc}\n")
    assert "upstreams.m.api_key" in message
    message = refused(tmp_path, "upstreams:\n  m: {base_url: 'https://x.example/v1', headers: {Authorization: x}}\n")
    assert "upstreams.m.headers" in message and "Authorization" in message and "api_key_env" in message
    # a key pasted where the variable's NAME belongs is refused without being echoed
    message = refused(tmp_path, "upstreams:\n  m: {base_url: 'https://x.example/v1', api_key_env: sk-live-abc}\n")
    assert "upstreams.m.api_key_env" in message and "NAME" in message and "sk-live-abc" not in message
    # an entry may be *named* token: names are not fields
    assert load_upstreams(write(tmp_path, "upstreams:\n  token: {base_url: 'https://x.example/v1'}\n")).chain("token")


def test_base_url_with_credentials_or_a_bad_scheme_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, "upstreams:\n  m: {base_url: 'https://user:hunter2@x.example/v1'}\n")
    assert "upstreams.m.base_url" in message and "credentials" in message and "hunter2" not in message
    message = refused(tmp_path, "upstreams:\n  m: {base_url: 'ftp://x.example/v1'}\n")
    assert "upstreams.m.base_url" in message and "http" in message
    message = refused(tmp_path, "upstreams:\n  m: {base_url: 'https://x.example/v1?api-version=1'}\n")
    assert "params" in message


def test_fallbacks_must_exist_and_not_loop(tmp_path: Path) -> None:
    message = refused(tmp_path, "upstreams:\n  a: {base_url: 'http://h/v1', fallbacks: [nope]}\n")
    assert "upstreams.a.fallbacks" in message and "'nope'" in message
    message = refused(tmp_path, "upstreams:\n  a: {base_url: 'http://h/v1', fallbacks: [a]}\n")
    assert "upstreams.a.fallbacks" in message and "its own fallback" in message
    cycle = (
        "upstreams:\n"
        "  a: {base_url: 'http://h/v1', fallbacks: [b]}\n"
        "  b: {base_url: 'http://h/v1', fallbacks: [c]}\n"
        "  c: {base_url: 'http://h/v1', fallbacks: [a]}\n"
    )
    message = refused(tmp_path, cycle)
    assert "cycle" in message and "a -> b -> c -> a" in message


@pytest.mark.parametrize(
    ("snippet", "field", "words"),
    [
        ("timeout_s: .inf", "upstreams.m.timeout_s", "finite"),
        ("timeout_s: .nan", "upstreams.m.timeout_s", "finite"),
        ("timeout_s: -1", "upstreams.m.timeout_s", "greater than 0"),
        ("connect_timeout_s: 0", "upstreams.m.connect_timeout_s", "greater than 0"),
        ("max_concurrency: 2.5", "upstreams.m.max_concurrency", "integer"),
        ("max_concurrency: true", "upstreams.m.max_concurrency", "not true/false"),
        ("timeuot_s: 3", "upstreams.m.timeuot_s", "unknown field"),
    ],
)
def test_bad_numbers_and_fields_are_refused_naming_file_and_field(
    tmp_path: Path, snippet: str, field: str, words: str
) -> None:
    message = refused(tmp_path, f"upstreams:\n  m: {{base_url: 'http://h/v1', {snippet}}}\n")
    assert message.startswith(str(tmp_path / "upstreams.yaml") + ": "), message
    assert field in message and words in message, message


def test_unreadable_files_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(UpstreamsError, match="not found"):
        load_upstreams(tmp_path / "missing.yaml")
    assert "duplicate key 'm'" in refused(
        tmp_path, "upstreams:\n  m: {base_url: 'http://a/v1'}\n  m: {base_url: 'http://b/v1'}\n"
    )
    assert "duplicate key" in refused(tmp_path, '{"upstreams": {"m": {}, "m": {}}}', "u.json")
    message = refused(tmp_path, "upstreams:\n  m: [unclosed\n")
    assert "line 3, column 1" in message and "flow sequence (line 2, column 6)" in message
    assert "empty" in refused(tmp_path, "")
    assert "upstreams: field required" in refused(tmp_path, "defaults: {timeout_s: 3}\n")


def test_validate_catalog_lists_missing_models_and_warns_on_unused_entries(tmp_path: Path) -> None:
    config = load_upstreams(write(tmp_path, VALID_YAML), environ={})
    with pytest.raises(UpstreamsError) as info:
        config.validate_catalog(["demo-nano", "demo-small", "demo-large", "demo-xl"])
    assert "demo-small, demo-xl" in str(info.value) and "upstreams.yaml" in str(info.value)
    warnings = config.validate_catalog(["demo-nano", "demo-large"])
    assert len(warnings) == 1 and "upstreams.spare" in warnings[0]  # backup and alt are fallbacks of demo-nano


def test_check_keys_names_the_variable_never_the_value(tmp_path: Path) -> None:
    config = load_upstreams(write(tmp_path, VALID_YAML))
    problems = config.check_keys({"NANO_KEY": "sk-has a space-inside"})
    assert len(problems) == 2
    assert "upstreams.demo-nano.api_key_env" in problems[0] and "NANO_KEY" in problems[0]
    assert "sk-has" not in " ".join(problems) and "space-inside" not in " ".join(problems)
    assert "ALT_KEY" in problems[1] and "not set" in problems[1]
    assert "empty" in config.check_keys({"NANO_KEY": "  ", "ALT_KEY": "k"})[0]
    assert config.check_keys({"NANO_KEY": KEY, "ALT_KEY": KEY + "\n"}) == []  # a trailing newline is stripped
    with pytest.raises(UpstreamsError, match="ALT_KEY is not set"):
        load_upstreams(write(tmp_path, VALID_YAML), environ={"NANO_KEY": KEY}).upstream("alt")


def test_repr_never_shows_the_key(tmp_path: Path) -> None:
    config = load_upstreams(write(tmp_path, VALID_YAML), environ={"NANO_KEY": KEY, "ALT_KEY": KEY})
    chain = config.chain("demo-nano")
    for text in (repr(chain), str(chain[0]), f"{chain[2]}", repr(config)):
        assert KEY not in text
    assert "***" in repr(chain[0]) and "NANO_KEY" in repr(chain[0]) and "x-team" in repr(chain[0])


def test_circuit_breaker_states() -> None:
    now = [0.0]
    b = CircuitBreaker(failures=2, cooldown_s=10, clock=lambda: now[0])
    assert b.admit() == "call" and not b.failure(False)
    assert b.admit() == "call" and b.failure(False)  # the second consecutive failure opens it
    assert b.state == "open" and b.admit() is None
    now[0] = 10.0
    assert b.admit() == "trial" and b.admit() is None  # one trial at a time
    assert b.failure(True) and b.state == "open"  # failed trial: a new cooldown
    now[0] = 15.0
    assert b.admit() is None
    now[0] = 20.0
    assert b.admit() == "trial"
    b.abandon(True)  # a cancelled trial frees the slot for another
    assert b.admit() == "trial"
    b.success()
    assert b.state == "closed" and b.consecutive_failures == 0


# --- the client, against the fake upstream --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as f:
        yield f


@pytest.fixture
def upstream_fake(fake: FakeUpstream) -> FakeUpstream:
    fake.reset()
    return fake


def make_config(fake: FakeUpstream, **entry: Any) -> UpstreamsConfig:
    data = {
        "upstreams": {"tier-model": {"base_url": fake.base_url, "api_key_env": "FAKE_KEY", "model": "up-m", **entry}},
        "circuit_breaker": {"failures": 2, "cooldown_s": 0.4},
    }
    return UpstreamsConfig.from_dict(data, source="test-upstreams.yaml", environ={"FAKE_KEY": KEY})


def run_with_client(
    config: UpstreamsConfig, test: Callable[[UpstreamClient], Awaitable[T]], attempts: list[Attempt] | None = None
) -> T:
    async def main() -> T:
        async with UpstreamClient(config, on_attempt=None if attempts is None else attempts.append) as client:
            return await test(client)

    return asyncio.run(main())


def test_success_returns_the_completion_with_usage_and_sends_the_env_key(upstream_fake: FakeUpstream) -> None:
    upstream_fake.configure(require_api_key=KEY, content="four words of answer", prompt_tokens=11)
    config = make_config(upstream_fake)
    attempts: list[Attempt] = []
    body = {**BODY, "stream": False, "stream_options": {"include_usage": True}, "temperature": 0}
    result = run_with_client(config, lambda c: c.complete(config.upstream("tier-model"), body), attempts)
    assert result.status == 200 and result.upstream == "tier-model"
    assert result.body["choices"][0]["message"]["content"] == "four words of answer"
    assert result.usage == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
    assert 0 < result.elapsed_s < 5
    assert [(a.upstream, a.outcome) for a in attempts] == [("tier-model", "ok")] and attempts[0] == result.attempt
    (call,) = upstream_fake.calls()
    assert call["headers"]["authorization"] == f"Bearer {KEY}"
    assert call["body"]["model"] == "up-m"  # the upstream's model name replaces the tier's
    assert call["body"]["temperature"] == 0 and "stream_options" not in call["body"] and "stream" not in call["body"]


def test_a_wrong_key_is_a_non_retryable_401(upstream_fake: FakeUpstream) -> None:
    upstream_fake.configure(require_api_key="another-key")
    config = make_config(upstream_fake)
    with pytest.raises(UpstreamHTTPError) as info:
        run_with_client(config, lambda c: c.complete(config.upstream("tier-model"), BODY))
    assert info.value.status == 401 and not info.value.retryable
    assert KEY not in str(info.value)


def test_503_once_is_retryable_and_the_next_call_succeeds(upstream_fake: FakeUpstream) -> None:
    upstream_fake.configure(fail_status=503, fail_times=1)
    config = make_config(upstream_fake)
    attempts: list[Attempt] = []

    async def test(client: UpstreamClient) -> tuple[UpstreamError, int]:
        up = config.upstream("tier-model")
        with pytest.raises(UpstreamError) as info:
            await client.complete(up, BODY)
        ok = await client.complete(up, BODY)
        return info.value, ok.status

    error, second = run_with_client(config, test, attempts)
    assert isinstance(error, UpstreamHTTPError)
    assert error.retryable and error.status == 503 and error.outcome == "http_503" and error.upstream == "tier-model"
    assert second == 200
    assert [a.outcome for a in attempts] == ["http_503", "ok"] and error.attempt == attempts[0]


def test_400_is_not_retryable_and_keeps_the_upstreams_error_body(upstream_fake: FakeUpstream) -> None:
    upstream_fake.configure(fail_status=400, fail_times=-1)
    config = make_config(upstream_fake)
    with pytest.raises(UpstreamHTTPError) as info:
        run_with_client(config, lambda c: c.complete(config.upstream("tier-model"), BODY))
    error = info.value
    assert not error.retryable and error.status == 400 and error.outcome == "http_400"
    assert error.body == {
        "error": {
            "message": "fake upstream failure 400 for model 'up-m'",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    assert "fake upstream failure" not in str(error)  # the upstream's text is not in messages (or logs)


def test_a_hanging_upstream_times_out_within_its_timeout(upstream_fake: FakeUpstream) -> None:
    upstream_fake.configure(hang=True)
    config = make_config(upstream_fake, timeout_s=0.5)
    attempts: list[Attempt] = []

    async def test(client: UpstreamClient) -> tuple[float, float]:
        up = config.upstream("tier-model")
        t0 = time.monotonic()
        with pytest.raises(UpstreamTimeout) as info:
            await client.complete(up, BODY)
        assert info.value.retryable and info.value.outcome == "timeout" and "timeout_s" in str(info.value)
        own = time.monotonic() - t0
        # the caller's deadline binds before the upstream's timeout, and is not held against the upstream
        t0 = time.monotonic()
        with pytest.raises(UpstreamTimeout, match="deadline"):
            await client.complete(up, BODY, deadline=time.monotonic() + 0.2)
        assert client.breaker("tier-model").consecutive_failures == 1
        return own, time.monotonic() - t0

    own, by_deadline = run_with_client(config, test, attempts)
    assert 0.45 < own < 1.5 and 0.15 < by_deadline < 1.0
    assert [a.outcome for a in attempts] == ["timeout", "timeout"]


def test_a_deadline_already_passed_fails_without_a_call(upstream_fake: FakeUpstream) -> None:
    config = make_config(upstream_fake)
    with pytest.raises(UpstreamTimeout):
        run_with_client(
            config, lambda c: c.complete(config.upstream("tier-model"), BODY, deadline=time.monotonic() - 1)
        )
    assert upstream_fake.calls() == []


def test_garbage_is_a_retryable_bad_response(upstream_fake: FakeUpstream) -> None:
    upstream_fake.configure(garbage=True)
    config = make_config(upstream_fake)
    attempts: list[Attempt] = []

    async def test(client: UpstreamClient) -> None:
        up = config.upstream("tier-model")
        for call in (client.complete, client.stream):
            with pytest.raises(UpstreamBadResponse) as info:
                await call(up, BODY)
            assert info.value.retryable and info.value.outcome == "bad_response"

    run_with_client(config, test, attempts)
    assert [a.outcome for a in attempts] == ["bad_response", "bad_response"]


def test_a_closed_port_is_a_retryable_connect_error() -> None:
    data = {"upstreams": {"m": {"base_url": f"http://127.0.0.1:{free_port()}/v1", "connect_timeout_s": 2}}}
    config = UpstreamsConfig.from_dict(data)
    with pytest.raises(UpstreamConnectError) as info:
        run_with_client(config, lambda c: c.complete(config.upstream("m"), BODY))
    assert info.value.retryable and info.value.outcome == "connect_error" and info.value.status is None


def test_circuit_breaker_opens_fails_fast_and_half_opens_after_cooldown(upstream_fake: FakeUpstream) -> None:
    upstream_fake.configure(fail_status=502, fail_times=-1)
    config = make_config(upstream_fake)  # failures: 2, cooldown_s: 0.4
    attempts: list[Attempt] = []

    async def test(client: UpstreamClient) -> None:
        up = config.upstream("tier-model")
        for _ in range(2):
            with pytest.raises(UpstreamHTTPError):
                await client.complete(up, BODY)
        assert client.circuit_state("tier-model") == "open"
        t0 = time.monotonic()
        for call in (client.complete, client.stream, client.complete):
            with pytest.raises(UpstreamUnavailable) as info:
                await call(up, BODY)
            assert info.value.retryable and info.value.outcome == "circuit_open"
        assert time.monotonic() - t0 < 0.1
        assert len(upstream_fake.calls()) == 2  # failing fast made no network call
        await asyncio.sleep(0.45)
        # half-open: the trial reaches the upstream, fails, and the breaker opens again
        with pytest.raises(UpstreamHTTPError):
            await client.complete(up, BODY)
        assert len(upstream_fake.calls()) == 3 and client.circuit_state("tier-model") == "open"
        with pytest.raises(UpstreamUnavailable):
            await client.complete(up, BODY)
        upstream_fake.configure(content="back")
        await asyncio.sleep(0.45)
        assert (await client.complete(up, BODY)).body["choices"][0]["message"]["content"] == "back"
        assert client.circuit_state("tier-model") == "closed"
        assert len(upstream_fake.calls()) == 4

    run_with_client(config, test, attempts)
    outcomes = [a.outcome for a in attempts]
    assert outcomes == ["http_502"] * 2 + ["circuit_open"] * 3 + ["http_502", "circuit_open", "ok"]


def test_stream_yields_chunks_and_records_usage(upstream_fake: FakeUpstream) -> None:
    upstream_fake.configure(content="one two three", prompt_tokens=5)
    config = make_config(upstream_fake)
    attempts: list[Attempt] = []

    async def test(client: UpstreamClient) -> tuple[list[str], Any]:
        stream = await client.stream(config.upstream("tier-model"), {**BODY, "stream": True})
        assert stream.status == 200 and not stream.client_wants_usage and stream.attempt is None
        payloads = [p async for p in stream]
        assert stream.closed and client.in_flight("tier-model") == 0
        return payloads, stream

    payloads, stream = run_with_client(config, test, attempts)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "one two three"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == stream.usage
    assert stream.usage == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert stream.attempt == attempts[0] and attempts[0].outcome == "ok" and stream.first_event_s > 0
    (call,) = upstream_fake.calls()
    assert call["body"]["stream"] is True and call["body"]["stream_options"] == {"include_usage": True}
    assert call["body"]["model"] == "up-m"


def test_stream_says_whether_the_client_asked_for_usage(upstream_fake: FakeUpstream) -> None:
    config = make_config(upstream_fake)

    async def test(client: UpstreamClient) -> bool:
        body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
        async with await client.stream(config.upstream("tier-model"), body) as stream:
            return stream.client_wants_usage

    assert run_with_client(config, test) is True


def test_a_cut_stream_raises_stream_broken_from_the_iterator(upstream_fake: FakeUpstream) -> None:
    upstream_fake.configure(content="a b c d e f", cut_stream_after=2)
    config = make_config(upstream_fake)
    attempts: list[Attempt] = []

    async def test(client: UpstreamClient) -> list[str]:
        stream = await client.stream(config.upstream("tier-model"), {**BODY, "stream": True})
        got: list[str] = []
        with pytest.raises(UpstreamStreamBroken) as info:
            async for payload in stream:
                got.append(payload)
        assert not info.value.retryable and info.value.outcome == "stream_broken"
        assert client.in_flight("tier-model") == 0 and stream.usage is None
        return got

    got = run_with_client(config, test, attempts)
    assert len(got) == 3  # the role chunk and two content chunks arrived before the cut
    assert [a.outcome for a in attempts] == ["stream_broken"]


def test_stream_failures_before_the_first_event_are_classified(upstream_fake: FakeUpstream) -> None:
    upstream_fake.configure(fail_status=429, fail_times=1)
    config = make_config(upstream_fake)

    async def test(client: UpstreamClient) -> None:
        up = config.upstream("tier-model")
        with pytest.raises(UpstreamHTTPError) as info:
            await client.stream(up, {**BODY, "stream": True})
        assert info.value.retryable and info.value.status == 429
        assert info.value.body is not None and info.value.body["error"]["code"] == "rate_limit_exceeded"
        upstream_fake.configure(cut_stream_after=0)  # role chunk only, then the connection drops
        stream = await client.stream(up, BODY)
        with pytest.raises(UpstreamStreamBroken):
            _ = [p async for p in stream]
        assert client.in_flight("tier-model") == 0

    run_with_client(config, test)


def test_closing_a_stream_early_frees_its_slot(upstream_fake: FakeUpstream) -> None:
    upstream_fake.configure(content="w " * 50, stream_chunk_delay_ms=20)
    config = make_config(upstream_fake, max_concurrency=1)
    attempts: list[Attempt] = []

    async def test(client: UpstreamClient) -> None:
        up = config.upstream("tier-model")
        stream = await client.stream(up, BODY)
        await anext(stream)
        assert client.in_flight("tier-model") == 1
        await stream.aclose()
        assert client.in_flight("tier-model") == 0 and stream.closed
        assert (await client.complete(up, BODY, deadline=time.monotonic() + 5)).status == 200

    run_with_client(config, test, attempts)
    assert [a.outcome for a in attempts] == ["cancelled", "ok"]


def test_the_semaphore_caps_concurrency(upstream_fake: FakeUpstream) -> None:
    upstream_fake.configure(latency_ms=300)
    config = make_config(upstream_fake, max_concurrency=2)

    async def test(client: UpstreamClient) -> tuple[int, float]:
        up = config.upstream("tier-model")
        peak = 0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, client.in_flight("tier-model"))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        t0 = time.monotonic()
        results = await asyncio.gather(*(client.complete(up, BODY) for _ in range(6)))
        elapsed = time.monotonic() - t0
        done.set()
        await watcher
        assert all(r.status == 200 for r in results)
        return peak, elapsed

    peak, elapsed = run_with_client(config, test)
    assert peak == 2
    assert elapsed >= 0.85  # 6 calls of 300 ms, 2 at a time: 3 rounds
    assert len(upstream_fake.calls()) == 6
