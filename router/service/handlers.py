"""The service's state and request handlers (one ``Service`` per app instance, i.e. per worker process).

Model lifecycle: the model loads at start-up (see :mod:`router.service.model_manager`); ``POST /admin/reload`` and
the optional alias poll swap models without downtime: the new model is loaded and warmed up in a thread while the
old one keeps serving, and a failed reload keeps the old one.

Privacy: prompt text is never logged; the decision log stores a SHA-256 unless ``store_prompts`` is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from starlette.types import Receive, Send

from router.core import Decision
from router.service.decision_log import DecisionLog, DecisionLogError, DecisionLogUnavailable
from router.service.decision_log import describe as describe_log
from router.service.errors import ApiError, StartupError, one_line, redact
from router.service.metrics import ServiceMetrics
from router.service.microbatch import MicroBatcher
from router.service.model_manager import LoadedModel, ModelManager
from router.service.schemas import (
    BatchAdvice,
    BatchRouteRequest,
    BatchRouteResponse,
    ChatMessage,
    CostEstimate,
    FeedbackRequest,
    FeedbackResponse,
    PlanCost,
    PlanRequest,
    PlanResponse,
    ReadyResponse,
    RequestMetadata,
    Role,
    RouteRequest,
    RouteResponse,
    RoutingOptions,
    StepDecision,
    TierInfo,
    TiersResponse,
)
from router.service.settings import STATE_DIR_ENV, ServiceSettings

if TYPE_CHECKING:  # pragma: no cover
    from router.gateway.proxy import Gateway

log = logging.getLogger("tierwise.service")

DURABLE_FEEDBACK_TIMEOUT_S = 60.0  # the writer retries a busy database for up to ~30 s before it gives up

_RNG = random.SystemRandom().getrandbits(64)  # per-process seed for the id generator below
_IDS = random.Random(_RNG ^ os.getpid() ^ time.time_ns())


def new_request_id() -> str:
    """128 random bits as 32 hex digits (a seeded PRNG: uuid4's syscall per request is measurable under load)."""
    return f"{_IDS.getrandbits(128):032x}"


class Service:
    """State and handlers of one app instance (one per worker process)."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.manager = ModelManager(settings)
        self.model: LoadedModel | None = None
        self.dlog: DecisionLog | None = None
        self.batcher = MicroBatcher(
            self.current_model,
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
        self.gateway: Gateway | None = None

    def current_model(self) -> LoadedModel:
        """The model serving now (a reload swaps it between requests)."""
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
                    text = redact(str(exc)) if isinstance(exc, StartupError) else one_line(exc)
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
            # opens (creates, migrates) the log off the event loop: a database may take its connect timeout
            self.dlog = await asyncio.to_thread(
                DecisionLog,
                s.decision_log_target,
                store_prompts=s.store_prompts,
                on_drop=self.metrics.log_dropped.inc,
                on_error=lambda kind: self.metrics.log_errors.labels(kind=kind).inc(),
                retention_days=s.decision_retention_days,
            )
        except Exception as exc:
            # DecisionLogUnavailable's message says what to check: keep it whole (one_line would cut it)
            why = redact(str(exc)) if isinstance(exc, DecisionLogUnavailable) else one_line(exc)
            raise StartupError(f"cannot open the decision log {describe_log(s.decision_log_target)}: {why}") from exc
        for kind in (*DecisionLog.ERROR_KINDS, "catalog"):  # exported at 0, so a rate() or alert sees the series
            self.metrics.log_errors.labels(kind=kind)
        self.model = await asyncio.to_thread(self.manager.load_initial)
        try:
            await asyncio.to_thread(self._record_catalog, self.model)
        except Exception as exc:
            raise StartupError(
                f"cannot write the catalog of {self.model.label} to the decision log {self.dlog.where}: {one_line(exc)}"
            ) from exc
        self.metrics.set_model(self.model.label, self.model.degraded)
        self.dlog.start()
        self._settle_heap()
        self.metrics.watch_gc()
        if s.upstreams is not None:
            from router.gateway.proxy import Gateway

            try:
                self.gateway = Gateway.from_path(self, str(s.upstreams))
            except ValueError as exc:  # UpstreamsError: the file, its fields, keys or the catalog
                raise StartupError(f"cannot enable the gateway: {exc}") from exc
        await self.batcher.start()
        if s.poll_seconds > 0:
            self._poll_task = asyncio.create_task(self._poll(), name="tierwise-poll")
        log.info(
            "serving %s (%s%s), encoder %s, decision log %s (prompts %s, feedback %s)",
            self.model.label,
            self.model.source,
            ", DEGRADED" if self.model.degraded else "",
            self.model.encoder,
            self.dlog.where,
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
        if self.gateway is not None:
            with contextlib.suppress(Exception):
                await self.gateway.aclose()
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
                shown = redact(uri or self.manager.model_uri)
                raise self._reload_failed(old, f"{reason} reload of {shown} failed: {one_line(exc)}") from exc
            if self.gateway is not None:
                try:
                    self.gateway.check_catalog(new)
                except ValueError as exc:  # a tier the gateway could not call: keep the old model
                    raise self._reload_failed(old, f"{reason} reload refused: {exc}") from exc
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

    def _reload_failed(self, old: LoadedModel, why: str) -> ApiError:
        """Record a reload that did not happen (the old model keeps serving) and the 503 that says so."""
        self.last_reload_error = why
        self.metrics.reloads.labels(result="failed").inc()
        log.error("%s; still serving %s", why, old.label)
        return ApiError(503, "reload_failed", f"{why}; still serving {old.label}", "model_uri")

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
            try:
                return m.router.threshold_for(opts.quality_target)
            except ValueError as exc:
                kind = "unsupported" if not m.router.threshold_table else "validation_error"
                raise ApiError(422, kind, str(exc), prefix + "quality_target") from None
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
    def _costs(d: Decision, batch: bool) -> tuple[int, int, float | None, float | None]:
        """(input tokens, output tokens, USD on the chosen tier, USD on the top tier) of a decision: the router
        prices it (list prices, else the bundle's fitted cost model; :func:`router.pricing.call_cost`)."""
        c = d.estimated_cost_usd
        assert c is not None  # every decision here is made with the prompt's length
        if batch:
            return c.input_tokens, c.output_tokens, c.batch_tier, c.batch_top_tier
        return c.input_tokens, c.output_tokens, c.tier, c.top_tier

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
    ) -> Decision:
        cat = m.router.catalog
        return m.router.decide(
            proba,
            threshold=threshold,
            role=role,
            min_tier=None if lo is None else cat.tiers[lo].name,
            max_tier=None if hi is None else cat.tiers[hi].name,
            prompt_chars=chars,
        )

    def _route_one(
        self,
        m: LoadedModel,
        req: RouteRequest,
        proba: np.ndarray,
        text: str,
        endpoint: str,
        t0: float,
        prefix: str = "",
    ) -> RouteResponse:
        thr = self._threshold(m, req, prefix)
        lo, hi = self._bounds(m, req, prefix)
        chars = req.billed_chars()
        d = self._decide(m, proba, threshold=thr, role=req.role, lo=lo, hi=hi, chars=chars)
        in_tok, out_tok, chosen, top = self._costs(d, False)
        batch_advice = None
        spend, baseline = chosen, top
        if req.latency_tolerance == "batch":
            tier = m.router.catalog.tiers[d.tier_index]
            discounted = self._costs(d, True)
            batch_advice = BatchAdvice(
                available=tier.batch_discount > 0 and discounted[2] is not None,
                discount=tier.batch_discount,
                estimated_cost_usd=discounted[2],
            )
            spend, baseline = discounted[2], discounted[3]
        result = RouteResponse(
            request_id=new_request_id(),
            tier=d.tier,
            tier_index=d.tier_index,
            model=d.model,
            role=cast(Role, d.role),  # one of ROLES: the router checked it
            p_acceptable=d.p_acceptable,
            threshold=d.threshold,
            reason=d.reason,
            escalation=d.escalation,
            task_known=_task_known(m, _task(req)),
            estimated_cost_usd=CostEstimate(tier=chosen, top_tier=top, input_tokens=in_tok, output_tokens=out_tok),
            batch=batch_advice,
            router_version=m.label,
            latency_ms=round((time.perf_counter() - t0) * 1000, 3),
        )
        self._account(
            m, endpoint, d, result.request_id, text, req.metadata, spend=spend, baseline=baseline,
            est_cost=chosen, est_top_cost=top, latency_ms=result.latency_ms,
        )
        return result

    def _account(
        self,
        m: LoadedModel,
        endpoint: str,
        d: Decision,
        request_id: str,
        text: str,
        metadata: RequestMetadata | None,
        *,
        spend: float | None,
        baseline: float | None,
        est_cost: float | None,
        est_top_cost: float | None,
        latency_ms: float,
    ) -> None:
        """Count the decision in the metrics and queue it for the decision log."""
        mt = self.metrics
        mt.requests.labels(endpoint=endpoint, tier=d.tier, role=d.role).inc()
        mt.reasons.labels(reason=d.reason).inc()
        if spend is not None:
            mt.spend.labels(tier=d.tier).inc(spend)
        if baseline is not None:
            mt.baseline_spend.inc(baseline)
        self._remember(request_id)
        assert self.dlog is not None
        self.dlog.record_decision(
            request_id=request_id,
            endpoint=endpoint,
            text=text,
            role=d.role,
            tier=d.tier,
            tier_index=d.tier_index,
            model=d.model,
            threshold=d.threshold,
            reason=d.reason,
            probabilities=d.p_acceptable,
            router_version=m.label,
            est_cost_usd=est_cost,
            est_top_cost_usd=est_top_cost,
            latency_ms=latency_ms,
            metadata=metadata.model_dump(exclude_none=True) if metadata is not None else None,
        )

    @staticmethod
    def _headers(m: LoadedModel, r: RouteResponse) -> dict[str, str]:
        idx = r.tier_index
        cost = r.estimated_cost_usd.tier
        h = {
            "x-tierwise-request-id": r.request_id,
            "x-tierwise-tier": m.tier_headers[idx],
            "x-tierwise-model": m.model_headers[idx],
            "x-tierwise-reason": r.reason,
            "x-tierwise-threshold": f"{r.threshold:.6g}",
            "x-tierwise-p-acceptable": f"{r.p_acceptable[m.tier_names[idx]]:.6g}",
            "x-tierwise-escalation": ",".join(m.tier_headers[m.tier_names.index(t)] for t in r.escalation),
            "x-tierwise-router-version": m.label_header,
            "x-tierwise-latency-ms": f"{r.latency_ms:.3f}",
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

    async def _run_many(
        self, texts: list[str], roles: list[str], tasks: list[str | None]
    ) -> tuple[LoadedModel, np.ndarray]:
        """Batch and plan prompts, in chunks that take turns with single routes (see MicroBatcher.run_many)."""
        s = self.settings
        model, rows = await self.batcher.run_many(
            texts, roles, tasks, chunk=s.max_batch_size, max_chars=s.max_chunk_chars
        )
        m = cast(LoadedModel, model)
        return m, rows[:, : len(m.tier_names)]

    # --- handlers: each returns its response model and the headers to send with it -------------------------------
    async def route(self, req: RouteRequest, endpoint: str = "/v1/route") -> tuple[RouteResponse, dict[str, str]]:
        """One routing decision (``endpoint``: the path it is logged and counted under; the gateway routes too)."""
        result, headers, _ = await self.route_with_embedding(req, endpoint)
        return result, headers

    async def route_with_embedding(
        self, req: RouteRequest, endpoint: str = "/v1/route"
    ) -> tuple[RouteResponse, dict[str, str], np.ndarray | None]:
        """:meth:`route` and the routing text's embedding (None when the model uses none), from the same call."""
        t0 = time.perf_counter()
        current = self.current_model()
        self._threshold(current, req)  # reject bad knobs before spending encoder time
        self._bounds(current, req)
        text = req.routing_text()
        m, row = await self.batcher.submit(text, req.role, _task(req))
        n_tiers = len(m.tier_names)
        result = self._route_one(m, req, row[:n_tiers], text, endpoint, t0)
        self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - t0)
        return result, self._headers(m, result), (row[n_tiers:] if len(row) > n_tiers else None)

    def record_pass_through(
        self, m: LoadedModel, tier_index: int, messages: list[ChatMessage], role: str, metadata: RequestMetadata | None
    ) -> str:
        """Log a gateway request that named its model (no routing) as a decision, so feedback can refer to it;
        return its request id."""
        request_id = new_request_id()
        tier = m.router.catalog.tiers[tier_index]
        text = RouteRequest(messages=messages).routing_text() if any(x.role == "user" for x in messages) else ""
        self.metrics.requests.labels(endpoint="/v1/chat/completions", tier=tier.name, role=role).inc()
        self._remember(request_id)
        assert self.dlog is not None
        self.dlog.record_decision(
            request_id=request_id, endpoint="/v1/chat/completions", text=text, role=role, tier=tier.name,
            tier_index=tier_index, model=tier.model, threshold=float(m.router.threshold), reason="pass_through",
            probabilities={}, router_version=m.label, est_cost_usd=None, est_top_cost_usd=None, latency_ms=0.0,
            metadata=metadata.model_dump(exclude_none=True) if metadata is not None else None,
        )
        return request_id

    async def route_batch(self, body: BatchRouteRequest) -> tuple[BatchRouteResponse, dict[str, str]]:
        t0 = time.perf_counter()
        if len(body.requests) > self.settings.max_batch_items:
            raise ApiError(
                422,
                "validation_error",
                f"{len(body.requests)} requests is more than the limit of {self.settings.max_batch_items} per call",
                "requests",
            )
        current = self.current_model()
        for i, r in enumerate(body.requests):
            self._threshold(current, r, f"requests.{i}.")
            self._bounds(current, r, f"requests.{i}.")
        texts = [r.routing_text() for r in body.requests]
        m, proba = await self._run_many(texts, [r.role for r in body.requests], [_task(r) for r in body.requests])
        results = []
        for i, r in enumerate(body.requests):
            results.append(self._route_one(m, r, proba[i], texts[i], "/v1/route/batch", t0, f"requests.{i}."))
            if i % 64 == 63:
                await asyncio.sleep(0)  # let other requests' answers out between slices of a big batch
        latency = round((time.perf_counter() - t0) * 1000, 3)
        for res in results:
            res.latency_ms = latency
        self.metrics.latency.labels(endpoint="/v1/route/batch").observe(time.perf_counter() - t0)
        out = BatchRouteResponse(results=results, router_version=m.label, latency_ms=latency)
        return out, {"x-tierwise-router-version": m.label_header}

    async def route_plan(self, body: PlanRequest) -> tuple[PlanResponse, dict[str, str]]:
        t0 = time.perf_counter()
        steps = body.plan_steps()
        if len(steps) > self.settings.max_plan_steps:
            raise ApiError(
                422,
                "validation_error",
                f"{len(steps)} steps is more than the limit of {self.settings.max_plan_steps} per plan",
                "steps",
            )
        current = self.current_model()
        self._threshold(current, body)
        self._bounds(current, body)
        texts = [body.goal] + [s.text for s in steps]
        roles: list[str] = ["plan"] + [s.role for s in steps]
        task = _task(body)
        m, proba = await self._run_many(texts, roles, [task] * len(texts))
        task_known = _task_known(m, task)
        thr = self._threshold(m, body)
        lo, hi = self._bounds(m, body)
        floor = m.router.catalog.plan_floor
        plan_id = new_request_id()
        batch_mode = body.latency_tolerance == "batch"
        decisions: list[StepDecision] = []
        total = top_total = 0.0
        priced = True
        for i, (text, role) in enumerate(zip(texts, roles, strict=True)):
            # a planner is never pushed below the planning floor by max_tier (on this endpoint)
            cap = hi if (hi is None or role != "plan") else max(hi, floor)
            d = self._decide(m, proba[i], threshold=thr, role=role, lo=lo, hi=cap, chars=len(text))
            _, _, usd, top_usd = self._costs(d, batch_mode)
            if usd is None or top_usd is None:
                priced = False
            else:
                total += usd
                top_total += top_usd
            step = StepDecision(
                request_id=f"{plan_id}-{'plan' if i == 0 else i - 1}",
                index=None if i == 0 else i - 1,
                role=cast(Role, d.role),  # one of ROLES: the router checked it
                tier=d.tier,
                model=d.model,
                p_acceptable=d.p_acceptable,
                reason=d.reason,
                escalation=d.escalation,
                task_known=task_known,
                estimated_cost_usd=usd,
            )
            self._account(
                m, "/v1/route/plan", d, step.request_id, text, body.metadata, spend=usd, baseline=top_usd,
                est_cost=usd, est_top_cost=top_usd, latency_ms=0.0,
            )
            decisions.append(step)
        out = PlanResponse(
            plan_id=plan_id,
            threshold=thr,
            planner=decisions[0],
            steps=decisions[1:],
            estimated_cost_usd=PlanCost(
                plan=total if priced else None,
                top_tier=top_total if priced else None,
                savings=(top_total - total) if priced else None,
            ),
            router_version=m.label,
            latency_ms=round((time.perf_counter() - t0) * 1000, 3),
        )
        self.metrics.latency.labels(endpoint="/v1/route/plan").observe(time.perf_counter() - t0)
        return out, {"x-tierwise-router-version": m.label_header}

    async def feedback(self, body: FeedbackRequest) -> FeedbackResponse:
        m = self.current_model()
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
        counter = self.metrics.feedback.labels(tier=tier.name, acceptable=str(bool(acceptable)).lower())
        # counted once written, and not for a retry of a feedback_id already recorded
        written.add_done_callback(lambda f: counter.inc() if not f.cancelled() and not f.exception() and f.result()
                                  else None)
        return FeedbackResponse(request_id=body.request_id, recorded=True, model=tier.model, score=score)

    def tiers(self) -> TiersResponse:
        m = self.current_model()
        cat = m.router.catalog
        return TiersResponse(
            catalog=cat.name,
            tiers=[TierInfo(index=i, **t.model_dump()) for i, t in enumerate(cat.tiers)],
            plan_floor=cat.tiers[cat.plan_floor].name,
            verify_floor=cat.tiers[cat.verify_floor].name,
            default_threshold=float(m.router.threshold),
            quality_target=float(m.router.meta.quality_target),
            quality_targets=[qt for qt, _ in m.threshold_table],
            router_version=m.label,
        )

    def ready(self) -> tuple[int, ReadyResponse]:
        """(HTTP status, body) of ``/readyz``: 503 until a model is loaded and while the decision log cannot write."""
        m = self.model
        if m is None:
            return 503, ReadyResponse(
                ready=False,
                degraded=False,
                source="none",
                model_uri=redact(self.manager.model_uri),
                router_version="",
                name=None,
                version=None,
                encoder=None,
                loaded_at="",
                detail="model not loaded yet",
                decision_log=None,
            )
        problem = self.dlog.health() if self.dlog is not None else "the decision log is not open"
        return 503 if problem else 200, ReadyResponse(
            ready=problem is None,
            degraded=m.degraded,
            source=m.source,
            model_uri=redact(m.uri),
            router_version=m.label,
            name=m.name,
            version=m.version,
            encoder=m.encoder,
            loaded_at=m.loaded_at,
            detail=redact(d) if (d := problem or m.detail or self.last_reload_error) else None,
            decision_log=problem,
        )


def _predict(model: LoadedModel, texts: list[str], roles: list[str | None], tasks: list[str | None]) -> np.ndarray:
    """One row per prompt: P(acceptable) per tier, then the prompt's embedding (the gateway's semantic cache reuses
    it); callers slice the first ``len(tier_names)`` columns."""
    proba, emb = model.router.predict_proba_and_embedding(texts, roles, tasks)
    return proba if emb is None else np.hstack([proba, emb])


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
