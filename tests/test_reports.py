"""The notebook tables (training.reports): per-task breakdown, worst under-routed prompts, savings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from router.catalog import Acceptability, Catalog, Tier
from router.service.decision_log import DecisionLog, export_log, iter_decisions
from training import reports
from training.labels import label_prompts
from training.metrics import operating_point


def _catalog() -> Catalog:
    # list prices in USD per 1M tokens: a = 1/2, b = 10/20, c = 100/200
    return Catalog(
        name="t",
        tiers=[
            Tier(name="a", model="m-a", input_usd_per_1m=1.0, output_usd_per_1m=2.0),
            Tier(name="b", model="m-b", input_usd_per_1m=10.0, output_usd_per_1m=20.0, typical_output_tokens=100),
            Tier(name="c", model="m-c", input_usd_per_1m=100.0, output_usd_per_1m=200.0),
        ],
        acceptability=Acceptability(threshold=1.0),
    )


# prompt -> (task, prompt text, scores a/b/c, costs a/b/c)
ROWS = {
    "p1": ("x", "easy one", (1.0, 1.0, 1.0), (1.0, 2.0, 4.0)),  # label a
    "p2": ("x", "medium   one\nwith newline", (0.0, 1.0, 1.0), (1.0, 2.0, 4.0)),  # label b
    "p3": ("y", "hard " * 60, (0.0, 0.0, 1.0), (1.0, 2.0, 4.0)),  # label c
    "p4": (None, "hopeless", (0.0, 0.0, 0.0), (1.0, 2.0, 4.0)),  # no acceptable tier
    "p5": ("y", "hard too", (0.0, 0.0, 1.0), (2.0, 3.0, 8.0)),  # label c
}
CHOICE = np.array([1, 0, 0, 2, 2])  # p1 over-routed, p2 and p3 under-routed, p4 none, p5 exact


def _labelled():
    recs = []
    for pid, (task, text, scores, costs) in ROWS.items():
        for t, model in enumerate(("m-a", "m-b", "m-c")):
            recs.append((pid, text, model, scores[t], costs[t], task))
    df = pd.DataFrame(recs, columns=["prompt_id", "prompt", "model", "score", "cost_usd", "task"])
    return label_prompts(df, _catalog())


def test_truncate() -> None:
    assert reports.truncate("a  b\n\tc") == "a b c"
    out = reports.truncate("word " * 100, 20)
    assert len(out) == 20 and out.endswith("\u2026")
    assert reports.truncate("x" * 20, 20) == "x" * 20
    with pytest.raises(ValueError):
        reports.truncate("x", 0)


def test_routed_outcomes_labels_and_errors() -> None:
    out = reports.routed_outcomes(_labelled(), CHOICE)
    assert out["label"].tolist() == [0, 1, 2, -1, 2]
    assert out["label_tier"].tolist() == ["a", "b", "c", "none", "c"]
    assert out["under"].tolist() == [False, True, True, False, False]
    assert out["over"].tolist() == [True, False, False, False, False]
    assert out["task"].tolist() == ["x", "x", "y", reports.NO_TASK, "y"]
    assert out.loc["p5", "cost_chosen"] == 8.0 and out.loc["p2", "score_label"] == 1.0


def test_routed_outcomes_rejects_unobserved_choice_and_bad_shape() -> None:
    lab = _labelled()
    lab.score[0, 1] = np.nan
    with pytest.raises(ValueError, match="complete"):
        reports.routed_outcomes(lab, CHOICE)
    with pytest.raises(ValueError, match="shape"):
        reports.routed_outcomes(_labelled(), CHOICE[:3])
    with pytest.raises(ValueError, match="outside"):
        reports.routed_outcomes(_labelled(), np.array([0, 1, 2, 3, 0]))


def test_per_task_breakdown_values() -> None:
    table = reports.per_task_breakdown(_labelled(), CHOICE)
    assert list(table.index) == ["x", "y", reports.NO_TASK, "all"]  # largest first (ties: first seen), all last
    x = table.loc["x"]
    assert x["n"] == 2
    assert x["quality"] == pytest.approx(0.5)  # p1 on b: 1, p2 on a: 0
    assert x["cost"] == pytest.approx(1.5) and x["top_cost"] == pytest.approx(4.0)
    assert x["cost_pct_top"] == pytest.approx(37.5)
    assert x["under_routing"] == pytest.approx(0.5) and x["over_routing"] == pytest.approx(0.5)
    assert x["share_a"] == pytest.approx(0.5) and x["share_b"] == pytest.approx(0.5) and x["share_c"] == 0
    assert table.loc[reports.NO_TASK, "no_acceptable"] == 1.0
    assert np.isnan(table.loc[reports.NO_TASK, "under_routing"])  # no prompt with an acceptable tier


def test_per_task_all_row_matches_operating_point() -> None:
    lab = _labelled()
    row = reports.per_task_breakdown(lab, CHOICE).loc["all"]
    op = operating_point(CHOICE, lab.prompts["label"].to_numpy(), lab.score, lab.cost, lab.acceptable > 0.5)
    for key in ("quality", "cost", "cost_pct_top", "unacceptable", "under_routing", "over_routing"):
        assert row[key] == pytest.approx(op[key]), key
    for t, name in enumerate(lab.tier_names):
        assert row[f"share_{name}"] == pytest.approx(op[f"share_t{t}"])


def test_worst_under_routed_order_truncation_and_limit() -> None:
    lab = _labelled()
    lab.score[2, 0] = 0.5  # p3's chosen tier now scored 0.5: it loses less quality than p2
    worst = reports.worst_under_routed(lab, CHOICE, max_chars=30)
    assert list(worst.index) == ["p2", "p3"]
    assert worst["quality_lost"].tolist() == pytest.approx([1.0, 0.5])
    assert worst.loc["p2", "prompt"] == "medium one with newline"
    assert len(worst.loc["p3", "prompt"]) == 30
    assert worst.loc["p3", "cost_saved"] == pytest.approx(3.0)
    assert list(worst.columns)[-1] == "prompt"
    assert len(reports.worst_under_routed(lab, CHOICE, n=1)) == 1
    assert reports.worst_under_routed(lab, np.array([2, 2, 2, 2, 2])).empty


def test_savings_from_labelled() -> None:
    frame = reports.spend_frame_from_labelled(_labelled(), CHOICE)
    assert frame["tier"].tolist() == ["b", "a", "a", "c", "c"]
    assert frame["cost"].tolist() == [2.0, 1.0, 1.0, 4.0, 8.0]
    s = reports.savings_summary(frame)
    assert list(s.index) == ["routed", "always a", "always b", "always c"]
    assert s.loc["routed", "spend_usd"] == pytest.approx(16.0)
    assert s.loc["always c", "spend_usd"] == pytest.approx(24.0)
    assert s.loc["routed", "pct_of_top"] == pytest.approx(100 * 16 / 24)
    assert s.loc["always c", "routing_saves_usd"] == pytest.approx(8.0)
    assert s.loc["always a", "routing_saves_usd"] == pytest.approx(6.0 - 16.0)
    assert s.loc["routed", "usd_per_1k_requests"] == pytest.approx(16.0 / 5 * 1000)
    assert s.loc["routed", "quality"] == pytest.approx((1 + 0 + 0 + 0 + 1) / 5)
    assert (s["requests"] == 5).all()


def test_savings_breakdown_by_task_and_tier() -> None:
    frame = reports.spend_frame_from_labelled(_labelled(), CHOICE)
    by_task = reports.savings_breakdown(frame, "task")
    assert list(by_task.index) == ["x", "y", reports.NO_TASK, "all"]
    y = by_task.loc["y"]
    assert y["routed_usd"] == pytest.approx(9.0) and y["top_usd"] == pytest.approx(12.0)
    assert y["saved_usd"] == pytest.approx(3.0) and y["saved_pct"] == pytest.approx(25.0)
    assert by_task.loc["all", "routed_usd"] == pytest.approx(reports.savings_summary(frame).loc["routed", "spend_usd"])
    assert by_task.drop(index="all")["share_routed_spend"].sum() == pytest.approx(1.0)
    by_tier = reports.savings_breakdown(frame, "tier")
    assert list(by_tier.index) == ["a", "b", "c", "all"]  # catalog order
    assert by_tier.loc["c", "saved_usd"] == 0
    assert by_tier.loc["a", "requests"] == 2 and by_tier.loc["a", "top_usd"] == pytest.approx(8.0)
    with pytest.raises(ValueError, match="by must be"):
        reports.savings_breakdown(frame, "role")


def test_monthly_projection() -> None:
    frame = reports.spend_frame_from_labelled(_labelled(), CHOICE)
    proj = reports.monthly_projection(reports.savings_summary(frame), 1e6)
    assert proj.loc["routed", "monthly_usd"] == pytest.approx(16.0 / 5 * 1e6)
    assert proj.loc["routed", "routing_saves_monthly_usd"] == 0
    assert proj.loc["always c", "routing_saves_monthly_usd"] == pytest.approx(8.0 / 5 * 1e6)
    with pytest.raises(ValueError):
        reports.monthly_projection(reports.savings_summary(frame), float("nan"))


def test_savings_need_every_cost() -> None:
    lab = _labelled()
    lab.cost[1, 2] = np.nan
    frame = reports.spend_frame_from_labelled(lab, CHOICE)
    with pytest.raises(ValueError, match="lack a cost"):
        reports.savings_summary(frame)


def test_plot_savings_returns_figure() -> None:
    frame = reports.spend_frame_from_labelled(_labelled(), CHOICE)
    fig = reports.plot_savings(reports.savings_summary(frame), reports.savings_breakdown(frame), title="t")
    assert len(fig.axes) == 2
    assert len(reports.plot_savings(reports.savings_summary(frame)).axes) == 1


# --- the service's decision log ---------------------------------------------------------------------------------
def _decision_log(path: Path, *, feedback: bool) -> None:
    dlog = DecisionLog(path, store_prompts=True).start()
    specs = [("r1", "x" * 400, "a", 0.001, 0.05, "chat"), ("r2", "y" * 800, "c", None, None, None)]
    for rid, text, tier, est, est_top, task in specs:
        dlog.record_decision(
            request_id=rid, endpoint="/v1/route", text=text, role="single", tier=tier,
            tier_index=_catalog().index(tier), model=f"m-{tier}", threshold=0.8, reason="cheapest_meeting_threshold",
            probabilities={"a": 0.9, "b": 0.9, "c": 0.9}, router_version="t/1", est_cost_usd=est,
            est_top_cost_usd=est_top, latency_ms=1.0, metadata={"task": task} if task else None,
        )
    if feedback:
        # r1 answered by its routed tier a (tokens, no cost) and also, in a shadow call, by c (logged cost)
        dlog.record_feedback(request_id="r1", tier="a", model="m-a", score=1.0, acceptable=True,
                             input_tokens=100, output_tokens=50)
        dlog.record_feedback(request_id="r1", tier="c", model="m-c", score=1.0, acceptable=True, cost_usd=0.5)
        dlog.record_feedback(request_id="r2", tier="c", model="m-c", score=0.0, acceptable=False, cost_usd=0.2,
                             input_tokens=200, output_tokens=100)
    assert dlog.flush()
    dlog.close()


def test_spend_frame_from_decisions(tmp_path: Path) -> None:
    db = tmp_path / "decisions.db"
    _decision_log(db, feedback=False)
    decisions = pd.DataFrame(iter_decisions(db))
    frame = reports.spend_frame_from_decisions(decisions, _catalog(), chars_per_token=4.0)
    assert frame.loc["r1", "tier"] == "a" and frame.loc["r2", "tier"] == "c"
    assert frame.loc["r1", "cost"] == pytest.approx(0.001)  # logged estimate of the routed tier
    assert frame.loc["r1", "cost__c"] == pytest.approx(0.05)  # logged estimate of the top tier
    # r1 on b: 100 input tokens (400 chars / 4) and b's typical 100 output tokens at 10 / 20 USD per 1M
    assert frame.loc["r1", "cost__b"] == pytest.approx((100 * 10 + 100 * 20) / 1e6)
    # r2 logged no estimates: catalog prices, 200 input tokens, default output tokens for c
    from router.pricing import DEFAULT_OUTPUT_TOKENS

    assert frame.loc["r2", "cost"] == pytest.approx((200 * 100 + DEFAULT_OUTPUT_TOKENS * 200) / 1e6)
    assert frame.loc["r1", "task"] == "chat" and frame.loc["r2", "task"] == reports.NO_TASK
    s = reports.savings_summary(frame)
    assert s.loc["routed", "spend_usd"] == pytest.approx(frame["cost"].sum())
    assert np.isnan(s.loc["routed", "quality"])  # no scores in decisions
    other = Catalog(name="o", tiers=[Tier(name="z", model="m-z", input_usd_per_1m=1, output_usd_per_1m=1)])
    with pytest.raises(ValueError, match="not in catalog"):
        reports.spend_frame_from_decisions(decisions, other)


def test_spend_frame_from_export(tmp_path: Path) -> None:
    db = tmp_path / "decisions.db"
    _decision_log(db, feedback=True)
    export, summary = export_log(db, tmp_path / "export.csv")
    assert summary.exported_rows == 3
    frame = reports.spend_frame_from_export(export, _catalog())
    assert list(frame.index) == ["r1", "r2"]
    assert frame["tier"].tolist() == ["a", "c"]
    # r1: routed a priced from its tokens; c observed; b priced from a's tokens (same tokenizer ratio: no tokens
    # learned for b, so the count is kept)
    assert frame.loc["r1", "cost"] == pytest.approx((100 * 1 + 50 * 2) / 1e6)
    assert frame.loc["r1", "cost__c"] == pytest.approx(0.5)
    assert frame.loc["r1", "cost__b"] == pytest.approx((100 * 10 + 50 * 20) / 1e6)
    assert frame.loc["r1", "score__c"] == 1.0 and np.isnan(frame.loc["r1", "score__b"])
    assert frame.loc["r2", "cost"] == pytest.approx(0.2)
    assert frame.loc["r2", "cost__a"] == pytest.approx((200 * 1 + 100 * 2) / 1e6)
    assert frame.loc["r2", "quality"] == 0.0
    # the same file read back as the notebook does (canonical reader)
    from training.readers import LogOptions, read_log

    again = reports.spend_frame_from_export(read_log(tmp_path / "export.csv", LogOptions()), _catalog())
    pd.testing.assert_series_equal(again["cost"], frame["cost"], check_names=False)


def test_spend_frame_from_export_without_routed_tier() -> None:
    df = pd.DataFrame(
        {
            "prompt_id": ["p1", "p2"],
            "prompt": ["hello", "world"],
            "model": ["m-b", "m-a"],
            "score": [1.0, 1.0],
            "cost_usd": [0.01, 0.001],
            "input_tokens": [10.0, 10.0],
            "output_tokens": [10.0, 10.0],
        }
    )
    frame = reports.spend_frame_from_export(df, _catalog())
    assert frame["tier"].tolist() == ["b", "a"]
    assert frame.loc["p1", "cost"] == pytest.approx(0.01)
    assert frame.loc["p1", "cost__c"] == pytest.approx((10 * 100 + 10 * 200) / 1e6)
    both = pd.concat([df, df.assign(model="m-c")], ignore_index=True)
    with pytest.raises(ValueError, match="routed_tier"):
        reports.spend_frame_from_export(both, _catalog())
    with pytest.raises(ValueError, match="not in catalog"):
        reports.spend_frame_from_export(df.assign(model="gpt-x"), _catalog())
