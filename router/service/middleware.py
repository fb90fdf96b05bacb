"""Request size / content-type guard (pure ASGI: cheap on the hot path)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from router.service.errors import error_body


class BodyGuard:
    """413 for bodies above ``max_bytes``, 415 for non-JSON bodies, before FastAPI reads anything."""

    def __init__(self, app: Any, max_bytes: int, on_error: Callable[[str, int, str], None]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_error = on_error

    async def _reject(self, scope: Scope, send: Send, status: int, type_: str, message: str, field: str) -> None:
        self.on_error(scope.get("path", ""), status, type_)
        body = error_body(status, type_, message, field)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = ctype = chunked = None
        for k, v in scope["headers"]:
            if k == b"content-length":
                length = v
            elif k == b"content-type":
                ctype = v
            elif k == b"transfer-encoding":
                chunked = b"chunked" in v.lower()
        n: int | None = None
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                await self._reject(
                    scope, send, 400, "invalid_header", "Content-Length is not a number", "content-length"
                )
                return
            if n > self.max_bytes:
                await self._reject(
                    scope,
                    send,
                    413,
                    "payload_too_large",
                    f"request body of {n} bytes is larger than the limit of {self.max_bytes} bytes",
                    "body",
                )
                return
        has_body = (n or 0) > 0 or (n is None and bool(chunked))
        if has_body:
            mime = (ctype or b"").split(b";", 1)[0].strip().lower()
            if not (mime == b"application/json" or mime.endswith(b"+json")):
                shown = ctype.decode("latin-1") if ctype else "none"
                await self._reject(
                    scope,
                    send,
                    415,
                    "unsupported_media_type",
                    f"send the body as JSON with Content-Type: application/json (got {shown})",
                    "content-type",
                )
                return
        if n is None and has_body:
            chunks: list[bytes] = []
            size = 0
            more = True
            while more:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > self.max_bytes:
                    await self._reject(
                        scope,
                        send,
                        413,
                        "payload_too_large",
                        f"request body is larger than the limit of {self.max_bytes} bytes",
                        "body",
                    )
                    return
                chunks.append(chunk)
                more = msg.get("more_body", False)
            data = b"".join(chunks)
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": data, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)
