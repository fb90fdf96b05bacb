"""The app factory: the FastAPI app, its middleware, error handlers and routes (``uvicorn ... --factory``)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from router.service.auth import admin_guard, read_json_body
from router.service.errors import ERROR_RESPONSES, install_error_handlers
from router.service.handlers import Service
from router.service.metrics import ServiceMetrics, endpoint_label
from router.service.middleware import BodyGuard
from router.service.schemas import (
    BatchRouteRequest,
    BatchRouteResponse,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    HealthResponse,
    PlanRequest,
    PlanResponse,
    ReadyResponse,
    ReloadRequest,
    ReloadResponse,
    RouteRequest,
    RouteResponse,
    TiersResponse,
)
from router.service.settings import ServiceSettings

API_VERSION = "v1"


class TierwiseApp(FastAPI):
    """FastAPI with tierwise's own lifespan handling (a one-line reason when start-up fails)."""

    tierwise: Service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.tierwise.lifespan(receive, send)
            return
        await super().__call__(scope, receive, send)


def _configure_env_and_logging(settings: ServiceSettings) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # A registry that does not answer must not stall start-up for minutes (MLflow retries 7 times by default).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    logger = logging.getLogger("tierwise")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    level = settings.log_level.upper()
    logger.setLevel(logging.DEBUG if level == "TRACE" else getattr(logging, level, logging.INFO))
    for noisy in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _guard_metric(metrics: ServiceMetrics) -> Callable[[str, int, str], None]:
    def on_error(path: str, status: int, type_: str) -> None:
        metrics.errors.labels(endpoint=endpoint_label(path), status=str(status), type=type_).inc()

    return on_error


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the routing service app (the model loads at start-up, in the ASGI lifespan)."""
    settings = settings or ServiceSettings()
    _configure_env_and_logging(settings)
    service = Service(settings)
    app = TierwiseApp(
        title="tierwise routing service",
        version=API_VERSION,
        summary="Recommends the cheapest model tier that answers each request acceptably.",
        description=(
            "Route a prompt (or a chat, or a whole plan-and-execute job) to a model tier, report the outcome back "
            "with `/v1/feedback`, and retrain on the decision log. Every error is "
            '`{"error": {"type", "message", "field"}}`; unknown fields are rejected.'
        ),
        openapi_tags=[
            {"name": "routing", "description": "Routing decisions."},
            {"name": "feedback", "description": "Outcomes of routed calls (training data for the next router)."},
            {"name": "catalog", "description": "The tiers of the served model."},
            {"name": "operations", "description": "Health, readiness, metrics and admin."},
        ],
    )
    app.tierwise = service
    app.state.service = service
    app.add_middleware(BodyGuard, max_bytes=settings.max_body_bytes, on_error=_guard_metric(service.metrics))
    install_error_handlers(app, service.metrics)
    require_admin = admin_guard(settings)

    @app.post(
        "/v1/route",
        response_model=RouteResponse,
        responses=ERROR_RESPONSES,
        tags=["routing"],
        summary="Recommend a tier for one request",
    )
    async def route(body: RouteRequest, response: Response) -> RouteResponse:
        """Route one prompt (or the last user turn of `messages`). The decision also comes as `x-tierwise-*`
        response headers (request id, tier, model, reason, threshold, p-acceptable of the chosen tier, escalation,
        router version, latency, estimated cost) for proxies."""
        result, headers = await service.route(body)
        response.headers.update(headers)
        return result

    @app.post(
        "/v1/route/batch",
        response_model=BatchRouteResponse,
        responses=ERROR_RESPONSES,
        tags=["routing"],
        summary="Route many requests in one call (vectorised)",
    )
    async def route_batch(body: BatchRouteRequest, response: Response) -> BatchRouteResponse:
        """All prompts are encoded and classified together; results come back in request order."""
        result, headers = await service.route_batch(body)
        response.headers.update(headers)
        return result

    @app.post(
        "/v1/route/plan",
        response_model=PlanResponse,
        responses=ERROR_RESPONSES,
        tags=["routing"],
        summary="Route a plan-and-execute job: a planner tier and a tier per step",
    )
    async def route_plan(body: PlanRequest, response: Response) -> PlanResponse:
        """The goal is routed as the planner call (never below the catalog's planning floor); each step on its own
        text and role. Costs: planner + steps on their tiers, next to everything on the top tier."""
        result, headers = await service.route_plan(body)
        response.headers.update(headers)
        return result

    @app.post(
        "/v1/feedback",
        response_model=FeedbackResponse,
        responses={
            **ERROR_RESPONSES,
            404: {"model": ErrorResponse, "description": "Unknown request_id."},
            503: {"model": ErrorResponse, "description": "The decision log could not write the row: retry later."},
        },
        tags=["feedback"],
        summary="Report which tier answered and whether the answer was acceptable",
    )
    async def feedback(body: FeedbackRequest) -> FeedbackResponse:
        """Written to the decision log; `tierwise decisions export` turns it into a training log. With
        `TIERWISE_DURABLE_FEEDBACK` (the default) the answer comes once the row is committed; 503 when it could not
        be written."""
        return await service.feedback(body)

    @app.get("/v1/tiers", response_model=TiersResponse, tags=["catalog"], summary="The served model's tier catalog")
    async def tiers() -> TiersResponse:
        return service.tiers()

    @app.get("/healthz", response_model=HealthResponse, tags=["operations"], summary="The process is alive")
    async def healthz() -> HealthResponse:
        return HealthResponse(status="ok")

    @app.get(
        "/readyz",
        response_model=ReadyResponse,
        tags=["operations"],
        summary="Model loaded? Which version? Degraded? Decision log writing?",
        responses={503: {"model": ReadyResponse}},
    )
    async def readyz(response: Response) -> ReadyResponse:
        status, body = await asyncio.to_thread(service.ready)  # the decision log's health check may wait briefly
        response.status_code = status
        return body

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        data, ctype = service.metrics.render()
        return Response(data, media_type=ctype)

    @app.post(
        "/admin/reload",
        response_model=ReloadResponse,
        tags=["operations"],
        summary="Reload the model without downtime (bearer token)",
        dependencies=[Depends(require_admin)],
        responses={
            **ERROR_RESPONSES,
            401: {"model": ErrorResponse},
            403: {"model": ErrorResponse},
            503: {"model": ErrorResponse, "description": "Reload failed; the old model keeps serving."},
        },
        # the body is read after the admin check (see router.service.auth), so it is documented here
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": ReloadRequest.model_json_schema()}},
            }
        },
    )
    async def admin_reload(request: Request) -> ReloadResponse:
        """Load the configured model URI again (or `model_uri` from the body), warm it up, swap it in. With several
        workers, each worker reloads on its own: prefer `TIERWISE_POLL_SECONDS` there."""
        body = await read_json_body(request, ReloadRequest)
        old, new = await service.reload(body.model_uri if body else None)
        return ReloadResponse(
            reloaded=True,
            router_version=new.label,
            previous_version=old.label,
            source=new.source,
            degraded=new.degraded,
        )

    return app
