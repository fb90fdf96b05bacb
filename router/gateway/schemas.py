"""Request and response bodies of the OpenAI-compatible endpoints (``/v1/chat/completions``, ``/v1/models``).

The request is OpenAI's chat completion body: the fields the gateway reads are typed and bounded here, every other
OpenAI parameter (``seed``, ``stop``, ``logprobs``, ``user``, ...) passes through to the upstream as it is (numbers
in them must be finite). tierwise's own routing options travel in a ``tierwise`` object (the SDK's
``extra_body={"tierwise": {...}}``) or in ``x-tierwise-*`` headers, and are never forwarded.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.numbers import Integer, Number
from router.service.schemas import ChatMessage, Role, no_non_finite

MAX_OUTPUT_TOKENS = 1_000_000  # above any model's output window: a larger max_tokens is a typo
MAX_MESSAGES = 10_000
MAX_CHOICES = 16


class GatewayMessage(ChatMessage):
    """A chat message as the gateway forwards it: fields newer than tierwise's schema (``audio``, ``annotations``,
    ...) pass through instead of being refused."""

    model_config = ConfigDict(extra="allow")


class GatewayOptions(BaseModel):
    """tierwise's routing options for one chat request (``extra_body={"tierwise": {...}}``)."""

    model_config = ConfigDict(extra="forbid")

    role: Role = Field("single", description="`single`, `plan`, `execute` or `verify` (plan-and-execute agents).")
    min_tier: str | None = Field(None, max_length=200, description="Lowest tier allowed (tier or model name).")
    max_tier: str | None = Field(None, max_length=200, description="Highest tier allowed: a hard cost cap.")
    task: str | None = Field(None, max_length=200, description="The request's task (see /v1/route's metadata).")
    tenant: str | None = Field(None, max_length=200, description="Tenant / customer id (logged).")
    cache: bool | None = Field(
        None,
        description="true: cache this answer even though the request is not deterministic (temperature 0); false: "
        "bypass the cache for this request (like `Cache-Control: no-store`).",
    )


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request; fields not listed here pass through to the upstream."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "model": "tierwise",
                    "messages": [{"role": "user", "content": "Summarise this ticket in one line: printer jams."}],
                    "temperature": 0,
                }
            ]
        },
    )

    model: str = Field(
        min_length=1,
        max_length=200,
        description="`tierwise` (routed with the served knob), `tierwise:q0.95` (a quality target), `tierwise:t0.8` "
        "(a threshold) or a catalog model (pass-through). `GET /v1/models` lists them.",
    )
    messages: list[GatewayMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: Integer | None = Field(None, ge=1, le=MAX_OUTPUT_TOKENS)
    max_completion_tokens: Integer | None = Field(None, ge=1, le=MAX_OUTPUT_TOKENS)
    temperature: Number | None = Field(None, ge=0, le=2)
    top_p: Number | None = Field(None, ge=0, le=1)
    n: Integer | None = Field(None, ge=1, le=MAX_CHOICES)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    tierwise: GatewayOptions | None = Field(None, description="tierwise's routing options (never forwarded).")

    @model_validator(mode="after")
    def _finite_pass_through(self) -> ChatCompletionRequest:
        for i, m in enumerate(self.messages):
            no_non_finite(m.model_extra or {}, f"messages.{i}")
        no_non_finite(self.model_extra or {}, "body")
        return self

    def upstream_body(self) -> dict[str, Any]:
        """The body to forward: everything the client sent except tierwise's own options (``model`` is replaced by
        the upstream's model name when it is sent)."""
        body = self.model_dump(exclude_unset=True, exclude={"tierwise"}, by_alias=True)
        body["messages"] = [m.model_dump(exclude_unset=True) for m in self.messages]
        return body

    def client_wants_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = Field(description="`tierwise` for virtual models, else the tier's provider.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class CachePurgeRequest(BaseModel):
    """``POST /admin/cache/purge``: remove one tenant's cached answers."""

    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(
        description="The tenant whose cached answers to remove (null: requests that named no tenant).", max_length=200
    )


class CachePurgeResponse(BaseModel):
    tenant: str | None
    removed: int = Field(description="Cached answers removed (this replica's memory and the shared Redis level).")
