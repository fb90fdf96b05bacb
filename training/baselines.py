"""Baseline routers evaluated next to tierwise on the same split (pure functions)."""

from __future__ import annotations

import numpy as np


def knn_proba(
    train_emb: np.ndarray, train_outcome: np.ndarray, test_emb: np.ndarray, k: int = 20, chunk: int = 2048
) -> np.ndarray:
    """kNN router: per-tier mean outcome of the ``k`` nearest training prompts (cosine similarity).

    ``train_outcome`` is ``[n_train, T]`` with 1 / 0 / NaN (not tried); NaNs are skipped per tier, and a tier with
    no tried neighbour falls back to its overall training rate.
    """
    a = _normalise(np.asarray(train_emb, np.float32))
    b = _normalise(np.asarray(test_emb, np.float32))
    y = np.asarray(train_outcome, float)
    k = max(1, min(k, a.shape[0]))
    prior = np.nan_to_num(np.nanmean(y, axis=0), nan=0.5)
    out = np.empty((b.shape[0], y.shape[1]))
    for start in range(0, b.shape[0], chunk):
        sims = b[start : start + chunk] @ a.T
        nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        neigh = y[nn]  # [m, k, T]
        tried = ~np.isnan(neigh)
        count = tried.sum(axis=1)
        total = np.where(tried, neigh, 0.0).sum(axis=1)
        out[start : start + chunk] = np.where(count > 0, total / np.maximum(count, 1), prior)
    return out


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n == 0, 1, n)
