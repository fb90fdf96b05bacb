"""Default threshold selection and the promotion rule (pure functions)."""

from __future__ import annotations

import numpy as np

from training.operating_point import choose_threshold


def test_threshold_meets_quality_target_at_least_cost() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    hard = rng.random(n) < 0.3
    score = np.column_stack([(~hard).astype(float), np.ones(n)])
    cost = np.column_stack([np.full(n, 1.0), np.full(n, 10.0)])
    # a good but imperfect router: P(cheap ok) high for easy prompts
    p_cheap = np.clip(np.where(hard, 0.2, 0.9) + rng.normal(0, 0.1, n), 0, 1)
    proba = np.column_stack([p_cheap, np.full(n, 0.99)])
    thr, note = choose_threshold(proba, score, cost, 0.95, rule="threshold")
    choice = np.where(proba[:, 0] >= thr, 0, 1)
    quality = score[np.arange(n), choice].mean()
    assert quality >= 0.95
    assert (choice == 0).mean() > 0.5  # it did save money
    assert "95%" in note


def test_unreachable_target_falls_back_to_best_quality() -> None:
    score = np.array([[0.0, 0.5]] * 50)
    cost = np.array([[1.0, 2.0]] * 50)
    proba = np.array([[0.1, 0.9]] * 50)
    thr, note = choose_threshold(proba, score, cost, 1.5, rule="threshold")
    assert "no threshold reached" in note
    assert thr <= 0.9
