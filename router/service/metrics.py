"""Prometheus metrics of the routing service, on a registry of their own (one per app instance).

With several uvicorn workers, set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before the workers start
(``tierwise serve --workers N`` does it): every worker then writes its samples there and ``/metrics`` aggregates
all workers, whichever one answers the scrape.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # no *_created series: they double the scrape size and nobody graphs them

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
GC_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
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
        "/admin/cache/purge",
        "/v1/chat/completions",
        "/v1/models",
    }
)


def endpoint_label(path: str) -> str:
    """The ``endpoint`` label of a request path: unknown paths share one label, so scanners cannot grow the series."""
    return path if path in KNOWN_PATHS else "other"


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


class ServiceMetrics:
    """The collectors; ``render()`` returns the exposition text and its content type."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tierwise_requests",
            "Routing decisions by endpoint, tier and role.",
            ("endpoint", "tier", "role"),
            registry=r,
        )
        self.reasons = Counter(
            "tierwise_decision_reasons", "Routing decisions by reason code.", ("reason",), registry=r
        )
        self.latency = Histogram(
            "tierwise_decision_latency_seconds",
            "Time to decide (queueing + encoder + classifier + rule), per HTTP request.",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "tierwise_errors",
            "Error responses by endpoint, status and error type.",
            ("endpoint", "status", "type"),
            registry=r,
        )
        self.spend = Counter(
            "tierwise_estimated_spend_usd",
            "Estimated USD of the routed calls (list or batch price).",
            ("tier",),
            registry=r,
        )
        self.baseline_spend = Counter(
            "tierwise_estimated_baseline_spend_usd",
            "Estimated USD of the same calls had they all gone to the top tier.",
            registry=r,
        )
        # the gateway (/v1/chat/completions): what was actually paid, from the upstreams' usage
        self.actual_spend = Counter(
            "tierwise_actual_spend_usd",
            "USD of the gateway's upstream calls, priced from their usage (catalog list price, else the fitted cost "
            "model), by the tier that answered.",
            ("tier",),
            registry=r,
        )
        self.actual_baseline_spend = Counter(
            "tierwise_actual_baseline_spend_usd",
            "USD the same tokens would have cost on the top tier (the all-top-tier counterfactual).",
            registry=r,
        )
        self.gateway_tokens = Counter(
            "tierwise_gateway_tokens", "Tokens the gateway's upstreams billed, by tier and kind.", ("tier", "kind"),
            registry=r,
        )
        self.upstream_attempts = Counter(
            "tierwise_upstream_attempts",
            "Gateway calls to upstreams by upstream entry and outcome (ok, http_<status>, timeout, connect_error, "
            "circuit_open, bad_response, stream_broken, cancelled).",
            ("upstream", "outcome"),
            registry=r,
        )
        self.gateway_overhead = Histogram(
            "tierwise_gateway_overhead_seconds",
            "Time the gateway adds to a request: total time minus the time spent waiting for upstreams (for streams: "
            "up to the first byte).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tenant_spend = Counter(
            "tierwise_tenant_spend_usd",
            "USD the gateway's upstream calls cost, by tenant (the first 100 tenants by name, the rest as `other`).",
            ("tenant",),
            registry=r,
        )
        self.cache_requests = Counter(
            "tierwise_cache_requests",
            "Gateway requests by cache result: hit-l1, hit-l2, hit-semantic, miss, bypass (not cacheable or opted "
            "out) or off (no cache configured).",
            ("result",),
            registry=r,
        )
        self.cache_events = Counter(
            "tierwise_cache_events", "Response-cache events (store, redis_error, ...).", ("event",), registry=r
        )
        self.cache_saved = Counter(
            "tierwise_cache_saved_usd",
            "USD the cache saved: what the cached answers cost when they were first paid for.",
            registry=r,
        )
        self.feedback = Counter(
            "tierwise_feedback", "Feedback received, by tier and outcome.", ("tier", "acceptable"), registry=r
        )
        self.batch_size = Histogram(
            "tierwise_microbatch_size", "Prompts per encoder call (micro-batching).", buckets=BATCH_BUCKETS, registry=r
        )
        self.reloads = Counter("tierwise_model_reloads", "Model reload attempts by result.", ("result",), registry=r)
        self.log_dropped = Counter(
            "tierwise_decision_log_dropped", "Decision-log rows dropped (queue full or write error).", registry=r
        )
        self.log_errors = Counter(
            "tierwise_decision_log_errors",
            "Decision-log write problems: row (the database refused one row), batch (a transaction failed after "
            "retries), writer (the writer thread had stopped and was restarted), prune (a retention batch failed), "
            "catalog (a reloaded model's catalog could not be stored).",
            ("kind",),
            registry=r,
        )
        mode: Literal["liveall", "all"] = "liveall" if multiprocess_dir() else "all"  # "all": the default
        self.model_info = Gauge(
            "tierwise_model_info",
            "The served model (value 1): name, version and whether it is the degraded last-good copy.",
            ("router_version", "degraded"),
            registry=r,
            multiprocess_mode=mode,
        )

        self.gc_pause = Histogram(
            "tierwise_gc_pause_seconds",
            "Garbage-collection pauses of the worker by generation (each one stalls every in-flight request).",
            ("generation",),
            buckets=GC_BUCKETS,
            registry=r,
        )
        self._gc_children = [self.gc_pause.labels(generation=str(g)) for g in range(3)]  # no lookup per collection
        self._gc_started: float | None = None
        self.frozen_objects = Gauge(
            "tierwise_gc_frozen_objects",
            "Objects moved to the permanent GC generation after the last model load (0: heap freezing is off).",
            registry=r,
            multiprocess_mode=mode,
        )

    def watch_gc(self) -> None:
        """Time every garbage collection into ``gc_pause`` (a ``gc.callbacks`` hook; ``unwatch_gc`` removes it)."""
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def unwatch_gc(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None:
            self._gc_children[info["generation"]].observe(time.perf_counter() - self._gc_started)
            self._gc_started = None

    def set_model(self, router_version: str, degraded: bool) -> None:
        self.model_info.clear()
        self.model_info.labels(router_version=router_version, degraded=str(degraded).lower()).set(1)

    def render(self) -> tuple[bytes, str]:
        mp = multiprocess_dir()
        if mp:
            from prometheus_client import multiprocess

            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg, path=mp)
            return generate_latest(reg), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
