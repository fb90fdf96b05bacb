"""Admin authentication: ``Authorization: Bearer $TIERWISE_ADMIN_TOKEN``, the one accepted header.

The check is a FastAPI dependency. FastAPI parses a declared body before it solves dependencies, so admin routes
declare none and read theirs with :func:`read_json_body` after the check: a caller without the token learns nothing
about the body (401/403, never 400/422).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from router.service.errors import ApiError
from router.service.settings import ServiceSettings

_bearer = HTTPBearer(auto_error=False, description="`TIERWISE_ADMIN_TOKEN`; unset = admin endpoints disabled (403).")

M = TypeVar("M", bound=BaseModel)


def admin_guard(settings: ServiceSettings) -> Callable[..., Awaitable[None]]:
    """The dependency that admits a request with the configured admin token (403 when none is configured)."""

    async def require_admin(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        token = settings.admin_token_value
        if token is None:
            raise ApiError(403, "forbidden", "admin endpoints are disabled: set TIERWISE_ADMIN_TOKEN", "authorization")
        given = credentials.credentials if credentials is not None else ""
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(
                401, "unauthorized", "missing or wrong admin token (Authorization: Bearer ...)", "authorization"
            )

    return require_admin


async def read_json_body(request: Request, model: type[M]) -> M | None:
    """The body as ``model`` (None when empty or ``null``), failing exactly as a declared FastAPI body would."""
    raw = await request.body()
    if not raw:
        return None
    try:
        data: Any = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "input": {},
              "ctx": {"error": exc.msg}}]
        ) from exc
    except ValueError as exc:  # not UTF-8
        raise StarletteHTTPException(400, "There was an error parsing the body") from exc
    if data is None:
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from exc
