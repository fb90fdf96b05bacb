"""Tables behind the notebooks (``notebooks/routing_quality.ipynb``, ``notebooks/savings_report.ipynb``).

Pure functions over :class:`training.labels.LabelledData`, per-prompt tier choices and DataFrames; no I/O, no
MLflow, no model calls. The notebooks load a router and data, call these, and display the results.

Routing quality (one chosen tier index per prompt, tiers ordered cheapest first as in the catalog):

* :func:`routed_outcomes`: one row per prompt with the label tier, the chosen tier and what each scored and cost;
* :func:`per_task_breakdown`: quality, cost, % of always-top-tier cost, tier shares and routing-error rates per task;
* :func:`worst_under_routed`: prompts routed below their label, sorted by the quality lost.

Savings (one row per request: the routed tier and the cost the request has, or would have, on every tier):

* :func:`spend_frame_from_labelled` (offline log + router decisions), :func:`spend_frame_from_decisions` (the
  service's SQLite decision log, see ``router.service.decision_log``; :func:`read_decision_log` reads its decisions
  and feedback, :func:`spend_frame_from_log` does both) and :func:`spend_frame_from_export` (a decision-log export
  in the canonical long format) build that frame. ``cost`` is the routed (first-choice) call's; ``escalation_cost``
  what the calls to pricier tiers that the log records for the request (feedback naming a tier above the routed
  one: an escalation after a failed answer) cost on top; ``spend`` = both, what routing actually paid;
* a log spans several router versions (and so possibly several catalogs) over time: the decision-log frames keep one
  ``router_version`` (default: the latest, with a note in ``frame.attrs["note"]`` and the log) and a time window
  (``since`` inclusive, ``until`` exclusive);
* :func:`savings_summary`, :func:`savings_breakdown` and :func:`monthly_projection` turn it into spend with routing
  against always using one tier; :func:`plot_savings` draws it (the top tasks by volume, the rest as ``other``).

Costs of tiers without list prices (a catalog for a log that records each call's ``cost_usd``) come from the model's
fitted cost model (``cost_model=``, ``Router.cost_model``), as the service prices them (:mod:`router.pricing`).

Prompt text appears only in :func:`worst_under_routed` (truncated, for the team's own review in a notebook); nothing
here logs it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from router import pricing
from router.catalog import Catalog
from training.labels import LabelledData

if TYPE_CHECKING:
    from router.cost_model import CostModel

__all__ = [
    "MAX_TASK_BARS",
    "NO_TASK",
    "DecisionLogSlice",
    "monthly_projection",
    "per_task_breakdown",
    "plot_savings",
    "read_decision_log",
    "routed_outcomes",
    "savings_breakdown",
    "savings_summary",
    "spend_frame_from_decisions",
    "spend_frame_from_export",
    "spend_frame_from_labelled",
    "spend_frame_from_log",
    "top_tasks",
    "truncate",
    "worst_under_routed",
]

NO_TASK = "(no task)"
"""Group name for prompts / requests whose task is missing."""
ALL = "all"
"""Name of the total row in the breakdown tables."""
OTHER = "other"
"""Bar of the tasks beyond :data:`MAX_TASK_BARS` in :func:`plot_savings`."""
MAX_TASK_BARS = 15
"""Tasks drawn one bar each by :func:`plot_savings` (largest by requests); more labels than this are unreadable."""

log = logging.getLogger("tierwise.reports")


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------
def truncate(text: object, max_chars: int = 120) -> str:
    """One-line preview: whitespace collapsed, cut to ``max_chars`` characters (ending in an ellipsis if cut)."""
    flat = " ".join(str(text).split())
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    return flat if len(flat) <= max_chars else flat[: max_chars - 1].rstrip() + "\u2026"


def _tasks(values: Any) -> np.ndarray:
    s = pd.Series(values, dtype=object)
    return np.where(s.isna().to_numpy(), NO_TASK, s.astype(str).to_numpy()).astype(object)


def _choice(choice: Any, n: int, n_tiers: int) -> np.ndarray:
    ch = np.asarray(choice)
    if ch.shape != (n,):
        raise ValueError(f"choice must have shape ({n},), got {ch.shape}")
    ch = ch.astype(np.int64)
    if n and (ch.min() < 0 or ch.max() >= n_tiers):
        raise ValueError(f"choice holds tier indices outside 0..{n_tiers - 1}")
    return ch


# --------------------------------------------------------------------------------------------------------------
# routing quality
# --------------------------------------------------------------------------------------------------------------
def routed_outcomes(labelled: LabelledData, choice: Any) -> pd.DataFrame:
    """One row per prompt (index ``prompt_id``): the label tier against the chosen tier.

    Columns: prompt, task, label (cheapest acceptable tier index, -1 when no tier was acceptable), label_tier,
    chosen, chosen_tier, score_chosen, cost_chosen, acceptable_chosen, score_label, cost_label, score_top,
    cost_top, under (chosen below the label), over (chosen above the label). ``under`` / ``over`` are False for
    prompts without an acceptable tier, as in :func:`training.metrics.operating_point`.

    Raises ValueError when a chosen cell has no observed score or cost (keep only complete prompts, e.g.
    ``labelled.subset(labelled.complete_rows)``).
    """
    n, n_tiers = labelled.score.shape
    ch = _choice(choice, n, n_tiers)
    rows = np.arange(n)
    score_ch, cost_ch = labelled.score[rows, ch], labelled.cost[rows, ch]
    if not (np.isfinite(score_ch).all() and np.isfinite(cost_ch).all()):
        raise ValueError(
            "a chosen (prompt, tier) cell has no observed score or cost; keep only complete prompts "
            "(labelled.subset(labelled.complete_rows))"
        )
    p = labelled.prompts
    has_acc = ~p["no_acceptable"].to_numpy(dtype=bool)
    label = np.where(has_acc, p["label"].to_numpy(dtype=np.int64), -1)
    lab_idx = np.clip(label, 0, n_tiers - 1)
    names = np.asarray(labelled.tier_names, dtype=object)
    out = pd.DataFrame(
        {
            "prompt": p["prompt"].astype(str).to_numpy(),
            "task": _tasks(p["task"].to_numpy()) if "task" in p else NO_TASK,
            "label": label,
            "label_tier": np.where(has_acc, names[lab_idx], "none"),
            "chosen": ch,
            "chosen_tier": names[ch],
            "score_chosen": score_ch,
            "cost_chosen": cost_ch,
            "acceptable_chosen": np.nan_to_num(labelled.acceptable[rows, ch], nan=0.0) > 0.5,
            "score_label": np.where(has_acc, labelled.score[rows, lab_idx], np.nan),
            "cost_label": np.where(has_acc, labelled.cost[rows, lab_idx], np.nan),
            "score_top": labelled.score[:, -1],
            "cost_top": labelled.cost[:, -1],
            "under": has_acc & (ch < label),
            "over": has_acc & (ch > label),
        },
        index=p.index,
    )
    return out


def per_task_breakdown(labelled: LabelledData, choice: Any) -> pd.DataFrame:
    """Per task (plus an ``all`` row): how the chosen tiers did.

    Columns: n, quality (mean score of the chosen tier), top_quality (mean score of always-top-tier), cost (mean USD
    per prompt), top_cost, cost_pct_top (cost as % of always-top-tier), unacceptable (share of chosen answers that
    are not acceptable), under_routing / over_routing (chosen below / above the label, over the prompts that have an
    acceptable tier, as :func:`training.metrics.operating_point`), no_acceptable (share of prompts no tier answered
    acceptably) and one ``share_<tier>`` column per tier. Sorted by n (largest task first); ``all`` comes last.
    """
    df = routed_outcomes(labelled, choice)
    has_acc = df["label"].to_numpy() >= 0

    def summarise(part: pd.DataFrame, acc: np.ndarray) -> dict[str, float]:
        n_lab = int(acc.sum())
        top_cost = float(part["cost_top"].mean())
        row: dict[str, float] = {
            "n": len(part),
            "quality": float(part["score_chosen"].mean()),
            "top_quality": float(part["score_top"].mean()),
            "cost": float(part["cost_chosen"].mean()),
            "top_cost": top_cost,
            "cost_pct_top": 100.0 * float(part["cost_chosen"].mean()) / top_cost if top_cost > 0 else math.nan,
            "unacceptable": float(1.0 - part["acceptable_chosen"].mean()),
            "under_routing": float(part["under"].sum() / n_lab) if n_lab else math.nan,
            "over_routing": float(part["over"].sum() / n_lab) if n_lab else math.nan,
            "no_acceptable": float(1.0 - acc.mean()),
        }
        counts = np.bincount(part["chosen"].to_numpy(), minlength=len(labelled.tier_names))
        for t, name in enumerate(labelled.tier_names):
            row[f"share_{name}"] = float(counts[t] / len(part))
        return row

    records: dict[str, dict[str, float]] = {}
    tasks = df["task"].to_numpy()
    for task in df["task"].value_counts(sort=True).index:
        mask = tasks == task
        records[str(task)] = summarise(df.loc[mask], has_acc[mask])
    if len(df):
        records[ALL] = summarise(df, has_acc)
    out = pd.DataFrame.from_dict(records, orient="index")
    out.index.name = "task"
    if len(out):
        out["n"] = out["n"].astype(np.int64)
    return out


def worst_under_routed(labelled: LabelledData, choice: Any, n: int = 20, max_chars: int = 120) -> pd.DataFrame:
    """Prompts routed to a tier below their label (the cheapest acceptable tier), worst first.

    Sorted by ``quality_lost`` = score of the label tier - score of the chosen tier (descending; ties by the cost
    saved, then prompt id). Columns: task, label_tier, chosen_tier, score_label, score_chosen, quality_lost,
    cost_saved (USD, label cost - chosen cost) and prompt (truncated to ``max_chars``). At most ``n`` rows.
    """
    df = routed_outcomes(labelled, choice)
    bad = df.loc[df["under"]].copy()
    bad["quality_lost"] = bad["score_label"] - bad["score_chosen"]
    bad["cost_saved"] = bad["cost_label"] - bad["cost_chosen"]
    bad["_id"] = bad.index.astype(str)
    bad = bad.sort_values(["quality_lost", "cost_saved", "_id"], ascending=[False, False, True], kind="stable")
    bad["prompt"] = [truncate(t, max_chars) for t in bad["prompt"]]
    cols = ["task", "label_tier", "chosen_tier", "score_label", "score_chosen", "quality_lost", "cost_saved", "prompt"]
    return bad[cols].head(max(int(n), 0))


# --------------------------------------------------------------------------------------------------------------
# savings: per-request spend frames
# --------------------------------------------------------------------------------------------------------------
def _spend_frame(
    index: pd.Index,
    task: Any,
    tier_names: Sequence[str],
    routed: np.ndarray,
    cost: np.ndarray,
    score: np.ndarray,
    escalation: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """The common frame: task, tier (routed), cost (the routed call), escalation_cost / escalations (the calls to
    pricier tiers the log records), spend (cost + escalation_cost), quality, then cost__<tier> / score__<tier>."""
    n = len(index)
    rows = np.arange(n)
    names = np.asarray(list(tier_names), dtype=object)
    esc_cost, esc_n = escalation if escalation is not None else (np.zeros(n), np.zeros(n, dtype=np.int64))
    first = cost[rows, routed] if n else np.empty(0)
    out = pd.DataFrame(
        {
            "task": _tasks(task) if n else np.empty(0, dtype=object),
            "tier": names[routed] if n else np.empty(0, dtype=object),
            "cost": first,
            "escalation_cost": np.asarray(esc_cost, dtype=float),
            "escalations": np.asarray(esc_n, dtype=np.int64),
            "spend": first + np.asarray(esc_cost, dtype=float),
            "quality": score[rows, routed] if n else np.empty(0),
        },
        index=index,
    )
    for t, name in enumerate(tier_names):
        out[f"cost__{name}"] = cost[:, t]
    for t, name in enumerate(tier_names):
        out[f"score__{name}"] = score[:, t]
    out.attrs["tiers"] = list(tier_names)
    return out


# --------------------------------------------------------------------------------------------------------------
# savings: which part of a decision log
# --------------------------------------------------------------------------------------------------------------
def _utc(value: Any, name: str) -> pd.Timestamp | None:
    """``value`` (ISO text, datetime or Timestamp; naive = UTC) as a UTC Timestamp; a ValueError naming ``name``."""
    if value is None:
        return None
    try:
        t = pd.Timestamp(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        t = pd.NaT
    if t is pd.NaT:
        raise ValueError(f"{name}: {value!r} is not an ISO date or time (e.g. 2026-11-01 or 2026-11-01T08:00)")
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _select(
    frame: pd.DataFrame,
    time_col: str,
    router_version: str | None,
    since: str | datetime | None,
    until: str | datetime | None,
) -> tuple[pd.DataFrame, str | None, str]:
    """Rows of one router version within ``[since, until)``: (rows, the version kept, a note for the reader).

    Without ``router_version`` and with several versions in the window, the latest (of the most recent row) is kept
    and the note says so. Raises ValueError when nothing is left, naming what was asked and what the log holds."""
    start, end = _utc(since, "since"), _utc(until, "until")
    if start is not None and end is not None and start >= end:
        raise ValueError(f"since ({since}) must be before until ({until})")
    notes: list[str] = []
    out = frame
    if start is not None or end is not None:
        if time_col not in frame:
            raise ValueError(f"since/until need a {time_col!r} column, which these rows lack")
        when = pd.to_datetime(frame[time_col], utc=True, errors="coerce", format="mixed")
        keep = np.array(when.notna(), dtype=bool)
        if start is not None:
            keep &= np.array(when >= start, dtype=bool)
        if end is not None:
            keep &= np.array(when < end, dtype=bool)
        out = frame.loc[keep]
        notes.append(
            f"{len(out)} of {len(frame)} row(s) from {since if since is not None else 'the start'} "
            f"until {until if until is not None else 'now'}"
        )
        if out.empty:
            raise ValueError(f"no rows between since={since!r} and until={until!r} (of {len(frame)} in the log)")
    if "router_version" not in out or out["router_version"].isna().all():
        if router_version is not None:
            raise ValueError("router_version: these rows have no router_version column to select by")
        return out, None, "; ".join(notes)
    versions = out["router_version"].astype(str)
    counts = versions.value_counts()
    if router_version is not None:
        if router_version not in counts.index:
            raise ValueError(
                f"router_version: no rows of {router_version!r}; the log holds "
                + ", ".join(f"{v} ({n})" for v, n in counts.items())
            )
        chosen = router_version
    elif len(counts) > 1:
        # the latest version routes now: its catalog is the one a reader compares against
        when = pd.Series(dtype="datetime64[ns, UTC]")
        if time_col in out:
            when = pd.to_datetime(out[time_col], utc=True, errors="coerce", format="mixed").reset_index(drop=True)
        latest = int(when.idxmax()) if when.notna().any() else len(out) - 1  # idxmax skips NaT
        chosen = str(versions.iloc[latest])
        notes.append(
            f"the log spans {len(counts)} router versions ("
            + ", ".join(f"{v}: {n} rows" for v, n in counts.items())
            + f"), which may route with different catalogs; reporting the latest, {chosen} (choose one with "
            "router_version=, and a period with since= / until=)"
        )
    else:
        chosen = str(counts.index[0])
    return out.loc[(versions == chosen).to_numpy()], chosen, "; ".join(notes)


@dataclass
class DecisionLogSlice:
    """What :func:`read_decision_log` read: every decision and feedback row of the log (filter them with
    :func:`spend_frame_from_decisions`) and the catalog YAML the service stored per router version."""

    decisions: pd.DataFrame
    feedback: pd.DataFrame
    catalogs: dict[str, str]
    calls: pd.DataFrame = field(default_factory=pd.DataFrame)  # the gateway's calls (actual spend)

    def catalog(self, router_version: str) -> Catalog:
        """The catalog ``router_version`` routed with, as the service stored it; ValueError when it did not."""
        import yaml

        if router_version not in self.catalogs:
            raise ValueError(
                f"router_version: the decision log stores no catalog for {router_version!r} (logged before the "
                "service stored catalogs); pass the catalog the service routed with"
            )
        return Catalog.from_dict(yaml.safe_load(self.catalogs[router_version]), source=f"catalog of {router_version}")


def read_decision_log(path: str | os.PathLike[str]) -> DecisionLogSlice:
    """Read the service's decision log (read-only): decisions, feedback, gateway calls and the stored catalogs.
    ``path``: a SQLite file or a database URL (``postgresql+psycopg://...``), as ``TIERWISE_DECISION_LOG``.

    The one reader here that touches a store; the spend frames stay pure functions of what it returns."""
    from router.service import decision_log as dl

    decisions = pd.DataFrame(list(dl.iter_decisions(path)), columns=list(dl.DECISION_COLUMNS))
    feedback = pd.DataFrame(list(dl.iter_feedback(path)), columns=list(dl.FEEDBACK_READ_COLUMNS))
    calls = pd.DataFrame(list(dl.iter_calls(path)), columns=list(dl.CALL_COLUMNS))
    return DecisionLogSlice(decisions, feedback, dl.stored_catalogs(path), calls)


def actual_spend(
    log: DecisionLogSlice,
    *,
    router_version: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
) -> pd.DataFrame | None:
    """What the gateway actually paid, per answering tier, for one router version (default: the latest) in
    ``[since, until)``: requests, answered (status 200), failed, input/output tokens, actual_usd (the upstreams'
    usage priced with the catalog), top_tier_usd (the same tokens on the top tier), saved_usd and saved_pct; an
    ``all`` row last. None when the log has no gateway calls there (routing advice only)."""
    if log.calls.empty:
        return None
    versions = log.decisions.set_index("request_id")["router_version"] if not log.decisions.empty else pd.Series()
    calls = log.calls.assign(router_version=log.calls["request_id"].map(versions))
    try:
        rows, version, _ = _select(calls, "created_at", router_version, since, until)
    except ValueError:
        return None
    order = log.catalog(version).tier_names if version in log.catalogs else sorted(rows["tier"].dropna().unique())

    def summarise(part: pd.DataFrame) -> dict[str, float]:
        ok = part.loc[part["status"] == 200]
        paid, top = float(ok["cost_usd"].fillna(0).sum()), float(ok["top_tier_cost_usd"].fillna(0).sum())
        return {
            "requests": len(part),
            "answered": len(ok),
            "failed": len(part) - len(ok),
            "input_tokens": float(ok["input_tokens"].fillna(0).sum()),
            "output_tokens": float(ok["output_tokens"].fillna(0).sum()),
            "actual_usd": paid,
            "top_tier_usd": top,
            "saved_usd": top - paid,
            "saved_pct": 100.0 * (top - paid) / top if top > 0 else math.nan,
        }

    records = {str(t): summarise(rows.loc[rows["tier"] == t]) for t in order if (rows["tier"] == t).any()}
    records[ALL] = summarise(rows)
    out = pd.DataFrame.from_dict(records, orient="index")
    out.index.name = "tier"
    for col in ("requests", "answered", "failed"):
        out[col] = out[col].astype(np.int64)
    out.attrs["router_version"] = version
    return out


def spend_frame_from_log(
    path: str | os.PathLike[str],
    catalog: Catalog | None = None,
    chars_per_token: float | None = None,
    *,
    router_version: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    cost_model: CostModel | None = None,
) -> pd.DataFrame:
    """:func:`spend_frame_from_decisions` of the decision log at ``path`` with its feedback (escalations counted),
    for one router version (default: the latest) in ``[since, until)``. ``catalog``: default, the one the service
    stored for that version. ``chars_per_token`` / ``cost_model``: that version's model's (``Router.chars_per_token``,
    ``Router.cost_model``). What a CLI command or the savings notebook calls."""
    log = read_decision_log(path)
    if log.decisions.empty:
        from router.service.decision_log import describe  # a URL's password is not shown

        raise ValueError(f"{describe(path)}: the decision log has no decisions yet")
    if catalog is None:
        _, version, _ = _select(log.decisions, "created_at", router_version, since, until)
        if version is None:
            raise ValueError("catalog: the decisions name no router version; pass the catalog the service routed with")
        catalog = log.catalog(version)
    return spend_frame_from_decisions(
        log.decisions, catalog, chars_per_token, feedback=log.feedback, router_version=router_version, since=since,
        until=until, cost_model=cost_model,
    )


def _escalations(
    feedback: pd.DataFrame, index: pd.Index, tier_of: dict[str, int], routed: np.ndarray, cost: np.ndarray,
    catalog: Catalog, chars: np.ndarray, cost_model: CostModel | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per request: USD and number of the calls to tiers above the routed one that ``feedback`` records.

    A call's USD is its logged ``cost_usd``, else its tokens at the tier's price, else the request's estimate on
    that tier (``cost``); a tier answering twice for one request counts once (the mean), as one escalation step."""
    n = len(index)
    esc_cost, esc_n = np.zeros(n), np.zeros(n, dtype=np.int64)
    need = {"request_id"} & set(feedback.columns)
    if feedback.empty or not need or not ({"tier", "model"} & set(feedback.columns)):
        return esc_cost, esc_n
    fb = feedback.loc[feedback["request_id"].astype(str).isin(index)].copy()
    if fb.empty:
        return esc_cost, esc_n
    names = fb["tier"] if "tier" in fb else pd.Series(None, index=fb.index)
    models = fb["model"] if "model" in fb else pd.Series(None, index=fb.index)
    fb["_tier"] = [
        tier_of.get(str(t), tier_of.get(str(m), -1)) if pd.notna(t) else tier_of.get(str(m), -1)
        for t, m in zip(names, models, strict=True)
    ]
    fb["_row"] = index.get_indexer(fb["request_id"].astype(str))
    fb = fb.loc[(fb["_tier"] >= 0) & (fb["_tier"].to_numpy() > routed[fb["_row"].to_numpy()])]
    if fb.empty:
        return esc_cost, esc_n
    r, t = fb["_row"].to_numpy(), fb["_tier"].to_numpy(dtype=np.int64)
    logged = _numeric(fb, "cost_usd")
    in_tok, out_tok = _numeric(fb, "input_tokens"), _numeric(fb, "output_tokens")
    by_tokens = pricing.tier_costs(
        catalog.tiers, np.where(np.isnan(in_tok), 0.0, in_tok), out_tok, cost_model=cost_model, prompt_chars=chars[r]
    )[np.arange(len(fb)), t]
    by_tokens = np.where(np.isnan(in_tok), np.nan, by_tokens)
    usd = np.where(np.isfinite(logged), logged, np.where(np.isfinite(by_tokens), by_tokens, cost[r, t]))
    calls = pd.DataFrame({"r": r, "t": t, "usd": usd}).groupby(["r", "t"], sort=False)["usd"].mean().reset_index()
    np.add.at(esc_cost, calls["r"].to_numpy(), calls["usd"].to_numpy(dtype=float))
    np.add.at(esc_n, calls["r"].to_numpy(), 1)
    return esc_cost, esc_n


def spend_frame_from_labelled(labelled: LabelledData, choice: Any) -> pd.DataFrame:
    """Spend frame of an offline labelled log: the router's chosen tier per prompt and every tier's observed cost.

    One row per prompt (index ``prompt_id``): task, tier (the chosen tier's name), cost (its USD), quality (its
    score), then ``cost__<tier>`` and ``score__<tier>`` per tier (NaN where a tier was not tried).
    """
    n, n_tiers = labelled.score.shape
    ch = _choice(choice, n, n_tiers)
    task = labelled.prompts["task"].to_numpy() if "task" in labelled.prompts else [None] * n
    return _spend_frame(labelled.prompts.index, task, labelled.tier_names, ch, labelled.cost, labelled.score)


def spend_frame_from_decisions(
    decisions: pd.DataFrame,
    catalog: Catalog,
    chars_per_token: float | None = None,
    *,
    feedback: pd.DataFrame | None = None,
    router_version: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    cost_model: CostModel | None = None,
) -> pd.DataFrame:
    """Spend frame of the service's decision log (rows of ``router.service.decision_log.iter_decisions``, or
    :func:`read_decision_log`'s ``decisions`` and ``feedback``).

    Which decisions: those of ``router_version`` (default: the latest when the log holds several, which may have
    routed with different catalogs; ``frame.attrs["note"]`` says so) made in ``[since, until)`` (``created_at``;
    ISO text or datetime, naive = UTC). ``frame.attrs["router_version"]`` names the version kept.

    One row per decision (index ``request_id``). The routed tier is the decision's ``tier``. Costs are estimates
    (no answer had been generated when the decision was logged): the routed tier's cost is the logged
    ``est_cost_usd`` and the top tier's the logged ``est_top_cost_usd`` where present; every other cell is the
    tier's list price for ``prompt_chars / chars_per_token`` input tokens (default
    :data:`router.pricing.DEFAULT_CHARS_PER_TOKEN`; the service uses the value training stored in the model bundle,
    ``router.meta.training["chars_per_token"]``) and the tier's ``typical_output_tokens`` (else
    :data:`router.pricing.DEFAULT_OUTPUT_TOKENS`), as the service estimates them (:mod:`router.pricing`); a tier
    without list prices is priced by ``cost_model`` (the router's fitted one, ``Router.cost_model``) when given.
    ``feedback`` (the log's feedback rows): a call to a tier above the routed one is an escalation, counted in
    ``escalation_cost`` and ``spend`` (its logged ``cost_usd``, else its tokens at the tier's price, else the
    estimate). Scores are unknown (NaN). Decisions naming a tier that is not in ``catalog`` raise ValueError.
    """
    missing = {"tier", "prompt_chars"} - set(decisions.columns)
    if missing:
        raise ValueError(f"decision rows lack column(s) {sorted(missing)}")
    decisions, version, note = _select(decisions, "created_at", router_version, since, until)
    if note:
        log.warning("decision log: %s", note)
    names = catalog.tier_names
    unknown = sorted(set(decisions["tier"].astype(str)) - set(names))
    if unknown:
        raise ValueError(
            f"decisions{f' of {version}' if version else ''} name tier(s) {', '.join(unknown)} that are not in "
            f"catalog {catalog.name!r} (tiers: {', '.join(names)}); pass the catalog the service routed with"
        )
    n = len(decisions)
    routed = np.array([names.index(str(t)) for t in decisions["tier"]], dtype=np.int64)
    chars = pd.to_numeric(decisions["prompt_chars"], errors="coerce").to_numpy(dtype=float)
    in_tok = pricing.request_input_tokens_array(chars, chars_per_token)
    cost = pricing.tier_costs(catalog.tiers, in_tok, cost_model=cost_model, prompt_chars=chars)
    rows = np.arange(n)
    for col, tier_idx in (("est_cost_usd", routed), ("est_top_cost_usd", np.full(n, len(names) - 1))):
        if col in decisions:
            logged = pd.to_numeric(decisions[col], errors="coerce").to_numpy(dtype=float)
            ok = np.isfinite(logged)
            cost[rows[ok], tier_idx[ok]] = logged[ok]
    index = pd.Index(decisions["request_id"].astype(str) if "request_id" in decisions else range(n), name="request_id")
    task = decisions["task"].to_numpy() if "task" in decisions else [None] * n
    escalation = None
    if feedback is not None:
        tier_of = {t.model: i for i, t in enumerate(catalog.tiers)} | {t.name: i for i, t in enumerate(catalog.tiers)}
        escalation = _escalations(feedback, index, tier_of, routed, cost, catalog, chars, cost_model)
    frame = _spend_frame(index, task, names, routed, cost, np.full((n, len(names)), np.nan), escalation)
    frame.attrs.update(router_version=version, note=note)
    return frame


def spend_frame_from_export(
    export: pd.DataFrame,
    catalog: Catalog,
    *,
    router_version: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    cost_model: CostModel | None = None,
) -> pd.DataFrame:
    """Spend frame of a decision-log export (canonical long format, one row per answer with feedback).

    Which rows: as :func:`spend_frame_from_decisions` (``router_version``, default the latest; ``since`` / ``until``
    on the answers' ``timestamp``), when the export has those columns. Requests are grouped by ``request_id`` (else
    ``prompt_id``). The routed tier is the ``routed_tier`` column (written by
    ``router.service.decision_log.export_log``); without it every request must have answers from exactly one model,
    which is then taken as the routed one. A tier's cost is the mean ``cost_usd`` of its answers (priced from tokens
    and the catalog when ``cost_usd`` is missing, see :mod:`training.costs`); tiers that did not answer a request get
    the catalog price of the routed answer's tokens (input tokens rescaled by the models' learned characters per
    token; missing token counts estimated as in :mod:`training.costs`; a tier without list prices priced by
    ``cost_model`` when given). ``score__<tier>`` holds the observed mean score (NaN where the tier did not answer).
    With ``routed_tier``, answers of tiers above the routed one are escalations: their observed cost is
    ``escalation_cost`` (in ``spend``). Models outside the catalog raise
    ValueError.
    """
    from training.costs import estimate_costs

    need = {"model"} | ({"request_id"} if "request_id" in export else {"prompt_id"})
    missing = need - set(export.columns)
    if missing:
        raise ValueError(f"export lacks column(s) {sorted(missing)}")
    export, version, note = _select(export, "timestamp", router_version, since, until)
    if note:
        log.warning("decision-log export: %s", note)
    df = export.copy()
    key = "request_id" if "request_id" in df and df["request_id"].notna().all() else "prompt_id"
    if key not in df:
        raise ValueError("export needs request_id (on every row) or prompt_id")
    df["_key"] = df[key].astype(str)
    if "prompt" not in df:
        df["prompt"] = ""
    df["prompt"] = df["prompt"].fillna("").astype(str)
    tier_of = {t.model: i for i, t in enumerate(catalog.tiers)} | {t.name: i for i, t in enumerate(catalog.tiers)}
    unknown = sorted(set(df["model"].astype(str)) - set(tier_of))
    if unknown:
        raise ValueError(
            f"export holds model(s) {', '.join(unknown)} that are not in catalog {catalog.name!r} "
            f"(models: {', '.join(catalog.models)}); pass the catalog the service routed with"
        )
    df["_tier"] = df["model"].astype(str).map(tier_of).astype(np.int64)
    priced = estimate_costs(df, catalog)
    df["_cost"] = priced.cost_usd.to_numpy()

    keys = pd.Index(pd.unique(df["_key"]), name=key)
    n, n_tiers = len(keys), len(catalog.tiers)
    row_of = keys.get_indexer(df["_key"])
    has_routed = "routed_tier" in df and bool(df["routed_tier"].notna().any())
    if has_routed:
        first = df.groupby("_key", sort=False)["routed_tier"].first().reindex(keys)
        bad = first.isna() | ~first.astype(str).isin(tier_of)
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} request(s) have no routed tier of catalog {catalog.name!r} "
                f"(e.g. {', '.join(map(str, first[bad].head(3).tolist()))})"
            )
        routed = first.astype(str).map(tier_of).to_numpy(dtype=np.int64)
    else:
        n_models = df.groupby("_key", sort=False)["_tier"].nunique().reindex(keys)
        if (n_models > 1).any():
            raise ValueError(
                f"{int((n_models > 1).sum())} request(s) were answered by several models and the export has no "
                "routed_tier column, so the routed call is unknown; read it as a labelled log instead"
            )
        routed = df.groupby("_key", sort=False)["_tier"].first().reindex(keys).to_numpy(dtype=np.int64)

    cost = np.full((n, n_tiers), np.nan)
    score = np.full((n, n_tiers), np.nan)
    agg = df.groupby(["_key", "_tier"], sort=False).agg(cost=("_cost", "mean"), n=("_cost", "size"))
    if "score" in df:
        agg["score"] = df.groupby(["_key", "_tier"], sort=False)["score"].mean()
    r = keys.get_indexer(agg.index.get_level_values(0))
    c = agg.index.get_level_values(1).to_numpy()
    cost[r, c] = agg["cost"].to_numpy(dtype=float)
    if "score" in agg:
        score[r, c] = pd.to_numeric(agg["score"], errors="coerce").to_numpy(dtype=float)
    # answers of tiers above the routed one: escalations after a failed answer (only a routed_tier export tells)
    escalated = np.isfinite(cost) & (np.arange(n_tiers)[None, :] > routed[:, None]) & has_routed
    escalation = (np.where(escalated, cost, 0.0).sum(axis=1), escalated.sum(axis=1).astype(np.int64))

    gaps = np.argwhere(np.isnan(cost))
    if gaps.size:
        # Price each missing (request, tier) cell with the token counts of the request's routed answer (else of
        # its first answer); input tokens are converted between tokenizers with the learned chars per token.
        is_routed = df["_tier"].to_numpy() == routed[row_of]
        base = df.assign(_routed=is_routed).sort_values("_routed", ascending=False, kind="stable")
        src = base.drop_duplicates("_key").set_index("_key").reindex(keys).iloc[gaps[:, 0]]
        targets = np.asarray(catalog.models, dtype=object)[gaps[:, 1]]
        cpt = priced.chars_per_token
        in_tok = _numeric(src, "input_tokens")
        ratio = np.array(
            [
                cpt.get(str(a), 1.0) / cpt.get(str(b), cpt.get(str(a), 1.0))
                for a, b in zip(src["model"], targets, strict=True)
            ]
        )
        synth = pd.DataFrame(
            {
                "prompt": src["prompt"].to_numpy(),
                "model": targets,
                "input_tokens": in_tok * ratio,
                "output_tokens": _numeric(src, "output_tokens"),
            }
        )
        cost[gaps[:, 0], gaps[:, 1]] = _price_rows(synth, catalog, cost_model)

    task = df.groupby("_key", sort=False)["task"].first().reindex(keys).to_numpy() if "task" in df else [None] * n
    frame = _spend_frame(keys, task, catalog.tier_names, routed, cost, score, escalation)
    frame.attrs.update(router_version=version, note=note)
    return frame


