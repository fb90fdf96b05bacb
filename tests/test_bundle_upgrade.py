"""A bundle written by an earlier release (commit 11c0253, before the service split and the blend layout) still loads
and routes exactly as it did then (tests/fixtures/bundle_11c0253: the bundle and the decisions it made)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from router.core import Router
from router.decision import escalation_path

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
        # every field the old release returned is still there, with the same value, but two changed on purpose:
        # "probabilities" is named "p_acceptable" like the HTTP API's field (Decision.probabilities still reads it),
        # and the escalation path (below)
        for key in ("tier", "tier_index", "model", "threshold", "reason", "role"):
            assert got[key] == want[key], key
        # escalation changed on purpose: only tiers that raise P(acceptable) over the best so far are in the path
        names = list(want["probabilities"])
        path = escalation_path(
            want["tier_index"], len(names), probabilities=[want["probabilities"][n] for n in names]
        )
        assert got["escalation"] == [names[i] for i in path]
        assert set(got["escalation"]) <= set(want["escalation"])
        # probabilities to float precision (same encoder weights and classifier parameters). Both sides are rounded
        # to 6 decimals, so a raw difference far below 1e-6 (int8 kernels round differently on CPUs with and without
        # AVX512-VNNI) can still show as one unit in the last place: the bound is that unit, not a wider one.
        assert got["p_acceptable"] == old_router.route(case["prompt"], task=case["task"]).probabilities
        assert set(got["p_acceptable"]) == set(want["probabilities"])
        np.testing.assert_allclose(
            [got["p_acceptable"][k] for k in sorted(want["probabilities"])],
            [want["probabilities"][k] for k in sorted(want["probabilities"])],
            rtol=0, atol=1e-6 + 1e-12,
        )
