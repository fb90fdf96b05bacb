"""Serving safety of the routing service: work per request, last-good copies, credentials, admin reload limits,
temporary folders, error paths and the OpenAPI text.

No model is trained here: the served model is the small bundle of an earlier release (tests/fixtures), as a local
directory or registered (by its path) in a temporary SQLite MLflow store. One real uvicorn server per scenario is
shared at module scope; start-up failures and admin reloads run in-process through ``TestClient`` (real lifespan).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families
from service_server import ServerProcess, closed_port_uri, metric, running_server

from router.service import StartupError, create_app
from router.service.settings import ServiceSettings

FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_11c0253" / "bundle"
TOKEN = "safety-admin-token"
JSON = {"content-type": "application/json"}
MAX_BATCH_ITEMS = 40
MAX_PLAN_STEPS = 3


def prompt_text(i: int, chars: int = 1000) -> str:
    """About ``chars`` characters of varied English words (repeated letters encode too cheaply to load a chunk)."""
    rng = random.Random(i)
    words = (
        "the quick brown fox jumps over a lazy dog while parsing json data from remote servers and writing a short "
        "report about failed payments in last month's ledger with careful notes"
    ).split()
    out = f"Request {i}:"
    while len(out) < chars:
        out += " " + rng.choice(words)
    return out[:chars]


@pytest.fixture(scope="module")
def store(work: Path) -> str:
    """A SQLite MLflow store with ``safety-a`` and ``safety-b``, version 1 each (the fixture bundle, by path)."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for name in ("safety-a", "safety-b"):
        copy = work / f"bundle-{name}"
        shutil.copytree(FIXTURE_BUNDLE, copy)
        client.create_registered_model(name)
        assert str(client.create_model_version(name, source=copy.as_uri()).version) == "1"
    return uri


@pytest.fixture
def in_process_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # create_app sets MLflow defaults in os.environ: keep them from later tests; an unreachable registry fails at once
    monkeypatch.setattr("os.environ", dict(os.environ))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def start_error(settings: ServiceSettings) -> str:
    """The one-line reason the app refuses to start with ``settings``."""
    with pytest.raises(StartupError) as info, TestClient(create_app(settings)):
        pass
    return str(info.value)


# --------------------------------------------------------------------------------------------------------------
# a server of a local model directory: one inference slot, small chunks, small limits, no admin token
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(work: Path):
    env = {
        "TIERWISE_HOME": str(work / "home-local"),
        "TIERWISE_MODEL_URI": str(FIXTURE_BUNDLE),
        "TIERWISE_DECISION_LOG": str(work / "decisions-local.db"),
        "TIERWISE_INFERENCE_THREADS": "1",
        "TIERWISE_MAX_BATCH_SIZE": "8",
        "TIERWISE_MAX_BATCH_ITEMS": str(MAX_BATCH_ITEMS),
        "TIERWISE_MAX_PLAN_STEPS": str(MAX_PLAN_STEPS),
        "TIERWISE_ADMIN_TOKEN": "",
    }
    with running_server(env, work / "server-local.log") as srv:
        yield srv


def test_a_single_route_overtakes_a_big_batch(client: httpx.Client, server: ServerProcess) -> None:
    """A batch runs in chunks that give the inference slot back, so a single route sent while the batch is in flight
    waits for one chunk, not for the whole batch (one slot here: nothing else could let it through)."""
    prompts = [prompt_text(i) for i in range(32)]  # 4 chunks of 8 prompts
    before = metric(client, "tierwise_microbatch_size_sum")
    done: dict[str, float] = {}

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as ac:

            async def prompts_done() -> float:
                text = (await ac.get("/metrics")).text
                return sum(
                    s.value
                    for fam in text_string_to_metric_families(text)
                    for s in fam.samples
                    if s.name == "tierwise_microbatch_size_sum"
                ) - before

            async def batch() -> httpx.Response:
                r = await ac.post("/v1/route/batch", json={"requests": [{"prompt": p} for p in prompts]})
                done["batch"] = time.monotonic()
                return r

            async def single() -> httpx.Response:
                deadline = time.monotonic() + 120
                while await prompts_done() < 1 and time.monotonic() < deadline:  # the batch's first chunk has run
                    await asyncio.sleep(0.02)
                r = await ac.post("/v1/route", json={"prompt": "What is two plus two?"})
                done["single"] = time.monotonic()
                done["batch_prompts_then"] = await prompts_done() - 1  # the single route counts 1
                return r

            return await asyncio.gather(batch(), single())

    batch_r, single_r = asyncio.run(scenario())
    assert batch_r.status_code == 200 and single_r.status_code == 200, (batch_r.text[:300], single_r.text[:300])
    assert len(batch_r.json()["results"]) == len(prompts)
    assert done["single"] < done["batch"]
    assert done["batch_prompts_then"] < len(prompts), done  # the batch was still running when the single answered


