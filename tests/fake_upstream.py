"""A fake OpenAI-compatible upstream provider for the gateway tests: a real uvicorn process on loopback.

The tests drive it over HTTP only (no mocks of the HTTP client): :class:`FakeUpstream` starts
``uvicorn fake_upstream:create_fake_app --factory`` on a free port, and its helpers talk to the control endpoints
under ``/_control/`` to set per-model :class:`Behaviour` (latency, failures, hangs, garbage, cut streams, token
counts, tool calls) and to read back every chat completion request the fake received.

Served (a minimal but real subset of OpenAI's protocol):

- ``POST /v1/chat/completions`` (plain and ``stream: true`` server-sent events, with ``stream_options.include_usage``)
- ``GET /v1/models``
- ``POST /v1/files`` (multipart), ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``
- ``POST /v1/batches`` (completes at once), ``GET /v1/batches/{id}``

Run by hand: ``python tests/fake_upstream.py --port 8089``.
"""

from __future__ import annotations

import argparse
import asyncio
import email.parser
import email.policy
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.types import Receive, Scope, Send

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # run as a script or by uvicorn --app-dir: service_server sits beside this file
    sys.path.insert(0, str(TESTS_DIR))

from service_server import PORT_ATTEMPTS, free_port, lost_its_port  # noqa: E402

DEFAULT_MODEL_KEY = "*"
HANG_SECONDS = 3600.0
GARBAGE_BODY = b"<html><body>502 Bad Gateway (not JSON)</body></html>"
FILE_PURPOSES = {"batch", "batch_output", "fine-tune", "assistants", "user_data", "vision", "evals"}


class Behaviour(BaseModel):
    """How the fake answers chat completions for one upstream model name (all fields optional)."""

    # Unknown fields are refused so a typo in a test (``fail_stauts=``) fails loudly instead of being ignored.
    model_config = ConfigDict(extra="forbid")

    content: str | None = Field(None, description='reply text; None = f"answer from {model}"')
    latency_ms: float = Field(0.0, ge=0, description="sleep before the response headers")
    fail_status: int | None = Field(None, ge=400, le=599, description="answer this status with an error object")
    fail_times: int = Field(1, ge=-1, description="how many next calls fail with fail_status; -1 = always")
    hang: bool = Field(False, description="never answer (sleep for an hour or until the client leaves)")
    garbage: bool = Field(False, description="200 with a non-JSON body labelled application/json")
    cut_stream_after: int | None = Field(
        None, ge=0, description="streaming: drop the connection after N content chunks (no [DONE], no usage)"
    )
    prompt_tokens: int | None = Field(None, ge=0, description="None = word count of all message contents")
    completion_tokens: int | None = Field(None, ge=0, description="None = word count of the reply")
    omit_usage: bool = Field(False, description="answer without usage (also no usage chunk when streaming)")
    stream_chunk_delay_ms: float = Field(0.0, ge=0, description="sleep before each streamed chunk")
    tool_call: dict[str, Any] | None = Field(
        None, description='{"name": str, "arguments": str | dict}: used when the request has tools'
    )
    finish_reason: str = Field("stop", description='e.g. "length" for a truncated answer')
    batch_fail_custom_ids: list[str] = Field(default_factory=list, description="batch lines that fail")
    require_api_key: str | None = Field(None, description='only on model "*": 401 without "Bearer <key>"')

    @field_validator("tool_call")
    @classmethod
    def _tool_call_shape(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return None
        name = v.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError('tool_call needs a non-empty "name"')
        args = v.get("arguments", "{}")
        if isinstance(args, dict):
            args = json.dumps(args)
        if not isinstance(args, str):
            raise ValueError('tool_call "arguments" must be a JSON string or a dict')
        return {"name": name, "arguments": args}


# ---------------------------------------------------------------------------------------------------------------------
# The server


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def _error_type(status: int) -> tuple[str, str | None]:
    """OpenAI's error ``type`` and ``code`` for an HTTP status (as its API answers them)."""
    if status == 401:
        return "invalid_request_error", "invalid_api_key"
    if status == 403:
        return "permission_error", None
    if status == 404:
        return "invalid_request_error", "not_found"
    if status == 429:
        return "requests", "rate_limit_exceeded"
    if status >= 500:
        return "server_error", None
    return "invalid_request_error", None


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    kind, code = _error_type(status)
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(
        error_body(status, message, param), status_code=status, headers={"x-request-id": _new_id("req_")}
    )


def _words(text: str) -> int:
    return len(text.split())


def _message_text(content: Any) -> str:
    """Text of a message's content: a string, or a list of parts of which the ``text`` ones count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _pieces(text: str) -> list[str]:
    """``text`` split into word chunks (each word with the whitespace after it) that join back to ``text``."""
    return [p for p in re.split(r"(?<=\s)(?=\S)", text) if p]


def _validate_chat_body(body: Any) -> tuple[int, str, str | None] | None:
    """(status, message, param) when the body is not a minimally valid chat completion request."""
    if not isinstance(body, dict):
        return 400, "We could not parse the JSON body of your request: expected a JSON object.", None
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return 400, "Missing required parameter: 'model'.", "model"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return 400, "Missing required parameter: 'messages'.", "messages"
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        return 400, "Invalid 'messages': each message must be an object with a 'role'.", "messages"
    return None


class _Reply:
    """What the fake answers to one valid chat completion request under one behaviour."""

    def __init__(self, model: str, body: dict[str, Any], b: Behaviour) -> None:
        self.model = model
        self.id = _new_id("chatcmpl-")
        self.created = int(time.time())
        self.tool_call = b.tool_call if b.tool_call is not None and body.get("tools") else None
        self.content = b.content if b.content is not None else f"answer from {model}"
        self.finish_reason = "tool_calls" if self.tool_call is not None else b.finish_reason
        prompt_text = " ".join(_message_text(m.get("content")) for m in body["messages"])
        reply_text = self.tool_call["arguments"] if self.tool_call is not None else self.content
        prompt = b.prompt_tokens if b.prompt_tokens is not None else _words(prompt_text)
        completion = b.completion_tokens if b.completion_tokens is not None else _words(reply_text)
        self.usage: dict[str, int] | None = (
            None
            if b.omit_usage
            else {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        )

    def _tool_calls(self, arguments: str) -> list[dict[str, Any]]:
        assert self.tool_call is not None
        fn = {"name": self.tool_call["name"], "arguments": arguments}
        return [{"id": "call_1", "type": "function", "function": fn}]

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content, "refusal": None}
        if self.tool_call is not None:
            message["content"] = None
            message["tool_calls"] = self._tool_calls(self.tool_call["arguments"])
        out: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}],
        }
        if self.usage is not None:
            out["usage"] = self.usage
        return out

    async def events(self, b: Behaviour, include_usage: bool) -> AsyncIterator[bytes]:
        """The SSE lines of the streamed answer; stops early (no finish, usage or [DONE]) when ``cut_stream_after``."""

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            data: dict[str, Any] = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                data["usage"] = None  # as OpenAI: every chunk carries usage null until the last one
            return f"data: {json.dumps(data)}\n\n".encode()

        first: dict[str, Any]
        deltas: list[dict[str, Any]]
        if self.tool_call is not None:
            opening = self._tool_calls("")
            opening[0]["index"] = 0  # stream deltas name the tool call they extend by index
            first = {"role": "assistant", "content": None, "tool_calls": opening}
            args = self.tool_call["arguments"]
            # Arguments arrive in pieces of a few characters, as real providers send them.
            deltas = [
                {"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 8]}}]}
                for i in range(0, len(args), 8)
            ]
        else:
            first = {"role": "assistant", "content": ""}
            deltas = [{"content": p} for p in _pieces(self.content)]
        delay = b.stream_chunk_delay_ms / 1000
        yield chunk(first)
        for sent, delta in enumerate(deltas):
            if b.cut_stream_after is not None and sent >= b.cut_stream_after:
                return
            if delay:
                await asyncio.sleep(delay)
            yield chunk(delta)
        if b.cut_stream_after is not None:
            return
        yield chunk({}, self.finish_reason)
        if include_usage and self.usage is not None:
            data = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": None,
                "choices": [],
                "usage": self.usage,
            }
            yield f"data: {json.dumps(data)}\n\n".encode()
        yield b"data: [DONE]\n\n"


class _EventStream(Response):
    """A ``text/event-stream`` answer that can end without completing the HTTP response.

    When ``complete`` is false the final empty body message is never sent, so uvicorn closes the connection mid
    response (the client sees an incomplete chunked body), which is what an upstream that dies mid-stream looks like.
    """

    def __init__(self, events: AsyncIterator[bytes], complete: bool) -> None:
        self.events = events
        self.complete = complete
        self.status_code = 200
        self.background = None
        self.media_type = "text/event-stream"
        self.init_headers({"cache-control": "no-cache", "x-request-id": _new_id("req_")})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for data in self.events:
            await send({"type": "http.response.body", "body": data, "more_body": True})
        if self.complete:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Form fields of a multipart/form-data body: name -> (filename, bytes).

    The stdlib email parser is used because Starlette's form parser needs python-multipart, which is not installed.
    """
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not msg.is_multipart():
        raise ValueError("expected a multipart/form-data body")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        fields[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


class _State:
    """Everything the fake remembers (one uvicorn worker, one event loop: no locking needed)."""

    def __init__(self) -> None:
        self.behaviours: dict[str, Behaviour] = {}
        self.fails_left: dict[str, int] = {}
        self.calls: list[dict[str, Any]] = []
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self.batches: dict[str, dict[str, Any]] = {}

    def reset(self) -> None:
        for store in (self.behaviours, self.fails_left, self.calls, self.files, self.batches):
            store.clear()

    def key(self, model: str) -> str | None:
        if model in self.behaviours:
            return model
        return DEFAULT_MODEL_KEY if DEFAULT_MODEL_KEY in self.behaviours else None

    def behaviour(self, model: str) -> Behaviour:
        key = self.key(model)
        return self.behaviours[key] if key is not None else Behaviour()

    def take_failure(self, model: str) -> int | None:
        """The status this call must fail with, consuming one of ``fail_times`` (shared by models that fall back
        to "*")."""
        key = self.key(model)
        if key is None or self.behaviours[key].fail_status is None:
            return None
        left = self.fails_left.get(key, 0)
        if left == 0:
            return None
        if left > 0:
            self.fails_left[key] = left - 1
        return self.behaviours[key].fail_status

    def auth_error(self, headers: Mapping[str, str]) -> JSONResponse | None:
        default = self.behaviours.get(DEFAULT_MODEL_KEY)
        key = default.require_api_key if default is not None else None
        if key is None or headers.get("authorization") == f"Bearer {key}":
            return None
        return _error(401, "Incorrect API key provided.")

    def add_file(self, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        file_id = _new_id("file-")
        obj: dict[str, Any] = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        self.files[file_id] = (obj, data)
        return obj


def _batch_line(state: _State, custom_id: str, body: Any) -> tuple[dict[str, Any], bool]:
    """One batch output line for a request body, and whether it succeeded (same behaviours as the HTTP path,
    except latency, hang, garbage and streaming, which have no meaning here)."""
    line: dict[str, Any] = {"id": _new_id("batch_req_"), "custom_id": custom_id, "response": None, "error": None}
    request_id = _new_id("req_")
    invalid = _validate_chat_body(body)
    if invalid is not None:
        status, message, param = invalid
        line["response"] = {"status_code": status, "request_id": request_id, "body": error_body(status, message, param)}
        return line, False
    model = body["model"]
    b = state.behaviour(model)
    if custom_id in b.batch_fail_custom_ids:
        line["error"] = {"code": "server_error", "message": f"request {custom_id} failed (batch_fail_custom_ids)"}
        return line, False
    failed = state.take_failure(model)
    if failed is not None:
        msg = f"fake upstream failure {failed}"
        line["response"] = {"status_code": failed, "request_id": request_id, "body": error_body(failed, msg)}
        return line, False
    completion = _Reply(model, body, b).completion()
    line["response"] = {"status_code": 200, "request_id": request_id, "body": completion}
    return line, True


def _run_batch(state: _State, batch: dict[str, Any], data: bytes, headers: dict[str, str]) -> None:
    """Process the input file at once and fill in ``batch`` (status completed, or failed when a line is invalid)."""
    now = int(time.time())
    requests: list[tuple[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, raw in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            req = json.loads(raw)
        except ValueError:
            errors.append({"code": "invalid_json_line", "message": "line is not valid JSON", "param": None, "line": n})
            continue
        custom_id = req.get("custom_id") if isinstance(req, dict) else None
        if not isinstance(custom_id, str) or not custom_id or custom_id in seen:
            msg = "custom_id missing or duplicated"
            errors.append({"code": "invalid_request", "message": msg, "param": "custom_id", "line": n})
            continue
        if req.get("method") != "POST" or req.get("url") != batch["endpoint"]:
            msg = f"method must be POST and url {batch['endpoint']}"
            errors.append({"code": "invalid_url", "message": msg, "param": "url", "line": n})
            continue
        seen.add(custom_id)
        requests.append((custom_id, req.get("body")))
    if not requests and not errors:
        errors.append({"code": "empty_file", "message": "the input file has no requests", "param": None, "line": None})
    if errors:
        batch.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
        return
    ok_lines: list[dict[str, Any]] = []
    bad_lines: list[dict[str, Any]] = []
    for custom_id, body in requests:
        model = body.get("model") if isinstance(body, dict) else None
        call_model = model if isinstance(model, str) else None
        state.calls.append({"model": call_model, "body": body, "headers": headers, "via": "batch"})
        line, ok = _batch_line(state, custom_id, body)
        (ok_lines if ok else bad_lines).append(line)

    def jsonl(lines: list[dict[str, Any]]) -> bytes:
        return "".join(json.dumps(x) + "\n" for x in lines).encode()

    if ok_lines:
        batch["output_file_id"] = state.add_file(f"{batch['id']}_output.jsonl", "batch_output", jsonl(ok_lines))["id"]
    if bad_lines:
        batch["error_file_id"] = state.add_file(f"{batch['id']}_error.jsonl", "batch_output", jsonl(bad_lines))["id"]
    batch.update(
        status="completed",
        in_progress_at=now,
        finalizing_at=now,
        completed_at=now,
        request_counts={"total": len(requests), "completed": len(ok_lines), "failed": len(bad_lines)},
    )


async def _hang(request: Request) -> None:
    """Sleep for an hour, but give up once the client has gone so that shutdown is not held up."""
    deadline = time.monotonic() + HANG_SECONDS
    while time.monotonic() < deadline and not await request.is_disconnected():
        await asyncio.sleep(0.1)


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")


def create_fake_app() -> FastAPI:
    """The fake upstream's ASGI app (a fresh, empty state per app)."""
    app = FastAPI(title="fake OpenAI upstream", docs_url=None, redoc_url=None, openapi_url=None)
    state = _State()

    # -- control ------------------------------------------------------------------------------------------------------

    @app.get("/_control/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/_control/behaviour")
    async def set_behaviour(request: Request) -> JSONResponse:
        payload = await _json_body(request)
        if not isinstance(payload, dict) or not isinstance(payload.get("model"), str):
            return JSONResponse({"detail": 'body must be {"model": str, "behaviour": {...}}'}, status_code=422)
        try:
            b = Behaviour.model_validate(payload.get("behaviour") or {})
        except ValueError as exc:
            return JSONResponse({"detail": f"invalid behaviour for model {payload['model']!r}: {exc}"}, 422)
        model = payload["model"]
        if b.require_api_key is not None and model != DEFAULT_MODEL_KEY:
            return JSONResponse({"detail": f'require_api_key is only allowed on model "*", not {model!r}'}, 422)
        state.behaviours[model] = b
        state.fails_left[model] = b.fail_times if b.fail_status is not None else 0
        return JSONResponse({"model": model, "behaviour": b.model_dump()})

    @app.get("/_control/calls")
    async def get_calls(model: str | None = None) -> list[dict[str, Any]]:
        return [c for c in state.calls if model is None or c["model"] == model]

    @app.post("/_control/reset")
    async def reset() -> dict[str, str]:
        state.reset()
        return {"status": "reset"}

    # -- OpenAI API ---------------------------------------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await _json_body(request)
        model = body.get("model") if isinstance(body, dict) else None
        # Counted on arrival: hangs, failures and refused requests are calls too.
        call_model = model if isinstance(model, str) else None
        state.calls.append({"model": call_model, "body": body, "headers": dict(request.headers), "via": "http"})
        if (denied := state.auth_error(request.headers)) is not None:
            return denied
        invalid = _validate_chat_body(body)
        if invalid is not None:
            return _error(*invalid)
        assert isinstance(body, dict) and isinstance(model, str)
        b = state.behaviour(model)
        if b.latency_ms:
            await asyncio.sleep(b.latency_ms / 1000)
        if b.hang:
            await _hang(request)
            return Response(status_code=504)  # only reached once the client has gone: nobody reads it
        failed = state.take_failure(model)
        if failed is not None:
            return _error(failed, f"fake upstream failure {failed} for model {model!r}")
        if b.garbage:
            return Response(GARBAGE_BODY, status_code=200, media_type="application/json")
        reply = _Reply(model, body, b)
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return _EventStream(reply.events(b, include_usage), complete=b.cut_stream_after is None)
        return JSONResponse(reply.completion(), headers={"x-request-id": _new_id("req_")})

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        if (denied := state.auth_error(request.headers)) is not None:
            return denied
        names = [m for m in state.behaviours if m != DEFAULT_MODEL_KEY]
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake-upstream"} for m in names]
        return JSONResponse({"object": "list", "data": data})

    @app.post("/v1/files")
    async def upload_file(request: Request) -> Response:
        if (denied := state.auth_error(request.headers)) is not None:
            return denied
        try:
            fields = _parse_multipart(request.headers.get("content-type", ""), await request.body())
        except ValueError as exc:
            return _error(400, f"invalid multipart body: {exc}")
        purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", errors="replace")
        if purpose not in FILE_PURPOSES:
            return _error(400, f"'purpose' must be one of {sorted(FILE_PURPOSES)}, got {purpose!r}", "purpose")
        if "file" not in fields:
            return _error(400, "Missing required parameter: 'file'.", "file")
        filename, data = fields["file"]
        return JSONResponse(state.add_file(filename or "upload", purpose, data))

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str, request: Request) -> Response:
        if (denied := state.auth_error(request.headers)) is not None:
            return denied
        if file_id not in state.files:
            return _error(404, f"No such File object: {file_id}", "id")
        return JSONResponse(state.files[file_id][0])

    @app.get("/v1/files/{file_id}/content")
    async def get_file_content(file_id: str, request: Request) -> Response:
        if (denied := state.auth_error(request.headers)) is not None:
            return denied
        if file_id not in state.files:
            return _error(404, f"No such File object: {file_id}", "id")
        return Response(state.files[file_id][1], media_type="application/octet-stream")

    @app.post("/v1/batches")
    async def create_batch(request: Request) -> Response:
        if (denied := state.auth_error(request.headers)) is not None:
            return denied
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.")
        input_file_id = body.get("input_file_id")
        if not (isinstance(input_file_id, str) and input_file_id in state.files):
            return _error(400, f"Invalid 'input_file_id': no such file {input_file_id!r}.", "input_file_id")
        if body.get("endpoint") != "/v1/chat/completions":
            return _error(400, "Invalid 'endpoint': this fake supports only '/v1/chat/completions'.", "endpoint")
        if body.get("completion_window") != "24h":
            return _error(400, "Invalid 'completion_window': must be '24h'.", "completion_window")
        now = int(time.time())
        batch: dict[str, Any] = {
            "id": _new_id("batch_"),
            "object": "batch",
            "endpoint": body["endpoint"],
            "errors": None,
            "input_file_id": input_file_id,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 24 * 3600,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        _run_batch(state, batch, state.files[input_file_id][1], dict(request.headers))
        state.batches[batch["id"]] = batch
        return JSONResponse(batch)

    @app.get("/v1/batches/{batch_id}")
    async def get_batch(batch_id: str, request: Request) -> Response:
        if (denied := state.auth_error(request.headers)) is not None:
            return denied
        if batch_id not in state.batches:
            return _error(404, f"No such Batch object: {batch_id}", "id")
        return JSONResponse(state.batches[batch_id])

    return app


# ---------------------------------------------------------------------------------------------------------------------
# The test side


class FakeUpstream:
    """The fake as a uvicorn subprocess on 127.0.0.1 at a free port; a context manager.

    ``base_url`` is what an OpenAI client takes (``.../v1``); ``url`` is the root. Logs go to ``log_path`` (a
    temporary file by default); :meth:`log` reads them.
    """

    def __init__(self, log_path: Path | None = None, ready_timeout: float = 30.0) -> None:
        self.port = free_port()
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="fake-upstream-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._http = httpx.Client(base_url=self.url, timeout=10)
        self._port_attempts = 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> FakeUpstream:
        if self.proc is not None:
            raise RuntimeError("FakeUpstream already started")
        args = [
            sys.executable, "-m", "uvicorn", "fake_upstream:create_fake_app", "--factory",
            "--app-dir", str(TESTS_DIR), "--host", "127.0.0.1", "--port", str(self.port),
            "--no-access-log", "--log-level", "warning",
            "--timeout-graceful-shutdown", "2",  # a hanging request must not hold up stop()
        ]  # fmt: skip
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=TESTS_DIR)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if lost_its_port(self.log()) and self._port_attempts < PORT_ATTEMPTS:
                    return self._start_on_another_port()
                raise RuntimeError(f"fake upstream exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if self._http.get("/_control/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"fake upstream not ready after {self.ready_timeout}s:\n{self.log()[-4000:]}")

    def _start_on_another_port(self) -> FakeUpstream:
        """Its port was taken between free_port() and the bind (another process's connection): a new one."""
        self._port_attempts += 1
        self._log.close()
        self.proc = None
        self.port = free_port()
        self._http.close()
        self._http = httpx.Client(base_url=self.url, timeout=10)
        return self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
        self._http.close()

    def log(self) -> str:
        if self._log is not None and not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _control(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self._http.request(method, f"/_control/{path}", **kwargs)
        if r.status_code != 200:
            raise RuntimeError(f"fake upstream {method} /_control/{path}: {r.status_code} {r.text}")
        return r.json()

    def configure(self, model: str = DEFAULT_MODEL_KEY, **behaviour: Any) -> Behaviour:
        """Set how ``model`` ("*" = every model without its own) answers; replaces that model's previous behaviour
        (fields not given take their defaults) and restarts its ``fail_times`` count."""
        b = Behaviour(**behaviour)  # validated here too, so a bad field fails in the test's own traceback
        if b.require_api_key is not None and model != DEFAULT_MODEL_KEY:
            raise ValueError(f'require_api_key is only allowed on model "*", not {model!r}')
        self._control("POST", "behaviour", json={"model": model, "behaviour": b.model_dump()})
        return b

    def calls(self, model: str | None = None) -> list[dict[str, Any]]:
        """Every chat completion the fake received, in order: ``{"model", "body", "headers", "via"}`` (headers
        lower-cased, ``via`` "http", or "batch" for a line of a batch, whose headers are the batch request's)."""
        params = {"model": model} if model is not None else None
        result: list[dict[str, Any]] = self._control("GET", "calls", params=params)
        return result

    def reset(self) -> None:
        """Forget all behaviours, calls, files and batches."""
        self._control("POST", "reset")


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the fake OpenAI-compatible upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    args = parser.parse_args()
    import uvicorn

    uvicorn.run(create_fake_app(), host=args.host, port=args.port, timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
