"""Wire models of the routing service (request and response bodies of ``/v1/*``).

Request models reject unknown fields (``extra="forbid"``) so that a typo such as ``max_teir`` is a 422 instead of a
silent change of routing. Free-form ``metadata`` is the one place where any keys are accepted.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from router.limits import MAX_COST_USD, MAX_LATENCY_MS, MAX_TOKENS
from router.numbers import Integer, Number, whole_number

Role = Literal["single", "plan", "execute", "verify"]
LatencyTolerance = Literal["realtime", "batch"]

ROLE_DOC = (
    "Agent role of the call: `single` (default, a standalone request), `plan` (a planner; never routed below the "
    "catalog's planning floor), `execute` (one step of a plan) or `verify` (a checker; never below the catalog's "
    "verification floor)."
)
MESSAGES_DOC = (
    "OpenAI chat format, as an alternative to `prompt`. The router routes on the **last user turn**; when earlier "
    "turns exist, the previous user turn (its first 300 characters) is prepended as context, separated by a blank "
    "line, so a short follow-up such as 'now make it shorter' keeps its task. System, assistant and tool turns are "
    "not encoded. The encoder truncates long text (head and tail tokens) exactly as in training; cost estimates "
    "count the characters of every text part of every message."
)
CONTEXT_CHARS = 300
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


# What _non_blank enforces, stated in the OpenAPI schema: at least one character that is not whitespace.
NON_BLANK_SCHEMA: dict[str, Any] = {"minLength": 1, "pattern": r"\S"}
StepText = Annotated[str, Field(json_schema_extra=NON_BLANK_SCHEMA)]


def _one_of_required(*alternatives: tuple[str, dict[str, Any]]) -> list[Any]:
    """JSON Schema alternatives "this field is present (and not null)", for fields where a validator asks for one of
    several."""
    return [{"required": [name], "properties": {name: schema}} for name, schema in alternatives]


# Every number in a request body is a router.numbers Number (strict, finite); each field adds its own bounds.
TokenCount = Annotated[Integer, Field(ge=0, le=MAX_TOKENS), BeforeValidator(whole_number)]


def no_non_finite(value: Any, where: str = "metadata") -> Any:
    """Free-form JSON may hold any value but no Infinity/NaN (they are not JSON and poison exports)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} holds a non-finite number ({value}); send finite numbers only")
    if isinstance(value, dict):
        for k, v in value.items():
            no_non_finite(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            no_non_finite(v, f"{where}.{i}")
    return value


def clean_text(text: str) -> str:
    """Replace lone surrogates (valid in JSON escapes, invalid in UTF-8) so no encoder or database chokes on them."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def field_error(model: str, field: str, message: str) -> ValidationError:
    """A validation error located at ``field`` (model validators otherwise report at the model root)."""
    return ValidationError.from_exception_data(
        model, [InitErrorDetails(type=PydanticCustomError("value_error", message), loc=(field,), input=None)]
    )


def _non_blank(text: str | None, what: str) -> str | None:
    if text is None:
        return None
    text = clean_text(text)
    if not text.strip():
        raise ValueError(f"{what} is empty (or only whitespace)")
    return text


# ----------------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    type: str = Field(description="Machine-readable error kind, e.g. `validation_error`, `payload_too_large`.")
    message: str = Field(description="What is wrong, in one sentence.")
    field: str | None = Field(None, description="The request field at fault (dotted path), or `body`.")
    param: str | None = Field(None, description="The same as `field` (OpenAI's name for it).")
    code: str | None = Field(
        None, description="A finer code when there is one (OpenAI's `code`, e.g. `model_not_found`)."
    )
    details: list[dict[str, str]] | None = Field(
        None, description="Validation errors only: every problem found, as {field, message}."
    )


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer has this shape."""

    error: ErrorBody

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"error": {"type": "validation_error", "message": "unknown tier 'gigantic'", "field": "max_tier"}}
            ]
        }
    )


# ----------------------------------------------------------------------------------------------------------------
# requests
# ----------------------------------------------------------------------------------------------------------------
class ContentPart(BaseModel):
    """One part of a multi-part message content; only `text` parts are routed on."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="`text`, `image_url`, ...")
    text: str | None = None


class ChatMessage(BaseModel):
    """One message in OpenAI chat format."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    function_call: dict[str, Any] | None = None
    refusal: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return clean_text(self.content)
        return clean_text("\n".join(p.text for p in self.content if p.text))


