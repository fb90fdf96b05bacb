"""The OpenAI-compatible gateway end to end: the official ``openai`` SDK (sync, async, streaming) against a real
``tierwise serve`` whose upstreams are a real fake OpenAI server on loopback (``tests/fake_upstream.py``).

Every assertion about upstream traffic counts the calls the fake received: a fallback makes exactly the expected
calls, a client error makes no second one, nothing is billed twice.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from fake_upstream import FakeUpstream
from service_server import ServerProcess, metric

FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_11c0253" / "bundle"
CATALOG = {"nano": "demo-nano", "small": "demo-small", "medium": "demo-medium", "large": "demo-large"}
PRICES = {"demo-nano": (0.1, 0.4), "demo-small": (0.5, 1.5), "demo-medium": (3.0, 15.0), "demo-large": (15.0, 75.0)}
KEY_ENV, KEY = "TIERWISE_TEST_UPSTREAM_KEY", "sk-test-upstream-key"
MSG = [{"role": "user", "content": "Write a haiku about routing requests to cheaper models."}]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway")


@pytest.fixture(scope="module")
def fake(work: Path) -> Iterator[FakeUpstream]:
    with FakeUpstream(log_path=work / "fake.log") as f:
        yield f


def upstreams_file(work: Path, fake: FakeUpstream, name: str = "upstreams.yaml") -> Path:
    """Every catalog model on the fake as ``up-<model>``; demo-nano falls back to a backup entry first."""
    ups: dict[str, Any] = {
        model: {"base_url": fake.base_url, "api_key_env": KEY_ENV, "model": f"up-{model}"}
        for model in CATALOG.values()
    }
    ups["demo-nano"]["fallbacks"] = ["nano-backup"]
    ups["nano-backup"] = {"base_url": fake.base_url, "api_key_env": KEY_ENV, "model": "up-nano-backup"}
    path = work / name
    path.write_text(yaml.safe_dump({"defaults": {"timeout_s": 5}, "upstreams": ups}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def server(work: Path, fake: FakeUpstream) -> Iterator[ServerProcess]:
    env = {
        "TIERWISE_HOME": str(work / "home"),
        "TIERWISE_MODEL_URI": str(FIXTURE_BUNDLE),
        "TIERWISE_DECISION_LOG": str(work / "decisions.db"),
        "TIERWISE_UPSTREAMS": str(upstreams_file(work, fake)),
        KEY_ENV: KEY,
    }
    srv = ServerProcess(env, work / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
    assert KEY not in srv.log()  # the key never reaches the log


@pytest.fixture
def client(server: ServerProcess, fake: FakeUpstream) -> openai.OpenAI:
    fake.reset()
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)


def call_row(work: Path, request_id: str, timeout: float = 10.0, db: Path | None = None) -> dict[str, Any]:
    """The decision log's ``calls`` row of a request (the writer commits within milliseconds)."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(db or work / "decisions.db") as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM calls WHERE request_id = ?", (request_id,)).fetchone()
        if row is not None:
            return dict(row)
        if time.monotonic() > deadline:
            raise AssertionError(f"no calls row for {request_id}")
        time.sleep(0.05)


def list_usd(model: str, i: int, o: int) -> float:
    pin, pout = PRICES[model]
    return (i * pin + o * pout) / 1e6


