"""Evaluation figures for an :class:`training.metrics.EvaluationReport`.

Every function builds a standalone :class:`matplotlib.figure.Figure` on the Agg canvas (no pyplot, no global
state, never ``show()``) and returns it; :func:`save_figure` writes a PNG atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from router.atomic_io import atomic_open
from training.metrics import EvaluationReport

__all__ = [
    "LOG_X_DECADES",
    "cell_fontsize",
    "plot_confusion",
    "plot_cost_quality",
    "plot_reliability",
    "plot_tier_mix",
    "save_figure",
    "wants_log_x",
]

_DPI = 120
LOG_X_DECADES = 1.5
""":func:`plot_cost_quality` draws cost on a log axis when the single tiers' costs span more than this many orders
of magnitude (on a linear axis the cheap tiers and most of the curve would crowd into the left edge)."""


def _figure(width: float = 8.0, height: float = 5.5) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _tier_colors(n: int) -> list[tuple[float, float, float, float]]:
    cmap = colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.0, 0.9, max(n, 1))]


def _extend_flat(cost: np.ndarray, quality: np.ndarray, c_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Hull vertices plus the flat extension to ``c_max`` (how AIQ sees the hull)."""
    if cost.size and cost[-1] < c_max:
        return np.append(cost, c_max), np.append(quality, quality[-1])
    return cost, quality


def _densify(
    cost: np.ndarray, quality: np.ndarray, log_x: bool, per_segment: int = 40
) -> tuple[np.ndarray, np.ndarray]:
    """Points along the hull's straight (in linear cost) segments so that a log-x axis draws them correctly."""
    if not log_x or cost.size < 2 or cost[0] <= 0:
        return cost, quality
    xs = np.unique(np.concatenate([np.geomspace(a, b, per_segment) for a, b in zip(cost[:-1], cost[1:], strict=True)]))
    return xs, np.interp(xs, cost, quality)


def wants_log_x(single_tier_costs: np.ndarray | list[float]) -> bool:
    """Whether the tiers' mean costs span more than :data:`LOG_X_DECADES` orders of magnitude (free tiers, which a
    log axis cannot show, are left out of the span)."""
    c = np.asarray(single_tier_costs, dtype=float)
    c = c[np.isfinite(c) & (c > 0)]
    return bool(c.size >= 2 and np.log10(c.max() / c.min()) > LOG_X_DECADES)


