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


# --- escalations, router versions and time windows -----------------------------------------------------------
def _other_catalog() -> Catalog:
    # the catalog of a later router version: other tiers, so the first version's decisions are not in it
    return Catalog(
        name="o",
        tiers=[
            Tier(name="x", model="m-x", input_usd_per_1m=1.0, output_usd_per_1m=1.0),
            Tier(name="y", model="m-y", input_usd_per_1m=50.0, output_usd_per_1m=50.0),
        ],
    )


def _two_version_log(path: Path) -> None:
    import time

    dlog = DecisionLog(path).start()
    for version, cat, specs in (
        ("t/1", _catalog(), [("r1", "a", 0.001, 0.05), ("r2", "b", 0.01, 0.05)]),
        ("o/1", _other_catalog(), [("s1", "x", 0.002, 0.1)]),
    ):
        dlog.record_catalog(version, cat.to_yaml())
        for rid, tier, est, est_top in specs:
            dlog.record_decision(
                request_id=rid, endpoint="/v1/route", text="q" * 400, role="single", tier=tier,
                tier_index=cat.index(tier), model=f"m-{tier}", threshold=0.8, reason="best_expected_utility",
                probabilities={t: 0.5 for t in cat.tier_names}, router_version=version, est_cost_usd=est,
                est_top_cost_usd=est_top, latency_ms=1.0,
            )
        assert dlog.flush()
        time.sleep(0.01)  # the second version's decisions are strictly later
    # r1 (routed a) failed verification and escalated to b, then c; r2 (routed b) was answered by b alone
    dlog.record_feedback(request_id="r1", tier="a", model="m-a", score=0.0, acceptable=False, cost_usd=0.001)
    dlog.record_feedback(request_id="r1", tier="b", model="m-b", score=0.0, acceptable=False, cost_usd=0.02)
    dlog.record_feedback(request_id="r1", tier="c", model="m-c", score=1.0, acceptable=True,
                         input_tokens=100, output_tokens=100)
    dlog.record_feedback(request_id="r2", tier="b", model="m-b", score=1.0, acceptable=True, cost_usd=0.011)
    assert dlog.flush()
    dlog.close()


def test_decision_log_spanning_two_catalogs_defaults_to_the_latest_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "decisions.db"
    _two_version_log(db)
    log = reports.read_decision_log(db)
    assert sorted(log.decisions["router_version"]) == ["o/1", "t/1", "t/1"] and len(log.feedback) == 4
    assert log.catalog("t/1").tier_names == ["a", "b", "c"]
    with pytest.raises(ValueError, match="router_version"):
        log.catalog("nope/9")
    with caplog.at_level("WARNING", logger="tierwise.reports"):
        latest = reports.spend_frame_from_decisions(log.decisions, log.catalog("o/1"))
    assert list(latest.index) == ["s1"] and latest.attrs["router_version"] == "o/1"
    assert "spans 2 router versions" in latest.attrs["note"] and "o/1" in latest.attrs["note"]
    assert "spans 2 router versions" in caplog.text
    first = reports.spend_frame_from_decisions(log.decisions, log.catalog("t/1"), router_version="t/1")
    assert list(first.index) == ["r1", "r2"] and first.attrs["note"] == ""
    with pytest.raises(ValueError, match=r"router_version: no rows of 'x/9'; the log holds"):
        reports.spend_frame_from_decisions(log.decisions, _catalog(), router_version="x/9")


def test_escalation_calls_count_as_spend(tmp_path: Path) -> None:
    db = tmp_path / "decisions.db"
    _two_version_log(db)
    log = reports.read_decision_log(db)
    frame = reports.spend_frame_from_decisions(
        log.decisions, _catalog(), chars_per_token=4.0, feedback=log.feedback, router_version="t/1"
    )
    # r1: routed a (its logged estimate), then b (logged cost) and c (its tokens at c's list price)
    c_usd = (100 * 100.0 + 100 * 200.0) / 1e6
    assert frame.loc["r1", "cost"] == pytest.approx(0.001)
    assert frame.loc["r1", "escalations"] == 2
    assert frame.loc["r1", "escalation_cost"] == pytest.approx(0.02 + c_usd)
    assert frame.loc["r1", "spend"] == pytest.approx(0.001 + 0.02 + c_usd)
    assert frame.loc["r2", "escalations"] == 0 and frame.loc["r2", "spend"] == pytest.approx(0.01)
    s = reports.savings_summary(frame)
    assert s.loc["routed", "spend_usd"] == pytest.approx(0.001 + 0.02 + c_usd + 0.01)
    assert s.loc["routed", "escalation_usd"] == pytest.approx(0.02 + c_usd)
    assert s.loc["always c", "escalation_usd"] == 0
    by_tier = reports.savings_breakdown(frame, "tier")
    assert by_tier.loc["a", "routed_usd"] == pytest.approx(0.001 + 0.02 + c_usd)
    # without feedback the escalations are unknown: the first choices only (as before)
    plain = reports.spend_frame_from_decisions(log.decisions, _catalog(), chars_per_token=4.0, router_version="t/1")
    assert plain["escalation_cost"].sum() == 0 and plain["spend"].tolist() == plain["cost"].tolist()


