"""ServiceMetrics pieces that need no server: garbage-collection timing."""

from __future__ import annotations

import gc

from prometheus_client.parser import text_string_to_metric_families

from router.service.metrics import ServiceMetrics


def _pauses(m: ServiceMetrics, generation: str) -> float:
    text = m.render()[0].decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "tierwise_gc_pause_seconds_count" and s.labels.get("generation") == generation:
                return s.value
    return 0.0


def test_every_collection_is_timed_until_unwatched() -> None:
    m = ServiceMetrics()
    m.watch_gc()
    m.watch_gc()  # idempotent: one hook, one observation per collection
    try:
        gc.collect()
        gc.collect(0)
        assert _pauses(m, "2") == 1
        assert _pauses(m, "0") == 1
    finally:
        m.unwatch_gc()
    gc.collect()
    assert _pauses(m, "2") == 1
    assert m._on_gc not in gc.callbacks
