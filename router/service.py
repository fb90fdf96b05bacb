"""The routing service: a FastAPI app that recommends a tier per request (``tierwise serve``).

Run it with ``tierwise serve`` or ``uvicorn router.service:create_app --factory`` (``router.service:app`` works too:
the module builds the app on first access). Configuration comes from :class:`router.service_settings.ServiceSettings`
(``TIERWISE_*`` environment variables).

Model lifecycle: at start-up the model is loaded from ``model_uri`` (registry alias, version, run or local
directory). After every successful registry load the bundle is copied atomically to ``model_cache_dir`` (the
last-good copy). When the registry cannot be reached at start, the service serves that copy and ``/readyz`` says
``degraded: true``; with neither, start-up fails with a one-line message and uvicorn exits non-zero.
``POST /admin/reload`` (bearer token) and the optional alias poll swap models without downtime: the new model is
loaded and warmed up in a thread while the old one keeps serving, and a failed reload keeps the old one.

Privacy: prompt text is never logged; the decision log stores a SHA-256 unless ``store_prompts`` is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import hmac
import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import numpy as np
from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from router.decision import ROLES
from router.decision_log import DecisionLog, DecisionLogError
from router.metrics import ServiceMetrics
from router.microbatch import MicroBatcher
from router.schemas import (
    BatchRouteRequest,
    BatchRouteResponse,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    PlanRequest,
    PlanResponse,
    ReadyResponse,
    ReloadRequest,
    ReloadResponse,
    RouteRequest,
    RouteResponse,
    RoutingOptions,
    TiersResponse,
    number_message,
)
from router.service_settings import ServiceSettings

log = logging.getLogger("tierwise.service")

API_VERSION = "v1"
DEFAULT_OUTPUT_TOKENS = 256
DEFAULT_CHARS_PER_TOKEN = 4.0
DURABLE_FEEDBACK_TIMEOUT_S = 60.0  # the writer retries a busy database for up to ~30 s before it gives up
SOURCE_FILE = "source.json"
STATE_DIR_ENV = "TIERWISE_SERVE_STATE_DIR"  # set by `tierwise serve --workers N`: start-up errors land there
KNOWN_PATHS = frozenset(
    {
        "/v1/route",
        "/v1/route/batch",
        "/v1/route/plan",
        "/v1/feedback",
        "/v1/tiers",
        "/healthz",
        "/readyz",
        "/metrics",
        "/admin/reload",
    }
)
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

    def __init__(self, status: int, type_: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.field = field


def one_line(exc: BaseException, limit: int = 240) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _header(value: object) -> str:
    s = str(value)
    return s if s.isascii() else quote(s, safe=" /@:,.-_")


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # ensure_ascii: any input is safe to send
_RNG = random.SystemRandom().getrandbits(64)  # per-process seed for the id generator below
_IDS = random.Random(_RNG ^ os.getpid() ^ time.time_ns())


def _dumps(obj: Any) -> bytes:
    return _ENCODE(obj).encode("ascii")


def new_request_id() -> str:
    """128 random bits as 32 hex digits (a seeded PRNG: uuid4's syscall per request is measurable under load)."""
    return f"{_IDS.getrandbits(128):032x}"


def error_body(status: int, type_: str, message: str, field: str | None, details: list[Any] | None = None) -> bytes:
    err: dict[str, Any] = {"type": type_, "message": message, "field": field}
    if details:
        err["details"] = details
    return _dumps({"error": err})


# ----------------------------------------------------------------------------------------------------------------
# Model loading
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A router plus where it came from and what the service precomputes for it."""

    router: Any
    source: str  # registry | local | last-good-copy
    uri: str
    degraded: bool = False
    detail: str | None = None
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        r = self.router
        self.label = r.ref.label
        self.label_header = _header(self.label)
        training = r.meta.training or {}
        try:
            cpt = float(training.get("chars_per_token") or DEFAULT_CHARS_PER_TOKEN)
        except (TypeError, ValueError):
            cpt = DEFAULT_CHARS_PER_TOKEN
        self.chars_per_token = cpt if cpt > 0 else DEFAULT_CHARS_PER_TOKEN
        table = training.get("threshold_table") or []
        rows: list[tuple[float, float]] = []
        for row in table if isinstance(table, list) else []:
            try:
                rows.append((float(row["quality_target"]), float(row["threshold"])))
            except (KeyError, TypeError, ValueError):
                continue
        self.threshold_table = sorted(rows)
        cat = r.catalog
        self.tier_names = list(cat.tier_names)
        self.tier_headers = [_header(t.name) for t in cat.tiers]
        self.model_headers = [_header(t.model) for t in cat.tiers]
        self.out_tokens = [t.typical_output_tokens or DEFAULT_OUTPUT_TOKENS for t in cat.tiers]
        enc = r.meta.encoder or {}
        self.encoder = f"{enc.get('kind', '?')}:{enc.get('source', '?')}"

    @property
    def name(self) -> str | None:
        return self.router.ref.name

    @property
    def version(self) -> str | None:
        return self.router.ref.version


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class ModelManager:
    """Loads routers from the registry / a directory / the last-good copy (blocking: call from a thread)."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.model_uri = settings.model_uri
        self.cache = settings.model_cache_path

    @property
    def _lock_path(self) -> Path:
        return self.cache.parent / f".{self.cache.name}.lock"

    @staticmethod
    def is_local(uri: str) -> bool:
        return not uri.startswith(("models:/", "runs:/")) and "://" not in uri and Path(uri).expanduser().exists()

    def load(self, uri: str | None = None) -> LoadedModel:
        """Load ``uri`` (default: the configured one), warm it up, and refresh the last-good copy."""
        from router.core import Router, download_model

        uri = uri or self.model_uri
        threads = self.settings.encoder_threads
        if self.is_local(uri):
            model = LoadedModel(Router.from_bundle(Path(uri).expanduser(), threads=threads), "local", uri)
        else:
            if "://" not in uri and not uri.startswith(("models:/", "runs:/")):
                raise FileNotFoundError(f"no such model directory or registry URI: {uri}")
            local, ref = download_model(uri, tracking_uri=self.settings.tracking_uri)
            try:
                router = Router.from_bundle(local, threads=threads, ref=ref)
                self._warm(router)
                try:
                    saved = self.save_last_good(router, uri)
                    router.bundle_dir = saved
                except Exception as exc:  # noqa: BLE001 - serving works without the copy
                    log.warning("could not refresh the last-good model copy in %s: %s", self.cache, one_line(exc))
            finally:
                _remove_download(Path(local))
            return LoadedModel(router, "registry", uri)
        self._warm(model.router)
        return model

    @staticmethod
    def _warm(router: Any) -> None:
        router.predict_proba_array(["warm-up request", "a second, slightly longer warm-up request."], [None, "plan"])

    def save_last_good(self, router: Any, uri: str) -> Path:
        """Copy the router's bundle to the cache dir (temp dir + rename) with a source.json; return the bundle path."""
        ref = router.ref
        info = {
            "uri": uri,
            "name": ref.name,
            "version": ref.version,
            "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with _file_lock(self._lock_path):
            current = self._read_source()
            if (
                current is not None
                and current.get("name") == ref.name
                and current.get("version") == ref.version
                and (ref.version is not None or current.get("uri") == uri)
                and (self.cache / "bundle").is_dir()
            ):
                return self.cache / "bundle"
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.cache.name}.", dir=self.cache.parent))
            try:
                shutil.copytree(router.bundle_dir, tmp / "bundle")
                (tmp / SOURCE_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")
                if self.cache.exists():
                    old = self.cache.with_name(f".{self.cache.name}.old")
                    shutil.rmtree(old, ignore_errors=True)
                    os.replace(self.cache, old)
                    os.replace(tmp, self.cache)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(tmp, self.cache)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        log.info("saved last-good copy of %s to %s", router.ref.label, self.cache)
        return self.cache / "bundle"

    def _read_source(self) -> dict[str, Any] | None:
        p = self.cache / SOURCE_FILE
        if not p.is_file():
            return None
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def load_last_good(self, why: str) -> LoadedModel:
        from router.core import ModelRef, Router

        with _file_lock(self._lock_path):
            info = self._read_source()
            if info is None or not (self.cache / "bundle").is_dir():
                raise FileNotFoundError(f"no last-good copy in {self.cache}")
            ref = ModelRef(uri=str(info.get("uri") or self.cache), name=info.get("name"), version=info.get("version"))
            router = Router.from_bundle(self.cache / "bundle", threads=self.settings.encoder_threads, ref=ref)
        self._warm(router)
        detail = f"registry unavailable ({why}); serving the last-good copy saved at {info.get('saved_at')}"
        return LoadedModel(router, "last-good-copy", self.model_uri, degraded=True, detail=detail)

    def load_initial(self) -> LoadedModel:
        uri = self.model_uri
        try:
            return self.load(uri)
        except Exception as exc:  # noqa: BLE001
            primary = one_line(exc)
            if self.is_local(uri):
                raise StartupError(f"cannot load model {uri}: {primary}") from exc
            log.warning("cannot load %s (%s); trying the last-good copy in %s", uri, primary, self.cache)
            try:
                model = self.load_last_good(primary)
            except Exception as exc2:  # noqa: BLE001
                raise StartupError(
                    f"cannot load model {uri} ({primary}) and no usable last-good copy in {self.cache} "
                    f"({one_line(exc2)})"
                ) from exc2
            log.warning("DEGRADED: %s", model.detail)
            return model

    def alias_version(self) -> str | None:
        """The version the configured alias points to now (None for URIs without an alias)."""
        uri = self.model_uri
        if not uri.startswith("models:/") or "@" not in uri:
            return None
        from mlflow import MlflowClient

        from router.settings import resolve_tracking_uri

        name, alias = uri[len("models:/") :].split("@", 1)
        client = MlflowClient(tracking_uri=resolve_tracking_uri(self.settings.tracking_uri))
        return str(client.get_model_version_by_alias(name, alias).version)


def _remove_download(local: Path) -> None:
    """Delete the temp dir ``download_model`` created (the model is in memory and in the last-good copy)."""
    from router.core import download_root

    try:
        shutil.rmtree(download_root(local), ignore_errors=True)
    except ValueError:
        pass


# ----------------------------------------------------------------------------------------------------------------
# Request size / content type guard (pure ASGI: cheap on the hot path)
# ----------------------------------------------------------------------------------------------------------------
class BodyGuard:
    """413 for bodies above ``max_bytes``, 415 for non-JSON bodies, before FastAPI reads anything."""

    def __init__(self, app: Any, max_bytes: int, on_error: Any) -> None:
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


# ----------------------------------------------------------------------------------------------------------------
# The service
# ----------------------------------------------------------------------------------------------------------------
class TierwiseApp(FastAPI):
    """FastAPI with tierwise's own lifespan handling (a one-line reason when start-up fails)."""

    tierwise: Service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.tierwise.lifespan(receive, send)
            return
        await super().__call__(scope, receive, send)


class Service:
    """State and handlers of one app instance (one per worker process)."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.manager = ModelManager(settings)
        self.model: LoadedModel | None = None
        self.dlog: DecisionLog | None = None
        self.batcher = MicroBatcher(
            self._get_model,
            _predict,
            window_ms=settings.batch_window_ms,
            max_batch=settings.max_batch_size,
            threads=settings.inference_threads_value,
            on_batch=self.metrics.batch_size.observe,
        )
        self._reload_lock: asyncio.Lock | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._recent_cap = 200_000
        self.last_reload_error: str | None = None

    def _get_model(self) -> LoadedModel:
        assert self.model is not None
        return self.model

    # --- lifecycle ---------------------------------------------------------------------------------------------
    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # noqa: BLE001
                    text = str(exc) if isinstance(exc, StartupError) else one_line(exc)
                    msg = f"tierwise: start-up failed: {text}"
                    _write_startup_error(msg)
                    with contextlib.suppress(Exception):
                        await self.shutdown()
                    await send({"type": "lifespan.startup.failed", "message": msg})
                    # like Starlette: raise after reporting (uvicorn then exits quietly; TestClient raises)
                    raise StartupError(text) from None
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                with contextlib.suppress(Exception):
                    await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        s = self.settings
        self._reload_lock = asyncio.Lock()
        try:
            self.dlog = DecisionLog(
                s.decision_log_path,
                store_prompts=s.store_prompts,
                on_drop=self.metrics.log_dropped.inc,
                on_error=lambda kind: self.metrics.log_errors.labels(kind=kind).inc(),
            )
        except Exception as exc:
            raise StartupError(f"cannot open the decision log {s.decision_log_path}: {one_line(exc)}") from exc
        for kind in (*DecisionLog.ERROR_KINDS, "catalog"):  # exported at 0, so a rate() or alert sees the series
            self.metrics.log_errors.labels(kind=kind)
        self.model = await asyncio.to_thread(self.manager.load_initial)
        try:
            await asyncio.to_thread(self._record_catalog, self.model)
        except Exception as exc:
            raise StartupError(
                f"cannot write the catalog of {self.model.label} to the decision log {s.decision_log_path}: "
                f"{one_line(exc)}"
            ) from exc
        self.metrics.set_model(self.model.label, self.model.degraded)
        self.dlog.start()
        self._settle_heap()
        self.metrics.watch_gc()
        await self.batcher.start()
        if s.poll_seconds > 0:
            self._poll_task = asyncio.create_task(self._poll(), name="tierwise-poll")
        log.info(
            "serving %s (%s%s), encoder %s, decision log %s (prompts %s, feedback %s)",
            self.model.label,
            self.model.source,
            ", DEGRADED" if self.model.degraded else "",
            self.model.encoder,
            s.decision_log_path,
            "stored" if s.store_prompts else "hashed",
            "durable" if s.durable_feedback else "acknowledged before commit",
        )

    def _record_catalog(self, m: LoadedModel) -> None:
        """Store the catalog this router version routes with, so an export of its feedback names it."""
        assert self.dlog is not None
        self.dlog.record_catalog(m.label, m.router.catalog.to_yaml())

    def _settle_heap(self) -> None:
        """Collect garbage once, then move every surviving object to the permanent generation (``gc.freeze``).

        The model, MLflow and the web stack leave a few hundred thousand long-lived objects on the heap (the
        benchmark's worker: ~347,000); without this, each full collection scans them all and stalls every in-flight
        request for 100+ ms (the p99 under load). Called after start-up and after each reload (unfreezing first, so
        an old model's reference cycles are still freed); that one collection is the only pause.
        ``TIERWISE_FREEZE_HEAP=false`` turns it off.
        """
        if not self.settings.freeze_heap:
            return
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.metrics.frozen_objects.set(gc.get_freeze_count())

    async def shutdown(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poll_task
            self._poll_task = None
        await self.batcher.stop()
        self.metrics.unwatch_gc()
        if self.dlog is not None:
            await asyncio.to_thread(self.dlog.close)
            self.dlog = None

    async def reload(self, uri: str | None = None, *, reason: str = "admin") -> tuple[LoadedModel, LoadedModel]:
        """Load a new model in a thread and swap it in; raise ApiError (old model kept) on failure."""
        assert self._reload_lock is not None and self.model is not None
        async with self._reload_lock:
            old = self.model
            try:
                new = await asyncio.to_thread(self.manager.load, uri)
            except Exception as exc:  # noqa: BLE001
                self.last_reload_error = f"{reason} reload of {uri or self.manager.model_uri} failed: {one_line(exc)}"
                self.metrics.reloads.labels(result="failed").inc()
                log.error("%s; still serving %s", self.last_reload_error, old.label)
                raise ApiError(
                    503, "reload_failed", f"{self.last_reload_error}; still serving {old.label}", "model_uri"
                ) from exc
            try:
                await asyncio.to_thread(self._record_catalog, new)
            except Exception as exc:  # noqa: BLE001 - serve anyway; an export of this version then asks for it
                self.metrics.log_errors.labels(kind="catalog").inc()
                log.error("cannot write the catalog of %s to the decision log: %s", new.label, one_line(exc))
            if uri:
                self.manager.model_uri = uri
            self.model = new
            self.last_reload_error = None
            self.metrics.reloads.labels(result="ok").inc()
            self.metrics.set_model(new.label, new.degraded)
            log.info("%s reload: now serving %s (was %s)", reason, new.label, old.label)
            self._settle_heap()
            return old, new

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                model = self.model
                assert model is not None
                if model.degraded or model.source != "registry":
                    if model.degraded:
                        await self.reload(reason="poll")
                    continue
                target = await asyncio.to_thread(self.manager.alias_version)
                if target is not None and target != model.version:
                    await self.reload(reason="poll")
            except ApiError:
                pass  # logged by reload()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("model poll failed: %s", one_line(exc))

    # --- helpers -----------------------------------------------------------------------------------------------
    def _remember(self, request_id: str) -> None:
        r = self._recent
        r[request_id] = None
        if len(r) > self._recent_cap:
            r.popitem(last=False)

    @staticmethod
    def _threshold(m: LoadedModel, opts: RoutingOptions, prefix: str = "") -> float:
        if opts.threshold is not None:
            return float(opts.threshold)
        if opts.quality_target is not None:
            if not m.threshold_table:
                raise ApiError(
                    422,
                    "unsupported",
                    f"this model ({m.label}) has no threshold table, so quality_target is not supported; give "
                    "threshold instead",
                    prefix + "quality_target",
                )
            for qt, thr in m.threshold_table:
                if qt >= opts.quality_target - 1e-9:
                    return thr
            top = m.threshold_table[-1][0]
            raise ApiError(
                422,
                "validation_error",
                f"quality_target {opts.quality_target} is above the highest target this model was calibrated for "
                f"({top})",
                prefix + "quality_target",
            )
        return float(m.router.threshold)

    @staticmethod
    def _bounds(m: LoadedModel, opts: RoutingOptions, prefix: str = "") -> tuple[int | None, int | None]:
        cat = m.router.catalog
        out: list[int | None] = []
        for name in ("min_tier", "max_tier"):
            value = getattr(opts, name)
            if value is None:
                out.append(None)
                continue
            try:
                out.append(cat.index(value))
            except KeyError:
                raise ApiError(
                    422,
                    "validation_error",
                    f"unknown tier {value!r}; tiers are {', '.join(cat.tier_names)}",
                    prefix + name,
                ) from None
        lo, hi = out
        if lo is not None and hi is not None and lo > hi:
            raise ApiError(
                422,
                "validation_error",
                f"min_tier {opts.min_tier!r} is above max_tier {opts.max_tier!r}",
                prefix + "min_tier",
            )
        return lo, hi

    @staticmethod
    def _costs(m: LoadedModel, idx: int, chars: int, batch: bool) -> tuple[int, int, float | None, float | None]:
        """(input tokens, output tokens, USD on tier idx, USD on the top tier)."""
        tiers = m.router.catalog.tiers
        in_tok = max(1, int(round(chars / m.chars_per_token)))
        out_tok = m.out_tokens[idx]
        t, top = tiers[idx], tiers[-1]
        chosen = t.price_usd(in_tok, out_tok, batch=batch) if t.has_prices else None
        top_usd = top.price_usd(in_tok, m.out_tokens[-1], batch=batch) if top.has_prices else None
        return in_tok, out_tok, chosen, top_usd

    def _decide(
        self,
        m: LoadedModel,
        proba: np.ndarray,
        *,
        threshold: float,
        role: str,
        lo: int | None,
        hi: int | None,
        chars: int,
    ) -> Any:
        cat = m.router.catalog
        return m.router.decide(
            proba,
            threshold=threshold,
            role=role,
            min_tier=None if lo is None else cat.tiers[lo].name,
            max_tier=None if hi is None else cat.tiers[hi].name,
            prompt_chars=chars,
        )

    def _route_payload(
        self,
        m: LoadedModel,
        req: RouteRequest,
        proba: np.ndarray,
        text: str,
        endpoint: str,
        t0: float,
        prefix: str = "",
    ) -> tuple[dict[str, Any], Any]:
        thr = self._threshold(m, req, prefix)
        lo, hi = self._bounds(m, req, prefix)
        chars = req.billed_chars()
        d = self._decide(m, proba, threshold=thr, role=req.role, lo=lo, hi=hi, chars=chars)
        batch_mode = req.latency_tolerance == "batch"
        in_tok, out_tok, chosen, top = self._costs(m, d.tier_index, chars, False)
        batch_advice = None
        spend, baseline = chosen, top
        if batch_mode:
            tier = m.router.catalog.tiers[d.tier_index]
            available = tier.batch_discount > 0 and tier.has_prices
            discounted = self._costs(m, d.tier_index, chars, True)
            batch_advice = {
                "available": available,
                "discount": tier.batch_discount,
                "estimated_cost_usd": discounted[2],
            }
            spend, baseline = discounted[2], discounted[3]
        request_id = new_request_id()
        latency_ms = round((time.perf_counter() - t0) * 1000, 3)
        payload = {
            "request_id": request_id,
            "tier": d.tier,
            "tier_index": d.tier_index,
            "model": d.model,
            "role": d.role,
            "p_acceptable": d.probabilities,
            "threshold": d.threshold,
            "reason": d.reason,
            "escalation": d.escalation,
            "task_known": _task_known(m, _task(req)),
            "estimated_cost_usd": {"tier": chosen, "top_tier": top, "input_tokens": in_tok, "output_tokens": out_tok},
            "batch": batch_advice,
            "router_version": m.label,
            "latency_ms": latency_ms,
        }
        self._account(m, endpoint, payload, text, req.metadata, spend, baseline)
        return payload, d

    def _account(
        self,
        m: LoadedModel,
        endpoint: str,
        p: dict[str, Any],
        text: str,
        metadata: Any,
        spend: float | None,
        baseline: float | None,
    ) -> None:
        mt = self.metrics
        mt.requests.labels(endpoint=endpoint, tier=p["tier"], role=p["role"]).inc()
        mt.reasons.labels(reason=p["reason"]).inc()
        if spend is not None:
            mt.spend.labels(tier=p["tier"]).inc(spend)
        if baseline is not None:
            mt.baseline_spend.inc(baseline)
        self._remember(p["request_id"])
        assert self.dlog is not None
        cost = p.get("estimated_cost_usd")
        self.dlog.record_decision(
            request_id=p["request_id"],
            endpoint=endpoint,
            text=text,
            role=p["role"],
            tier=p["tier"],
            tier_index=p["tier_index"],
            model=p["model"],
            threshold=p["threshold"],
            reason=p["reason"],
            probabilities=p["p_acceptable"],
            router_version=m.label,
            est_cost_usd=cost["tier"] if isinstance(cost, dict) else cost,
            est_top_cost_usd=cost["top_tier"] if isinstance(cost, dict) else baseline,
            latency_ms=p.get("latency_ms", 0.0),
            metadata=metadata.model_dump(exclude_none=True) if metadata is not None else None,
        )

    def _headers(self, m: LoadedModel, p: dict[str, Any]) -> dict[str, str]:
        idx = p["tier_index"]
        cost = p["estimated_cost_usd"]["tier"]
        h = {
            "x-tierwise-request-id": p["request_id"],
            "x-tierwise-tier": m.tier_headers[idx],
            "x-tierwise-model": m.model_headers[idx],
            "x-tierwise-reason": p["reason"],
            "x-tierwise-threshold": f"{p['threshold']:.6g}",
            "x-tierwise-p-acceptable": f"{p['p_acceptable'][m.tier_names[idx]]:.6g}",
            "x-tierwise-escalation": ",".join(m.tier_headers[m.tier_names.index(t)] for t in p["escalation"]),
            "x-tierwise-router-version": m.label_header,
            "x-tierwise-latency-ms": f"{p['latency_ms']:.3f}",
            "x-tierwise-estimated-cost-usd": "" if cost is None else f"{cost:.8g}",
        }
        if m.degraded:
            h["x-tierwise-degraded"] = "true"
        return h

    async def known_request(self, request_id: str) -> bool:
        if request_id in self._recent:
            return True
        assert self.dlog is not None
        deadline = time.monotonic() + self.settings.feedback_wait_ms / 1000
        while True:
            if await asyncio.to_thread(self.dlog.get_decision, request_id) is not None:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)

    # --- handlers ------------------------------------------------------------------------------------------------
    async def route(self, req: RouteRequest) -> Response:
        t0 = time.perf_counter()
        current = self._get_model()
        self._threshold(current, req)  # reject bad knobs before spending encoder time
        self._bounds(current, req)
        text = req.routing_text()
        m, proba = await self.batcher.submit(text, req.role, _task(req))
        payload, _ = self._route_payload(m, req, proba, text, "/v1/route", t0)
        self.metrics.latency.labels(endpoint="/v1/route").observe(time.perf_counter() - t0)
        return Response(_dumps(payload), media_type="application/json", headers=self._headers(m, payload))

    async def route_batch(self, body: BatchRouteRequest) -> Response:
        t0 = time.perf_counter()
        if len(body.requests) > self.settings.max_batch_items:
            raise ApiError(
                422,
                "validation_error",
                f"{len(body.requests)} requests is more than the limit of {self.settings.max_batch_items} per call",
                "requests",
            )
        current = self._get_model()
        for i, r in enumerate(body.requests):
            self._threshold(current, r, f"requests.{i}.")
            self._bounds(current, r, f"requests.{i}.")
        texts = [r.routing_text() for r in body.requests]
        m, proba = await self.batcher.run_many(
            texts, [r.role for r in body.requests], [_task(r) for r in body.requests]
        )
        results = [
            self._route_payload(m, r, proba[i], texts[i], "/v1/route/batch", t0, f"requests.{i}.")[0]
            for i, r in enumerate(body.requests)
        ]
        latency = round((time.perf_counter() - t0) * 1000, 3)
        for r in results:
            r["latency_ms"] = latency
        self.metrics.latency.labels(endpoint="/v1/route/batch").observe(time.perf_counter() - t0)
        out = {"results": results, "router_version": m.label, "latency_ms": latency}
        return Response(
            _dumps(out), media_type="application/json", headers={"x-tierwise-router-version": m.label_header}
        )

    async def route_plan(self, body: PlanRequest) -> Response:
        t0 = time.perf_counter()
        steps = body.plan_steps()
        if len(steps) > self.settings.max_plan_steps:
            raise ApiError(
                422,
                "validation_error",
                f"{len(steps)} steps is more than the limit of {self.settings.max_plan_steps} per plan",
                "steps",
            )
        current = self._get_model()
        self._threshold(current, body)
        self._bounds(current, body)
        texts = [body.goal] + [s.text for s in steps]
        roles: list[str] = ["plan"] + [s.role for s in steps]
        task = _task(body)
        m, proba = await self.batcher.run_many(texts, roles, [task] * len(texts))
        task_known = _task_known(m, task)
        thr = self._threshold(m, body)
        lo, hi = self._bounds(m, body)
        cat = m.router.catalog
        floor = cat.plan_floor
        plan_id = new_request_id()
        batch_mode = body.latency_tolerance == "batch"
        decisions: list[dict[str, Any]] = []
        total = top_total = 0.0
        priced = True
        for i, (text, role) in enumerate(zip(texts, roles, strict=True)):
            # a planner is never pushed below the planning floor by max_tier (on this endpoint)
            cap = hi if (hi is None or role != "plan") else max(hi, floor)
            d = self._decide(m, proba[i], threshold=thr, role=role, lo=lo, hi=cap, chars=len(text))
            _, _, usd, top_usd = self._costs(m, d.tier_index, len(text), batch_mode)
            if usd is None or top_usd is None:
                priced = False
            else:
                total += usd
                top_total += top_usd
            rid = f"{plan_id}-{'plan' if i == 0 else i - 1}"
            p = {
                "request_id": rid,
                "index": None if i == 0 else i - 1,
                "role": d.role,
                "tier": d.tier,
                "tier_index": d.tier_index,
                "model": d.model,
                "p_acceptable": d.probabilities,
                "threshold": d.threshold,
                "reason": d.reason,
                "escalation": d.escalation,
                "task_known": task_known,
                "estimated_cost_usd": usd,
            }
            self._account(m, "/v1/route/plan", p, text, body.metadata, usd, top_usd)
            p.pop("tier_index")
            p.pop("threshold")
            decisions.append(p)
        latency = round((time.perf_counter() - t0) * 1000, 3)
        out = {
            "plan_id": plan_id,
            "threshold": thr,
            "planner": decisions[0],
            "steps": decisions[1:],
            "estimated_cost_usd": {
                "plan": total if priced else None,
                "top_tier": top_total if priced else None,
                "savings": (top_total - total) if priced else None,
            },
            "router_version": m.label,
            "latency_ms": latency,
        }
        self.metrics.latency.labels(endpoint="/v1/route/plan").observe(time.perf_counter() - t0)
        return Response(
            _dumps(out), media_type="application/json", headers={"x-tierwise-router-version": m.label_header}
        )

    async def feedback(self, body: FeedbackRequest) -> dict[str, Any]:
        m = self._get_model()
        cat = m.router.catalog
        idx: int | None = None
        if body.tier is not None:
            try:
                idx = cat.tier_names.index(body.tier)
            except ValueError:
                raise ApiError(
                    422,
                    "validation_error",
                    f"unknown tier {body.tier!r}; tiers are {', '.join(cat.tier_names)}",
                    "tier",
                ) from None
        if body.model is not None:
            try:
                midx = cat.index(body.model)
            except KeyError:
                raise ApiError(
                    422,
                    "validation_error",
                    f"unknown model {body.model!r}; models are {', '.join(cat.models)}",
                    "model",
                ) from None
            if idx is not None and midx != idx:
                raise ApiError(
                    422,
                    "validation_error",
                    f"model {body.model!r} does not serve tier {body.tier!r} (it serves {cat.tiers[midx].name!r})",
                    "model",
                )
            idx = midx
        assert idx is not None
        if not await self.known_request(body.request_id):
            raise ApiError(
                404,
                "not_found",
                f"no routing decision with request_id {body.request_id!r} in the decision log",
                "request_id",
            )
        tier = cat.tiers[idx]
        score = float(body.score) if body.score is not None else (1.0 if body.acceptable else 0.0)
        acceptable = body.acceptable if body.acceptable is not None else score >= cat.acceptability.threshold
        assert self.dlog is not None
        written = self.dlog.record_feedback(
            request_id=body.request_id,
            tier=tier.name,
            model=tier.model,
            score=score,
            acceptable=body.acceptable,
            input_tokens=body.input_tokens,
            output_tokens=body.output_tokens,
            cost_usd=body.cost_usd,
            latency_ms=body.latency_ms,
            metadata=body.metadata,
            durable=self.settings.durable_feedback,
            feedback_id=body.feedback_id,
        )
        try:
            if self.settings.durable_feedback:
                # 200 only once the row is committed: a crash after this answer cannot lose it
                await asyncio.wait_for(asyncio.wrap_future(written), DURABLE_FEEDBACK_TIMEOUT_S)
            elif written.done():
                written.result()  # refused at once (queue full): never answer recorded: true for it
        except DecisionLogError as exc:
            raise ApiError(503, "not_recorded", f"feedback not recorded: {exc}; retry later", None) from exc
        except TimeoutError as exc:
            # the row is still queued and may be committed after this answer: a plain retry could record it twice
            raise ApiError(
                503,
                "not_confirmed",
                f"feedback not confirmed within {DURABLE_FEEDBACK_TIMEOUT_S:.0f} s; it may still be recorded: retry "
                "with the same feedback_id (recorded once), or do not retry",
                None,
            ) from exc
        self.metrics.feedback.labels(tier=tier.name, acceptable=str(bool(acceptable)).lower()).inc()
        return {"request_id": body.request_id, "recorded": True, "model": tier.model, "score": score}

    def tiers(self) -> dict[str, Any]:
        m = self._get_model()
        cat = m.router.catalog
        return {
            "catalog": cat.name,
            "tiers": [{"index": i, **t.model_dump()} for i, t in enumerate(cat.tiers)],
            "plan_floor": cat.tiers[cat.plan_floor].name,
            "verify_floor": cat.tiers[cat.verify_floor].name,
            "default_threshold": float(m.router.threshold),
            "quality_target": float(m.router.meta.quality_target),
            "quality_targets": [qt for qt, _ in m.threshold_table],
            "router_version": m.label,
        }

    def ready(self) -> tuple[int, dict[str, Any]]:
        m = self.model
        if m is None:
            return 503, {
                "ready": False,
                "degraded": False,
                "source": "none",
                "model_uri": self.manager.model_uri,
                "router_version": "",
                "name": None,
                "version": None,
                "encoder": None,
                "loaded_at": "",
                "detail": "model not loaded yet",
                "decision_log": None,
            }
        problem = self.dlog.health() if self.dlog is not None else "the decision log is not open"
        return 503 if problem else 200, {
            "ready": problem is None,
            "degraded": m.degraded,
            "source": m.source,
            "model_uri": m.uri,
            "router_version": m.label,
            "name": m.name,
            "version": m.version,
            "encoder": m.encoder,
            "loaded_at": m.loaded_at,
            "detail": problem or m.detail or self.last_reload_error,
            "decision_log": problem,
        }


def _predict(model: LoadedModel, texts: list[str], roles: list[str | None], tasks: list[str | None]) -> np.ndarray:
    return model.router.predict_proba_array(texts, roles, tasks)


def _task(options: RoutingOptions) -> str | None:
    """The task the caller named (``metadata.task``), if any."""
    return options.metadata.task if options.metadata is not None else None


def _task_known(m: LoadedModel, task: str | None) -> bool | None:
    return None if task is None else task in m.router.known_tasks


def _write_startup_error(message: str) -> None:
    d = os.environ.get(STATE_DIR_ENV)
    if d:
        with contextlib.suppress(OSError):
            Path(d, "startup-error.txt").write_text(message + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# Error handlers
# ----------------------------------------------------------------------------------------------------------------
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


def install_error_handlers(app: FastAPI, service: Service) -> None:
    def endpoint_of(request: Request) -> str:
        p = request.url.path
        return p if p in KNOWN_PATHS else "other"

    def respond(
        request: Request, status: int, type_: str, message: str, field: str | None, details: list[Any] | None = None
    ) -> Response:
        service.metrics.errors.labels(endpoint=endpoint_of(request), status=str(status), type=type_).inc()
        return Response(
            error_body(status, type_, message, field, details), status_code=status, media_type="application/json"
        )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return respond(request, exc.status, exc.type, exc.message, exc.field)

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
        return respond(request, status, type_, message, field)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s: %s", request.url.path, one_line(exc), exc_info=exc)
        return respond(request, 500, "internal_error", "internal error (see the server log)", None)


# ----------------------------------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------------------------------
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
    app.add_middleware(BodyGuard, max_bytes=settings.max_body_bytes, on_error=_guard_metric(service))
    install_error_handlers(app, service)

    @app.post(
        "/v1/route",
        response_model=RouteResponse,
        responses=ERROR_RESPONSES,
        tags=["routing"],
        summary="Recommend a tier for one request",
    )
    async def route(body: RouteRequest) -> Response:
        """Route one prompt (or the last user turn of `messages`). The decision also comes as `x-tierwise-*`
        response headers (request id, tier, model, reason, threshold, p-acceptable of the chosen tier, escalation,
        router version, latency, estimated cost) for proxies."""
        return await service.route(body)

    @app.post(
        "/v1/route/batch",
        response_model=BatchRouteResponse,
        responses=ERROR_RESPONSES,
        tags=["routing"],
        summary="Route many requests in one call (vectorised)",
    )
    async def route_batch(body: BatchRouteRequest) -> Response:
        """All prompts are encoded and classified together; results come back in request order."""
        return await service.route_batch(body)

    @app.post(
        "/v1/route/plan",
        response_model=PlanResponse,
        responses=ERROR_RESPONSES,
        tags=["routing"],
        summary="Route a plan-and-execute job: a planner tier and a tier per step",
    )
    async def route_plan(body: PlanRequest) -> Response:
        """The goal is routed as the planner call (never below the catalog's planning floor); each step on its own
        text and role. Costs: planner + steps on their tiers, next to everything on the top tier."""
        return await service.route_plan(body)

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
    async def feedback(body: FeedbackRequest) -> dict[str, Any]:
        """Written to the decision log; `tierwise decisions export` turns it into a training log. With
        `TIERWISE_DURABLE_FEEDBACK` (the default) the answer comes once the row is committed; 503 when it could not
        be written."""
        return await service.feedback(body)

    @app.get("/v1/tiers", response_model=TiersResponse, tags=["catalog"], summary="The served model's tier catalog")
    async def tiers() -> dict[str, Any]:
        return service.tiers()

    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=ReadyResponse,
        tags=["operations"],
        summary="Model loaded? Which version? Degraded? Decision log writing?",
        responses={503: {"model": ReadyResponse}},
    )
    async def readyz() -> Response:
        status, body = await asyncio.to_thread(service.ready)  # the decision log's health check may wait briefly
        return Response(_dumps(body), status_code=status, media_type="application/json")

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        data, ctype = service.metrics.render()
        return Response(data, media_type=ctype)

    @app.post(
        "/admin/reload",
        response_model=ReloadResponse,
        tags=["operations"],
        summary="Reload the model without downtime (bearer token)",
        responses={
            **ERROR_RESPONSES,
            401: {"model": ErrorResponse},
            403: {"model": ErrorResponse},
            503: {"model": ErrorResponse, "description": "Reload failed; the old model keeps serving."},
        },
    )
    async def admin_reload(request: Request, body: Annotated[ReloadRequest | None, Body()] = None) -> dict[str, Any]:
        """Load the configured model URI again (or `model_uri` from the body), warm it up, swap it in. With several
        workers, each worker reloads on its own: prefer `TIERWISE_POLL_SECONDS` there."""
        token = settings.admin_token_value
        if token is None:
            raise ApiError(403, "forbidden", "admin endpoints are disabled: set TIERWISE_ADMIN_TOKEN", "authorization")
        given = request.headers.get("authorization", "")
        given = (
            given[7:].strip()
            if given.lower().startswith("bearer ")
            else request.headers.get("x-tierwise-admin-token", "")
        )
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(
                401, "unauthorized", "missing or wrong admin token (Authorization: Bearer ...)", "authorization"
            )
        old, new = await service.reload(body.model_uri if body else None)
        return {
            "reloaded": True,
            "router_version": new.label,
            "previous_version": old.label,
            "source": new.source,
            "degraded": new.degraded,
        }

    return app


def _guard_metric(service: Service) -> Any:
    def on_error(path: str, status: int, type_: str) -> None:
        service.metrics.errors.labels(
            endpoint=path if path in KNOWN_PATHS else "other", status=str(status), type=type_
        ).inc()

    return on_error


_app: FastAPI | None = None


def __getattr__(name: str) -> Any:
    """``router.service:app`` builds the app from the environment on first access (for plain ``uvicorn``)."""
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ApiError", "ModelManager", "Service", "StartupError", "create_app", "ROLES"]