def test_export_escalations_count_as_spend(tmp_path: Path) -> None:
    db = tmp_path / "decisions.db"
    _decision_log(db, feedback=True)
    export, _ = export_log(db)
    frame = reports.spend_frame_from_export(export, _catalog())
    # r1 was routed to a and c answered it too: c's observed 0.5 USD was paid on top
    assert frame.loc["r1", "escalation_cost"] == pytest.approx(0.5) and frame.loc["r1", "escalations"] == 1
    assert frame.loc["r1", "spend"] == pytest.approx(frame.loc["r1", "cost"] + 0.5)
    assert frame.loc["r2", "escalation_cost"] == 0  # routed to the top tier: nothing above it
    assert reports.savings_summary(frame).loc["routed", "spend_usd"] == pytest.approx(frame["spend"].sum())


def test_decisions_in_a_time_window() -> None:
    decisions = pd.DataFrame(
        {
            "request_id": ["r1", "r2", "r3"],
            "created_at": ["2026-10-31T23:00:00.000+00:00", "2026-11-01T08:00:00.000+00:00",
                           "2026-11-02T00:00:00.000+00:00"],
            "tier": ["a", "b", "c"],
            "prompt_chars": [400, 400, 400],
            "router_version": ["t/1"] * 3,
        }
    )
    frame = reports.spend_frame_from_decisions(decisions, _catalog(), since="2026-11-01", until="2026-11-02")
    assert list(frame.index) == ["r2"]  # since inclusive, until exclusive, naive dates are UTC
    assert "1 of 3 row(s)" in frame.attrs["note"]
    assert list(reports.spend_frame_from_decisions(decisions, _catalog(), since="2026-11-01").index) == ["r2", "r3"]
    with pytest.raises(ValueError, match="since: 'yesterday' is not an ISO date"):
        reports.spend_frame_from_decisions(decisions, _catalog(), since="yesterday")
    with pytest.raises(ValueError, match="no rows between"):
        reports.spend_frame_from_decisions(decisions, _catalog(), since="2027-01-01")
    with pytest.raises(ValueError, match="must be before until"):
        reports.spend_frame_from_decisions(decisions, _catalog(), since="2026-11-02", until="2026-11-01")


def test_plot_savings_shows_the_top_tasks_and_other() -> None:
    rng = np.random.default_rng(0)
    tasks = [f"task-{i:02d}" for i in range(57)]
    n = 2000
    chosen = rng.integers(0, 3, n)
    cost = np.tile([1.0, 2.0, 4.0], (n, 1))
    frame = reports._spend_frame(
        pd.Index([f"r{i}" for i in range(n)], name="request_id"),
        rng.choice(tasks, n, p=np.arange(57, 0, -1) / np.arange(57, 0, -1).sum()),
        ["a", "b", "c"], chosen, cost, np.full((n, 3), np.nan),
    )
    by_task = reports.savings_breakdown(frame, "task")
    assert len(by_task) == 58  # 57 tasks + all
    top = reports.top_tasks(by_task, 15)
    assert len(top) == 16 and top.index[-1] == "other (42 tasks)"
    assert top["requests"].sum() == n and top["routed_usd"].sum() == pytest.approx(frame["spend"].sum())
    assert list(top.index[:15]) == list(by_task.drop(index="all").sort_values("requests", ascending=False).index[:15])
    fig = reports.plot_savings(reports.savings_summary(frame), by_task)
    labels = [t.get_text() for t in fig.axes[1].get_xticklabels()]
    assert len(labels) == reports.MAX_TASK_BARS + 1 and labels[-1].startswith("other")
    assert len(reports.top_tasks(by_task.head(5), 15)) == 5  # few tasks: no "other" bar
    with pytest.raises(ValueError, match="max_tasks"):
        reports.top_tasks(by_task, 0)