def _numeric(frame: pd.DataFrame, col: str) -> np.ndarray:
    if col not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _price_rows(rows: pd.DataFrame, catalog: Catalog, cost_model: CostModel | None = None) -> np.ndarray:
    """List-price USD of synthetic calls (model, prompt, input_tokens, output_tokens; NaN tokens estimated from the
    prompt length and the tier's typical output, as in :mod:`training.costs`; tiers without prices: ``cost_model``)."""
    chars = rows["prompt"].astype(str).str.len().to_numpy(dtype=float)
    in_tok = _numeric(rows, "input_tokens")
    in_tok = np.where(np.isnan(in_tok), pricing.estimated_input_tokens(chars), in_tok)
    per_tier = pricing.tier_costs(
        catalog.tiers, in_tok, _numeric(rows, "output_tokens"), cost_model=cost_model, prompt_chars=chars
    )
    col = np.array([catalog.index(str(m)) for m in rows["model"]], dtype=np.int64)
    return per_tier[np.arange(len(rows)), col] if len(rows) else np.empty(0)


# --------------------------------------------------------------------------------------------------------------
# savings: tables
# --------------------------------------------------------------------------------------------------------------
def _frame_tiers(frame: pd.DataFrame) -> list[str]:
    tiers = frame.attrs.get("tiers") or [c[len("cost__") :] for c in frame.columns if c.startswith("cost__")]
    if not tiers:
        raise ValueError("not a spend frame: no cost__<tier> columns")
    return list(tiers)


