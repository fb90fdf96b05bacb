"""The gateway: route a chat completion, call the chosen tier's upstream, fall back, price what it billed.

One request walks a bounded list of attempts (at most ``gateway_max_attempts``, all before ``gateway_deadline_s``):
the chosen tier's upstream, its configured fallbacks, then the tiers of the decision's escalation path (each with
its fallbacks). It moves on only on failures that say nothing about the request (connect errors, timeouts, 429, 5xx,
garbage, an open circuit) and only before the first byte of an answer; an upstream's other 4xx is the caller's
mistake and is returned as it is. A stream is never retried once it has started: a cut stream ends with an error
event. Every attempt is counted (``tierwise_upstream_attempts``) and listed in the decision log's ``calls`` row,
with the tokens the upstream billed, their USD and the same tokens' USD on the top tier.

The response cache (:mod:`router.gateway.cache`) is asked before routing (an exact hit costs no encoder call) and,
when semantic matching is on, after routing with the routing embedding. Pass-through requests (a catalog model in
``model``) are not routed: their chain is that model's upstream and its fallbacks. Nothing here logs prompt or
answer text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import numpy as np
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from router.gateway.budgets import BudgetExceeded, BudgetLedger, BudgetUnavailable, Reservation, TenantLabels
from router.gateway.cache import (
    CacheConfig,
    CacheHit,
    CachePolicy,
    ResponseCache,
    StreamAssembler,
    cache_policy,
    exact_key,
    replay_sse,
    semantic_scope,
)
from router.gateway.keys import KeyStore, Tenant, cap_tier
from router.gateway.model_names import ModelChoice, ModelNameError, listed_models, parse_model
from router.gateway.schemas import ChatCompletionRequest, GatewayOptions, ModelCard, ModelList
from router.gateway.upstream_client import Attempt, UpstreamClient, UpstreamError, UpstreamStream
from router.gateway.upstreams import Upstream, UpstreamsConfig, UpstreamsError, load_upstreams
from router.pricing import request_input_tokens, tier_output_tokens, usage_cost
from router.service.errors import ApiError, error_body
from router.service.schemas import ChatMessage, RequestMetadata, RouteRequest

if TYPE_CHECKING:  # pragma: no cover
    from router.service.decision_log import DecisionLog
    from router.service.metrics import ServiceMetrics
    from router.service.model_manager import LoadedModel
    from router.service.schemas import Role, RouteResponse
    from router.service.settings import ServiceSettings


class Service(Protocol):
    """What the gateway uses of the routing service (``router.service.handlers.Service``), which creates it."""

    settings: ServiceSettings
    metrics: ServiceMetrics
    dlog: DecisionLog | None

    def current_model(self) -> LoadedModel: ...

    def record_pass_through(
        self, m: LoadedModel, tier_index: int, messages: list[ChatMessage], role: Role, metadata: RequestMetadata | None
    ) -> str: ...

    async def route_with_embedding(
        self, req: RouteRequest, endpoint: str = ...
    ) -> tuple[RouteResponse, dict[str, str], np.ndarray | None]: ...


log = logging.getLogger("tierwise.gateway")

OPTION_HEADERS = {  # x-tierwise-* request headers -> GatewayOptions fields (the body's `tierwise` object wins)
    "x-tierwise-role": "role",
    "x-tierwise-min-tier": "min_tier",
    "x-tierwise-max-tier": "max_tier",
    "x-tierwise-task": "task",
    "x-tierwise-tenant": "tenant",
}


@dataclass
class _Plan:
    """Where one request may go: tiers to try in order, and what routing said."""

    choice: ModelChoice
    tiers: list[int]
    request_id: str
    headers: dict[str, str] = field(default_factory=dict)
    p_acceptable: dict[str, float] | None = None
    embedding: np.ndarray | None = None  # the routing embedding (semantic cache), None when not routed
    semantic_ok: bool = False  # the embedding saw the whole routing text (it fit the encoder's window)


@dataclass
class _Call:
    """One gateway request on its way: the model it was planned with, its attempts and the time spent upstream."""

    m: LoadedModel
    req: ChatCompletionRequest
    plan: _Plan
    opts: GatewayOptions
    t0: float
    attempts: list[Attempt] = field(default_factory=list)
    upstream_s: float = 0.0  # time spent waiting for upstreams (all attempts; streams: up to the first event)
    cache: str = "off"  # the x-tierwise-cache status: off, bypass, miss, hit-l1, hit-l2, hit-semantic
    policy: CachePolicy | None = None
    key: str | None = None  # the exact cache key (None: not cacheable)
    scope: str | None = None  # the semantic scope (None: no semantic matching)
    tenant: Tenant | None = None  # the client key's tenant (None: no client keys configured)
    reservation: Reservation | None = None  # the budget held for this request until its cost is known
    finished: bool = False  # accounted for (or handed to a stream that will account for itself)

    @property
    def storing(self) -> bool:
        return self.key is not None and self.policy is not None and self.policy.store


class Gateway:
    """The OpenAI-compatible front of a :class:`~router.service.handlers.Service` (one per worker)."""

    def __init__(self, service: Service, config: UpstreamsConfig) -> None:
        self.service = service
        self.config = config
        self.settings = service.settings
        self.started_at = time.time()
        metrics = service.metrics
        self.client = UpstreamClient(
            config, on_attempt=lambda a: metrics.upstream_attempts.labels(upstream=a.upstream, outcome=a.outcome).inc()
        )
        s = self.settings
        cache_config = CacheConfig(
            l1_entries=s.cache_l1_entries if s.cache else 0,
            ttl_s=s.cache_ttl_s,
            redis_url=s.cache_url if s.cache else None,
            semantic=s.cache_semantic,
            semantic_min_similarity=s.cache_semantic_min_similarity,
        )
        self.cache: ResponseCache | None = None
        if cache_config.enabled:
            self.cache = ResponseCache(cache_config, on_event=lambda e: metrics.cache_events.labels(event=e).inc())
        self._background: set[asyncio.Task[None]] = set()
        self.keys = KeyStore.load(s.client_keys) if s.client_keys is not None else None
        self.ledger: BudgetLedger | None = None
        self.tenant_labels = TenantLabels(preset=sorted(self.keys.tenants) if self.keys is not None else ())
        if self.keys is not None and any(t.has_budget for t in self.keys.tenants.values()):
            url = s.budget_url or s.cache_url
            if url is None and s.workers > 1:
                log.warning(
                    "budgets are counted per worker without TIERWISE_BUDGET_URL (Redis): each of the %d "
                    "workers lets a tenant spend its whole budget",
                    s.workers,
                )
            self.ledger = BudgetLedger(url)

    @classmethod
    def from_path(cls, service: Service, path: str) -> Gateway:
        """Load and check the upstreams file against the served catalog (ValueError with every problem)."""
        config = load_upstreams(path)
        problems = config.check_keys()
        if problems:
            raise UpstreamsError("; ".join(problems))
        gateway = cls(service, config)
        for warning in gateway.check_catalog(service.current_model()):
            log.warning("%s", warning)
        return gateway

    def check_catalog(self, m: LoadedModel) -> list[str]:
        """Raise ValueError unless every tier of ``m``'s catalog has an upstream and every tenant's tier cap is a
        tier of it; warnings."""
        cat = m.router.catalog
        if self.keys is not None:
            self.keys.check_tiers([*cat.tier_names, *(t.model for t in cat.tiers)])
        return self.config.validate_catalog([t.model for t in cat.tiers])

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.cache is not None:
            await self.cache.aclose()
        if self.ledger is not None:
            await self.ledger.aclose()

    # --- client keys and budgets ---------------------------------------------------------------------------
    def authenticate(self, headers: Mapping[str, str]) -> Tenant | None:
        """The client key's tenant (None without client keys configured); 401 for a missing or unknown key."""
        if self.keys is None:
            return None
        tenant = self.keys.authenticate(headers.get("authorization"))
        if tenant is None:
            raise ApiError(
                401,
                "invalid_request_error",
                "missing or unknown API key: send Authorization: Bearer <your tierwise client key>",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return tenant

    def _estimate_usd(self, out: _Call) -> float:
        """A bound on what the request can cost: its prompt and its max_tokens (else 4x the tier's typical answer)
        on the priciest tier it may reach. Reserving it keeps concurrent requests from overshooting a budget."""
        m, req = out.m, out.req
        tiers = m.router.catalog.tiers
        chars = _chars(req)
        in_tok = request_input_tokens(chars, m.router.chars_per_token)
        worst = 0.0
        for t in set(out.plan.tiers):
            out_tok = req.max_completion_tokens or req.max_tokens or 4 * tier_output_tokens(tiers[t])
            usd, _ = usage_cost(tiers, t, in_tok, int(out_tok), prompt_chars=chars, cost_model=m.router.cost_model)
            worst = max(worst, usd or 0.0)
        return worst

    async def _reserve(self, out: _Call) -> None:
        if self.ledger is None or out.tenant is None or not out.tenant.has_budget:
            return
        try:
            out.reservation = await self.ledger.reserve(out.tenant, self._estimate_usd(out))
        except BudgetExceeded as exc:
            raise ApiError(
                429,
                "insufficient_quota",
                str(exc),
                code="budget_exceeded",
                headers={"Retry-After": str(int(exc.retry_after_s))},
            ) from None
        except BudgetUnavailable as exc:
            raise ApiError(
                503,
                "service_unavailable",
                str(exc),
                code="budget_unavailable",
                headers={"Retry-After": str(int(exc.retry_after_s))},
            ) from None

    def _release(self, out: _Call) -> None:
        """Give back a reservation without waiting (also from a cancelled request's cleanup)."""
        out.finished = True
        if self.ledger is None or out.reservation is None:
            return
        task = asyncio.get_running_loop().create_task(self.ledger.settle(out.reservation, None))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- /v1/chat/completions ------------------------------------------------------------------------------
    async def chat(self, req: ChatCompletionRequest, headers: Mapping[str, str]) -> Response:
        t0 = time.perf_counter()
        tenant = self.authenticate(headers)
        opts = self._options(req, headers)
        m = self.service.current_model()
        choice = self._choice(m, req)
        if tenant is not None:
            opts = self._limit(m, opts, tenant, choice)
        body = req.upstream_body()
        resolved = _resolution(m, choice, opts)
        policy = cache_policy(
            body, headers, enabled=self.cache is not None, opt_in=opts.cache is True, opt_out=opts.cache is False
        )
        key = exact_key(body, resolved, opts.tenant) if policy.lookup or policy.store else None
        if self.cache is not None and policy.lookup and key is not None:
            hit = await self.cache.get(key, opts.tenant)  # before routing: an exact hit costs no encoder call
            if hit is not None:
                plan = _Plan(choice, [], uuid.uuid4().hex)
                call = _Call(m, req, plan, opts, t0, cache=hit.status, policy=policy, tenant=tenant)
                return await self._cached(call, hit)
        plan = await self._plan(m, req, opts, choice)
        out = _Call(m, req, plan, opts, t0, cache=policy.status, policy=policy, key=key, tenant=tenant)
        if self.cache is not None and plan.embedding is not None and self.cache.config.semantic:
            out.scope = semantic_scope(body, resolved, opts.tenant, space=m.label)
            if policy.lookup and plan.semantic_ok and out.scope is not None:
                hit = await self.cache.get_semantic(out.scope, plan.embedding, opts.tenant)
                if hit is not None:
                    out.cache = hit.status
                    return await self._cached(out, hit)
        await self._reserve(out)
        try:
            return await self._call_upstreams(out, body)
        finally:
            if not out.finished:  # cancelled (the client went away) or failed before an answer: release the budget
                self._release(out)

    async def _call_upstreams(self, out: _Call, body: dict[str, Any]) -> Response:
        """Walk the attempts (fallbacks, then escalation) until one answers or the bounds are reached."""
        req = out.req
        deadline = time.monotonic() + self.settings.gateway_deadline_s
        last: UpstreamError | None = None
        for tier_index, upstream in self._chain(out.m, out.plan):
            if len(out.attempts) >= self.settings.gateway_max_attempts or time.monotonic() >= deadline:
                break
            started = time.perf_counter()
            try:
                if req.stream:
                    stream = await self.client.stream(upstream, body, deadline=deadline)
                else:
                    result = await self.client.complete(upstream, body, deadline=deadline)
            except UpstreamError as exc:
                out.upstream_s += time.perf_counter() - started
                if exc.attempt is not None:
                    out.attempts.append(exc.attempt)
                last = exc
                if not exc.retryable:
                    return await self._client_error(out, exc)
                continue
            out.upstream_s += time.perf_counter() - started
            if req.stream:
                return self._stream_response(out, tier_index, stream)
            out.attempts.append(result.attempt)
            return await self._json_response(out, tier_index, upstream.name, result.body)
        return await self._exhausted(out, last)

    # --- routing -------------------------------------------------------------------------------------------
    @staticmethod
    def _options(req: ChatCompletionRequest, headers: Mapping[str, str]) -> GatewayOptions:
        values: dict[str, Any] = {f: headers[h] for h, f in OPTION_HEADERS.items() if headers.get(h)}
        if req.tierwise is not None:
            values.update(req.tierwise.model_dump(exclude_unset=True))
        try:
            return GatewayOptions.model_validate(values)
        except ValueError as exc:
            message = f"invalid x-tierwise-* header: {_first_error(exc)}"
            raise ApiError(400, "invalid_request_error", message, "tierwise") from None

    @staticmethod
    def _limit(m: LoadedModel, opts: GatewayOptions, tenant: Tenant, choice: ModelChoice) -> GatewayOptions:
        """The client key's tenant replaces any tenant the request names; its tier cap applies."""
        cat = m.router.catalog
        try:
            max_tier = cap_tier(tenant, opts.max_tier, cat.index)
        except KeyError:
            raise ApiError(
                400,
                "invalid_request_error",
                f"unknown tier {opts.max_tier!r}; tiers are {', '.join(cat.tier_names)}",
                "max_tier",
            ) from None
        if (
            not choice.routed
            and tenant.max_tier is not None
            and cat.index(str(choice.tier)) > cat.index(tenant.max_tier)
        ):
            raise ApiError(
                403,
                "permission_denied",
                f"model {choice.name!r} is above the tiers your key may use (up to {tenant.max_tier})",
                "model",
                code="tier_not_allowed",
            )
        return opts.model_copy(update={"tenant": tenant.name, "max_tier": max_tier})

    @staticmethod
    def _choice(m: LoadedModel, req: ChatCompletionRequest) -> ModelChoice:
        cat = m.router.catalog
        try:
            return parse_model(req.model, cat.tier_names, [t.model for t in cat.tiers])
        except ModelNameError as exc:
            if exc.not_found:
                raise ApiError(404, "invalid_request_error", str(exc), "model", code="model_not_found") from None
            raise ApiError(400, "invalid_request_error", str(exc), "model") from None

    async def _plan(
        self, m: LoadedModel, req: ChatCompletionRequest, opts: GatewayOptions, choice: ModelChoice
    ) -> _Plan:
        cat = m.router.catalog
        messages = [ChatMessage(role=x.role, content=x.content) for x in req.messages]
        metadata = RequestMetadata(task=opts.task, tenant=opts.tenant) if (opts.task or opts.tenant) else None
        if not choice.routed:
            assert choice.tier is not None
            t = cat.index(choice.tier)
            request_id = self.service.record_pass_through(m, t, messages, opts.role, metadata)
            return _Plan(choice, [t], request_id)
        try:
            route_req = RouteRequest(
                messages=messages,
                role=opts.role,
                threshold=choice.threshold,
                quality_target=choice.quality_target,
                min_tier=opts.min_tier,
                max_tier=opts.max_tier,
                metadata=metadata,
            )
        except ValueError as exc:  # e.g. no user turn to route on
            raise ApiError(400, "invalid_request_error", _first_error(exc), "messages") from None
        try:
            decision, headers, embedding = await self.service.route_with_embedding(
                route_req, endpoint="/v1/chat/completions"
            )
        except ApiError as exc:  # a knob or tier bound the served model cannot use: the request is wrong
            raise ApiError(400, "invalid_request_error", exc.message, exc.field) from None
        tiers = [cat.index(decision.tier)] + [cat.index(t) for t in decision.escalation]
        semantic_ok = (
            embedding is not None
            and self.cache is not None
            and self.cache.config.semantic
            and m.router.fits_encoder_window(route_req.routing_text())
        )
        return _Plan(choice, tiers, decision.request_id, headers, decision.p_acceptable, embedding, semantic_ok)

    def _chain(self, m: LoadedModel, plan: _Plan) -> list[tuple[int, Upstream]]:
        """(tier index, upstream) in the order they are tried; an upstream shared by two tiers is tried once."""
        out: list[tuple[int, Upstream]] = []
        seen: set[str] = set()
        for t in plan.tiers:
            for upstream in self.config.chain(m.router.catalog.tiers[t].model):
                if upstream.name not in seen:
                    seen.add(upstream.name)
                    out.append((t, upstream))
        return out

    # --- answers -------------------------------------------------------------------------------------------
    def _price(self, m: LoadedModel, t: int, usage: Mapping[str, Any] | None, chars: int) -> tuple[Any, ...]:
        """(input tokens, output tokens, USD, USD of the same tokens on the top tier) from an upstream's usage."""
        if not usage:
            return _UNPRICED
        i, o = _tokens(usage.get("prompt_tokens")), _tokens(usage.get("completion_tokens"))
        if i is None or o is None:
            return i, o, None, None
        tiers = m.router.catalog.tiers
        cm = m.router.cost_model
        cost, _ = usage_cost(tiers, t, i, o, prompt_chars=chars, cost_model=cm)
        top, _ = usage_cost(tiers, len(tiers) - 1, i, o, prompt_chars=chars, cost_model=cm)
        return i, o, cost, top

    def _headers(self, out: _Call, t: int | None, cost: float | None) -> dict[str, str]:
        m, plan = out.m, out.plan
        h = dict(plan.headers)
        h["x-tierwise-request-id"] = plan.request_id
        h["x-tierwise-router-version"] = m.label_header
        if t is not None:
            h["x-tierwise-tier"] = m.tier_headers[t]
            h["x-tierwise-model"] = m.model_headers[t]
            if plan.p_acceptable is not None:
                h["x-tierwise-p-acceptable"] = f"{plan.p_acceptable[m.tier_names[t]]:.6g}"
        h["x-tierwise-cost-usd"] = "" if cost is None else f"{cost:.8g}"
        h["x-tierwise-attempts"] = str(len(out.attempts))
        h["x-tierwise-cache"] = out.cache
        h["x-tierwise-overhead-ms"] = f"{self._overhead_s(out) * 1000:.3f}"
        h.pop("x-tierwise-estimated-cost-usd", None)
        h.pop("x-tierwise-latency-ms", None)
        return h

    @staticmethod
    def _overhead_s(out: _Call) -> float:
        return max(0.0, time.perf_counter() - out.t0 - out.upstream_s)

    async def _finish(
        self,
        out: _Call,
        *,
        t: int | None,
        upstream: str | None,
        status: int,
        outcome: str,
        priced: tuple[Any, ...],
    ) -> None:
        """Account for a finished request: settle its budget, count metrics, queue its ``calls`` row."""
        out.finished = True
        m, req, plan, opts = out.m, out.req, out.plan, out.opts
        i, o, cost, top = priced
        if self.ledger is not None and out.reservation is not None:
            # a failed call is not billed; an answer whose cost is unknown keeps the reserved estimate
            actual = cost if cost is not None else (None if status != 200 else out.reservation.estimate_usd)
            try:
                await self.ledger.settle(out.reservation, actual)
            except Exception as exc:  # noqa: BLE001 - the answer is out; the reservation expires on its own
                log.warning("could not settle the budget of request %s: %s", plan.request_id, type(exc).__name__)
        overhead = self._overhead_s(out)
        mt = self.service.metrics
        mt.gateway_overhead.observe(overhead)
        mt.cache_requests.labels(result=out.cache).inc()
        tier_name = None if t is None else m.tier_names[t]
        if tier_name is not None and cost is not None:
            mt.actual_spend.labels(tier=tier_name).inc(cost)
            if cost > 0:
                mt.tenant_spend.labels(tenant=self.tenant_labels.label(opts.tenant)).inc(cost)
        if top is not None:
            mt.actual_baseline_spend.inc(top)
        if tier_name is not None and upstream is not None:
            for kind, n in (("input", i), ("output", o)):
                if n:
                    mt.gateway_tokens.labels(tier=tier_name, kind=kind).inc(n)
        assert self.service.dlog is not None
        try:
            self.service.dlog.record_call(
                request_id=plan.request_id,
                requested_model=req.model,
                tier=tier_name,
                model=None if t is None else m.router.catalog.tiers[t].model,
                upstream=upstream,
                status=status,
                outcome=outcome,
                stream=req.stream,
                input_tokens=i,
                output_tokens=o,
                cost_usd=cost,
                top_tier_cost_usd=top,
                latency_ms=round((time.perf_counter() - out.t0) * 1000, 3),
                upstream_ms=round(out.upstream_s * 1000, 3),
                overhead_ms=round(overhead * 1000, 3),
                attempts=[
                    {"upstream": a.upstream, "outcome": a.outcome, "elapsed_ms": a.elapsed_ms} for a in out.attempts
                ],
                cache=out.cache,
                tenant=opts.tenant,
            )
        except ValueError as exc:  # usage numbers out of bounds: keep serving, say so
            log.error("gateway call %s not logged: %s", plan.request_id, exc)

    async def _json_response(self, out: _Call, t: int, upstream: str, body: dict[str, Any]) -> Response:
        m, req = out.m, out.req
        body["model"] = m.router.catalog.tiers[t].model
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
        priced = self._price(m, t, usage, _chars(req))
        await self._finish(out, t=t, upstream=upstream, status=200, outcome="ok", priced=priced)
        response = JSONResponse(body, headers=self._headers(out, t, priced[2]))
        if self.cache is not None and out.storing:  # after the answer is sent
            response.background = BackgroundTask(self._store, out, t, body, priced)
        return response

    def _stream_response(self, out: _Call, t: int, stream: UpstreamStream) -> Response:
        m, req = out.m, out.req
        model_name = m.router.catalog.tiers[t].model
        headers = self._headers(out, t, None)
        headers.pop("x-tierwise-cost-usd", None)  # known only at the end of the stream (decision log, metrics)
        cache = self.cache
        assembler = StreamAssembler(cache.config.max_entry_bytes) if cache is not None and out.storing else None
        started: list[bool] = []

        async def never_started() -> None:
            """The client left before the body began: close the upstream stream (its concurrency slot) and account
            for the call, which the body's own cleanup would have done."""
            if started:
                return
            await stream.aclose()
            if stream.attempt is not None:
                out.attempts.append(stream.attempt)
            await self._finish(out, t=t, upstream=stream.upstream, status=499, outcome="cancelled", priced=_UNPRICED)

        async def events() -> AsyncIterator[bytes]:
            started.append(True)
            outcome, status = "ok", 200
            try:
                async for payload in stream:
                    if payload == "[DONE]":
                        yield b"data: [DONE]\n\n"
                        continue
                    chunk = json.loads(payload)
                    if isinstance(chunk, dict):
                        if assembler is not None:
                            assembler.add(chunk, len(payload))
                        if not chunk.get("choices") and chunk.get("usage") and not stream.client_wants_usage:
                            continue  # the usage chunk tierwise asked for, not the client
                        chunk["model"] = model_name
                    yield b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
            except UpstreamError as exc:  # cut after the first byte: never retried (the client has part of it)
                outcome, status = exc.outcome, 502
                message = f"upstream {exc.upstream} failed mid-stream ({exc.outcome})"
                yield b"data: " + error_body(status, "upstream_error", message, None, code=exc.outcome) + b"\n\n"
            except ValueError:  # a chunk that is not JSON
                outcome, status = "bad_response", 502
                message = "upstream sent a malformed stream chunk"
                yield b"data: " + error_body(status, "upstream_error", message, None, code=outcome) + b"\n\n"
            finally:
                await stream.aclose()
                if stream.attempt is not None:
                    out.attempts.append(stream.attempt)
                priced = self._price(m, t, stream.usage, _chars(req))
                await self._finish(out, t=t, upstream=stream.upstream, status=status, outcome=outcome, priced=priced)
                answer = assembler.result() if assembler is not None and outcome == "ok" else None
                if answer is not None:  # a cut or failed stream is never cached
                    await self._store(out, t, answer, priced)

        out.finished = True  # the stream accounts for itself (events() or never_started())
        return StreamingResponse(
            events(), media_type="text/event-stream", headers=headers, background=BackgroundTask(never_started)
        )

    async def _store(self, out: _Call, t: int, completion: dict[str, Any], priced: tuple[Any, ...]) -> None:
        """Cache a finished answer (the cache refuses errors and truncated answers) with what it cost."""
        assert self.cache is not None and out.key is not None
        m = out.m
        meta = {
            "tier": m.tier_names[t],
            "model": m.router.catalog.tiers[t].model,
            "cost_usd": priced[2],
            "top_tier_cost_usd": priced[3],
            "input_tokens": priced[0],
            "output_tokens": priced[1],
        }
        try:
            await self.cache.put(
                out.key,
                out.opts.tenant,
                completion,
                meta=meta,
                scope=out.scope,
                vector=out.plan.embedding,
                semantic_ok=out.plan.semantic_ok,
            )
        except Exception as exc:  # noqa: BLE001 - caching is best effort; the answer was served
            log.warning("could not cache the answer of %s: %s", out.plan.request_id, type(exc).__name__)

    async def _cached(self, out: _Call, hit: CacheHit) -> Response:
        """Answer from the cache: no upstream call, nothing billed; the saving is the cached answer's cost."""
        m, req, meta = out.m, out.req, hit.meta
        tier = meta.get("tier")
        t = m.tier_names.index(tier) if tier in m.tier_names else None
        model_name = str(meta.get("model") or hit.completion.get("model") or "")
        completion = {**hit.completion, "model": model_name}
        saved, top = meta.get("cost_usd"), meta.get("top_tier_cost_usd")
        if isinstance(saved, int | float):
            self.service.metrics.cache_saved.inc(float(saved))
        top_usd = float(top) if isinstance(top, int | float) else None
        priced = (meta.get("input_tokens"), meta.get("output_tokens"), 0.0, top_usd)
        await self._finish(out, t=t, upstream=None, status=200, outcome="cache_hit", priced=priced)
        headers = self._headers(out, t, 0.0)
        if req.stream:
            events = replay_sse(completion, model_name, include_usage=req.client_wants_usage())
            return StreamingResponse(iter(events), media_type="text/event-stream", headers=headers)
        return JSONResponse(completion, headers=headers)

    async def _client_error(self, out: _Call, exc: UpstreamError) -> Response:
        """An upstream's 4xx (not 429): the request is wrong for that model; answered as the upstream said it."""
        status = exc.status or 400
        await self._finish(out, t=None, upstream=exc.upstream, status=status, outcome=exc.outcome, priced=_UNPRICED)
        headers = self._headers(out, None, None)
        if exc.body is None:  # no error object to pass on: the service's own
            raise ApiError(status, "invalid_request_error", str(exc), headers=headers)
        return JSONResponse(exc.body, status_code=status, headers=headers)

    async def _exhausted(self, out: _Call, last: UpstreamError | None) -> NoReturn:
        """Every allowed attempt failed (or the deadline passed): 502, or 504 when the last failure was a timeout."""
        tried = ", ".join(f"{a.upstream}: {a.outcome}" for a in out.attempts) or "none (deadline passed)"
        timed_out = last is not None and last.outcome == "timeout"
        status = 504 if timed_out else 502
        await self._finish(out, t=None, upstream=None, status=status, outcome="exhausted", priced=_UNPRICED)
        raise ApiError(
            status,
            "upstream_error",
            f"no upstream answered; attempts: {tried}",
            code="upstream_timeout" if timed_out else "upstream_unavailable",
            headers=self._headers(out, None, None),
        )


def model_list(m: LoadedModel, created: int) -> ModelList:
    """``GET /v1/models``: the virtual tierwise models (routed), then the catalog's models (pass-through)."""
    cat = m.router.catalog
    owners = {t.model: t.provider or "upstream" for t in cat.tiers}
    ids = listed_models([t.model for t in cat.tiers], bool(m.router.threshold_table))
    return ModelList(data=[ModelCard(id=i, created=created, owned_by=owners.get(i, "tierwise")) for i in ids])


_UNPRICED: tuple[Any, ...] = (None, None, None, None)


def _resolution(m: LoadedModel, choice: ModelChoice, opts: GatewayOptions) -> str:
    """Everything outside the body that picks the answering model (part of the cache key): the served router
    version and the routing options for routed requests, the catalog model for pass-through ones."""
    if not choice.routed:
        return f"model:{m.router.catalog.tiers[m.router.catalog.index(str(choice.tier))].model}"
    return f"routed:{choice.name}@{m.label}|role={opts.role}|min={opts.min_tier}|max={opts.max_tier}|task={opts.task}"


def _tokens(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _chars(req: ChatCompletionRequest) -> int:
    return sum(len(x.text()) for x in req.messages)


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return str(first.get("msg", exc)).removeprefix("Value error, ")
    return str(exc)