def test_405_says_which_methods_are_allowed(client: httpx.Client) -> None:
    r = client.get("/v1/route")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["type"] == "method_not_allowed"
    r = client.post("/healthz")
    assert r.status_code == 405 and r.headers["allow"] == "GET"


def test_admin_endpoints_disabled_without_a_token(client: httpx.Client) -> None:
    for headers in ({}, {"authorization": "Bearer anything"}):
        r = client.post("/admin/reload", headers=headers, json={"model_uri": "models:/x/1"})
        assert r.status_code == 403, r.text
        err = r.json()["error"]
        assert err["type"] == "forbidden" and "TIERWISE_ADMIN_TOKEN" in err["message"]


def test_batch_and_plan_size_limits(client: httpx.Client) -> None:
    r = client.post("/v1/route/batch", json={"requests": [{"prompt": "x"}] * (MAX_BATCH_ITEMS + 1)})
    assert r.status_code == 422 and r.json()["error"]["field"] == "requests", r.text
    assert f"limit of {MAX_BATCH_ITEMS}" in r.json()["error"]["message"]
    assert client.post("/v1/route/batch", json={"requests": [{"prompt": "x"}] * MAX_BATCH_ITEMS}).status_code == 200
    r = client.post("/v1/route/plan", json={"goal": "g", "steps": ["s"] * (MAX_PLAN_STEPS + 1)})
    assert r.status_code == 422 and r.json()["error"]["field"] == "steps", r.text
    assert f"limit of {MAX_PLAN_STEPS}" in r.json()["error"]["message"]
    assert client.post("/v1/route/plan", json={"goal": "g", "steps": ["s"] * MAX_PLAN_STEPS}).status_code == 200


def test_a_client_that_disconnects_mid_body_is_no_error(client: httpx.Client, server: ServerProcess) -> None:
    """A chunked body cut off by the client is dropped quietly: no half body reaches the JSON parser (a 400 counted
    as the client's error), and the server keeps answering."""
    errors = metric(client, "tierwise_errors_total", endpoint="/v1/route")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/route HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + b'b\r\n{"prompt": \r\n'
        )
        time.sleep(0.5)  # the server is reading the body now
    time.sleep(0.5)
    assert client.get("/healthz").status_code == 200
    assert route_ok(client)
    assert metric(client, "tierwise_errors_total", endpoint="/v1/route") == errors


def route_ok(client: httpx.Client) -> bool:
    return client.post("/v1/route", json={"prompt": "Name a colour."}).status_code == 200


def test_docs_load_without_internet(client: httpx.Client) -> None:
    from router.service.api import docs_assets_dir

    pages = {path: client.get(path) for path in ("/docs", "/redoc")}
    assert all(r.status_code == 200 for r in pages.values())
    assert (docs_assets_dir() / "swagger-ui-bundle.js").is_file()  # fastapi-offline, a pinned dependency
    for page in pages.values():
        assert "cdn.jsdelivr.net" not in page.text and "fonts.googleapis.com" not in page.text
    assert "/docs/assets/swagger-ui-bundle.js" in pages["/docs"].text
    assert "/docs/assets/redoc.standalone.js" in pages["/redoc"].text
    js = client.get("/docs/assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and "SwaggerUIBundle" in js.text
    for asset in ("swagger-ui.css", "redoc.standalone.js", "favicon.png"):
        assert client.get(f"/docs/assets/{asset}").status_code == 200, asset


def test_bad_content_length_is_a_400_naming_the_header(tmp_path: Path, in_process_env: None) -> None:
    app = create_app(ServiceSettings(home=tmp_path))
    r = TestClient(app).post("/v1/route", content=b'{"prompt": "x"}', headers={**JSON, "content-length": "12a"})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {**r.json()["error"], "type": "invalid_header", "field": "content-length"}


def test_readyz_is_503_until_a_model_is_loaded(tmp_path: Path, in_process_env: None) -> None:
    app = create_app(ServiceSettings(home=tmp_path, model_uri="models:/tierwise@champion"))
    r = TestClient(app).get("/readyz")  # no lifespan: nothing loaded
    assert r.status_code == 503
    body = r.json()
    assert body["ready"] is False and body["source"] == "none" and body["detail"] == "model not loaded yet"


# --------------------------------------------------------------------------------------------------------------
# start-up failures: each names what is wrong
# --------------------------------------------------------------------------------------------------------------
def test_a_missing_sqlite_store_is_refused_not_created(tmp_path: Path, in_process_env: None) -> None:
    typo = tmp_path / "mlfow.db"
    msg = start_error(
        ServiceSettings(home=tmp_path, tracking_uri=f"sqlite:///{typo}", model_uri="models:/safety-a/1")
    )
    assert str(typo) in msg and "does not exist" in msg, msg
    assert not typo.exists()


def test_decision_log_that_cannot_be_opened(tmp_path: Path, in_process_env: None) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    msg = start_error(ServiceSettings(home=tmp_path, decision_log=blocker / "decisions.db"))
    assert "cannot open the decision log" in msg and str(blocker / "decisions.db") in msg, msg


def test_local_model_that_cannot_be_loaded(tmp_path: Path, in_process_env: None) -> None:
    empty = tmp_path / "empty-model"
    empty.mkdir()
    msg = start_error(ServiceSettings(home=tmp_path, model_uri=str(empty), decision_log=tmp_path / "d.db"))
    assert f"cannot load model {empty}" in msg, msg


# --------------------------------------------------------------------------------------------------------------
# last-good copy: only for the model it is a copy of; credentials never shown
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared_cache(work: Path, store: str) -> Path:
    """A last-good copy of safety-a, in a cache that services of other models share (one TIERWISE_HOME)."""
    from router.service.model_manager import ModelManager

    cache = work / "shared-home" / "serving" / "last-good"
    settings = ServiceSettings(
        home=work / "shared-home", tracking_uri=store, model_uri="models:/safety-a/1", model_cache_dir=cache
    )
    ModelManager(settings).load()
    assert (cache / "source.json").is_file()
    return cache


def test_last_good_copy_of_another_model_is_not_served(
    work: Path, shared_cache: Path, tmp_path: Path, in_process_env: None
) -> None:
    down = closed_port_uri()
    expected = {"models:/safety-b@champion": "is of model safety-a/1", "models:/safety-a/2": "pins version 2"}
    for uri, why in expected.items():
        msg = start_error(
            ServiceSettings(
                home=work / "shared-home", tracking_uri=down, model_uri=uri, model_cache_dir=shared_cache,
                decision_log=tmp_path / "d.db",
            )
        )
        assert "no usable last-good copy" in msg and why in msg, msg


def test_default_last_good_copies_are_one_per_model(work: Path, store: str, tmp_path: Path) -> None:
    """Two services of different models on one TIERWISE_HOME (no TIERWISE_MODEL_CACHE_DIR) keep a copy each: after
    both loaded, each one's registry outage serves its own model."""
    from router.service.model_manager import ModelManager

    home = tmp_path / "home"
    managers = {
        uri: ModelManager(ServiceSettings(home=home, tracking_uri=store, model_uri=uri))
        for uri in ("models:/safety-a/1", "models:/safety-b/1")
    }
    for m in managers.values():
        m.load()
    a, b = (m.cache for m in managers.values())
    assert a != b and a.parent == b.parent == home / "serving" / "last-good", (a, b)
    assert a.name.startswith("safety-a-") and b.name.startswith("safety-b-")
    for uri, m in managers.items():
        served = m.load_last_good("registry down (test)")
        assert served.degraded and served.router.ref.name == uri.split("/")[1], served.router.ref


def test_registry_outage_serves_its_own_copy_and_hides_credentials(work: Path, shared_cache: Path) -> None:
    down = closed_port_uri().replace("http://", "http://alice:s3cret-pw@")
    env = {
        "TIERWISE_HOME": str(work / "shared-home"),
        "TIERWISE_TRACKING_URI": down,
        "TIERWISE_MODEL_URI": "models:/safety-a@champion",
        "TIERWISE_MODEL_CACHE_DIR": str(shared_cache),
        "TIERWISE_DECISION_LOG": str(work / "decisions-down.db"),
    }
    srv = ServerProcess(env, work / "server-down.log")
    try:
        ready = srv.wait_ready()
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            text = c.get("/readyz").text
            assert route_ok(c)
    finally:
        srv.stop()
    assert ready["degraded"] is True and ready["name"] == "safety-a" and ready["source"] == "last-good-copy"
    log = srv.log()
    assert "s3cret-pw" not in text and "s3cret-pw" not in log
    assert "alice:***@" in ready["detail"] and "alice:***@" in log  # redacted, not dropped: the host still shows


def test_redact() -> None:
    from router.service.errors import redact

    assert redact("postgresql://user:secret@host/db") == "postgresql://user:***@host/db"
    assert redact("postgresql+psycopg://h/db?user=u&password=s3&sslmode=require") == (
        "postgresql+psycopg://h/db?user=u&password=***&sslmode=require"
    )
    assert redact("postgresql://h/db?PASSWORD=x") == "postgresql://h/db?PASSWORD=***"
    assert redact("see http://u:p@h:5000/x and https://a:b@c") == "see http://u:***@h:5000/x and https://a:***@c"
    assert redact("http://host:5000/api models:/m@champion sqlite:////tmp/x.db") == (
        "http://host:5000/api models:/m@champion sqlite:////tmp/x.db"
    )


# --------------------------------------------------------------------------------------------------------------
# admin reload: registry URIs only, unless the operator opts in; no temporary folders left behind
# --------------------------------------------------------------------------------------------------------------
def test_admin_reload_limits_and_no_leftover_temp_dirs(
    work: Path, store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_process_env: None
) -> None:
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))  # count this process's temporary folders only
    other_copy = tmp_path / "other-bundle"
    shutil.copytree(FIXTURE_BUNDLE, other_copy)
    settings = ServiceSettings(
        home=tmp_path / "home", tracking_uri=store, model_uri="models:/safety-a/1", admin_token=TOKEN,
        decision_log=tmp_path / "d.db", model_cache_dir=tmp_path / "last-good",
    )
    auth = {"authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(settings)) as c:
        for refused in (str(other_copy), other_copy.as_uri(), "/no/such/model", "runs:/abc/router"):
            r = c.post("/admin/reload", headers=auth, json={"model_uri": refused})
            assert r.status_code == 403, (refused, r.text)
            err = r.json()["error"]
            assert err["field"] == "model_uri" and "TIERWISE_ADMIN_ALLOW_PATHS" in err["message"]
        assert c.get("/readyz").json()["router_version"] == "safety-a/1"
        before = sorted(p.name for p in private_tmp.iterdir())
        r = c.post("/admin/reload", headers=auth, json={"model_uri": "models:/safety-a/99"})
        assert r.status_code == 503 and r.json()["error"]["type"] == "reload_failed", r.text
        assert sorted(p.name for p in private_tmp.iterdir()) == before  # the failed download left nothing
        r = c.post("/admin/reload", headers=auth, json={"model_uri": "models:/safety-b/1"})
        assert r.status_code == 200 and r.json()["router_version"] == "safety-b/1", r.text
        r = c.post("/admin/reload", headers=auth, json={"model_uri": "models:/safety-a/1"})  # the configured URI
        assert r.status_code == 200, r.text
        assert sorted(p.name for p in private_tmp.iterdir()) == before

    opted_in = settings.model_copy(update={"admin_allow_paths": True, "model_uri": str(FIXTURE_BUNDLE)})
    with TestClient(create_app(opted_in)) as c:
        r = c.post("/admin/reload", headers=auth, json={"model_uri": str(other_copy)})
        assert r.status_code == 200 and r.json()["source"] == "local", r.text


def test_the_configured_model_directory_may_be_reloaded(tmp_path: Path) -> None:
    from router.service.model_manager import ModelManager

    manager = ModelManager(ServiceSettings(home=tmp_path, model_uri=str(FIXTURE_BUNDLE)))
    assert manager.reload_refusal(str(FIXTURE_BUNDLE)) is None
    assert manager.reload_refusal(str(FIXTURE_BUNDLE) + "/../bundle") is None
    assert manager.reload_refusal("models:/any@champion") is None
    assert manager.reload_refusal(str(FIXTURE_BUNDLE.parent)) is not None
    assert manager.reload_refusal(FIXTURE_BUNDLE.as_uri()) is not None


# --------------------------------------------------------------------------------------------------------------
# chunking and OpenAPI text
# --------------------------------------------------------------------------------------------------------------
def test_chunk_bounds() -> None:
    from router.service.microbatch import chunk_bounds

    assert chunk_bounds(["a"] * 5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert chunk_bounds(["aaaa", "bb", "cc", "d", "eeeeeeee", "f"], 10, max_chars=4) == [
        (0, 1), (1, 3), (3, 4), (4, 5), (5, 6)
    ]
    assert chunk_bounds([], 3) == []


def _openapi(tmp_path: Path) -> dict:
    return TestClient(create_app(ServiceSettings(home=tmp_path))).get("/openapi.json").json()


def test_openapi_threshold_text_describes_the_current_rule(tmp_path: Path, in_process_env: None) -> None:
    from router.defaults import DECISION_RULE

    assert DECISION_RULE == "utility"  # the text below describes this default
    desc = _openapi(tmp_path)["components"]["schemas"]["RouteRequest"]["properties"]["threshold"]["description"]
    assert "expected-utility rule" in desc and "(1 - threshold) / threshold" in desc
    assert not desc.startswith("Route to the cheapest tier whose P(acceptable) is at least this")


def test_openapi_schema_is_as_strict_as_validation(tmp_path: Path, in_process_env: None) -> None:
    """Each body is accepted by the published schema exactly when the service's models accept it."""
    from jsonschema import Draft202012Validator
    from pydantic import ValidationError

    from router.service.schemas import FeedbackRequest, PlanRequest, RouteRequest

    spec = _openapi(tmp_path)
    user = [{"role": "user", "content": "hi"}]
    cases = {
        RouteRequest: [
            {}, {"prompt": ""}, {"prompt": "  \n"}, {"prompt": "x"}, {"messages": user},
            {"prompt": "x", "messages": user}, {"prompt": None, "messages": user}, {"role": "plan"},
        ],
        PlanRequest: [
            {}, {"goal": ""}, {"goal": " "}, {"goal": "g"}, {"goal": "g", "steps": ["a", {"text": "b"}]},
            {"goal": "g", "steps": [""]}, {"goal": "g", "steps": [{"text": " "}]},
        ],
        FeedbackRequest: [
            {"request_id": "r1"}, {"request_id": "r1", "tier": "nano"}, {"request_id": "r1", "score": 1},
            {"request_id": "r1", "tier": "nano", "score": 1}, {"request_id": "r1", "model": "m", "acceptable": False},
        ],
    }
    for model, bodies in cases.items():
        schema = {"$ref": f"#/components/schemas/{model.__name__}", "components": spec["components"]}
        validator = Draft202012Validator(schema)
        for body in bodies:
            try:
                model.model_validate(body)
                valid = True
            except ValidationError:
                valid = False
            assert validator.is_valid(body) == valid, (model.__name__, body, valid)
        for example in spec["components"]["schemas"][model.__name__].get("examples", []):
            assert validator.is_valid(example), example
            model.model_validate(example)


def test_feedback_examples_name_demo_catalog_models(tmp_path: Path, in_process_env: None) -> None:
    from router.catalog import Catalog

    models = set(Catalog.from_yaml(Path(__file__).parent.parent / "models" / "catalog.yaml").models)
    examples = _openapi(tmp_path)["components"]["schemas"]["FeedbackRequest"]["examples"]
    named = [e["model"] for e in examples if "model" in e]
    assert named and set(named) <= models, named
