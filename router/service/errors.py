"""Error answers of the service: every 4xx/5xx body is ``{"error": {"type", "message", "field", "param", "code"}}``.

``param`` (the same as ``field``) and ``code`` make the object OpenAI's error object too, so OpenAI SDKs pointed at
the gateway raise their usual exceptions with the message. On the OpenAI-compatible paths a validation error is a
400 ``invalid_request_error`` (OpenAI's status), elsewhere a 422 ``validation_error``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from router.numbers import number_message
from router.service.metrics import ServiceMetrics, endpoint_label
from router.service.schemas import ErrorResponse

log = logging.getLogger("tierwise.service")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed JSON or body."},
    413: {"model": ErrorResponse, "description": "Body larger than max_body_bytes."},
    415: {"model": ErrorResponse, "description": "Content-Type is not application/json."},
    422: {"model": ErrorResponse, "description": "A field is missing, unknown or out of range (the error names it)."},
}


class StartupError(RuntimeError):
    """Neither the configured model nor the last-good copy could be loaded."""


class ApiError(Exception):
    """An error answered as ``{"error": {"type", "message", "field"}}``."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        field: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.field = field
        self.code = code
        self.headers = headers


# ``scheme://user:password@host``: the password part of a URI's userinfo (tracking URIs may carry database or HTTP
# credentials, and MLflow's errors quote the URI they failed on)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@:\s]*):(?P<secret>[^/@\s]*)@")
# libpq and SQLAlchemy also take the password as a query parameter (``postgresql://h/db?user=u&password=p``)
_QUERY_SECRET = re.compile(r"(?P<key>[?&](?:password|passwd|pwd)=)[^&#\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the password of every URI in it replaced by ``***`` (``postgresql://user:***@host/db``)."""
    if "@" in text:
        text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    if "=" in text:
        text = _QUERY_SECRET.sub(lambda m: f"{m['key']}***", text)
    return text


class RedactFilter(logging.Filter):
    """Redacts URI passwords in every record a handler emits (arguments included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def one_line(exc: BaseException, limit: int = 240) -> str:
    """The exception's first line (credentials in URIs redacted), prefixed with its type."""
    text = redact(str(exc).strip())
    first = text.splitlines()[0] if text else ""
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


# ensure_ascii: error messages may quote the caller's input (lone surrogates included), and any input is safe here
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


OPENAI_PATHS = frozenset({"/v1/chat/completions", "/v1/models"})


def error_body(
    status: int,
    type_: str,
    message: str,
    field: str | None,
    details: list[Any] | None = None,
    code: str | None = None,
) -> bytes:
    err: dict[str, Any] = {"type": type_, "message": message, "field": field, "param": field, "code": code}
    if details:
        err["details"] = details
    return _ENCODE({"error": err}).encode("ascii")


_TYPE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _field_of(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(x) for x in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    # union members show up as their type name (steps.0.str / steps.0.PlanStep): drop them
    parts = [
        p
        for p in parts
        if p not in ("str", "PlanStep", "list[ContentPart]") and not p.startswith(("function-", "json-or-python"))
    ]
    return ".".join(parts) or "body"


def _message_of(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err.get("type") == "extra_forbidden":
        msg = "unknown field (not part of the API; check the spelling)"
    if err.get("type") == "missing":
        msg = "field required"
    return number_message(err) or msg


def install_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    def respond(
        request: Request,
        status: int,
        type_: str,
        message: str,
        field: str | None,
        details: list[Any] | None = None,
        headers: Mapping[str, str] | None = None,
        code: str | None = None,
    ) -> Response:
        if status == 422 and request.url.path in OPENAI_PATHS:  # OpenAI answers invalid requests with 400
            status, type_ = 400, "invalid_request_error"
        metrics.errors.labels(endpoint=endpoint_label(request.url.path), status=str(status), type=type_).inc()
        return Response(
            error_body(status, type_, message, field, details, code),
            status_code=status,
            media_type="application/json",
            headers=headers,
        )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return respond(
            request, exc.status, exc.type, redact(exc.message), exc.field, headers=exc.headers, code=exc.code
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = list(exc.errors())
        if not errors:
            return respond(request, 422, "validation_error", "invalid request", "body")
        first = errors[0]
        if first.get("type") == "json_invalid":
            ctx = first.get("ctx") or {}
            pos = first.get("loc", ("body", "?"))[-1]
            return respond(
                request,
                400,
                "invalid_json",
                f"malformed JSON body: {ctx.get('error', 'decode error')} at character {pos}",
                "body",
            )
        if len(errors) == 1 and tuple(first.get("loc", ())) == ("body",) and first.get("type") == "missing":
            return respond(request, 422, "validation_error", "request body is required (JSON object)", "body")
        details = [{"field": _field_of(e.get("loc", ())), "message": _message_of(e)} for e in errors[:20]]
        # a union (steps: str | PlanStep) reports one error per member: keep the most specific ones
        fields = [d["field"] for d in details]
        specific = [d for d in details if not any(f.startswith(d["field"] + ".") for f in fields)]
        details = specific or details
        field = details[0]["field"]
        message = f"{field}: {details[0]['message']}"
        if len(details) > 1:
            message += f" (and {len(details) - 1} more problem(s), see details)"
        return respond(request, 422, "validation_error", message, field, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        status = exc.status_code
        type_ = _TYPE_BY_STATUS.get(status, "error")
        field = None
        message = str(exc.detail)
        if status == 400:
            type_, field = "invalid_body", "body"
            message = "request body could not be parsed (it must be UTF-8 encoded JSON)"
        elif status == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif status == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        # keep the exception's headers: a 405 must say which methods are allowed (Allow, RFC 9110)
        return respond(request, status, type_, message, field, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s: %s", request.url.path, one_line(exc), exc_info=exc)
        return respond(request, 500, "internal_error", "internal error (see the server log)", None)
