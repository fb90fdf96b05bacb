"""The app factory: the FastAPI app, its middleware, error handlers and routes (``uvicorn ... --factory``)."""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import os
from collections.abc import Callable
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from router.gateway.proxy import model_list
from router.gateway.schemas import CachePurgeRequest, CachePurgeResponse, ChatCompletionRequest, ModelList
from router.service.auth import admin_guard, read_json_body
from router.service.errors import ERROR_RESPONSES, ApiError, RedactFilter, install_error_handlers, one_line
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
DOCS_ASSETS = "/docs/assets"  # Swagger UI's and ReDoc's scripts, served by the app itself (no CDN)
_ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def docs_assets_dir() -> Path:
    """Swagger UI 5 and ReDoc as shipped by the ``fastapi-offline`` package (its ``static`` folder): FastAPI's own
    pages load their scripts from a CDN, blank on a host without internet access."""
    path = Path(str(importlib.resources.files("fastapi_offline"))) / "static"
    missing = [name for name in _ASSET_FILES if not (path / name).is_file()]
    if missing:
        raise RuntimeError(f"fastapi-offline's {path} lacks {', '.join(missing)}: reinstall fastapi-offline")
    return path


def _serve_docs_offline(app: FastAPI, assets: Path) -> None:
    """``/docs`` and ``/redoc`` with their files from ``assets``: both pages work without internet access."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    def urls(request: Request) -> tuple[str, Callable[[str], str]]:
        """The spec's URL and a URL maker for the asset files, behind any root path (a reverse proxy's prefix)."""
        root = request.scope.get("root_path", "").rstrip("/")
        return f"{root}{openapi_url}", lambda name: f"{root}{DOCS_ASSETS}/{name}"

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        spec, asset = urls(request)
        return get_swagger_ui_html(
            openapi_url=spec, title=f"{app.title} - Swagger UI", swagger_js_url=asset("swagger-ui-bundle.js"),
            swagger_css_url=asset("swagger-ui.css"), swagger_favicon_url=asset("favicon.png"),
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        spec, asset = urls(request)
        return get_redoc_html(
            openapi_url=spec, title=f"{app.title} - ReDoc", redoc_js_url=asset("redoc.standalone.js"),
            redoc_favicon_url=asset("favicon.png"), with_google_fonts=False,
        )


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
    for h in logger.handlers:  # no URI password reaches the log, whichever message quotes one
        if not any(isinstance(f, RedactFilter) for f in h.filters):
            h.addFilter(RedactFilter())
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
        docs_url=None,  # served from local files below
        redoc_url=None,
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
            {
                "name": "openai",
                "description": "OpenAI-compatible gateway: route, call the chosen tier's upstream, fall back, price "
                "the usage (needs an upstreams file: `tierwise serve --upstreams FILE`). Errors are OpenAI error "
                "objects.",
            },
            {"name": "operations", "description": "Health, readiness, metrics and admin."},
        ],
    )
    app.tierwise = service
    app.state.service = service
    _serve_docs_offline(app, docs_assets_dir())
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

    @app.post(
        "/v1/chat/completions",
        tags=["openai"],
        summary="OpenAI chat completion, routed to the cheapest acceptable tier and called",
        responses={
            200: {
                "description": "OpenAI `chat.completion` (or `text/event-stream` of `chat.completion.chunk` when "
                "`stream` is true); `model` is the catalog model that answered.",
                "content": {"application/json": {}, "text/event-stream": {}},
            },
            400: {"model": ErrorResponse, "description": "Invalid request (OpenAI's `invalid_request_error`)."},
            404: {"model": ErrorResponse, "description": "Unknown `model` (code `model_not_found`)."},
            502: {"model": ErrorResponse, "description": "No upstream answered (every allowed attempt failed)."},
            503: {"model": ErrorResponse, "description": "The gateway is not enabled (no upstreams file)."},
            504: {"model": ErrorResponse, "description": "The last attempt timed out."},
        },
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """`model`: `tierwise`, `tierwise:q0.95`, `tierwise:t0.8` or a catalog model (pass-through). tierwise's
        options go in a `tierwise` object (`extra_body`) or `x-tierwise-*` headers (`role`, `min_tier`, `max_tier`,
        `task`, `tenant`). Responses carry `x-tierwise-*` headers: request id (for `/v1/feedback`), tier, model,
        p-acceptable, cost, attempts, overhead."""
        if service.gateway is None:
            raise ApiError(
                503, "gateway_disabled", "the gateway is not enabled: start tierwise serve with --upstreams FILE "
                "(or TIERWISE_UPSTREAMS) to map the catalog's models to OpenAI-compatible upstreams", None,
                "gateway_disabled",
            )
        return await service.gateway.chat(body, request.headers)

    @app.get("/v1/models", response_model=ModelList, tags=["openai"], summary="Models the gateway accepts")
    async def list_models(request: Request) -> ModelList:
        """The virtual tierwise models (routed) and the catalog's models (pass-through); with client keys
        configured, only for a known key (as OpenAI's endpoint)."""
        gateway = service.gateway
        if gateway is not None:
            gateway.authenticate(request.headers)
        return model_list(service.current_model(), 0 if gateway is None else int(gateway.started_at))

    @app.post(
        "/admin/cache/purge",
        response_model=CachePurgeResponse,
        tags=["operations"],
        summary="Remove one tenant's cached answers (bearer token)",
        dependencies=[Depends(require_admin)],
        responses={
            **ERROR_RESPONSES,
            401: {"model": ErrorResponse, "description": "Missing or wrong admin token."},
            403: {"model": ErrorResponse, "description": "Admin endpoints are disabled (no TIERWISE_ADMIN_TOKEN)."},
            409: {"model": ErrorResponse, "description": "The gateway's cache is not enabled."},
            503: {"model": ErrorResponse, "description": "The shared Redis level could not be reached."},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": CachePurgeRequest.model_json_schema()}},
            }
        },
    )
    async def cache_purge(request: Request) -> CachePurgeResponse:
        """Cached prompts and answers are user data: this removes a tenant's from this replica's memory and from
        Redis (other replicas' in-memory copies expire within a minute when Redis is configured)."""
        body = await read_json_body(request, CachePurgeRequest)
        if body is None:
            raise ApiError(422, "validation_error", "body: give {\"tenant\": ...}", "tenant")
        gateway = service.gateway
        if gateway is None or gateway.cache is None:
            raise ApiError(409, "cache_disabled", "the gateway's response cache is not enabled", None)
        try:
            removed = await gateway.cache.purge_tenant(body.tenant)
        except Exception as exc:  # noqa: BLE001 - CacheError: Redis unreachable (memory was purged)
            raise ApiError(503, "cache_unavailable", f"could not purge the shared cache: {one_line(exc)}") from exc
        return CachePurgeResponse(tenant=body.tenant, removed=removed)

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
            401: {"model": ErrorResponse, "description": "Missing or wrong admin token."},
            403: {
                "model": ErrorResponse,
                "description": "Admin endpoints are disabled (no TIERWISE_ADMIN_TOKEN), or `model_uri` is neither a "
                "registry URI (`models:/...`) nor the configured model URI (TIERWISE_ADMIN_ALLOW_PATHS=true allows "
                "other paths).",
            },
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
        """Load the configured model URI again (or `model_uri` from the body: a `models:/` registry URI, or any path
        with `TIERWISE_ADMIN_ALLOW_PATHS=true`), warm it up, swap it in. With several workers, each worker reloads on
        its own: prefer `TIERWISE_POLL_SECONDS` there."""
        body = await read_json_body(request, ReloadRequest)
        uri = body.model_uri if body else None
        if uri:
            refusal = service.manager.reload_refusal(uri)
            if refusal is not None:  # refused on the text alone: nothing is read or copied
                raise ApiError(403, "forbidden", refusal, "model_uri")
        old, new = await service.reload(uri)
        return ReloadResponse(
            reloaded=True,
            router_version=new.label,
            previous_version=old.label,
            source=new.source,
            degraded=new.degraded,
        )

    return app