def _spend(frame: pd.DataFrame) -> pd.Series:
    """What routing paid per request: ``spend`` (routed call + escalations); ``cost`` in frames without it."""
    return frame["spend"] if "spend" in frame else frame["cost"]


def _escalation(frame: pd.DataFrame) -> pd.Series:
    return frame["escalation_cost"] if "escalation_cost" in frame else pd.Series(0.0, index=frame.index)


def _check_costs(frame: pd.DataFrame, tiers: list[str]) -> None:
    cols = ["cost"] + (["spend"] if "spend" in frame else []) + [f"cost__{t}" for t in tiers]
    bad = ~np.isfinite(frame[cols].to_numpy(dtype=float)).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of {len(frame)} request(s) lack a cost for some tier; keep only complete prompts "
            "(every tier tried) or give the catalog prices for every tier"
        )


def savings_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Total spend with routing against always using one tier.

    Rows: ``routed`` and ``always <tier>`` per tier. Columns: requests, spend_usd (routed: the routed calls plus the
    escalations the log records), escalation_usd (the escalations' part; 0 for a single tier), usd_per_request,
    usd_per_1k_requests, pct_of_top (spend as % of always-top-tier), routing_saves_usd (this strategy's spend -
    routed spend; negative = routing costs more) and quality (mean score where every request has one, else NaN).
    """
    tiers = _frame_tiers(frame)
    _check_costs(frame, tiers)
    n = len(frame)
    if n == 0:
        raise ValueError("no requests")
    top = float(frame[f"cost__{tiers[-1]}"].sum())
    routed = float(_spend(frame).sum())
    rows = {"routed": (routed, float(_escalation(frame).sum()), frame["quality"])}
    rows |= {f"always {t}": (float(frame[f"cost__{t}"].sum()), 0.0, frame[f"score__{t}"]) for t in tiers}
    records = {}
    for name, (spend, escalated, q) in rows.items():
        qv = pd.to_numeric(q, errors="coerce")
        records[name] = {
            "requests": n,
            "spend_usd": spend,
            "escalation_usd": escalated,
            "usd_per_request": spend / n,
            "usd_per_1k_requests": 1000.0 * spend / n,
            "pct_of_top": 100.0 * spend / top if top > 0 else math.nan,
            "routing_saves_usd": spend - routed,
            "quality": float(qv.mean()) if qv.notna().all() else math.nan,
        }
    out = pd.DataFrame.from_dict(records, orient="index")
    out.index.name = "strategy"
    out["requests"] = out["requests"].astype(np.int64)
    return out


def savings_breakdown(frame: pd.DataFrame, by: str = "task") -> pd.DataFrame:
    """Spend with routing against always-top-tier, grouped by ``task`` or by the routed ``tier``.

    Columns: requests, share_requests, routed_usd (routed calls and escalations), escalation_usd (the escalations'
    part), top_usd (the same requests on the top tier), saved_usd,
    saved_pct (of top_usd), share_routed_spend, quality_routed and quality_top (mean scores where every request in
    the group has one, else NaN). Groups by ``tier`` follow the catalog order; by ``task``, the largest group first.
    An ``all`` row comes last.
    """
    if by not in ("task", "tier"):
        raise ValueError("by must be 'task' or 'tier'")
    tiers = _frame_tiers(frame)
    _check_costs(frame, tiers)
    top = tiers[-1]
    total_routed = float(_spend(frame).sum())
    n_all = len(frame)

    def summarise(part: pd.DataFrame) -> dict[str, float]:
        routed, top_usd = float(_spend(part).sum()), float(part[f"cost__{top}"].sum())
        q, qt = part["quality"], part[f"score__{top}"]
        return {
            "requests": len(part),
            "share_requests": len(part) / n_all if n_all else math.nan,
            "routed_usd": routed,
            "escalation_usd": float(_escalation(part).sum()),
            "top_usd": top_usd,
            "saved_usd": top_usd - routed,
            "saved_pct": 100.0 * (top_usd - routed) / top_usd if top_usd > 0 else math.nan,
            "share_routed_spend": routed / total_routed if total_routed > 0 else math.nan,
            "quality_routed": float(q.mean()) if len(part) and q.notna().all() else math.nan,
            "quality_top": float(qt.mean()) if len(part) and qt.notna().all() else math.nan,
        }

    groups = (
        [t for t in tiers if (frame["tier"] == t).any()] if by == "tier" else list(frame["task"].value_counts().index)
    )
    records = {str(g): summarise(frame.loc[frame[by] == g]) for g in groups}
    if n_all:
        records[ALL] = summarise(frame)
    out = pd.DataFrame.from_dict(records, orient="index")
    out.index.name = "routed_tier" if by == "tier" else "task"
    if len(out):
        out["requests"] = out["requests"].astype(np.int64)
    return out


def monthly_projection(summary: pd.DataFrame, monthly_requests: float) -> pd.DataFrame:
    """Monthly spend per strategy at ``monthly_requests`` requests, from :func:`savings_summary`.

    Columns: monthly_usd (usd_per_request x volume), routing_saves_monthly_usd (this strategy's monthly spend -
    the routed monthly spend). Assumes the sample's mix of tasks and prompt sizes.
    """
    if not (monthly_requests >= 0 and math.isfinite(monthly_requests)):
        raise ValueError("monthly_requests must be a finite number >= 0")
    out = pd.DataFrame(index=summary.index)
    out["monthly_usd"] = summary["usd_per_request"] * float(monthly_requests)
    out["routing_saves_monthly_usd"] = out["monthly_usd"] - float(out.loc["routed", "monthly_usd"])
    return out


def top_tasks(by_task: pd.DataFrame, max_tasks: int = MAX_TASK_BARS) -> pd.DataFrame:
    """The ``max_tasks`` largest tasks of :func:`savings_breakdown` (by requests) and one ``other`` row summing the
    rest (requests, routed_usd, escalation_usd, top_usd, saved_usd; saved_pct recomputed); the ``all`` row dropped."""
    if max_tasks < 1:
        raise ValueError("max_tasks must be at least 1")
    part = by_task.drop(index=ALL, errors="ignore")
    part = part.sort_values("requests", ascending=False, kind="stable") if "requests" in part else part
    if len(part) <= max_tasks:
        return part
    head, rest = part.iloc[:max_tasks], part.iloc[max_tasks:]
    summed = ("requests", "share_requests", "routed_usd", "escalation_usd", "top_usd", "saved_usd")
    sums = [c for c in summed if c in rest]
    other = pd.DataFrame([rest[sums].sum()], index=pd.Index([f"{OTHER} ({len(rest)} tasks)"], name=part.index.name))
    if {"saved_usd", "top_usd"} <= set(other.columns):
        top = float(other["top_usd"].iloc[0])
        other["saved_pct"] = 100.0 * float(other["saved_usd"].iloc[0]) / top if top > 0 else math.nan
    return pd.concat([head, other])


def plot_savings(
    summary: pd.DataFrame, by_task: pd.DataFrame | None = None, title: str = "", max_tasks: int = MAX_TASK_BARS
) -> Any:
    """Bar charts: spend per strategy (left) and, per task, routed against always-top-tier spend (right; the
    ``max_tasks`` largest tasks by requests, the rest summed as one ``other`` bar, see :func:`top_tasks`).

    Returns a standalone :class:`matplotlib.figure.Figure` (Agg canvas, no pyplot).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = 2 if by_task is not None else 1
    fig = Figure(figsize=(6.0 * panels + 1.0, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, panels, 1)
    names = list(summary.index)
    colors = ["C1" if s == "routed" else "0.6" for s in names]
    bars = ax.bar(range(len(names)), summary["spend_usd"], color=colors)
    for b, pct in zip(bars, summary["pct_of_top"], strict=True):
        ax.annotate(f"{pct:.0f}%", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                    fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("spend on the sample (USD)")
    ax.set_title("Spend per strategy (% of always-top-tier)")
    ax.grid(True, axis="y", alpha=0.3)
    if by_task is not None:
        part = top_tasks(by_task, max_tasks)
        ax2 = fig.add_subplot(1, panels, 2)
        x = np.arange(len(part))
        ax2.bar(x - 0.2, part["top_usd"], width=0.4, color="0.6", label="always top tier")
        ax2.bar(x + 0.2, part["routed_usd"], width=0.4, color="C1", label="routed")
        ax2.set_xticks(x, [str(i) for i in part.index], rotation=30, ha="right", fontsize=8)
        ax2.set_ylabel("spend on the sample (USD)")
        ax2.set_title("Spend per task")
        ax2.legend(fontsize=8)
        ax2.grid(True, axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig
