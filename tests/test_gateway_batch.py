"""``tierwise batch`` end to end: the real CLI (typer's CliRunner, in process so the model loads once) routes an
OpenAI Batch file with the fixture bundle and runs it on a real fake OpenAI server (``tests/fake_upstream.py``), whose
``/v1/files`` and ``/v1/batches`` complete a batch at once.

Upstream traffic is counted on the fake (``fake.calls()``: one call per batch line), so a resubmission that sends
anything twice fails the test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fake_upstream import FakeUpstream
from typer.testing import CliRunner, Result

from router.gateway import batch as jobs
from router.gateway.upstreams import UpstreamsConfig
from router.pricing import CallCost
from training.cli import app

FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_11c0253" / "bundle"
MODELS = {"nano": "demo-nano", "small": "demo-small", "medium": "demo-medium", "large": "demo-large"}
# the fixture bundle's catalog (tierwise.json), copied by hand: USD per 1M input / output tokens, batch discount
PRICES = {"demo-nano": (0.1, 0.4), "demo-small": (0.5, 1.5), "demo-medium": (3.0, 15.0), "demo-large": (15.0, 75.0)}
DISCOUNT = {"demo-nano": 0.5, "demo-small": 0.5, "demo-medium": 0.0, "demo-large": 0.5}
KEY_ENV, KEY = "TIERWISE_TEST_BATCH_KEY", "sk-test-batch-key"
runner = CliRunner()


@pytest.fixture(scope="module")
def fake(work: Path) -> Iterator[FakeUpstream]:
    with FakeUpstream(log_path=work / "fake.log") as f:
        yield f


def upstreams_file(path: Path, fake: FakeUpstream, base_urls: dict[str, str] | None = None) -> Path:
    """Every catalog model on the fake as ``up-<model>`` (``base_urls`` overrides an entry's URL)."""
    ups = {
        m: {"base_url": (base_urls or {}).get(m, fake.base_url), "api_key_env": KEY_ENV, "model": f"up-{m}"}
        for m in MODELS.values()
    }
    path.write_text(yaml.safe_dump({"upstreams": ups}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def upstreams(work: Path, fake: FakeUpstream) -> Path:
    return upstreams_file(work / "upstreams.yaml", fake)


@pytest.fixture(autouse=True)
def _clean(fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.reset()
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.delenv("TIERWISE_UPSTREAMS", raising=False)


def line(cid: str, content: str, model: str = "tierwise", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": content}], **body},
    }


REQUESTS = [
    line("r1", "Summarise this support ticket in one line: the printer jams on page two."),
    line("r2", "What is 2 + 2?", model="tierwise:t0"),
    line("r3", "Plan a database migration for a large multi-tenant system.", model="demo-medium",
         tierwise={"role": "plan"}),
    line("r4", "Translate 'good morning' into French.", model="small"),
    line("r5", "Prove that there are infinitely many primes.", model="tierwise:q0.99",
         tierwise={"max_tier": "small", "task": "math"}),
    line("r6", "Write a haiku about routing requests.", temperature=0, max_tokens=50),
]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def run(*args: str | Path) -> Result:
    argv = ["batch", *map(str, args), "--model-uri", str(FIXTURE_BUNDLE), "--quiet"]
    return runner.invoke(app, argv, catch_exceptions=False)


def batch_usd(model: str, i: int, o: int) -> float:
    pin, pout = PRICES[model]
    return (i * pin + o * pout) / 1e6 * (1 - DISCOUNT[model])


# --- routing only --------------------------------------------------------------------------------------------------
def test_route_only_writes_one_file_per_upstream(tmp_path: Path, upstreams: Path, fake: FakeUpstream) -> None:
    requests = write_jsonl(tmp_path / "requests.jsonl", REQUESTS)
    work = tmp_path / "job"
    res = run("--input", requests, "--work-dir", work, "--upstreams", upstreams)
    assert res.exit_code == 0, res.output
    assert "6 request(s) to submit (4 routed by the model, 2 named a catalog model)" in res.stdout
    assert "estimated batch cost: $" in res.stdout and "top tier (large)" in res.stdout
    files = sorted((work / "upstreams").glob("*.jsonl"))
    assert files and {f.stem for f in files} <= set(MODELS.values())
    where: dict[str, str] = {}
    for f in files:
        for row in read_jsonl(f):
            assert set(row) == {"custom_id", "method", "url", "body"}
            assert (row["method"], row["url"]) == ("POST", "/v1/chat/completions")
            assert row["body"]["model"] == f"up-{f.stem}"  # the upstream's model name, one model per file
            assert "tierwise" not in row["body"]
            where[row["custom_id"]] = f.stem
            if row["custom_id"] == "r6":  # every other parameter is sent as given
                assert (row["body"]["temperature"], row["body"]["max_tokens"]) == (0, 50)
    assert sorted(where) == [f"r{i}" for i in range(1, 7)]
    assert where["r3"] == "demo-medium" and where["r4"] == "demo-small"
    assert where["r5"] in ("demo-nano", "demo-small")  # max_tier small
    assert fake.calls() == []  # nothing was sent
    assert not (work / "state.json").exists() or json.loads((work / "state.json").read_text())["submissions"] == {}


# --- submit, collect, resubmit -------------------------------------------------------------------------------------
def test_submit_collect_and_resubmit(tmp_path: Path, upstreams: Path, fake: FakeUpstream) -> None:
    fake.configure("*", prompt_tokens=1000, completion_tokens=2000)
    requests = write_jsonl(tmp_path / "requests.jsonl", REQUESTS)
    work, out = tmp_path / "job", tmp_path / "results.jsonl"
    res = run("--input", requests, "--work-dir", work, "--upstreams", upstreams, "--submit", "--collect",
              "--output", out)
    assert res.exit_code == 0, res.output
    assert "6 request(s): ok 6" in res.stdout
    calls = fake.calls()
    assert len(calls) == 6 and {c["via"] for c in calls} == {"batch"}
    assert {c["headers"]["authorization"] for c in calls} == {f"Bearer {KEY}"}
    assert all("tierwise" not in c["body"] for c in calls)

    rows = read_jsonl(out)
    assert [r["custom_id"] for r in rows] == [f"r{i}" for i in range(1, 7)]  # input order
    for r in rows:
        assert r["status"] == "ok" and r["status_code"] == 200 and r["error"] is None
        assert MODELS[r["tier"]] == r["model"] == r["upstream"]
        assert r["response"]["choices"][0]["message"]["content"] == f"answer from up-{r['model']}"
        assert (r["input_tokens"], r["output_tokens"]) == (1000, 2000)
        assert r["cost_usd"] == pytest.approx(batch_usd(r["model"], 1000, 2000), rel=1e-9)
    by_id = {r["custom_id"]: r for r in rows}
    # by hand from the catalog: medium has no batch discount, small has 50%
    assert by_id["r3"]["cost_usd"] == pytest.approx((1000 * 3.0 + 2000 * 15.0) / 1e6)  # 0.033
    assert by_id["r4"]["cost_usd"] == pytest.approx((1000 * 0.5 + 2000 * 1.5) / 1e6 * 0.5)  # 0.00175
    assert f"cost at batch prices: ${sum(r['cost_usd'] for r in rows):.6f}" in res.stdout

    # the same file again: nothing is sent twice
    res = run("--input", requests, "--work-dir", work, "--upstreams", upstreams, "--submit")
    assert res.exit_code == 0, res.output
    assert "6 already submitted, skipped" in res.stdout and "nothing to submit" in res.stdout
    assert len(fake.calls()) == 6

    # one more line: only it goes out
    more = REQUESTS + [line("r7", "Name three colours of the rainbow.")]
    write_jsonl(requests, more)
    res = run("--input", requests, "--work-dir", work, "--upstreams", upstreams, "--submit", "--collect",
              "--output", out)
    assert res.exit_code == 0, res.output
    calls = fake.calls()
    assert len(calls) == 7 and calls[-1]["body"]["messages"][0]["content"] == "Name three colours of the rainbow."
    assert [r["custom_id"] for r in read_jsonl(out)] == [f"r{i}" for i in range(1, 8)]
    state = json.loads((work / "state.json").read_text())
    assert len(state["submissions"]) == len({c["model"] for c in fake.calls()[:6]}) + 1
    assert {r["status"] for r in state["requests"].values()} == {"ok"}


def test_failed_lines_are_reported_and_retried(tmp_path: Path, upstreams: Path, fake: FakeUpstream) -> None:
    fake.configure("*", batch_fail_custom_ids=["r2", "r5"])
    requests = write_jsonl(tmp_path / "requests.jsonl", REQUESTS)
    work, out = tmp_path / "job", tmp_path / "results.jsonl"
    res = run("--input", requests, "--work-dir", work, "--upstreams", upstreams, "--submit", "--collect",
              "--output", out)
    assert res.exit_code == 1, res.output  # some requests need a retry
    assert f"to retry (2, written to {work / 'retry.jsonl'}): r2, r5" in res.stdout
    raw = requests.read_text().splitlines()
    assert (work / "retry.jsonl").read_text().splitlines() == [raw[1], raw[4]]  # the input lines as they were
    rows = {r["custom_id"]: r for r in read_jsonl(out)}
    assert rows["r2"]["status"] == rows["r5"]["status"] == "failed"
    assert rows["r2"]["error"]["code"] == "server_error" and rows["r2"]["cost_usd"] is None
    assert {rows[c]["status"] for c in ("r1", "r3", "r4", "r6")} == {"ok"}

    fake.configure("*")  # the upstream recovers: the retry file goes out in the same work dir
    res = run("--input", work / "retry.jsonl", "--work-dir", work, "--upstreams", upstreams, "--submit")
    assert res.exit_code == 0, res.output
    assert len(fake.calls()) == 6 + 2
    res = run("--input", requests, "--work-dir", work, "--upstreams", upstreams, "--collect", "--output", out)
    assert res.exit_code == 0, res.output
    assert [r["status"] for r in read_jsonl(out)] == ["ok"] * 6
    assert not (work / "retry.jsonl").exists()
    assert len(fake.calls()) == 8  # collecting sent nothing


def test_upstream_without_a_batch_api(tmp_path: Path, fake: FakeUpstream) -> None:
    ups = upstreams_file(tmp_path / "ups.yaml", fake, {"demo-nano": f"{fake.url}/no-batches/v1"})
    requests = write_jsonl(tmp_path / "requests.jsonl", [line("a", "hello", model="demo-nano"),
                                                         line("b", "hi", model="demo-small")])
    res = run("--input", requests, "--work-dir", tmp_path / "job", "--upstreams", ups, "--submit")
    assert res.exit_code == 2
    assert "error: upstream demo-nano" in res.stderr and "has no batch API" in res.stderr
    assert "submitted 1 request(s) to upstream demo-small" in res.stdout  # the other upstream is not held up
    state = json.loads((tmp_path / "job" / "state.json").read_text())
    assert list(state["requests"]) == ["b"]  # "a" stays unsubmitted


# --- bad input -----------------------------------------------------------------------------------------------------
def test_bad_lines_are_named(tmp_path: Path, upstreams: Path, fake: FakeUpstream) -> None:
    bad = [
        line("r1", "fine"),
        "{not json",
        {k: v for k, v in line("x", "no id").items() if k != "custom_id"},
        line("r1", "duplicate"),
        {**line("r5", "get"), "method": "GET"},
        {**line("r6", "no messages"), "body": {"model": "tierwise"}},
        '{"custom_id": "r7", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "tierwise", '
        '"messages": [{"role": "user", "content": "x"}], "temperature": NaN}}',
        line("r8", "too hot", temperature=5),
        {**line("r9", "wrong url"), "url": "/v1/embeddings"},
    ]
    requests = write_jsonl(tmp_path / "requests.jsonl", bad)
    res = run("--input", requests, "--work-dir", tmp_path / "job", "--upstreams", upstreams)
    assert res.exit_code == 2
    err = res.stderr
    for expected in (
        f"{requests}:2: not valid JSON",
        f"{requests}:3: custom_id: missing",
        f"{requests}:4: custom_id: 'r1' repeats line 1",
        f"{requests}:5: method: must be \"POST\"",
        f"{requests}:6: body.messages: missing",
        f"{requests}:7: not valid JSON: NaN is not a finite number",
        f"{requests}:8: body.temperature:",
        f"{requests}:9: url: must be '/v1/chat/completions'",
    ):
        assert expected in err, (expected, err)
    assert f"{requests}:1:" not in err

    # lines that read well but cannot be routed
    unroutable = [
        line("a", "fine"),
        line("b", "x", model="gpt-99"),
        line("c", "x", tierwise={"max_tier": "xl"}),
        {**line("d", "x"), "body": {"model": "tierwise", "messages": [{"role": "system", "content": "only"}]}},
        line("e", "x", model="tierwise:t7"),
    ]
    write_jsonl(requests, unroutable)
    res = run("--input", requests, "--work-dir", tmp_path / "job", "--upstreams", upstreams)
    assert res.exit_code == 2
    err = res.stderr
    assert f"{requests}:2: body.model: unknown model 'gpt-99'" in err
    assert f"{requests}:3: body.tierwise.max_tier: unknown tier 'xl'" in err
    assert f"{requests}:4: body.messages: messages has no user turn" in err
    assert f"{requests}:5: body.model: model 'tierwise:t7'" in err

    # a tier the upstreams file does not serve
    partial = tmp_path / "partial.yaml"
    data = yaml.safe_load(upstreams.read_text())
    del data["upstreams"]["demo-large"]
    partial.write_text(yaml.safe_dump(data))
    write_jsonl(requests, [line("a", "fine"), line("b", "x", model="demo-large"), line("c", "y", model="large")])
    res = run("--input", requests, "--work-dir", tmp_path / "job", "--upstreams", partial)
    assert res.exit_code == 2
    assert (f"{requests}:2: body.model: 2 request(s) (lines 2, 3) go to tier large (model demo-large), which has no "
            f"entry in {partial}") in res.stderr
    assert fake.calls() == [] and not (tmp_path / "job" / "upstreams").exists()


def test_absurd_sizes_are_refused(tmp_path: Path, upstreams: Path) -> None:
    many = tmp_path / "many.jsonl"
    one = json.dumps(line("x", "hi"))
    with many.open("w") as fh:
        for i in range(jobs.MAX_LINES + 1):
            fh.write(one.replace('"x"', f'"r{i}"', 1) + "\n")
    res = run("--input", many, "--work-dir", tmp_path / "job", "--upstreams", upstreams)
    assert res.exit_code == 2 and "50,001 requests is more than 50,000" in res.stderr

    long = write_jsonl(tmp_path / "long.jsonl", [line("a", "hi"), line("b", "x" * (jobs.MAX_LINE_BYTES + 10))])
    res = run("--input", long, "--work-dir", tmp_path / "job", "--upstreams", upstreams)
    assert res.exit_code == 2 and f"{long}:2: the line is longer than 4,194,304 bytes" in res.stderr


# --- an unconfirmed batch creation (module API, a scripted upstream) -----------------------------------------------
def routed_line(cid: str) -> jobs.RoutedLine:
    cost = CallCost(tier=0.1, top_tier=1.0, batch_tier=0.05, batch_top_tier=0.5, input_tokens=1, output_tokens=1,
                    source="list_price", top_tier_source="list_price")
    body = {"model": "up-demo-nano", "messages": [{"role": "user", "content": cid}]}
    return jobs.RoutedLine(1, cid, "nano", 0, "demo-nano", "demo-nano", "up-demo-nano", False, "pass_through",
                           body, cost)


def test_an_unconfirmed_batch_is_found_again_not_resubmitted(tmp_path: Path) -> None:
    from router.bundle import read_meta

    seen: list[str] = []
    created: dict[str, Any] = {}

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.url.path.endswith("/files"):
            return httpx.Response(200, json={"id": "file-1"})
        if request.method == "POST" and request.url.path.endswith("/batches"):
            created.update(id="batch_1", status="in_progress", metadata=json.loads(request.content)["metadata"])
            raise httpx.ReadTimeout("the answer never came", request=request)
        if request.url.path.endswith("/batches"):
            return httpx.Response(200, json={"data": [created], "has_more": False})
        if request.url.path.endswith("/batches/batch_1"):
            return httpx.Response(200, json=created)
        return httpx.Response(404, json={"error": {"message": "no"}})

    config = UpstreamsConfig.from_dict(
        {"upstreams": {"demo-nano": {"base_url": "http://up.test/v1", "api_key_env": KEY_ENV}}},
        environ={KEY_ENV: KEY},
    )
    catalog = read_meta(FIXTURE_BUNDLE).catalog
    work = jobs.WorkDir(tmp_path / "job")
    rows = [routed_line("a"), routed_line("b")]
    with jobs.BatchApi(httpx.Client(transport=httpx.MockTransport(upstream)), sleep=lambda s: None) as api:
        report = jobs.submit(work, rows, config, catalog, router_version="test", api=api)
        assert len(report.problems) == 1 and "may have been created" in report.problems[0]
        assert seen == ["POST /v1/files", "POST /v1/batches"]  # a POST without an answer is never repeated
        assert not work.pending("a") and not work.pending("b")

        report = jobs.submit(work, rows, config, catalog, router_version="test", api=api)
        assert report.problems == [] and report.submitted == [] and report.skipped == 2
        assert seen[2:] == ["GET /v1/batches"]  # found in the listing: nothing uploaded or created again
        (sub,) = work.submissions.values()
        assert sub["batch_id"] == "batch_1" and sub["token"] == created["metadata"][jobs.SUBMISSION_KEY]

        # still running: collected as pending, nothing to retry
        lines = jobs.read_input(write_jsonl(tmp_path / "in.jsonl", [line("a", "a"), line("b", "b")]))
        collected = jobs.collect(work, lines, config, tmp_path / "out.jsonl", api=api)
        assert collected.pending_batches == ["batch_1"] and collected.retry == [] and collected.counts["pending"] == 2
        assert [r["status"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["pending", "pending"]
        assert seen[-1] == "GET /v1/batches/batch_1"