# --- the happy paths -----------------------------------------------------------------------------------------------
def test_routed_completion_with_the_sdk(client: openai.OpenAI, fake: FakeUpstream, work: Path) -> None:
    raw = client.chat.completions.with_raw_response.create(model="tierwise", messages=MSG, temperature=0)
    resp = raw.parse()
    h = raw.headers
    tier, model = h["x-tierwise-tier"], h["x-tierwise-model"]
    assert CATALOG[tier] == model == resp.model  # the catalog model that answered
    calls = fake.calls()
    assert len(calls) == 1, calls
    sent = calls[0]
    assert sent["model"] == f"up-{model}" and sent["headers"]["authorization"] == f"Bearer {KEY}"
    assert "tierwise" not in sent["body"] and sent["body"]["temperature"] == 0
    assert resp.choices[0].message.content == f"answer from up-{model}"
    assert 0 <= float(h["x-tierwise-p-acceptable"]) <= 1 and h["x-tierwise-attempts"] == "1"
    assert float(h["x-tierwise-overhead-ms"]) >= 0
    usage = resp.usage
    assert usage is not None
    expected = list_usd(model, usage.prompt_tokens, usage.completion_tokens)
    assert float(h["x-tierwise-cost-usd"]) == pytest.approx(expected, rel=1e-6)
    row = call_row(work, h["x-tierwise-request-id"])
    assert row["tier"] == tier and row["upstream"] == model and row["status"] == 200 and row["outcome"] == "ok"
    assert (row["input_tokens"], row["output_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert row["cost_usd"] == pytest.approx(expected, rel=1e-6)
    top = list_usd("demo-large", usage.prompt_tokens, usage.completion_tokens)
    assert row["top_tier_cost_usd"] == pytest.approx(top, rel=1e-6)
    assert json.loads(row["attempts"])[0]["outcome"] == "ok"
    with sqlite3.connect(work / "decisions.db") as conn:  # the routing decision is logged too: feedback can follow
        decision = conn.execute(
            "SELECT endpoint, tier FROM decisions WHERE request_id = ?", (h["x-tierwise-request-id"],)
        ).fetchone()
    assert decision == ("/v1/chat/completions", tier)


def test_streaming_asks_for_usage_but_forwards_it_only_when_asked(
    client: openai.OpenAI, fake: FakeUpstream, work: Path
) -> None:
    fake.configure(content="one two three four")
    with client.chat.completions.with_streaming_response.create(
        model="tierwise", messages=MSG, stream=True
    ) as raw:
        request_id = raw.headers["x-tierwise-request-id"]
        chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three four"
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    assert fake.calls()[0]["body"]["stream_options"] == {"include_usage": True}  # tierwise did
    row = call_row(work, request_id)
    assert row["stream"] == 1 and row["output_tokens"] == 4 and row["cost_usd"] > 0

    chunks = list(
        client.chat.completions.create(
            model="tierwise", messages=MSG, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert {c.model for c in chunks} <= set(CATALOG.values())
    assert len(fake.calls()) == 2


def test_async_client_and_concurrency(server: ServerProcess, fake: FakeUpstream) -> None:
    fake.reset()

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as c:
            outs = await asyncio.gather(
                *(c.chat.completions.create(model="tierwise", messages=[{"role": "user", "content": f"q {i}"}])
                  for i in range(8))
            )
        return [o.choices[0].message.content or "" for o in outs]

    answers = asyncio.run(run())
    assert len(answers) == 8 and all(a.startswith("answer from up-") for a in answers)
    assert len(fake.calls()) == 8


def test_pass_through_and_models(client: openai.OpenAI, fake: FakeUpstream) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "tierwise" and set(CATALOG.values()) <= set(ids)
    raw = client.chat.completions.with_raw_response.create(model="demo-small", messages=MSG)
    assert raw.headers["x-tierwise-tier"] == "small" and raw.parse().model == "demo-small"
    assert "x-tierwise-p-acceptable" not in raw.headers  # not routed
    assert [c["model"] for c in fake.calls()] == ["up-demo-small"]


def test_stream_with_tools(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.configure(tool_call={"name": "get_weather", "arguments": {"city": "Oslo"}})
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    stream = client.chat.completions.create(model="tierwise:q0.95", messages=MSG, tools=tools, stream=True)
    name, args, finish = "", "", None
    for chunk in stream:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                if tc.function is not None:
                    name += tc.function.name or ""
                    args += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    assert name == "get_weather" and json.loads(args) == {"city": "Oslo"} and finish == "tool_calls"
    assert fake.calls()[0]["body"]["tools"] == tools


# --- fallbacks and escalation --------------------------------------------------------------------------------------
def test_fallback_then_escalation(client: openai.OpenAI, fake: FakeUpstream, work: Path) -> None:
    # the cheapest tier (threshold 0) fails on its upstream and on its backup: the next escalation tier answers
    fake.configure("up-demo-nano", fail_status=503, fail_times=-1)
    fake.configure("up-nano-backup", fail_status=500, fail_times=-1)
    raw = client.chat.completions.with_raw_response.create(model="tierwise:t0", messages=MSG)
    h = raw.headers
    escalation = h["x-tierwise-escalation"].split(",")
    assert escalation and escalation[0] != "nano", h
    assert h["x-tierwise-tier"] == escalation[0] and h["x-tierwise-attempts"] == "3"
    assert [c["model"] for c in fake.calls()] == ["up-demo-nano", "up-nano-backup", f"up-{CATALOG[escalation[0]]}"]
    row = call_row(work, h["x-tierwise-request-id"])
    outcomes = [a["outcome"] for a in json.loads(row["attempts"])]
    assert outcomes == ["http_503", "http_500", "ok"] and row["tier"] == escalation[0]

    fake.reset()  # the backup alone answers: exactly two calls
    fake.configure("up-demo-nano", fail_status=429, fail_times=1)
    raw = client.chat.completions.with_raw_response.create(model="demo-nano", messages=MSG)
    assert raw.parse().choices[0].message.content == "answer from up-nano-backup"
    assert [c["model"] for c in fake.calls()] == ["up-demo-nano", "up-nano-backup"]


def test_upstream_client_error_is_returned_as_is(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.configure("up-demo-medium", fail_status=400, fail_times=1)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="demo-medium", messages=MSG)
    assert len(fake.calls()) == 1  # the request is wrong, not the tier: no fallback, no escalation
    body = info.value.body
    assert isinstance(body, dict) and "message" in body


def test_all_upstreams_down_is_502(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.configure("*", fail_status=503, fail_times=-1)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="demo-large", messages=MSG)  # top tier, no fallback configured
    assert info.value.status_code == 502 and "up-demo-large" not in str(info.value.body)
    assert len(fake.calls()) == 1


def test_stream_cut_midway_is_not_retried(client: openai.OpenAI, fake: FakeUpstream, work: Path) -> None:
    fake.configure(content="a b c d e f g h", cut_stream_after=3)
    with pytest.raises(openai.APIError):
        with client.chat.completions.with_streaming_response.create(
            model="demo-small", messages=MSG, stream=True
        ) as raw:
            request_id = raw.headers["x-tierwise-request-id"]
            for _ in raw.parse():
                pass
    assert len(fake.calls()) == 1
    row = call_row(work, request_id)
    assert row["outcome"] == "stream_broken" and row["cost_usd"] is None


# --- bad input -----------------------------------------------------------------------------------------------------
def test_bad_requests_get_openai_errors(client: openai.OpenAI, fake: FakeUpstream, server: ServerProcess) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="gpt-99", messages=MSG)
    assert isinstance(nf.value.body, dict) and nf.value.body.get("code") == "model_not_found"
    with pytest.raises(openai.BadRequestError) as big:
        client.chat.completions.create(model="tierwise", messages=MSG, max_tokens=10**12)
    assert isinstance(big.value.body, dict) and big.value.body.get("param") == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tierwise:t7", messages=MSG)  # threshold out of [0, 1]
    with pytest.raises(openai.BadRequestError) as tier:
        client.chat.completions.create(model="tierwise", messages=MSG, extra_body={"tierwise": {"max_tier": "xl"}})
    assert "unknown tier" in tier.value.message
    url = f"{server.url}/v1/chat/completions"
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) >= {"message", "type", "param", "code"}
    r = httpx.post(url, json={"model": "tierwise", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(url, content=b'{"model": "tierwise", "messages": [{"role": "user", "content": "x"}], "seed": NaN}',
                   headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert fake.calls() == []  # nothing reached an upstream


def test_spend_metrics(client: openai.OpenAI, server: ServerProcess) -> None:
    client.chat.completions.create(model="demo-medium", messages=MSG)
    with httpx.Client(base_url=server.url) as c:
        assert metric(c, "tierwise_actual_spend_usd_total", tier="medium") > 0
        assert metric(c, "tierwise_actual_baseline_spend_usd_total") > metric(
            c, "tierwise_actual_spend_usd_total", tier="medium"
        )
        assert metric(c, "tierwise_upstream_attempts_total", upstream="demo-medium", outcome="ok") >= 1
        assert metric(c, "tierwise_gateway_overhead_seconds_count") >= 1


# --- start-up checks -----------------------------------------------------------------------------------------------
@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.environ", dict(__import__("os").environ))  # create_app sets defaults in os.environ


def start_error(settings: Any) -> str:
    from fastapi.testclient import TestClient

    from router.service import StartupError, create_app

    with pytest.raises(StartupError) as info, TestClient(create_app(settings)):
        pass
    return str(info.value)


def test_start_refuses_an_upstreams_file_that_misses_a_tier_or_a_key(
    work: Path, fake: FakeUpstream, tmp_path: Path, isolated_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from router.service import ServiceSettings

    path = upstreams_file(tmp_path, fake)
    data = yaml.safe_load(path.read_text())
    del data["upstreams"]["demo-medium"]
    path.write_text(yaml.safe_dump(data))
    base = {"home": tmp_path, "model_uri": str(FIXTURE_BUNDLE), "decision_log": tmp_path / "d.db", "upstreams": path}
    monkeypatch.setenv(KEY_ENV, KEY)
    msg = start_error(ServiceSettings(**base))
    assert "cannot enable the gateway" in msg and "demo-medium" in msg, msg
    monkeypatch.delenv(KEY_ENV)
    msg = start_error(ServiceSettings(**{**base, "upstreams": upstreams_file(tmp_path, fake, "ok.yaml")}))
    assert KEY_ENV in msg and KEY not in msg, msg


def test_gateway_disabled_without_upstreams(tmp_path: Path, isolated_env: None) -> None:
    from fastapi.testclient import TestClient

    from router.service import ServiceSettings, create_app

    settings = ServiceSettings(home=tmp_path, model_uri=str(FIXTURE_BUNDLE), decision_log=tmp_path / "d.db")
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/chat/completions", json={"model": "tierwise", "messages": MSG})
        assert r.status_code == 503 and r.json()["error"]["code"] == "gateway_disabled"
        assert "--upstreams" in r.json()["error"]["message"]
        assert c.get("/v1/models").json()["data"][0]["id"] == "tierwise"


def test_savings_report_reads_actual_spend(client: openai.OpenAI, work: Path) -> None:
    from training import reports

    ids = []
    for model in ("demo-small", "demo-small", "demo-large"):
        raw = client.chat.completions.with_raw_response.create(model=model, messages=MSG)
        ids.append(raw.headers["x-tierwise-request-id"])
    rows = [call_row(work, i) for i in ids]
    table = reports.actual_spend(reports.read_decision_log(work / "decisions.db"))
    assert table is not None and table.index[-1] == reports.ALL
    small = [r for r in rows if r["tier"] == "small"]
    assert table.loc["small", "answered"] >= 2
    all_rows = reports.read_decision_log(work / "decisions.db").calls
    ok = all_rows.loc[all_rows["status"] == 200]
    assert table.loc[reports.ALL, "actual_usd"] == pytest.approx(ok["cost_usd"].sum())
    assert table.loc[reports.ALL, "top_tier_usd"] == pytest.approx(ok["top_tier_cost_usd"].sum())
    assert table.loc[reports.ALL, "failed"] == int((all_rows["status"] != 200).sum()) > 0  # earlier tests' failures
    assert table.loc["large", "saved_usd"] == pytest.approx(0.0)  # the top tier saves nothing
    assert table.loc["small", "saved_usd"] > 0 and len(small) == 2


def test_savings_command_prints_actual_spend(work: Path) -> None:
    from typer.testing import CliRunner

    from training.cli import app

    res = CliRunner().invoke(app, ["decisions", "savings", "--db", str(work / "decisions.db")], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "actual spend through the gateway" in res.output and "actual_usd" in res.output


def test_hanging_and_garbage_upstreams(client: openai.OpenAI, fake: FakeUpstream, work: Path) -> None:
    # garbage from nano's upstream: its backup answers; nothing is billed for the garbage
    fake.configure("up-demo-nano", garbage=True)
    raw = client.chat.completions.with_raw_response.create(model="demo-nano", messages=MSG)
    assert raw.parse().choices[0].message.content == "answer from up-nano-backup"
    row = call_row(work, raw.headers["x-tierwise-request-id"])
    assert [a["outcome"] for a in json.loads(row["attempts"])] == ["bad_response", "ok"]
    assert row["upstream"] == "nano-backup" and row["cost_usd"] > 0
    # the top tier hangs and nothing else may answer: 504 after its timeout (5 s in the upstreams file), one call
    fake.reset()
    fake.configure("up-demo-large", hang=True)
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="demo-large", messages=MSG)
    assert info.value.status_code == 504 and 4.5 < time.monotonic() - t0 < 20
    assert isinstance(info.value.body, dict) and info.value.body.get("code") == "upstream_timeout"
    assert len(fake.calls()) == 1
