"""A bundle written by an earlier release (commit 11c0253, before the service split and the blend layout) still loads
and routes exactly as it did then (tests/fixtures/bundle_11c0253: the bundle and the decisions it made)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from router.core import Router

FIXTURE = Path(__file__).parent / "fixtures" / "bundle_11c0253"


@pytest.fixture(scope="module")
def old_router() -> Router:
    return Router.load(str(FIXTURE / "bundle"))


def test_old_bundle_routes_as_it_did(old_router: Router) -> None:
    cases = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))["cases"]
    assert len(cases) == 20
    for case in cases:
        got = json.loads(old_router.route(case["prompt"], task=case["task"]).model_dump_json())
        want = case["decision"]
        # every field the old release returned is still there, with the same value (fields may be added, never
        # renamed or removed)
        for key in ("tier", "tier_index", "model", "threshold", "reason", "escalation", "role"):
            assert got[key] == want[key], key
        # probabilities to float precision (same encoder weights and classifier parameters)
        assert set(got["probabilities"]) == set(want["probabilities"])
        np.testing.assert_allclose(
            [got["probabilities"][k] for k in sorted(want["probabilities"])],
            [want["probabilities"][k] for k in sorted(want["probabilities"])],
            rtol=0, atol=1e-6,
        )