class RequestMetadata(BaseModel):
    """Free-form request metadata, written to the decision log. Only ``task`` can inform the routing."""

    model_config = ConfigDict(extra="allow")

    task: str | None = Field(
        None,
        max_length=200,
        description="The request's task, as the training log's `task` column names it (exported as `task` for "
        "training). A task the model learned routes with that task's success rates instead of the task it "
        "predicts from the prompt (`task_known` in the response); an unknown task only goes to the log.",
    )
    tenant: str | None = Field(None, max_length=200, description="Tenant / customer id.")

    @model_validator(mode="after")
    def _finite_extras(self) -> RequestMetadata:
        no_non_finite(self.model_extra or {})
        return self


class RoutingOptions(BaseModel):
    """Knobs shared by /v1/route, /v1/route/batch items and /v1/route/plan."""

    model_config = ConfigDict(extra="forbid")

    threshold: Number | None = Field(
        None,
        ge=0,
        le=1,
        description="The quality knob in [0, 1]: higher = safer and more expensive. With the expected-utility rule "
        "(the default; `reason` `best_expected_utility`) the chosen tier maximises P(acceptable) - lam * relative "
        "cost, lam = (1 - threshold) / threshold: 1 picks the tier most likely to answer, 0 the cheapest tier. "
        "Models trained with the threshold rule route to the cheapest tier whose P(acceptable) is at least this. "
        "Default: the model's own value, chosen on its calibration split (`default_threshold` in /v1/tiers).",
    )
    quality_target: Number | None = Field(
        None,
        gt=0,
        le=1.5,
        description="Alternative to `threshold`: the share of the best single tier's quality to aim for; mapped to a "
        "threshold with the model's threshold table (422 when the model has none).",
    )
    min_tier: str | None = Field(None, description="Lowest tier allowed (tier or model name).")
    max_tier: str | None = Field(
        None, description="Highest tier allowed (tier or model name): a hard cost cap that wins over role floors."
    )
    latency_tolerance: LatencyTolerance = Field(
        "realtime",
        description="`batch` when the answer may come from the provider's batch API: the response then gives the "
        "discounted cost estimate.",
    )
    metadata: RequestMetadata | None = Field(
        None, description="Free-form (task, tenant, ...): logged; a task the model knows also informs the routing."
    )

    @model_validator(mode="after")
    def _one_knob(self) -> RoutingOptions:
        if self.threshold is not None and self.quality_target is not None:
            raise field_error(
                type(self).__name__, "quality_target", "give either threshold or quality_target, not both"
            )
        return self


class RouteRequest(RoutingOptions):
    """One request to route: `prompt` or `messages`, plus optional knobs."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"prompt": "Summarise this paragraph in one sentence: ...", "role": "single"},
                {
                    "messages": [
                        {"role": "system", "content": "You are a helpful assistant."},
                        {"role": "user", "content": "Write a SQL query joining orders and customers."},
                    ],
                    "max_tier": "medium",
                    "metadata": {"task": "sql", "tenant": "acme"},
                },
            ],
            # exactly one of prompt / messages (the _one_input validator)
            "oneOf": _one_of_required(("prompt", {"type": "string"}), ("messages", {"type": "array"})),
        },
    )

    prompt: str | None = Field(
        None, description="The prompt text (or give `messages`).", json_schema_extra=NON_BLANK_SCHEMA
    )
    messages: list[ChatMessage] | None = Field(None, min_length=1, description=MESSAGES_DOC)
    role: Role = Field("single", description=ROLE_DOC)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | None) -> str | None:
        return _non_blank(v, "prompt")

    @model_validator(mode="after")
    def _one_input(self) -> RouteRequest:
        if self.prompt is None and self.messages is None:
            raise field_error("RouteRequest", "prompt", "give prompt or messages")
        if self.prompt is not None and self.messages is not None:
            raise field_error("RouteRequest", "messages", "give prompt or messages, not both")
        if self.messages is not None:
            users = [m for m in self.messages if m.role == "user"]
            if not users:
                raise field_error("RouteRequest", "messages", "messages has no user turn to route on")
            if not users[-1].text().strip():
                raise field_error("RouteRequest", "messages", "the last user turn of messages is empty")
        return self

    def routing_text(self) -> str:
        """The text the router encodes (see the `messages` description)."""
        if self.prompt is not None:
            return self.prompt
        assert self.messages is not None
        users = [m.text() for m in self.messages if m.role == "user"]
        last = users[-1]
        if len(users) > 1 and users[-2].strip():
            return users[-2][:CONTEXT_CHARS] + "\n\n" + last
        return last

    def billed_chars(self) -> int:
        """Characters the chosen model will read (every text part of every message), for cost estimates."""
        if self.prompt is not None:
            return len(self.prompt)
        assert self.messages is not None
        return sum(len(m.text()) for m in self.messages)


class BatchRouteRequest(BaseModel):
    """Many routing requests in one call (offline jobs): encoded and classified together."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"requests": [{"prompt": "hi"}, {"prompt": "Prove Fermat's little theorem.", "role": "single"}]}
            ]
        },
    )

    requests: list[RouteRequest] = Field(min_length=1, description="Requests, routed independently, answered in order.")


class PlanStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The step's instruction.", json_schema_extra=NON_BLANK_SCHEMA)
    role: Role = Field("execute", description="`execute` (default), `verify`, `plan` or `single`.")

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return _non_blank(v, "step text")  # type: ignore[return-value]


class PlanRequest(RoutingOptions):
    """A plan-and-execute job: the goal (routed as the planner call) and its steps."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "goal": "Build a CSV report of last month's failed payments and email it to finance.",
                    "steps": [
                        "Query the payments table for failures in the last month.",
                        {"text": "Format the rows as CSV with a header.", "role": "execute"},
                        {"text": "Check the CSV has one row per failed payment.", "role": "verify"},
                    ],
                }
            ]
        },
    )

    goal: str = Field(
        description="What the agent must achieve. Routed with role `plan`: the planner tier is never below the "
        "catalog's planning floor (`max_tier` below that floor does not apply to the planner).",
        json_schema_extra=NON_BLANK_SCHEMA,
    )
    steps: list[StepText | PlanStep] = Field(
        default_factory=list,
        description="Steps of the plan: strings (role `execute`) or `{text, role}` objects. Each step is routed on "
        "its own text; `min_tier` / `max_tier` apply to every step.",
    )

    @field_validator("goal")
    @classmethod
    def _goal(cls, v: str) -> str:
        return _non_blank(v, "goal")  # type: ignore[return-value]

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[StepText | PlanStep]) -> list[StepText | PlanStep]:
        for i, s in enumerate(v):
            if isinstance(s, str):
                v[i] = PlanStep(text=s)
        return v

    def plan_steps(self) -> list[PlanStep]:
        return [s if isinstance(s, PlanStep) else PlanStep(text=s) for s in self.steps]


class FeedbackRequest(BaseModel):
    """What happened after a routing decision: which tier answered and whether the answer was acceptable."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"request_id": "3f2a9c0e5b7d4e1f8a6b2c4d9e0f1a2b", "tier": "small", "acceptable": True},
                {
                    "request_id": "3f2a9c0e5b7d4e1f8a6b2c4d9e0f1a2b",
                    "model": "demo-small",  # a model of the demo catalog (models/catalog.yaml)
                    "score": 0.8,
                    "input_tokens": 812,
                    "output_tokens": 240,
                    "cost_usd": 0.00027,
                },
            ],
            # tier or model, and score or acceptable (the _needs validator)
            "allOf": [
                {"anyOf": _one_of_required(("tier", {"type": "string"}), ("model", {"type": "string"}))},
                {"anyOf": _one_of_required(("score", {"type": "number"}), ("acceptable", {"type": "boolean"}))},
            ],
        },
    )

    request_id: str = Field(pattern=REQUEST_ID_PATTERN, description="`request_id` of the routing decision.")
    feedback_id: str | None = Field(
        None,
        pattern=REQUEST_ID_PATTERN,
        description="Your id for this feedback (e.g. a UUID). A retry with the same `feedback_id` is recorded once, so "
        "a feedback whose answer was lost or a 503 can be sent again safely.",
    )
    tier: str | None = Field(None, description="Tier actually used (or give `model`).")
    model: str | None = Field(None, description="Model actually used (or give `tier`).")
    score: Number | None = Field(None, ge=0, le=1, description="Quality score in [0, 1] (or give `acceptable`).")
    acceptable: bool | None = Field(None, description="Was the answer acceptable? (or give `score`).")
    input_tokens: TokenCount | None = Field(None, description=f"Input tokens of the call (at most {MAX_TOKENS:,}).")
    output_tokens: TokenCount | None = Field(None, description=f"Output tokens of the call (at most {MAX_TOKENS:,}).")
    cost_usd: Number | None = Field(
        None, ge=0, le=MAX_COST_USD, description=f"Actual cost of the call in USD (at most {MAX_COST_USD:,.0f})."
    )
    latency_ms: Number | None = Field(
        None, ge=0, le=MAX_LATENCY_MS, description="Latency of the model call in ms (at most 7 days)."
    )
    metadata: dict[str, Any] | None = Field(None, description="Free-form, logged (finite numbers only).")

    @field_validator("metadata")
    @classmethod
    def _finite_metadata(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return no_non_finite(v)

    @model_validator(mode="after")
    def _needs(self) -> FeedbackRequest:
        if self.tier is None and self.model is None:
            raise field_error("FeedbackRequest", "tier", "give tier or model (the one actually used)")
        if self.score is None and self.acceptable is None:
            raise field_error("FeedbackRequest", "score", "give score or acceptable")
        return self


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_uri: str | None = Field(
        None,
        description="Load this URI instead of the configured one (it then sticks): a `models:/` registry URI, or any "
        "path or URI when the operator set TIERWISE_ADMIN_ALLOW_PATHS=true (403 otherwise).",
    )


# ----------------------------------------------------------------------------------------------------------------
# responses
# ----------------------------------------------------------------------------------------------------------------
class CostEstimate(BaseModel):
    tier: float | None = Field(description="Estimated USD of the call on the chosen tier (null: no prices).")
    top_tier: float | None = Field(description="Estimated USD of the same call on the top tier.")
    input_tokens: int = Field(description="Estimated input tokens (characters / chars-per-token).")
    output_tokens: int = Field(description="Assumed output tokens of the chosen tier.")


class BatchAdvice(BaseModel):
    available: bool = Field(description="The chosen tier's provider has a batch discount.")
    discount: float = Field(description="Fractional batch discount (0 = none).")
    estimated_cost_usd: float | None = Field(description="Estimated USD through the batch API.")


class RouteResponse(BaseModel):
    request_id: str = Field(description="Id of this decision: send it back with POST /v1/feedback.")
    tier: str
    tier_index: int = Field(description="0 = cheapest tier.")
    model: str
    role: Role
    p_acceptable: dict[str, float] = Field(description="Predicted P(acceptable answer) per tier, cheapest first.")
    threshold: float = Field(description="The quality knob this decision used (see the request's `threshold`).")
    reason: str = Field(
        description="`best_expected_utility` (utility rule), `cheapest_tier_meeting_threshold` or "
        "`no_tier_meets_threshold` (threshold rule), `planner_floor`, `verifier_floor`, `raised_by_min_tier` or "
        "`clamped_by_max_tier`."
    )
    escalation: list[str] = Field(description="Tiers to try, in order, if the answer fails verification.")
    task_known: bool | None = Field(
        description="null: no `metadata.task` given; true: the model learned that task and routed with its success "
        "rates; false: a task the model never saw (routed as if none was given)."
    )
    estimated_cost_usd: CostEstimate
    batch: BatchAdvice | None = Field(description="Set when latency_tolerance is `batch`.")
    router_version: str = Field(description="Registered model name/version (or the model URI).")
    latency_ms: float = Field(description="Time spent deciding, in the server.")


class BatchRouteResponse(BaseModel):
    results: list[RouteResponse]
    router_version: str
    latency_ms: float


class StepDecision(BaseModel):
    request_id: str
    index: int | None = Field(description="Step index (null for the planner).")
    role: Role
    tier: str
    model: str
    p_acceptable: dict[str, float]
    reason: str
    escalation: list[str]
    task_known: bool | None = Field(description="As in RouteResponse, for the plan's `metadata.task`.")
    estimated_cost_usd: float | None


class PlanCost(BaseModel):
    plan: float | None = Field(description="Planner + steps on their routed tiers.")
    top_tier: float | None = Field(description="Planner + steps all on the top tier.")
    savings: float | None = Field(description="top_tier - plan.")


class PlanResponse(BaseModel):
    plan_id: str
    threshold: float
    planner: StepDecision
    steps: list[StepDecision]
    estimated_cost_usd: PlanCost
    router_version: str
    latency_ms: float


class FeedbackResponse(BaseModel):
    request_id: str
    recorded: bool
    model: str
    score: float


class TierInfo(BaseModel):
    index: int
    name: str
    model: str
    provider: str
    input_usd_per_1m: float | None
    output_usd_per_1m: float | None
    batch_discount: float
    typical_output_tokens: int | None


class TiersResponse(BaseModel):
    catalog: str
    tiers: list[TierInfo]
    plan_floor: str = Field(description="Lowest tier a planner is routed to.")
    verify_floor: str = Field(description="Lowest tier a verifier is routed to.")
    default_threshold: float
    quality_target: float
    quality_targets: list[float] = Field(description="quality_target values this model maps (empty: unsupported).")
    router_version: str


class HealthResponse(BaseModel):
    status: str = Field(description="`ok` while the process answers.")


class ReadyResponse(BaseModel):
    ready: bool
    degraded: bool = Field(description="Serving the local last-good copy because the registry could not be reached.")
    source: str = Field(description="`registry`, `local` (a directory) or `last-good-copy`.")
    model_uri: str
    router_version: str
    name: str | None
    version: str | None
    encoder: str | None
    loaded_at: str
    detail: str | None = Field(None, description="Why the service is degraded, or the last reload error.")
    decision_log: str | None = Field(
        None,
        description="Null while the decision log writes; else why not (its writer had stopped, or writes fail): "
        "the service is then not ready.",
    )


class ReloadResponse(BaseModel):
    reloaded: bool
    router_version: str
    previous_version: str
    source: str
    degraded: bool
