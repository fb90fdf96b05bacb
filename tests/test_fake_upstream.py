"""The fake OpenAI upstream, driven by the official ``openai`` SDK over real loopback HTTP.

The gateway tests rely on these behaviours; each test states what the SDK really does with them (which exception
class, which partial output), so a change in the fake or the SDK shows up here first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pydantic
import pytest
from fake_upstream import Behaviour, FakeUpstream
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
)

pytestmark = pytest.mark.timeout(60)

USER: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "what is two plus two"}
]  # 5 words: the default prompt_tokens


@pytest.fixture(scope="module")
def fake(work: Path) -> Iterator[FakeUpstream]:
    with FakeUpstream(log_path=work / "fake_upstream.log") as f:
        yield f


@pytest.fixture(autouse=True)
def clean(fake: FakeUpstream) -> None:
    fake.reset()


@pytest.fixture
def client(fake: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as c:
        yield c


def test_non_stream_answer_and_usage(fake: FakeUpstream, client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="small", messages=USER)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "small"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "answer from small"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (5, 3, 8)

    fake.configure("small", content="a truncated", prompt_tokens=100, completion_tokens=7, finish_reason="length")
    r = client.chat.completions.create(model="small", messages=USER)
    assert r.choices[0].message.content == "a truncated" and r.choices[0].finish_reason == "length"
    assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
        100,
        7,
        107,
    )

    fake.configure("small", omit_usage=True)
    assert client.chat.completions.create(model="small", messages=USER).usage is None


def test_default_behaviour_applies_to_models_without_their_own(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.configure("*", content="from the default")
    fake.configure("big", content="from big")
    answer = {
        m: client.chat.completions.create(model=m, messages=USER).choices[0].message.content for m in ("big", "other")
    }
    assert answer == {"big": "from big", "other": "from the default"}
    assert [m.id for m in client.models.list()] == ["big"]


def test_stream_with_usage(fake: FakeUpstream, client: openai.OpenAI) -> None:
    content = "the answer  is four.\nDone "
    fake.configure("m", content=content)
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    with_choices = [c for c in chunks if c.choices]
    assert all(c.object == "chat.completion.chunk" and c.model == "m" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == content
    assert len(with_choices) == 1 + 5 + 1  # role chunk, one chunk per word, finish chunk
    assert with_choices[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (5, 5)
    assert all(c.usage is None for c in chunks[:-1])

    no_usage = list(client.chat.completions.create(model="m", messages=USER, stream=True))
    assert all(c.choices and c.usage is None for c in no_usage)


def test_stream_chunk_delay_and_latency(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.configure("slow", content="a b c", latency_ms=300, stream_chunk_delay_ms=100)
    t0 = time.monotonic()
    stream = client.chat.completions.create(model="slow", messages=USER, stream=True)
    headers_after = time.monotonic() - t0
    list(stream)
    total = time.monotonic() - t0
    assert headers_after >= 0.3
    assert total >= 0.3 + 3 * 0.1


def test_fail_once_then_succeed(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.configure("m", fail_status=503)
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="m", messages=USER)
    assert exc.value.status_code == 503
    assert isinstance(exc.value.body, dict) and set(exc.value.body) == {"message", "type", "param", "code"}
    assert exc.value.body["type"] == "server_error"
    assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content == "answer from m"
    assert len(fake.calls("m")) == 2  # the failed call counts too


def test_fail_always_and_rate_limit(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.configure("m", fail_status=429, fail_times=-1)
    for _ in range(3):
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="m", messages=USER)
    fake.configure("m", fail_status=500, fail_times=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=USER)
    assert client.chat.completions.create(model="m", messages=USER).choices[0].finish_reason == "stop"


def test_missing_messages_is_a_bad_request(fake: FakeUpstream, client: openai.OpenAI) -> None:
    # The SDK's create() insists on messages, so the raw post sends the body a broken client would.
    with pytest.raises(openai.BadRequestError) as exc:
        client.post("/chat/completions", body={"model": "m"}, cast_to=ChatCompletion)
    assert isinstance(exc.value.body, dict)
    assert exc.value.body["type"] == "invalid_request_error" and exc.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as exc:
        client.post("/chat/completions", body={"messages": USER}, cast_to=ChatCompletion)
    assert isinstance(exc.value.body, dict) and exc.value.body["param"] == "model"
    assert [c["model"] for c in fake.calls()] == ["m", None]


def test_garbage_body(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.configure("m", garbage=True)
    # openai 3.57 does not wrap this in APIResponseValidationError: the JSON decoder's error escapes as is.
    with pytest.raises(json.JSONDecodeError):
        client.chat.completions.create(model="m", messages=USER)
    r = httpx.post(f"{fake.base_url}/chat/completions", json={"model": "m", "messages": USER})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    with pytest.raises(ValueError):
        r.json()


def test_cut_stream_raises_connection_error_without_usage(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.configure("m", content="one two three four five", cut_stream_after=2)
    received: list[str] = []
    usage_seen = False
    stream = client.chat.completions.create(
        model="m",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    with pytest.raises(openai.APIConnectionError) as exc:
        for chunk in stream:
            usage_seen = usage_seen or chunk.usage is not None
            received.extend(c.delta.content or "" for c in chunk.choices)
    # The connection drops mid body: the SDK surfaces the incomplete-read error of its HTTP library (openai 3.x ships
    # its own ``httpx2``, not httpx) as a connection error.
    assert type(exc.value.__cause__).__name__ == "RemoteProtocolError"
    assert "".join(received) == "one two "
    assert not usage_seen


def test_hang_times_out(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.configure("m", hang=True)
    t0 = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="m", messages=USER, timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert len(fake.calls("m")) == 1


TOOLS: list[ChatCompletionFunctionToolParam] = [
    {
        "type": "function",
        "function": {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}},
    }
]
ARGS = {"a": 2, "b": 2, "note": "a longer argument string so that it streams in several pieces"}


def test_tool_call(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.configure("m", tool_call={"name": "add", "arguments": ARGS})
    r = client.chat.completions.create(model="m", messages=USER, tools=TOOLS)
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    calls = r.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1 and isinstance(calls[0], ChatCompletionMessageFunctionToolCall)
    assert (calls[0].id, calls[0].type, calls[0].function.name) == ("call_1", "function", "add")
    assert json.loads(calls[0].function.arguments) == ARGS

    # Without tools in the request the same behaviour answers plain text.
    plain = client.chat.completions.create(model="m", messages=USER)
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].message.content == "answer from m"


def test_tool_call_streaming_reconstructs(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.configure("m", tool_call={"name": "add", "arguments": ARGS})
    chunks = list(client.chat.completions.create(model="m", messages=USER, tools=TOOLS, stream=True))
    ids, names, args = set(), set(), []
    for chunk in chunks:
        for tc in chunk.choices[0].delta.tool_calls or []:
            assert tc.index == 0
            if tc.id:
                ids.add(tc.id)
            if tc.function and tc.function.name:
                names.add(tc.function.name)
            if tc.function and tc.function.arguments:
                args.append(tc.function.arguments)
    assert ids == {"call_1"} and names == {"add"}
    assert len(args) > 2 and json.loads("".join(args)) == ARGS
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_calls_are_recorded_with_headers(fake: FakeUpstream, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="a", messages=USER)
    client.chat.completions.create(model="b", messages=USER, temperature=0.5)
    client.chat.completions.create(model="a", messages=USER, extra_headers={"X-Trace": "t1"})
    calls = fake.calls()
    assert [c["model"] for c in calls] == ["a", "b", "a"]
    assert all(c["headers"]["authorization"] == "Bearer k" and c["via"] == "http" for c in calls)
    assert calls[1]["body"]["temperature"] == 0.5 and calls[1]["body"]["messages"] == USER
    assert [c["headers"].get("x-trace") for c in fake.calls("a")] == [None, "t1"]
    fake.reset()
    assert fake.calls() == []


def test_require_api_key(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.configure("*", require_api_key="secret")
    with pytest.raises(openai.AuthenticationError) as exc:
        client.chat.completions.create(model="m", messages=USER)
    assert isinstance(exc.value.body, dict) and exc.value.body["code"] == "invalid_api_key"
    with openai.OpenAI(base_url=fake.base_url, api_key="secret", max_retries=0) as good:
        assert good.chat.completions.create(model="m", messages=USER).choices[0].message.content
    with pytest.raises(ValueError, match="require_api_key"):
        fake.configure("m", require_api_key="secret")


def test_configure_rejects_unknown_fields(fake: FakeUpstream) -> None:
    with pytest.raises(pydantic.ValidationError, match="fail_stauts"):
        fake.configure("m", fail_stauts=503)
    with pytest.raises(pydantic.ValidationError, match="tool_call"):
        Behaviour(tool_call={"arguments": "{}"})


def _batch_input(*requests: tuple[str, str]) -> bytes:
    lines = [
        {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": {"model": model, "messages": USER}}
        for cid, model in requests
    ]
    return "".join(json.dumps(x) + "\n" for x in lines).encode()


def test_batch_round_trip(fake: FakeUpstream, client: openai.OpenAI) -> None:
    fake.configure("big", content="big answer", batch_fail_custom_ids=["r3"])
    data = _batch_input(("r1", "small"), ("r2", "big"), ("r3", "big"))
    uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(data)
    assert client.files.content(uploaded.id).content == data

    created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = client.batches.retrieve(created.id)
    assert batch.status == "completed" and batch.input_file_id == uploaded.id
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (3, 2, 1)
    assert batch.output_file_id and batch.error_file_id

    out = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert [x["custom_id"] for x in out] == ["r1", "r2"]
    assert all(x["error"] is None and x["response"]["status_code"] == 200 for x in out)
    bodies = [ChatCompletion.model_validate(x["response"]["body"]) for x in out]
    assert [b.choices[0].message.content for b in bodies] == ["answer from small", "big answer"]
    assert bodies[0].usage is not None and bodies[0].usage.prompt_tokens == 5

    errors = [json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()]
    assert [x["custom_id"] for x in errors] == ["r3"] and errors[0]["error"]["message"]
    assert [(c["model"], c["via"]) for c in fake.calls()] == [("small", "batch"), ("big", "batch"), ("big", "batch")]


def test_batch_with_invalid_line_fails(fake: FakeUpstream, client: openai.OpenAI) -> None:
    uploaded = client.files.create(file=("in.jsonl", _batch_input(("r1", "m")) + b"not json\n"), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "failed" and batch.output_file_id is None
    assert batch.errors is not None and batch.errors.data is not None
    assert [(e.code, e.line) for e in batch.errors.data] == [("invalid_json_line", 2)]
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
