"""End to end: the routing service as a real uvicorn process against a model in a temporary SQLite MLflow store.

One small model is trained per module. Server A serves it (with an alias poll every second, stored prompts and an
admin token); server B starts while the registry is down and serves the last-good copy; server C has neither and
must exit with a clear message.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from pathlib import Path

import httpx
import mlflow
import pytest
import yaml
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families
from service_server import ServerProcess, closed_port_uri, metric, running_server
from typer.testing import CliRunner

from router.catalog import Catalog
from router.service.decision_log import connect, export_log
from training.cli import app as cli_app
from training.demo import demo_catalog, demo_log
from training.pipeline import TrainConfig, train
from training.readers import read_log

NAME = "tierwise-svc"
TOKEN = "test-admin-token"
JSON = {"content-type": "application/json"}
TIERS = demo_catalog().tier_names


@pytest.fixture(scope="module")
def store(work: Path) -> str:
    uri = f"sqlite:///{work / 'mlflow.db'}"
    result = train(
        demo_log(n_prompts=600, seed=3),
        catalog=demo_catalog(),
        config=TrainConfig(layout="linear"),  # what selection keeps on this log, without scoring the candidates
        register=NAME,
        tracking_uri=uri,
        progress=False,
    )
    assert result.model_version == "1" and result.promoted
    return uri


@pytest.fixture(scope="module")
def server(work: Path, store: str):
    env = {
        "TIERWISE_HOME": str(work / "home"),
        "TIERWISE_TRACKING_URI": store,
        "TIERWISE_MODEL_URI": f"models:/{NAME}@champion",
        "TIERWISE_ADMIN_TOKEN": TOKEN,
        "TIERWISE_STORE_PROMPTS": "true",
        "TIERWISE_DECISION_LOG": str(work / "decisions.db"),
        "TIERWISE_MODEL_CACHE_DIR": str(work / "last-good"),
        "TIERWISE_POLL_SECONDS": "1",
        "TIERWISE_FEEDBACK_WAIT_MS": "300",
    }
    with running_server(env, work / "server-a.log") as srv:
        yield srv


def route(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/v1/route", json=body)


def _registry(store: str):
    mlflow.set_tracking_uri(store)
    return MlflowClient(tracking_uri=store)


# --------------------------------------------------------------------------------------------------------------
# operations endpoints
# --------------------------------------------------------------------------------------------------------------
def test_health_ready_tiers_docs(client: httpx.Client, work: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] and not ready["degraded"]
    assert ready["source"] == "registry" and ready["version"] == "1" and ready["router_version"] == f"{NAME}/1"
    assert ready["encoder"].startswith("onnx-int8")
    tiers = client.get("/v1/tiers").json()
    assert [t["name"] for t in tiers["tiers"]] == TIERS
    assert tiers["plan_floor"] == TIERS[demo_catalog().plan_floor]
    assert tiers["router_version"] == f"{NAME}/1"
    # the last-good copy was written after the registry load
    meta = json.loads((work / "last-good" / "source.json").read_text())
    assert meta["name"] == NAME and meta["version"] == "1"
    assert (work / "last-good" / "bundle" / "tierwise.json").is_file()
    spec = client.get("/openapi.json").json()
    for path in ("/v1/route", "/v1/route/batch", "/v1/route/plan", "/v1/feedback", "/v1/tiers", "/readyz"):
        assert path in spec["paths"]
    assert client.get("/docs").status_code == 200


# --------------------------------------------------------------------------------------------------------------
# routing
# --------------------------------------------------------------------------------------------------------------
def test_route_prompt_fields_and_headers(client: httpx.Client) -> None:
    r = route(client, prompt="Write a Python function that merges two sorted lists.", metadata={"task": "code"})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["tier"] in TIERS and d["model"] == demo_catalog().tier(d["tier"]).model
    assert list(d["p_acceptable"]) == TIERS and all(0 <= p <= 1 for p in d["p_acceptable"].values())
    # the default rule is expected utility (see router/decision.py); the threshold rule's reasons are kept
    assert d["reason"] in ("best_expected_utility", "cheapest_tier_meeting_threshold", "no_tier_meets_threshold")
    assert d["escalation"] == TIERS[TIERS.index(d["tier"]) + 1 :]
    assert d["role"] == "single" and d["router_version"] == f"{NAME}/1" and d["latency_ms"] > 0
    cost = d["estimated_cost_usd"]
    assert 0 < cost["tier"] <= cost["top_tier"] and cost["input_tokens"] > 0
    assert d["batch"] is None
    h = r.headers
    assert h["x-tierwise-request-id"] == d["request_id"] and h["x-tierwise-tier"] == d["tier"]
    assert h["x-tierwise-model"] == d["model"] and h["x-tierwise-reason"] == d["reason"]
    assert h["x-tierwise-router-version"] == f"{NAME}/1"
    assert h["x-tierwise-escalation"] == ",".join(d["escalation"])
    assert float(h["x-tierwise-p-acceptable"]) == pytest.approx(d["p_acceptable"][d["tier"]], abs=1e-5)


def test_messages_route_on_last_user_turn_with_context(client: httpx.Client) -> None:
    first, last = "Write a limerick about a cat who learns Rust.", "Now make it rhyme better."
    msgs = [
        {"role": "system", "content": "You are a poet."},
        {"role": "user", "content": first},
        {"role": "assistant", "content": "There once was a cat ..."},
        {"role": "user", "content": [{"type": "text", "text": last}]},
    ]
    via_messages = route(client, messages=msgs).json()
    via_prompt = route(client, prompt=first + "\n\n" + last).json()
    assert via_messages["p_acceptable"] == via_prompt["p_acceptable"]
    single = route(client, messages=[{"role": "user", "content": last}]).json()
    assert single["p_acceptable"] == route(client, prompt=last).json()["p_acceptable"]


def test_routing_knobs(client: httpx.Client) -> None:
    p = "Summarise the causes of the French Revolution in three bullet points."
    cheapest = route(client, prompt=p, threshold=0.0).json()
    assert cheapest["tier"] == TIERS[0] and cheapest["reason"] == "best_expected_utility"
    assert cheapest["threshold"] == 0.0
    capped = route(client, prompt=p, threshold=1.0, max_tier=TIERS[1]).json()
    assert capped["tier"] == TIERS[1] and capped["reason"] == "clamped_by_max_tier" and capped["escalation"] == []
    raised = route(client, prompt=p, threshold=0.0, min_tier=TIERS[2]).json()
    assert raised["tier"] == TIERS[2] and raised["reason"] == "raised_by_min_tier"
    by_model = route(client, prompt=p, threshold=0.0, min_tier=demo_catalog().tiers[2].model).json()
    assert by_model["tier"] == TIERS[2]
    plan = route(client, prompt=p, threshold=0.0, role="plan").json()
    assert TIERS.index(plan["tier"]) == demo_catalog().plan_floor and plan["reason"] == "planner_floor"
    verify = route(client, prompt=p, threshold=0.0, role="verify").json()
    assert TIERS.index(verify["tier"]) == demo_catalog().verify_floor and verify["reason"] == "verifier_floor"
    batch = route(client, prompt=p, threshold=0.0, latency_tolerance="batch").json()
    tier = demo_catalog().tier(batch["tier"])
    assert batch["batch"]["available"] is (tier.batch_discount > 0)
    assert batch["batch"]["estimated_cost_usd"] == pytest.approx(
        batch["estimated_cost_usd"]["tier"] * (1 - tier.batch_discount)
    )


def test_a_known_task_routes_with_its_rates(client: httpx.Client) -> None:
    from training.demo import TASKS

    p = "Write a Python function that merges two sorted lists."
    plain = route(client, prompt=p).json()
    assert plain["task_known"] is None
    unknown = route(client, prompt=p, metadata={"task": "no-such-task"}).json()
    assert unknown["task_known"] is False and unknown["p_acceptable"] == plain["p_acceptable"]
    named = {t: route(client, prompt=p, metadata={"task": t}).json() for t in TASKS}
    assert all(d["task_known"] is True for d in named.values())
    # the same prompt under each task the demo model learned: one distinct probability row per task
    assert len({tuple(d["p_acceptable"].values()) for d in named.values()}) == len(TASKS)
    batch = client.post(
        "/v1/route/batch",
        json={"requests": [{"prompt": p, "metadata": {"task": t}} for t in ("math", "chat")] + [{"prompt": p}]},
    ).json()["results"]
    assert [r["p_acceptable"] for r in batch] == [
        named["math"]["p_acceptable"], named["chat"]["p_acceptable"], plain["p_acceptable"]
    ]
    assert [r["task_known"] for r in batch] == [True, True, None]
    body = {"goal": "Ship a login page", "steps": ["Write the HTML form"], "metadata": {"task": "code"}}
    plan = client.post("/v1/route/plan", json=body).json()
    assert plan["planner"]["task_known"] is True and plan["steps"][0]["task_known"] is True


def test_batch_endpoint_matches_single_route(client: httpx.Client) -> None:
    prompts = ["hi there", "Prove that there are infinitely many primes.", "Translate 'cat' to German."]
    r = client.post(
        "/v1/route/batch",
        json={"requests": [{"prompt": p} for p in prompts] + [{"prompt": prompts[0], "role": "plan"}]},
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 4 and len({x["request_id"] for x in results}) == 4
    for p, res in zip(prompts, results, strict=False):
        assert res["p_acceptable"] == route(client, prompt=p).json()["p_acceptable"]
    assert TIERS.index(results[3]["tier"]) >= demo_catalog().plan_floor


def test_plan_endpoint_floors_and_costs(client: httpx.Client) -> None:
    body = {
        "goal": "Build a CSV report of last month's failed payments and email it to finance.",
        "steps": [
            "Query the payments table for failures in the last month.",
            {"text": "Format the rows as CSV with a header.", "role": "execute"},
            {"text": "Check the CSV has one row per failed payment.", "role": "verify"},
        ],
        "threshold": 0.0,
    }
    r = client.post("/v1/route/plan", json=body)
    assert r.status_code == 200, r.text
    d = r.json()
    cat = demo_catalog()
    assert TIERS.index(d["planner"]["tier"]) >= cat.plan_floor and d["planner"]["role"] == "plan"
    assert [s["index"] for s in d["steps"]] == [0, 1, 2]
    assert [s["role"] for s in d["steps"]] == ["execute", "execute", "verify"]
    assert d["steps"][0]["tier"] == TIERS[0]  # threshold 0: the cheapest tier
    assert TIERS.index(d["steps"][2]["tier"]) >= cat.verify_floor
    c = d["estimated_cost_usd"]
    assert 0 < c["plan"] < c["top_tier"] and c["savings"] == pytest.approx(c["top_tier"] - c["plan"])
    # max_tier caps the steps but never pushes the planner below the planning floor
    capped = client.post("/v1/route/plan", json={**body, "threshold": 1.0, "max_tier": TIERS[0]}).json()
    assert TIERS.index(capped["planner"]["tier"]) == cat.plan_floor
    assert all(s["tier"] == TIERS[0] for s in capped["steps"])
    assert capped["planner"]["request_id"].startswith(capped["plan_id"])


# --------------------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------------------
BAD = [
    ("empty prompt", {"prompt": ""}, 422, "prompt"),
    ("blank prompt", {"prompt": "   \n"}, 422, "prompt"),
    ("no prompt, no messages", {"role": "single"}, 422, "prompt"),
    ("prompt and messages", {"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, 422, "messages"),
    ("no user turn", {"messages": [{"role": "system", "content": "y"}]}, 422, "messages"),
    ("unknown role", {"prompt": "x", "role": "boss"}, 422, "role"),
    ("unknown max tier", {"prompt": "x", "max_tier": "gigantic"}, 422, "max_tier"),
    ("unknown min tier", {"prompt": "x", "min_tier": "tiny"}, 422, "min_tier"),
    ("min above max", {"prompt": "x", "min_tier": TIERS[2], "max_tier": TIERS[1]}, 422, "min_tier"),
    ("threshold above 1", {"prompt": "x", "threshold": 1.5}, 422, "threshold"),
    ("threshold below 0", {"prompt": "x", "threshold": -0.1}, 422, "threshold"),
    ("threshold and target", {"prompt": "x", "threshold": 0.5, "quality_target": 0.9}, 422, "quality_target"),
    ("target not positive", {"prompt": "x", "quality_target": 0}, 422, "quality_target"),
    ("unknown field", {"prompt": "x", "max_teir": "small"}, 422, "max_teir"),
    ("bad latency tolerance", {"prompt": "x", "latency_tolerance": "whenever"}, 422, "latency_tolerance"),
    ("not an object", [1, 2], 422, "body"),
]


@pytest.mark.parametrize(("case", "body", "status", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_route_requests(client: httpx.Client, case: str, body: object, status: int, field: str) -> None:
    r = client.post("/v1/route", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field and err["message"] and err["type"]


def test_bad_bodies(client: httpx.Client) -> None:
    def post(path: str, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return client.post(path, content=content, headers=headers if headers is not None else JSON)

    r = post("/v1/route", b'{"prompt": "x", bad')
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_json" and r.json()["error"]["field"] == "body"
    r = post("/v1/route", b'{"prompt": "\xff\xfe broken utf-8"}')
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"
    r = post("/v1/route", b"")
    assert r.status_code == 422 and r.json()["error"]["field"] == "body"
    r = post("/v1/route", b'{"prompt": "x"}', {"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["field"] == "content-type"
    big = json.dumps({"prompt": "a" * 1_100_000}).encode()
    r = post("/v1/route", big)
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"

    def chunks():
        yield big[:500_000]
        yield big[500_000:]

    r = client.post("/v1/route", content=chunks(), headers=JSON)  # no Content-Length: counted while reading
    assert r.status_code == 413
    r = client.post("/v1/route/batch", json={"requests": [{"prompt": "x"}, {"prompt": "y", "min_tier": "zzz"}]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "requests.1.min_tier"
    r = client.post("/v1/route/batch", json={"requests": []})
    assert r.status_code == 422 and r.json()["error"]["field"] == "requests"
    r = client.post("/v1/route/plan", json={"goal": "", "steps": ["a"]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "goal"
    r = client.post("/v1/route/plan", json={"goal": "g", "steps": ["a", {"text": "b", "role": "boss"}]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "steps.1.role"
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


def test_long_and_odd_prompts_are_routed(client: httpx.Client) -> None:
    long = "Explain this log line by line. " + "ERROR disk quota exceeded on node-7; " * 24_000  # ~900 KB
    r = route(client, prompt=long)
    assert r.status_code == 200, r.text[:500]
    assert r.json()["estimated_cost_usd"]["input_tokens"] > 100_000
    for odd in ("a\u0000b\u0007c", "lone surrogate \ud800 here", "emoji \U0001f600 and RTL \u202e text", "\x1b[31m"):
        r = client.post("/v1/route", content=json.dumps({"prompt": odd}).encode(), headers=JSON)
        assert r.status_code == 200, (odd, r.text)
    assert client.get("/healthz").status_code == 200


def test_concurrent_requests_share_encoder_calls(client: httpx.Client, server: ServerProcess) -> None:
    calls_before = metric(client, "tierwise_microbatch_size_count")
    prompts_before = metric(client, "tierwise_microbatch_size_sum")

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as ac:
            rs = await asyncio.gather(
                *[ac.post("/v1/route", json={"prompt": f"question number {i}: what is {i}+{i}?"}) for i in range(48)]
            )
        return [r.status_code for r in rs]

    assert asyncio.run(burst()) == [200] * 48
    calls = metric(client, "tierwise_microbatch_size_count") - calls_before
    prompts = metric(client, "tierwise_microbatch_size_sum") - prompts_before
    assert prompts == 48
    assert calls < 48  # some requests shared an encoder call


# --------------------------------------------------------------------------------------------------------------
# feedback -> decision log -> training reader
# --------------------------------------------------------------------------------------------------------------
def test_feedback_written_and_read_back_by_training_reader(client: httpx.Client, work: Path) -> None:
    cat = demo_catalog()
    ids = []
    for i, p in enumerate(["Translate 'good morning' to French.", "Sort [3, 1, 2] in Python.", "Name a prime."]):
        d = route(client, prompt=p, metadata={"task": f"task{i}", "tenant": "acme"}).json()
        ids.append(d["request_id"])
    ok = [
        {
            "request_id": ids[0],
            "tier": TIERS[0],
            "acceptable": True,
            "input_tokens": 12,
            "output_tokens": 30,
            "cost_usd": 0.0001,
        },
        {"request_id": ids[0], "model": cat.tiers[3].model, "score": 0.9},
        {"request_id": ids[1], "tier": TIERS[1], "model": cat.tiers[1].model, "acceptable": False},
        {"request_id": ids[2], "tier": TIERS[2], "score": 0.25, "latency_ms": 812.5},
    ]
    for body in ok:
        r = client.post("/v1/feedback", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["recorded"] is True
    bad = [
        ({"request_id": "0123456789abcdef", "tier": TIERS[0], "acceptable": True}, 404, "request_id"),
        ({"request_id": ids[0], "tier": "gigantic", "acceptable": True}, 422, "tier"),
        ({"request_id": ids[0], "model": "gpt-9", "acceptable": True}, 422, "model"),
        ({"request_id": ids[0], "tier": TIERS[0], "model": cat.tiers[2].model, "acceptable": True}, 422, "model"),
        ({"request_id": ids[0], "tier": TIERS[0]}, 422, "score"),
        ({"request_id": ids[0], "acceptable": True}, 422, "tier"),
        ({"request_id": ids[0], "tier": TIERS[0], "score": 1.5}, 422, "score"),
        ({"request_id": "has spaces!", "tier": TIERS[0], "score": 1}, 422, "request_id"),
        ({"request_id": ids[0], "tier": TIERS[0], "score": 1, "sentiment": "happy"}, 422, "sentiment"),
    ]
    for body, status, field in bad:
        r = client.post("/v1/feedback", json=body)
        assert r.status_code == status and r.json()["error"]["field"] == field, (body, r.text)

    out = work / "exported.csv"
    deadline = time.monotonic() + 10
    while True:  # the log is written by a background thread in batches
        frame, summary = export_log(work / "decisions.db", out)
        if summary.exported_rows >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    df = read_log(out)
    mine = df[df["request_id"].isin(ids)].reset_index(drop=True)
    assert len(mine) == 4
    assert mine["model"].tolist() == [cat.tiers[0].model, cat.tiers[3].model, cat.tiers[1].model, cat.tiers[2].model]
    assert mine["score"].tolist() == [1.0, 0.9, 0.0, 0.25]
    assert mine["task"].tolist() == ["task0", "task0", "task1", "task2"]
    assert mine["prompt"][0] == "Translate 'good morning' to French."
    assert mine["prompt_id"][0] == mine["prompt_id"][1] and mine["prompt_id"][0] != mine["prompt_id"][2]
    assert set(mine["role"]) == {"single"} and mine["cost_usd"][0] == pytest.approx(0.0001)
    # the CLI does the same
    res = CliRunner().invoke(
        cli_app, ["decisions", "export", "--out", str(work / "cli.jsonl"), "--db", str(work / "decisions.db")]
    )
    assert res.exit_code == 0, res.output
    assert "exported" in res.output and len(read_log(work / "cli.jsonl")) >= 4
    # ... with the catalog the rows were routed with beside it, so `tierwise train` needs no hand edits
    sidecar = Catalog.from_yaml(work / "cli.catalog.yaml")
    assert sidecar == cat and set(read_log(work / "cli.jsonl")["model"]) <= set(sidecar.models)
    assert f"catalog of {NAME}/1 written to" in res.output


# --------------------------------------------------------------------------------------------------------------
# feedback and logs are never silently lost or poisoned (issue 11)
# --------------------------------------------------------------------------------------------------------------
def post_raw(client: httpx.Client, path: str, text: str) -> httpx.Response:
    """POST JSON text as written (httpx's json= refuses Infinity / NaN, which Python's json.loads accepts)."""
    return client.post(path, content=text.encode(), headers=JSON)


def _feedback_ids(db: Path) -> set[str]:
    conn = sqlite3.connect(db)  # read-write: replays the WAL of a killed server
    try:
        return {r[0] for r in conn.execute("SELECT request_id FROM feedback")}
    finally:
        conn.close()


def test_feedback_that_overflowed_the_log_is_refused_and_the_log_keeps_writing(
    client: httpx.Client, work: Path
) -> None:
    """An unauthenticated feedback with input_tokens 10**20 used to kill the decision-log writer (SQLite's
    OverflowError is no sqlite3.Error): later decisions and feedback answered 200 and were never written, /readyz
    stayed green and the dropped-rows metric 0."""
    dropped = metric(client, "tierwise_decision_log_dropped_total")
    d = route(client, prompt="What is two plus two?").json()
    r = post_raw(
        client,
        "/v1/feedback",
        f'{{"request_id": "{d["request_id"]}", "tier": "{d["tier"]}", "acceptable": true, '
        '"input_tokens": 100000000000000000000}',
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "input_tokens", r.text
    later = route(client, prompt="Name a colour.", metadata={"task": "colours"}).json()
    r = client.post(
        "/v1/feedback",
        json={"request_id": later["request_id"], "tier": later["tier"], "acceptable": True, "input_tokens": 10**9},
    )
    assert r.status_code == 200 and r.json()["recorded"] is True, r.text
    # durable feedback (the default): the row is committed once the answer is 200, and so is its decision
    assert later["request_id"] in _feedback_ids(work / "decisions.db")
    conn = connect(work / "decisions.db", readonly=True)
    task = conn.execute("SELECT task FROM decisions WHERE request_id = ?", (later["request_id"],)).fetchone()
    conn.close()
    assert task == ("colours",)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["decision_log"] is None
    assert metric(client, "tierwise_decision_log_dropped_total") == dropped
    # every kind of write problem is exported from the start (at 0 here), so an alert on it sees a series
    errors = {
        s.labels["kind"]: s.value
        for fam in text_string_to_metric_families(client.get("/metrics").text)
        for s in fam.samples
        if s.name == "tierwise_decision_log_errors_total"
    }
    assert errors == {"row": 0, "batch": 0, "writer": 0, "prune": 0, "catalog": 0}, errors


RID = "0123456789abcdef"
BAD_NUMBERS = [
    # (case, path, raw JSON body, field, message fragment)
    ("threshold true", "/v1/route", '{"prompt": "x", "threshold": true}', "threshold", "not true/false"),
    ("threshold string", "/v1/route", '{"prompt": "x", "threshold": "0.5"}', "threshold", "number"),
    ("threshold Infinity", "/v1/route", '{"prompt": "x", "threshold": Infinity}', "threshold", "finite"),
    ("threshold NaN", "/v1/route", '{"prompt": "x", "threshold": NaN}', "threshold", "finite"),
    ("target 1e400", "/v1/route", '{"prompt": "x", "quality_target": 1e400}', "quality_target", "finite"),
    ("target false", "/v1/route", '{"prompt": "x", "quality_target": false}', "quality_target", "true/false"),
    ("metadata NaN", "/v1/route", '{"prompt": "x", "metadata": {"budget": NaN}}', "metadata", "non-finite"),
    ("batch item true", "/v1/route/batch", '{"requests": [{"prompt": "x", "threshold": true}]}',
     "requests.0.threshold", "true/false"),
    ("plan threshold -Infinity", "/v1/route/plan", '{"goal": "g", "threshold": -Infinity}', "threshold", "finite"),
    ("score true", "/v1/feedback", f'{{"request_id": "{RID}", "tier": "nano", "score": true}}', "score",
     "true/false"),
    ("score Infinity", "/v1/feedback", f'{{"request_id": "{RID}", "tier": "nano", "score": Infinity}}', "score",
     "finite"),
    ("cost Infinity", "/v1/feedback",
     f'{{"request_id": "{RID}", "tier": "nano", "score": 1, "cost_usd": Infinity}}', "cost_usd", "finite"),
    ("cost absurd", "/v1/feedback", f'{{"request_id": "{RID}", "tier": "nano", "score": 1, "cost_usd": 1e7}}',
     "cost_usd", "less than or equal"),
    ("latency 1e400", "/v1/feedback",
     f'{{"request_id": "{RID}", "tier": "nano", "score": 1, "latency_ms": 1e400}}', "latency_ms", "finite"),
    ("latency NaN", "/v1/feedback", f'{{"request_id": "{RID}", "tier": "nano", "score": 1, "latency_ms": NaN}}',
     "latency_ms", "finite"),
    ("tokens 1e20", "/v1/feedback", f'{{"request_id": "{RID}", "tier": "nano", "score": 1, "input_tokens": 1e20}}',
     "input_tokens", "less than or equal"),
    ("tokens above 10**9", "/v1/feedback",
     f'{{"request_id": "{RID}", "tier": "nano", "score": 1, "output_tokens": 1000000001}}', "output_tokens",
     "less than or equal"),
    ("tokens true", "/v1/feedback", f'{{"request_id": "{RID}", "tier": "nano", "score": 1, "input_tokens": true}}',
     "input_tokens", "true/false"),
    ("tokens fractional", "/v1/feedback",
     f'{{"request_id": "{RID}", "tier": "nano", "score": 1, "output_tokens": 2.5}}', "output_tokens", "integer"),
    ("feedback metadata Infinity", "/v1/feedback",
     f'{{"request_id": "{RID}", "tier": "nano", "score": 1, "metadata": {{"a": [1, Infinity]}}}}', "metadata",
     "metadata.a.1"),
]


@pytest.mark.parametrize(("case", "path", "body", "field", "message"), BAD_NUMBERS, ids=[b[0] for b in BAD_NUMBERS])
def test_non_numbers_and_non_finite_numbers_are_refused(
    client: httpx.Client, case: str, path: str, body: str, field: str, message: str
) -> None:
    r = post_raw(client, path, body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == field and message in err["message"], err


def test_whole_number_token_counts_are_still_accepted(client: httpx.Client) -> None:
    d = route(client, prompt="Spell 'necessary'.").json()
    r = post_raw(
        client,
        "/v1/feedback",
        f'{{"request_id": "{d["request_id"]}", "tier": "{d["tier"]}", "score": 1, "input_tokens": 812.0, '
        '"output_tokens": 0, "cost_usd": 0, "latency_ms": 12}',
    )
    assert r.status_code == 200, r.text


def test_a_feedback_retried_with_its_feedback_id_is_recorded_once(client: httpx.Client, work: Path) -> None:
    """A durable 503 after a timeout may be followed by the row's late commit; a retry with the same feedback_id
    then must not count the feedback twice."""
    d = route(client, prompt="Translate 'cat' to French.").json()
    body = {"request_id": d["request_id"], "tier": d["tier"], "score": 1, "feedback_id": f"fb-{d['request_id']}"}
    before = metric(client, "tierwise_feedback_total", tier=d["tier"])
    for _ in range(2):
        r = client.post("/v1/feedback", json=body)
        assert r.status_code == 200 and r.json()["recorded"] is True, r.text
    assert metric(client, "tierwise_feedback_total", tier=d["tier"]) == before + 1  # the retry is not counted
    conn = connect(work / "decisions.db", readonly=True)
    n = conn.execute("SELECT COUNT(*) FROM feedback WHERE request_id = ?", (d["request_id"],)).fetchone()[0]
    conn.close()
    assert n == 1
    r = client.post("/v1/feedback", json={**body, "feedback_id": "no spaces allowed"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "feedback_id", r.text


def test_durable_feedback_survives_kill_9(store: str, work: Path) -> None:
    """Every feedback that was answered 200 is in the decision log after the server is SIGKILLed mid-stream.

    End-to-end but probabilistic: without durable mode a run loses only the 1-3 rows acknowledged in the last ~20 ms,
    and a kill can land between commits. The deterministic guard of the same promise (the future a durable 200
    waits for resolves only after the commit) is test_decision_log.py::
    test_durable_future_resolves_only_after_commit_and_a_closed_log_refuses; keep both."""
    db = work / "decisions-kill.db"
    env = {
        "TIERWISE_HOME": str(work / "home-kill"),
        "TIERWISE_TRACKING_URI": store,
        "TIERWISE_MODEL_URI": f"models:/{NAME}/1",
        "TIERWISE_DECISION_LOG": str(db),
        "TIERWISE_MODEL_CACHE_DIR": str(work / "last-good-kill"),
        "TIERWISE_STORE_PROMPTS": "true",
    }
    srv = ServerProcess(env, work / "server-kill.log")
    try:
        srv.wait_ready()
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            r = c.post("/v1/route/batch", json={"requests": [{"prompt": f"question {i}"} for i in range(900)]})
            assert r.status_code == 200, r.text
            decisions = [(x["request_id"], x["tier"]) for x in r.json()["results"]]

        acked: list[str] = []
        failed = 0

        async def stream() -> None:
            nonlocal failed
            todo = iter(decisions)
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as ac:

                async def worker() -> None:
                    nonlocal failed
                    for rid, tier in todo:
                        try:
                            r = await ac.post("/v1/feedback", json={"request_id": rid, "tier": tier, "score": 0.5})
                        except httpx.HTTPError:
                            failed += 1
                            continue
                        if r.status_code == 200:
                            acked.append(rid)
                        if len(acked) >= 300 and srv.proc.poll() is None:
                            srv.kill()  # mid-stream: 32 requests are in flight

                await asyncio.gather(*[worker() for _ in range(32)])

        asyncio.run(stream())
    finally:
        srv.stop()
    assert srv.proc.returncode == -9
    assert len(acked) >= 300 and failed > 0  # the kill hit while feedback was streaming in
    missing = set(acked) - _feedback_ids(db)
    assert not missing, f"{len(missing)} acknowledged feedback row(s) lost: {sorted(missing)[:5]}"


def test_ready_fails_while_decision_log_writes_fail(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from router.service import Service
    from router.service.decision_log import DecisionLog
    from router.service.settings import ServiceSettings

    db = tmp_path / "log.db"
    service = Service(ServiceSettings(home=tmp_path, decision_log=db))
    service.model = SimpleNamespace(
        degraded=False, source="local", uri="x", label="x/1", name="x", version="1", encoder="e", loaded_at="t",
        detail=None,
    )
    service.dlog = DecisionLog(db, probe_seconds=1.0, retry_seconds=0.1).start()
    first = service.dlog.record_feedback(request_id="r", tier="a", model="m", score=1.0, acceptable=True)
    assert first.result(5) is True  # the writer holds its connection now
    assert service.ready()[0] == 200
    other = sqlite3.connect(db, isolation_level=None)  # moves a table away under the writer's open connection
    other.execute("ALTER TABLE feedback RENAME TO feedback_away")
    written = service.dlog.record_feedback(request_id="r", tier="a", model="m", score=1.0, acceptable=True)
    with pytest.raises(Exception, match="no such table"):
        written.result(10)
    status, body = service.ready()
    assert status == 503 and body.ready is False
    assert "writes are failing" in body.decision_log and body.detail == body.decision_log
    # nobody writes while /readyz fails (a balancer sends no traffic): once the table is back, the writer's probe
    # sees it and readiness comes back on its own
    other.execute("ALTER TABLE feedback_away RENAME TO feedback")
    other.close()
    deadline = time.monotonic() + 10
    while service.ready()[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    status, body = service.ready()
    assert status == 200 and body.decision_log is None, body
    again = service.dlog.record_feedback(request_id="r", tier="a", model="m", score=1.0, acceptable=True)
    assert again.result(5) is True
    service.dlog.close()
    status, body = service.ready()
    assert status == 503 and "not running" in body.decision_log


def test_router_refuses_absurd_thresholds(store: str) -> None:
    from router.core import Router

    r = Router.load(f"models:/{NAME}/1", tracking_uri=store)
    assert r.route("What is the capital of France?", threshold=0.5).threshold == 0.5
    for bad in (float("inf"), float("nan"), True, 1.5, -0.1, "0.5"):
        with pytest.raises(ValueError, match="threshold"):
            r.route("What is the capital of France?", threshold=bad)
    proba = r.predict_proba_array(["hello"])
    with pytest.raises(ValueError, match="threshold"):
        r.choose(proba, threshold=float("nan"))


# --------------------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------------------
def test_metrics_counters_move(client: httpx.Client) -> None:
    before = {
        "req": metric(client, "tierwise_requests_total", endpoint="/v1/route", role="verify"),
        "err": metric(client, "tierwise_errors_total", endpoint="/v1/route", status="422"),
        "spend": metric(client, "tierwise_estimated_spend_usd_total"),
        "base": metric(client, "tierwise_estimated_baseline_spend_usd_total"),
        "lat": metric(client, "tierwise_decision_latency_seconds_count", endpoint="/v1/route"),
        "fb": metric(client, "tierwise_feedback_total"),
        "413": metric(client, "tierwise_errors_total", status="413"),
    }
    d = route(client, prompt="Is 91 prime?", role="verify").json()
    assert route(client, prompt="").status_code == 422
    client.post("/v1/route", content=b"x" * 1_000_001, headers=JSON)
    client.post("/v1/feedback", json={"request_id": d["request_id"], "tier": d["tier"], "acceptable": True})
    assert metric(client, "tierwise_requests_total", endpoint="/v1/route", role="verify") == before["req"] + 1
    assert metric(client, "tierwise_errors_total", endpoint="/v1/route", status="422") == before["err"] + 1
    assert metric(client, "tierwise_errors_total", status="413") == before["413"] + 1
    assert metric(client, "tierwise_estimated_spend_usd_total") > before["spend"]
    assert metric(client, "tierwise_estimated_baseline_spend_usd_total") > before["base"]
    assert metric(client, "tierwise_estimated_baseline_spend_usd_total") >= metric(
        client, "tierwise_estimated_spend_usd_total"
    )
    assert metric(client, "tierwise_decision_latency_seconds_count", endpoint="/v1/route") == before["lat"] + 1
    assert metric(client, "tierwise_feedback_total") == before["fb"] + 1
    assert metric(client, "tierwise_model_info", router_version=f"{NAME}/1", degraded="false") == 1
    # the heap was frozen after the model loaded (full GC pauses would otherwise set the p99 under load)
    assert metric(client, "tierwise_gc_frozen_objects") > 10_000


# --------------------------------------------------------------------------------------------------------------
# model lifecycle: poll, reload (good and failing)
# --------------------------------------------------------------------------------------------------------------
def _wait_for(client: httpx.Client, check, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        ready = client.get("/readyz").json()
        if check(ready) or time.monotonic() > deadline:
            return ready
        time.sleep(0.3)


def _stored_catalogs(work: Path) -> dict[str, Catalog]:
    conn = connect(work / "decisions.db", readonly=True)
    try:
        rows = conn.execute("SELECT router_version, catalog FROM catalogs").fetchall()
        return {v: Catalog.from_dict(yaml.safe_load(c)) for v, c in rows}
    finally:
        conn.close()


def test_poll_follows_the_alias_and_survives_a_broken_version(
    client: httpx.Client, store: str, tmp_path: Path, work: Path
) -> None:
    reg = _registry(store)
    v1 = reg.get_model_version(NAME, "1")
    v2 = reg.create_model_version(NAME, source=v1.source, run_id=v1.run_id).version
    reg.set_registered_model_alias(NAME, "champion", v2)
    ready = _wait_for(client, lambda r: r["version"] == str(v2))
    assert ready["version"] == str(v2) and not ready["degraded"]
    assert route(client, prompt="hello").json()["router_version"] == f"{NAME}/{v2}"
    assert f"{NAME}/{v2}" in _stored_catalogs(work)  # the reloaded version's catalog is in the decision log
    # a version without a usable model: the poll's reload fails and the old model keeps serving
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    broken = reg.create_model_version(NAME, source=empty.as_uri()).version
    reg.set_registered_model_alias(NAME, "champion", broken)
    ready = _wait_for(client, lambda r: bool(r["detail"]) and "failed" in r["detail"])
    assert ready["version"] == str(v2) and "failed" in (ready["detail"] or "")
    assert route(client, prompt="still serving?").status_code == 200
    assert metric(client, "tierwise_model_reloads_total", result="failed") >= 1
    reg.set_registered_model_alias(NAME, "champion", v2)


def test_admin_reload_good_and_failing(client: httpx.Client) -> None:
    assert client.post("/admin/reload").status_code == 401
    r = client.post("/admin/reload", headers={"authorization": "Bearer wrong", **JSON}, content=b'{"model_uri": 5')
    assert r.status_code == 401, r.text  # the token is checked before the body is read
    r = client.post("/admin/reload", headers={"authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["field"] == "authorization"
    auth = {"authorization": f"Bearer {TOKEN}"}
    current = client.get("/readyz").json()["router_version"]
    r = client.post("/admin/reload", headers=auth, json={"model_uri": f"models:/{NAME}/99"})
    assert r.status_code == 503 and r.json()["error"]["type"] == "reload_failed"
    assert client.get("/readyz").json()["router_version"] == current
    assert route(client, prompt="after a failed reload").json()["router_version"] == current
    r = client.post("/admin/reload", headers=auth, json={"model_uri": f"models:/{NAME}/1"})
    assert r.status_code == 200, r.text
    assert r.json() == {**r.json(), "reloaded": True, "router_version": f"{NAME}/1", "previous_version": current}
    assert route(client, prompt="after reload").json()["router_version"] == f"{NAME}/1"
    r = client.post("/admin/reload", headers={"x-tierwise-admin-token": TOKEN})  # not a documented header
    assert r.status_code == 401 and r.json()["error"]["field"] == "authorization"
    r = client.post("/admin/reload", headers=auth)
    assert r.status_code == 200 and r.json()["router_version"] == f"{NAME}/1"
    assert metric(client, "tierwise_gc_frozen_objects") > 10_000  # re-frozen after the reload


# --------------------------------------------------------------------------------------------------------------
# start-up without a registry
# --------------------------------------------------------------------------------------------------------------
def _registry_down_env(work: Path, tag: str, model_cache_dir: Path) -> dict[str, str]:
    """A server of its own (home and decision log suffixed ``tag``) whose registry does not answer."""
    return {
        "TIERWISE_HOME": str(work / f"home-{tag}"),
        "TIERWISE_TRACKING_URI": closed_port_uri(),
        "TIERWISE_MODEL_URI": f"models:/{NAME}@champion",
        "TIERWISE_DECISION_LOG": str(work / f"decisions-{tag}.db"),
        "TIERWISE_MODEL_CACHE_DIR": str(model_cache_dir),
    }


def test_start_from_last_good_copy_when_registry_is_down(server: ServerProcess, work: Path) -> None:
    assert (work / "last-good" / "source.json").is_file()
    b = ServerProcess(_registry_down_env(work, "b", work / "last-good"), work / "server-b.log")
    try:
        ready = b.wait_ready()
        assert ready["degraded"] is True and ready["source"] == "last-good-copy"
        assert ready["name"] == NAME and "registry unavailable" in ready["detail"]
        with httpx.Client(base_url=b.url, timeout=60) as c:
            r = c.post("/v1/route", json={"prompt": "private text that must not be stored"})
            assert r.status_code == 200 and r.headers["x-tierwise-degraded"] == "true"
            rid = r.json()["request_id"]
            assert (
                c.post("/v1/feedback", json={"request_id": rid, "tier": TIERS[0], "acceptable": True}).status_code
                == 200
            )
            assert metric(c, "tierwise_model_info", degraded="true") == 1
        log = b.log()
        assert "private text" not in log
    finally:
        b.stop()
    # prompts are hashed unless the operator opts in, and such rows cannot be exported for training
    conn = connect(work / "decisions-b.db", readonly=True)
    rows = conn.execute("SELECT prompt, prompt_hash FROM decisions").fetchall()
    conn.close()
    assert rows and all(p is None and len(h) == 64 for p, h in rows)
    frame, summary = export_log(work / "decisions-b.db")
    assert len(frame) == 0 and summary.without_prompt == 1 and "TIERWISE_STORE_PROMPTS" in summary.describe()
    # the CLI says plainly that nothing is trainable, and writes no empty file
    out = work / "from-b.csv"
    res = CliRunner().invoke(cli_app, ["decisions", "export", "--out", str(out), "--db", str(work / "decisions-b.db")])
    assert res.exit_code != 0 and not out.exists()
    assert "nothing to train on" in res.output and "TIERWISE_STORE_PROMPTS=true" in res.output


def test_exits_with_a_clear_message_without_registry_or_copy(work: Path) -> None:
    c = ServerProcess(_registry_down_env(work, "c", work / "no-copy-here"), work / "server-c.log")
    try:
        code = c.wait_exit(120)
    finally:
        c.stop()
    out = c.log()
    assert code != 0
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out[-3000:]
    assert "cannot load model" in errors[0] and "no usable last-good copy" in errors[0]


# --------------------------------------------------------------------------------------------------------------
# units (no server)
# --------------------------------------------------------------------------------------------------------------
def test_microbatcher_batches_and_isolates_a_failing_prompt() -> None:
    import numpy as np

    from router.service.microbatch import MicroBatcher

    calls: list[int] = []
    failed: list[int] = []  # sizes of the calls that held the poisonous prompt
    seen_tasks: list[str | None] = []

    def predict(model: str, texts: list[str], roles: list[str | None], tasks: list[str | None]) -> np.ndarray:
        calls.append(len(texts))
        seen_tasks.extend(tasks)
        time.sleep(0.01)
        if "poison" in texts:
            failed.append(len(texts))
            raise ValueError("cannot encode")
        return np.array([[len(t), len(k or "")] for t, k in zip(texts, tasks, strict=True)])

    async def scenario() -> list[object]:
        mb = MicroBatcher(lambda: "model-a", predict, window_ms=2, max_batch=64, threads=2)
        await mb.start()
        try:
            texts = [f"t{i:02d}" for i in range(30)] + ["poison"]
            # task i is i letters long, so every result shows which task travelled with its prompt
            calls_ = [mb.submit(t, None, "x" * i) for i, t in enumerate(texts)]
            out = await asyncio.gather(*calls_, return_exceptions=True)
            submitted = list(calls)
            seen_tasks.clear()
            many = await mb.run_many(["a", "bb", "ccc"], [None, None, "plan"], ["x", None, "y"], chunk=2)
        finally:
            await mb.stop()
        return [out, many, submitted]

    out, (model, many), submitted = asyncio.run(scenario())
    assert isinstance(out[-1], ValueError)
    for i, res in enumerate(out[:-1]):
        assert res[0] == "model-a" and res[1].tolist() == [len(f"t{i:02d}"), i]
    assert model == "model-a" and many.tolist() == [[1, 1], [2, 0], [3, 1]]
    assert seen_tasks == ["x", None, "y"]
    # batched: fewer calls than prompts, one of them with several prompts
    assert len(submitted) < 31 and max(submitted) > 1, submitted
    # the batch that held the poison failed whole, then ran prompt by prompt: only its prompts were encoded twice
    assert failed[0] > 1 and failed[1:] == [1], failed
    assert sum(submitted) == 31 + failed[0], (submitted, failed)
    assert calls[len(submitted) :] == [2, 1]  # run_many's chunks of 2


def test_decision_log_hashes_prompts_unless_asked(tmp_path: Path) -> None:
    from router.service.decision_log import DecisionLog, prompt_hash

    for store_prompts in (False, True):
        path = tmp_path / f"log-{store_prompts}.db"
        dlog = DecisionLog(path, store_prompts=store_prompts).start()
        dlog.record_decision(
            request_id="r1",
            endpoint="/v1/route",
            text="secret prompt",
            role="single",
            tier="nano",
            tier_index=0,
            model="demo-nano",
            threshold=0.8,
            reason="cheapest_tier_meeting_threshold",
            probabilities={"nano": 0.9},
            router_version="x/1",
            est_cost_usd=0.1,
            est_top_cost_usd=1.0,
            latency_ms=1.0,
            metadata={"task": "t", "tenant": "acme", "extra": [1]},
        )
        dlog.record_feedback(request_id="r1", tier="nano", model="demo-nano", score=1.0, acceptable=True)
        assert dlog.flush()
        assert dlog.get_decision("r1")["tier"] == "nano" and dlog.counts() == {"decisions": 1, "feedback": 1}
        dlog.close()
        conn = connect(path, readonly=True)
        prompt, h, tenant = conn.execute("SELECT prompt, prompt_hash, tenant FROM decisions").fetchone()
        conn.close()
        assert h == prompt_hash("secret prompt") and tenant == "acme"
        assert prompt == ("secret prompt" if store_prompts else None)
        frame, summary = export_log(path)
        assert len(frame) == (1 if store_prompts else 0) and summary.feedback_rows == 1


def test_schema_text_cleaning_and_context() -> None:
    from router.service.schemas import CONTEXT_CHARS, RouteRequest, clean_text

    assert clean_text("ok") == "ok"
    assert "\ud800" not in clean_text("a\ud800b") and clean_text("a\ud800b").startswith("a")
    long_first = "x" * 1000
    req = RouteRequest(messages=[{"role": "user", "content": long_first}, {"role": "user", "content": "and then?"}])
    assert req.routing_text() == "x" * CONTEXT_CHARS + "\n\nand then?"
    assert req.billed_chars() == 1000 + len("and then?")


def test_quality_target_served_from_the_trained_table(client: httpx.Client) -> None:
    targets = client.get("/v1/tiers").json()["quality_targets"]
    assert targets, "training stores a quality_target -> threshold table"
    r = client.post("/v1/route", json={"prompt": "Summarise this memo in two lines.", "quality_target": targets[0]})
    assert r.status_code == 200, r.text
    assert 0.0 <= r.json()["threshold"] <= 1.0
    r = client.post("/v1/route", json={"prompt": "x", "quality_target": min(1.5, targets[-1] + 0.001)})
    assert r.status_code == 422 and r.json()["error"]["field"] == "quality_target"


def test_quality_target_maps_through_the_threshold_table() -> None:
    from types import SimpleNamespace

    from router.core import Router
    from router.service import ApiError, Service
    from router.service.schemas import RouteRequest

    def model(table: list[tuple[float, float]]) -> SimpleNamespace:
        """The two things the rule reads of a router (its default threshold and its table), without a model."""
        router = SimpleNamespace(threshold=0.5, threshold_table=table, ref=SimpleNamespace(label="x/1"))
        router.threshold_for = lambda qt: Router.threshold_for(router, qt)  # type: ignore[arg-type]
        return SimpleNamespace(label="x/1", router=router)

    m = model([(0.9, 0.6), (0.95, 0.7), (0.99, 0.85)])
    assert Service._threshold(m, RouteRequest(prompt="p")) == 0.5
    assert Service._threshold(m, RouteRequest(prompt="p", threshold=0.2)) == 0.2
    assert Service._threshold(m, RouteRequest(prompt="p", quality_target=0.95)) == 0.7
    assert Service._threshold(m, RouteRequest(prompt="p", quality_target=0.92)) == 0.7  # the next stricter target
    with pytest.raises(ApiError, match="above the highest target"):
        Service._threshold(m, RouteRequest(prompt="p", quality_target=0.999))
    m = model([])
    with pytest.raises(ApiError, match="no threshold table"):
        Service._threshold(m, RouteRequest(prompt="p", quality_target=0.9))


def test_admin_token_is_checked_before_the_body(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No lifespan runs (no model): a request that passes the check gets as far as reading its body."""
    from fastapi.testclient import TestClient

    from router.service import create_app
    from router.service.settings import ServiceSettings

    monkeypatch.setattr("os.environ", dict(os.environ))  # create_app sets MLflow defaults: keep them from later servers
    bad_bodies = [b'{"model_uri": 5}', b'{"bogus": 1}', b'{"model_uri": ', b"[1]"]

    def post(app: object, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return TestClient(app).post("/admin/reload", content=body, headers={**JSON, **headers})

    disabled = create_app(ServiceSettings(home=tmp_path, admin_token=None))
    for body in bad_bodies:
        r = post(disabled, body, {"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden", r.text

    app = create_app(ServiceSettings(home=tmp_path, admin_token=TOKEN))
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}, {"x-tierwise-admin-token": TOKEN}):
        for body in bad_bodies:
            r = post(app, body, headers)
            assert r.status_code == 401 and r.json()["error"]["field"] == "authorization", (headers, body, r.text)
    # with the token, the body is validated as before: a field error names the field, bad JSON is a 400
    auth = {"authorization": f"Bearer {TOKEN}"}
    r = post(app, b'{"model_uri": 5}', auth)
    assert r.status_code == 422 and r.json()["error"]["field"] == "model_uri", r.text
    r = post(app, b'{"bogus": 1}', auth)
    assert r.status_code == 422 and r.json()["error"]["field"] == "bogus", r.text
    r = post(app, b'{"model_uri": ', auth)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_json", r.text
    r = post(app, b"[1]", auth)
    assert r.status_code == 422 and r.json()["error"]["field"] == "body", r.text
    spec = TestClient(app).get("/openapi.json").json()
    reload_spec = spec["paths"]["/admin/reload"]["post"]
    assert reload_spec["requestBody"]["content"]["application/json"]["schema"]["properties"]["model_uri"]
    schemes = spec["components"]["securitySchemes"]
    assert list(schemes) == ["HTTPBearer"] and schemes["HTTPBearer"]["scheme"] == "bearer"  # the one documented header