def plot_cost_quality(report: EvaluationReport, log_x: bool | None = None) -> Figure:
    """Cost per prompt (USD) against mean quality: router sweep and hull, extra curves, zero-router hull (dashed),
    oracle frontier and RouterBench oracle point (star), single tiers (labelled) and the default operating point.

    ``log_x``: cost on a log axis; default (None) when the tiers' costs span more than :data:`LOG_X_DECADES` orders
    of magnitude (:func:`wants_log_x`)."""
    if log_x is None:
        log_x = wants_log_x(report.single_tiers["cost"].to_numpy())
    fig = _figure()
    ax = fig.add_subplot()
    curve = report.curve.sort_values("cost")
    ax.plot(curve["cost"], curve["quality"], color="C0", lw=1.8, label=f"router (AIQ {report.aiq['router']:.3f})")
    hc, hq = _densify(*_extend_flat(*report.router_hull, report.c_max), log_x)
    ax.plot(hc, hq, color="C0", lw=0.8, ls=":", alpha=0.8)
    for k, (name, (cost, quality)) in enumerate(report.extra_curves.items()):
        order = np.argsort(cost, kind="stable")
        ax.plot(
            cost[order], quality[order], color=f"C{k + 2}", lw=1.2, marker=".", ms=3,
            label=f"{name} (AIQ {report.aiq[name]:.3f})",
        )
    zc, zq = _densify(*_extend_flat(*report.zero_hull, report.c_max), log_x)
    ax.plot(zc, zq, color="0.35", ls="--", lw=1.2, label=f"zero router (AIQ {report.aiq['zero']:.3f})")
    oc, oq = _densify(*_extend_flat(*report.oracle_hull, report.c_max), log_x)
    ax.plot(oc, oq, color="C3", ls=":", lw=1.0, label=f"oracle frontier (AIQ {report.aiq['oracle']:.3f})")
    ax.scatter(
        [report.oracle_point[1]], [report.oracle_point[0]], marker="*", s=220, color="C3", edgecolor="k",
        zorder=5, label="oracle (cheapest acceptable)",
    )
    singles = report.single_tiers
    ax.scatter(singles["cost"], singles["quality"], color="0.2", s=28, zorder=4, label="single tiers")
    if log_x:  # the zero router's vertices, which the densified dashed line no longer marks
        ax.scatter(*report.zero_hull, color="0.35", s=8, zorder=3)
    for _, row in singles.iterrows():
        ax.annotate(
            str(row["name"]), (row["cost"], row["quality"]), textcoords="offset points", xytext=(4, -10), fontsize=8
        )
    uniform = report.random[report.random["kind"] == "uniform"]
    ax.scatter(uniform["cost"], uniform["quality"], marker="x", color="0.5", s=40, label="random tier")
    op = report.default_op
    ax.scatter(
        [op["cost"]], [op["quality"]], marker="o", s=110, facecolor="none", edgecolor="C1", lw=2.2, zorder=6,
        label=f"default threshold {report.default_threshold:g}",
    )
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("mean cost per prompt (USD)" + (", log scale" if log_x else ""))
    ax.set_ylabel("mean quality")
    ax.set_title(f"Cost vs quality on {report.n_prompts} test prompts (gap closed {report.gap_closed['router']:.2f})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_reliability(report: EvaluationReport) -> Figure:
    """Reliability diagram: observed acceptable rate against mean predicted P per bin, one curve per tier."""
    fig = _figure(6.5, 6.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1, label="perfect calibration")
    table = report.reliability
    colors = _tier_colors(len(report.tier_names))
    for t, name in enumerate(report.tier_names):
        rows = table[(table["tier"] == t) & (table["count"] > 0)]
        ax.plot(
            rows["mean_proba"], rows["frac_acceptable"], marker="o", ms=3, lw=1.2, color=colors[t],
            label=f"{name} (ECE {report.ece.per_tier[t]:.3f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted P(acceptable)")
    ax.set_ylabel("observed acceptable rate")
    ax.set_title(f"Reliability (ECE {report.ece.overall:.3f}, Brier {report.brier.overall:.3f})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def plot_tier_mix(report: EvaluationReport) -> Figure:
    """Share of prompts per tier along the threshold sweep (stacked), with the default threshold marked."""
    fig = _figure()
    ax = fig.add_subplot()
    curve = report.curve.sort_values("threshold")
    x = np.clip(curve["threshold"].to_numpy(), None, 1.0)
    shares = [curve[f"share_t{t}"].to_numpy() for t in range(len(report.tier_names))]
    ax.stackplot(x, *shares, labels=report.tier_names, colors=_tier_colors(len(report.tier_names)), alpha=0.9)
    ax.axvline(report.default_threshold, color="C3", lw=1.5, ls="--", label=f"default {report.default_threshold:g}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("threshold on P(acceptable)")
    ax.set_ylabel("share of prompts")
    ax.set_title("Tier mix along the threshold sweep")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def cell_fontsize(n_cells: int) -> float:
    """Font size of the numbers in an ``n_cells``-wide heatmap: 13 pt for a small matrix, down to 7 pt at 12 cells
    and more (the axes are a fixed size, so the cells shrink as the matrix grows)."""
    return float(np.clip(16.0 - 0.75 * n_cells, 7.0, 13.0))


def plot_confusion(report: EvaluationReport) -> Figure:
    """Heatmaps of label tier (cheapest acceptable) against chosen tier at the default threshold: prompt counts
    and the summed extra cost in USD (red = overspend, blue = saving that risks quality)."""
    conf = report.confusion
    counts = conf["count"].to_numpy(dtype=float)
    extra = conf["extra_cost"].to_numpy(dtype=float)
    row_names = ["none" if int(r) < 0 else report.tier_names[int(r)] for r in conf.index]
    col_names = [report.tier_names[int(c)] for c in conf["count"].columns]
    fig = _figure(13.0, 5.8)
    annotate = max(counts.shape) <= 12
    fontsize = cell_fontsize(max(counts.shape))
    label_size = max(8.0, fontsize - 2.0)
    for k, (values, title, cmap) in enumerate(
        ((counts, "prompts", "Blues"), (extra, "extra cost vs label (USD)", "RdBu_r"))
    ):
        ax = fig.add_subplot(1, 2, k + 1)
        if cmap == "RdBu_r":
            lim = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.0
            lim = lim if lim > 0 else 1.0
            image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
        else:
            image = ax.imshow(values, cmap=cmap, aspect="auto")
        fig.colorbar(image, ax=ax, shrink=0.85)
        ax.set_xticks(range(len(col_names)), col_names, rotation=45, ha="right", fontsize=label_size)
        ax.set_yticks(range(len(row_names)), row_names, fontsize=label_size)
        ax.set_xlabel("chosen tier")
        ax.set_ylabel("label (cheapest acceptable tier)")
        ax.set_title(title)
        if annotate:
            norm = image.norm
            for (i, j), v in np.ndenumerate(values):
                if np.isfinite(v) and v != 0:
                    # white on the dark end of the colour map, black elsewhere: readable on every cell
                    level = float(np.asarray(norm(v)))
                    dark = abs(level - 0.5) > 0.35 if k == 1 else level > 0.6
                    ax.text(
                        j, i, f"{v:.0f}" if k == 0 else f"{v:.2g}", ha="center", va="center", fontsize=fontsize,
                        color="white" if dark else "black",
                    )
    op = report.default_op
    fig.suptitle(
        f"Routing confusion at threshold {report.default_threshold:g}: under-routing {100 * op['under_routing']:.1f}%,"
        f" over-routing {100 * op['over_routing']:.1f}%"
    )
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG (dpi 120) atomically (:func:`router.atomic_io.atomic_open`)."""
    target = Path(path)
    with atomic_open(target) as handle:
        fig.savefig(handle, format="png", dpi=_DPI)
    return target