# --- evaluation plots ----------------------------------------------------------------------------------------
def _report(tier_costs: list[float], n_tiers: int = 4):
    from training import metrics as M

    rng = np.random.default_rng(0)
    n = 300
    difficulty = rng.random(n)
    p_true = np.clip(np.linspace(0.3, 1.0, n_tiers)[None, :] - difficulty[:, None] + 0.45, 0.02, 0.98)
    score = (rng.random((n, n_tiers)) < p_true).astype(float)
    cost = np.asarray(tier_costs)[None, :] * rng.lognormal(0.0, 0.1, (n, n_tiers))
    return M.evaluate_router(p_true, score, cost, score >= 1.0, default_threshold=0.7,
                             tier_names=[f"t{i}" for i in range(n_tiers)])


def test_cost_quality_axis_is_log_when_costs_span_orders_of_magnitude() -> None:
    from training import plots

    wide = plots.plot_cost_quality(_report([1e-5, 1e-4, 1e-3, 1e-2]))  # 3 orders of magnitude
    assert wide.axes[0].get_xscale() == "log"
    narrow = plots.plot_cost_quality(_report([1e-3, 2e-3, 4e-3, 8e-3]))  # under one order
    assert narrow.axes[0].get_xscale() == "linear"
    assert plots.plot_cost_quality(_report([1e-5, 1e-4, 1e-3, 1e-2]), log_x=False).axes[0].get_xscale() == "linear"
    assert plots.wants_log_x([0.0, 1e-3, 1e-1]) and not plots.wants_log_x([0.0, 1e-3, 2e-2])  # free tiers left out


def test_confusion_numbers_are_readable() -> None:
    from training import plots

    fig = plots.plot_confusion(_report([1e-3, 2e-3, 4e-3, 8e-3]))
    sizes = [t.get_fontsize() for ax in fig.axes for t in ax.texts]
    assert sizes and min(sizes) >= 10  # a 5 x 4 matrix: large numbers
    assert plots.cell_fontsize(5) > plots.cell_fontsize(11) >= 7 and plots.cell_fontsize(40) == 7


def test_spend_frame_from_log_uses_the_stored_catalog_of_the_version(tmp_path: Path) -> None:
    db = tmp_path / "decisions.db"
    _two_version_log(db)
    latest = reports.spend_frame_from_log(db)  # o/1, priced with o/1's stored catalog
    assert latest.attrs["router_version"] == "o/1" and latest.attrs["tiers"] == ["x", "y"]
    first = reports.spend_frame_from_log(db, router_version="t/1", chars_per_token=4.0)
    assert first.attrs["tiers"] == ["a", "b", "c"] and first.loc["r1", "escalations"] == 2
    empty = tmp_path / "empty.db"
    DecisionLog(empty).start().close()
    with pytest.raises(ValueError, match="no decisions yet"):
        reports.spend_frame_from_log(empty)


def test_cli_decisions_savings_reports_one_version_with_escalations(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from training.cli import app

    db = tmp_path / "decisions.db"
    _two_version_log(db)
    runner = CliRunner()
    res = runner.invoke(app, ["decisions", "savings", "--db", str(db), "--router-version", "t/1",
                              "--plot", str(tmp_path / "s.png")])
    assert res.exit_code == 0, res.stderr
    assert "router version t/1: 2 requests" in res.stdout and "routed" in res.stdout
    frame = reports.spend_frame_from_log(db, router_version="t/1")
    summary = reports.savings_summary(frame)
    # the printed routed spend is the frame's, escalations included
    assert f"{summary.loc['routed', 'spend_usd']:.6f}"[:6] in res.stdout
    assert summary.loc["routed", "escalation_usd"] > 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    res = runner.invoke(app, ["decisions", "savings", "--db", str(db)])  # default: the latest version, with a note
    assert res.exit_code == 0 and "router version o/1" in res.stdout and "spans 2 router versions" in res.stderr
    res = runner.invoke(app, ["decisions", "savings", "--db", str(tmp_path / "missing.db")])
    assert res.exit_code != 0 and "no decision log there" in res.stderr
