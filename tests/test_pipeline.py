"""End to end: train on the synthetic demo log, register in a real SQLite MLflow store, load, route, promote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from router.catalog import Catalog
from router.core import Router
from training import registry
from training.demo import demo_catalog, demo_log
from training.pipeline import TrainConfig, TrainingDataError, prepare_data, train

NAME = "tierwise-test"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return f"sqlite:///{db}"


@pytest.fixture(scope="module")
def trained(store: str):
    return train(demo_log(), catalog=demo_catalog(), register=NAME, tracking_uri=store, progress=False)


def test_first_version_becomes_champion(trained, store: str) -> None:
    assert trained.model_version == "1"
    assert trained.promoted and trained.promotion_reason == "no current champion"
    assert registry.alias_version(NAME, "champion", store) == "1"
    assert registry.alias_version(NAME, "challenger", store) == "1"
    m = trained.metrics
    for key in ("aiq", "aiq_zero", "aiq_oracle", "gap_closed", "default_threshold"):
        assert key in m and np.isfinite(m[key])
    # the synthetic log is learnable: the router beats the zero router
    assert m["aiq"] > m["aiq_zero"]
    assert m["aiq_oracle"] >= m["aiq"]
    # the per-prompt model beats every tier's base rate, and the task prior alone, in Brier score
    assert m["brier"] < m["brier_ref_group_prior"] < m["brier_ref_base_rates"]
    assert 0 < m["brier_skill"] < 1


def test_run_logs_params_metrics_and_artifacts(trained, store: str) -> None:
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(trained.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["encoder"] == TrainConfig().encoder
    assert run.data.params["encoder_layers_used"] == "-1,3"  # last + middle layer of the 6-layer MiniLM
    # per-log model selection: the candidates' out-of-fold figures and the choice are logged
    assert run.data.params["layout"] == "auto"
    chosen = run.data.params["layout_used"]
    assert chosen in ("linear", "per_tier", "blend") and trained.selection.chosen == chosen
    if chosen != "per_tier":
        assert run.data.params["linear_bags_used"] == "1"  # the demo log is not small
    for c in ("linear", "per_tier", "blend"):
        assert np.isfinite(run.data.metrics[f"selection_aiq_{c}"])
        assert np.isfinite(run.data.metrics[f"selection_diff_lo_{c}"])
    assert run.data.tags["tierwise.selection"] == trained.selection.reason
    assert "aiq" in run.data.metrics
    # phase timings (wall seconds): the phases add up to at most the total
    times = {k: v for k, v in run.data.metrics.items() if k.startswith("time_")}
    phases = ("prepare", "embed", "features", "fit", "evaluate", "log")
    assert {f"time_{p}_s" for p in (*phases, "select", "total")} <= set(times) and min(times.values()) >= 0
    assert sum(times[f"time_{p}_s"] for p in phases) <= times["time_total_s"] + 1e-6
    assert times["time_select_s"] <= times["time_fit_s"] and trained.timings["total"] == times["time_total_s"]
    assert run.data.metrics["embed_new_prompts"] >= 0
    paths = {a.path for a in client.list_artifacts(trained.run_id)}
    assert {"catalog.yaml", "labelled_summary.json", "plots", "evaluation.md", "selection.md"} <= paths
    evaluation = client.download_artifacts(trained.run_id, "evaluation.md")
    assert "## Model selection" in Path(evaluation).read_text(encoding="utf-8")
    plots = {a.path for a in client.list_artifacts(trained.run_id, "plots")}
    assert "plots/cost_quality.png" in plots


def test_router_loads_from_registry_and_routes(trained, store: str) -> None:
    r = Router.load(f"models:/{NAME}@champion", tracking_uri=store)
    assert r.ref.version == "1" and r.ref.name == NAME
    assert r.tiers == demo_catalog().tier_names
    d = r.route("Say hello to my friend.")
    assert d.tier in r.tiers and d.model == demo_catalog().tier(d.tier).model
    assert set(d.p_acceptable) == set(r.tiers)
    assert d.threshold == pytest.approx(trained.threshold)
    hard = (
        "Prove that for every prime p > 3, p^2 - 1 is divisible by 24. Then write a Python function that checks it "
        "for all primes below 10^6, explain its complexity step by step, and list three edge cases."
    )
    probs = r.predict_proba(["hi there, how are you?", hard])
    assert list(probs.columns) == r.tiers
    # an easy greeting is more likely to be fine on the cheapest tier than a multi-step proof + code task
    assert probs.iloc[0, 0] > probs.iloc[1, 0]
    batch = r.route_batch(["hi there, how are you?", hard])
    assert [b.tier for b in batch] == [r.route("hi there, how are you?").tier, r.route(hard).tier]


def test_router_routes_with_a_task_the_caller_names(trained, store: str) -> None:
    from training.demo import TASKS

    r = Router.load(f"models:/{NAME}@champion", tracking_uri=store)
    assert r.known_tasks == sorted(TASKS)
    p = "Write a Python function that merges two sorted lists."
    plain = r.route(p).p_acceptable
    assert r.route(p, task="no-such-task").p_acceptable == plain
    assert r.route(p, task="code").p_acceptable != plain
    assert r.route(p, task="math").p_acceptable != r.route(p, task="code").p_acceptable
    batch = r.route_batch([p, p], tasks=["math", None])
    assert [d.p_acceptable for d in batch] == [r.route(p, task="math").p_acceptable, plain]
    with pytest.raises(ValueError, match="1 entries for 2 prompts"):
        r.route_batch([p, p], tasks=["math"])


@pytest.fixture(scope="module")
def demo_linear():
    """The demo log and the pinned linear layout fitted on it (prepared, fitted), shared by two tests."""
    from training.pipeline import fit_router

    prepared = prepare_data(demo_log(), demo_catalog())
    return prepared, fit_router(prepared, TrainConfig(layout="linear"), progress=False)


def test_evaluation_passes_the_logged_task_unless_told_not_to(demo_linear) -> None:
    import dataclasses

    from training.evaluation import tasks_for
    from training.pipeline import evaluate

    prepared, fitted = demo_linear
    prompts = prepared.labelled.prompts
    tasks = tasks_for(prompts, TrainConfig().eval_known_task)
    assert tasks == prompts["task"].astype(str).tolist()
    assert tasks_for(prompts, TrainConfig(eval_known_task=False).eval_known_task) is None
    assert tasks_for(prompts.drop(columns="task"), True) is None
    named = evaluate(prepared, fitted).metrics()
    predicted = evaluate(prepared, dataclasses.replace(fitted, config=TrainConfig(eval_known_task=False))).metrics()
    assert named["brier_ref_group_prior"] != predicted["brier_ref_group_prior"]


def test_router_prices_each_prompt_by_length(trained, store: str) -> None:
    r = Router.load(f"models:/{NAME}@champion", tracking_uri=store)
    cm = r.cost_model
    assert cm is not None and r.decision_rule == "utility"
    assert len(cm.slope) == len(r.tiers) and cm.unit > 0
    costs = cm.predict([100, 20_000])
    assert (costs[1] >= costs[0]).all() and (costs[1] > costs[0]).any()
    # same probabilities, longer prompt: the expensive tiers cost more, so the choice never goes up
    proba = r.predict_proba_array(["Summarise the attached report for the board."])[0]
    for knob in (0.5, 0.8, 0.9, 0.95, 0.99):
        short = r.decide(proba, threshold=knob, prompt_chars=50).tier_index
        long_ = r.decide(proba, threshold=knob, prompt_chars=200_000).tier_index
        assert long_ <= short
    assert any(
        r.decide(proba, threshold=k, prompt_chars=200_000).tier_index
        < r.decide(proba, threshold=k, prompt_chars=50).tier_index
        for k in np.linspace(0.5, 0.999, 60)
    )
    # route() prices the prompt it routes
    text = "Summarise the attached report for the board."
    assert r.route(text).tier == r.decide(proba, prompt_chars=len(text)).tier


def test_router_roles_and_clamps(trained, store: str) -> None:
    r = Router.load(f"models:/{NAME}@champion", tracking_uri=store)
    plan = r.route("hi", role="plan")
    assert plan.tier_index >= r.catalog.plan_floor
    top = r.route("hi", threshold=1.0, max_tier=r.tiers[0])
    assert top.tier == r.tiers[0]
    assert top.escalation == []
    low = r.route("hi", threshold=0.0)
    assert low.tier == r.tiers[0]
    # escalation: only the tiers that raise P(acceptable) over the best so far, in price order
    best, want = low.p_acceptable[r.tiers[0]], []
    for t in r.tiers[1:]:
        if low.p_acceptable[t] > best:
            best = low.p_acceptable[t]
            want.append(t)
    assert low.escalation == want
    with pytest.raises(ValueError, match="unknown role"):
        r.route("hi", role="boss")
    with pytest.raises(KeyError, match="unknown tier"):
        r.route("hi", max_tier="gigantic")


def test_router_loads_from_local_directory(trained, store: str, tmp_path: Path) -> None:
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{NAME}/1", dst_path=str(tmp_path), tracking_uri=store
    )
    r = Router.load(local)
    r2 = Router.load(Path(local) / "artifacts" / "bundle")
    p = "Translate 'good morning' to French."
    assert r.route(p).p_acceptable == r2.route(p).p_acceptable


def test_pyfunc_in_fresh_process(trained, store: str) -> None:
    code = (
        "import json, sys, mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({store!r})\n"
        f"m = mlflow.pyfunc.load_model('models:/{NAME}@champion')\n"
        "sql = 'Write a SQL query that joins three tables.'\n"
        "out = m.predict(pd.DataFrame({'prompt': ['hello', sql, sql], 'task': [None, None, 'math']}))\n"
        "print(json.dumps(out.to_dict(orient='records')))\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=os.environ)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    rows = json.loads(lines[-2])
    assert len(rows) == 3
    assert rows[0]["tier"] in demo_catalog().tier_names
    # a task column names each prompt's task, as in the training log
    p_cols = [f"p_acceptable.{t}" for t in demo_catalog().tier_names]
    assert [rows[1][c] for c in p_cols] != [rows[2][c] for c in p_cols]
    assert set(p_cols) <= set(rows[0])
    # the default ONNX encoder serves without torch
    assert lines[-1] == "TORCH False"


def test_worse_challenger_does_not_become_champion(trained, store: str) -> None:
    # one LightGBM tree with a tiny learning rate: the tiers' base rates, nothing per prompt
    weak = TrainConfig(
        layout="per_tier", n_estimators=1, lgbm_params={"learning_rate": 0.001}, structural_features=False
    )
    result = train(demo_log(), catalog=demo_catalog(), register=NAME, tracking_uri=store, config=weak, progress=False)
    assert result.model_version == "2"
    assert not result.promoted, result.promotion_reason
    assert "below the champion's" in result.promotion_reason
    assert registry.alias_version(NAME, "champion", store) == "1"
    assert registry.alias_version(NAME, "challenger", store) == "2"


def test_no_promote_flag_keeps_champion(trained, store: str) -> None:
    result = train(
        demo_log(n_prompts=600, seed=5), catalog=demo_catalog(), register=NAME, tracking_uri=store,
        config=TrainConfig(n_estimators=30, linear_bags=1), promote=False, progress=False,
    )
    assert not result.promoted and "disabled" in result.promotion_reason
    assert registry.alias_version(NAME, "champion", store) == "1"


def test_failed_run_leaves_registry_untouched(trained, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {v.version for v in MlflowClient(tracking_uri=store).search_model_versions(f"name='{NAME}'")}
    champion = registry.alias_version(NAME, "champion", store)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full while logging the model")

    monkeypatch.setattr(registry, "log_router_model", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        train(demo_log(n_prompts=400, seed=9), catalog=demo_catalog(), register=NAME, tracking_uri=store,
              config=TrainConfig(n_estimators=10, linear_bags=1), progress=False)
    after = {v.version for v in MlflowClient(tracking_uri=store).search_model_versions(f"name='{NAME}'")}
    assert after == before
    assert registry.alias_version(NAME, "champion", store) == champion
    runs = mlflow.search_runs(experiment_names=["tierwise"], filter_string="attributes.status = 'FAILED'")
    assert len(runs) >= 1


def test_tier_missing_from_log_is_an_error() -> None:
    log = demo_log(n_prompts=200)
    log = log[log["model"] != demo_catalog().tiers[1].model]
    with pytest.raises(TrainingDataError, match="never appear in the log"):
        prepare_data(log, demo_catalog())


def test_models_outside_catalog_are_ignored_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    log = demo_log(n_prompts=200)
    extra = log[log["model"] == demo_catalog().tiers[0].model].assign(model="someone-elses-model")
    prepared = prepare_data(pd.concat([log, extra], ignore_index=True), demo_catalog())
    msgs = [w for w in prepared.warnings if "not in the catalog" in w]
    assert len(msgs) == 1 and "someone-elses-model" in msgs[0]


def test_cli_route_prints_a_decision(trained, store: str) -> None:
    from typer.testing import CliRunner

    from training.cli import app

    res = CliRunner().invoke(
        app, ["route", "Write a haiku about routers.", "--model-uri", f"models:/{NAME}/1", "--tracking-uri", store]
    )
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["tier"] in demo_catalog().tier_names
    assert set(out["p_acceptable"]) == set(demo_catalog().tier_names)
    assert out["router_version"] == f"{NAME}/1"


def test_calibration_default_depends_on_the_layout() -> None:
    assert TrainConfig().resolved_calibration() == "none"  # linear: the stacker's probabilities are used as is
    assert TrainConfig(layout="blend").resolved_calibration() == "none"
    assert TrainConfig().resolved_calibration("per_tier") == "sigmoid"  # auto: the chosen layout's default
    assert TrainConfig(layout="per_tier").resolved_calibration() == "sigmoid"
    assert TrainConfig(layout="stacked").resolved_calibration() == "sigmoid"
    assert TrainConfig(calibration="isotonic").resolved_calibration() == "isotonic"


def test_small_logs_average_several_linear_fits() -> None:
    from training.pipeline import SMALL_LOG_BAGS, SMALL_LOG_PROMPTS, fit_router

    assert TrainConfig().resolved_linear_bags(SMALL_LOG_PROMPTS - 1) == SMALL_LOG_BAGS > 1
    assert TrainConfig().resolved_linear_bags(SMALL_LOG_PROMPTS) == 1
    assert TrainConfig(linear_bags=2).resolved_linear_bags(10) == 2
    small = prepare_data(demo_log(n_prompts=600), demo_catalog())
    fitted = fit_router(small, TrainConfig(layout="linear"), progress=False)
    assert fitted.classifier.n_bags == SMALL_LOG_BAGS and len(fitted.classifier.linear_["bags"]) == SMALL_LOG_BAGS


def test_default_linear_fit_uses_calibration_rows_and_an_out_of_fold_knob(demo_linear) -> None:
    from training.pipeline import fit_router

    prepared, fitted = demo_linear
    split = prepared.labelled.prompts["split"].to_numpy()
    assert fitted.fit_rows is not None
    assert (fitted.fit_rows == ((split == "train") | (split == "calibration"))).all()
    assert "out-of-fold training prompts" in fitted.threshold_note
    assert all(c.kind == "none" for c in fitted.classifier.calibrators_)
    old = fit_router(prepared, TrainConfig(layout="linear", oof_knob=False), progress=False)
    assert (old.fit_rows == (split == "train")).all()
    assert "calibration prompts" in old.threshold_note
    # test prompts are never fitted on, either way
    assert not (fitted.fit_rows & (split == "test")).any()


def test_a_large_log_selects_on_a_sample_and_fits_the_choice_on_every_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    import router.classifier as clf_module
    from training.pipeline import fit_router

    prepared = prepare_data(demo_log(n_prompts=800), demo_catalog())
    split = prepared.labelled.prompts["split"].to_numpy()
    seen = (split == "train") | (split == "calibration")
    monkeypatch.setattr(clf_module, "GROUP_FIT_ROWS", 150)  # the group model learns from a sample too
    config = TrainConfig(selection_sample=200, candidates=["linear", "blend"], linear_bags=1, n_estimators=40)
    fitted = fit_router(prepared, config, progress=False)
    assert fitted.selection is not None and fitted.selection.n_prompts <= 200
    assert f"seeded sample of 200 of the {int(seen.sum()):,} training prompts" in fitted.selection.reason
    # the chosen layout is fitted on every training prompt, not on the sample
    assert (fitted.fit_rows == seen).all() and fitted.classifier.oof_proba_.shape[0] == int(seen.sum())
    group = fitted.classifier.linear_["bags"][0]["group"]
    tasks = prepared.labelled.prompts["task"][seen].astype(str)
    assert group["kind"] == "task" and set(group["classes"]) == set(tasks)  # every task kept in the sample
    sample = clf_module._group_sample(1000, np.repeat(np.array(["a", "b", "rare"]), [600, 399, 1]), seed=0)
    assert sample is not None and 149 <= sample.size <= 151 and 999 in sample  # stratified: the rare task stays
    assert clf_module._group_sample(150, None, seed=0) is None  # up to the cap: every row


def test_bundle_without_cost_model_uses_mean_costs(trained, store: str) -> None:
    from router.decision import decide

    r = Router.load(f"models:/{NAME}@champion", tracking_uri=store)
    r.meta.training.pop("cost_model")  # as written by versions before the cost model
    assert r.cost_model is None and r.row_costs(["x"]) is None
    proba = r.predict_proba_array(["Summarise the attached report for the board."])[0]
    for knob in (0.5, 0.9, 0.99):
        expected = decide(proba, knob, rule="utility", tier_costs=r.tier_costs).tier
        assert r.decide(proba, threshold=knob, prompt_chars=10_000).tier_index == expected


# ---- several logs, sidecar catalogs, feedback bias (issue 11) ----------------------------------------------------
def _feedback_export(
    attempts: pd.DataFrame, routed: dict[str, str], router_version: str = "tierwise/1"
) -> pd.DataFrame:
    """Rows as ``tierwise decisions export`` writes them (router.service.decision_log.EXPORT_COLUMNS): one feedback
    row per prompt, on the tier the router chose (``routed``: prompt text -> tier name), outcomes taken from
    ``attempts``."""
    import hashlib

    from router.service.decision_log import EXPORT_COLUMNS

    cat = demo_catalog()
    rows = []
    for i, (text, tier) in enumerate(routed.items()):
        hit = attempts[(attempts["prompt"] == text) & (attempts["model"] == cat.tier(tier).model)].iloc[0]
        rows.append({
            "prompt_id": hashlib.sha256(text.encode()).hexdigest()[:16], "prompt": text, "model": hit["model"],
            "score": hit["score"], "cost_usd": hit["cost_usd"], "input_tokens": hit["input_tokens"],
            "output_tokens": hit["output_tokens"], "latency_ms": hit["latency_ms"], "task": hit["task"],
            "role": hit["role"], "timestamp": f"2026-11-{1 + i % 27:02d}T10:00:00+00:00", "request_id": f"req-{i:05d}",
            "tier": tier, "routed_tier": tier, "tenant": None, "router_version": router_version,
        })
    return pd.DataFrame(rows, columns=list(EXPORT_COLUMNS))


def _routed_with(name: str = "routed-with") -> Catalog:
    return demo_catalog().model_copy(update={"name": name})


def test_several_logs_are_merged_by_prompt_text_with_the_sidecar_catalog(tmp_path: Path) -> None:
    from router.catalog import catalog_sidecar_path
    from training.demo import write_demo_log

    base_path = write_demo_log(tmp_path / "base.csv", n_prompts=200, seed=1)
    base = demo_log(n_prompts=200, seed=1)
    known = base.drop_duplicates("prompt")["prompt"].tolist()[:30]
    other = demo_log(n_prompts=330, seed=7)
    new = [t for t in other.drop_duplicates("prompt")["prompt"] if t not in set(base["prompt"])][:300]
    routed = {**{t: "medium" for t in known}, **{t: ("small" if i % 3 else "large") for i, t in enumerate(new)}}
    feedback = pd.concat([base, other]).pipe(_feedback_export, routed)
    fb_path = tmp_path / "feedback.csv"
    feedback.to_csv(fb_path, index=False)
    _routed_with().save(catalog_sidecar_path(fb_path))

    prepared = prepare_data([base_path, fb_path])
    assert prepared.catalog.name == "routed-with"  # no catalog given: the one saved beside the feedback
    p = prepared.labelled.prompts
    assert len(p) == base["prompt_id"].nunique() + len(new)
    # a prompt the router saw again is the base log's prompt, with the feedback attempt pooled in
    first = base[base["prompt"] == known[0]]["prompt_id"].iloc[0]
    assert p.loc[first, "n_attempts"] == (base["prompt_id"] == first).sum() + 1
    assert not any(pid in p.index for pid in feedback["prompt_id"][feedback["prompt"].isin(known)])
    s = prepared.labelled.summary()
    n_large = sum(1 for i in range(len(new)) if i % 3 == 0)
    assert s["tier_observed_prompts"] == {"nano": 200, "small": 200 + len(new) - n_large, "medium": 200,
                                          "large": 200 + n_large}
    assert s["single_tier_prompts"] == {"nano": 0, "small": len(new) - n_large, "medium": 0, "large": n_large}
    bias = [w for w in prepared.warnings if "observed on one tier only" in w]
    assert len(bias) == 1 and bias[0].startswith(f"{len(new)} of {len(p)} prompts (60%)")
    assert "biased toward that router's choices" in bias[0]
    # the base log alone: every prompt on every tier, no such warning
    assert not any("one tier only" in w for w in prepare_data(base_path).warnings)


def test_several_logs_keep_ids_apart_and_honour_explicit_splits(tmp_path: Path) -> None:
    base = demo_log(n_prompts=120, seed=2)
    ids = base["prompt_id"].unique()
    base["split"] = np.where(base["prompt_id"].isin(ids[:30]), "test", "train")
    base.to_parquet(tmp_path / "one.parquet", index=False)
    test_text = base.loc[base["prompt_id"] == ids[0], "prompt"].iloc[0]
    other = demo_log(n_prompts=60, seed=8)
    other = other[~other["prompt"].isin(set(base["prompt"]))]
    same_id = other["prompt_id"].iloc[0]
    assert same_id in set(ids)  # demo ids are counters: the second log reuses the first one's ids for other texts
    again = base[base["prompt_id"] == ids[0]].drop(columns="split").assign(prompt_id="fb-1")
    two = pd.concat([other, again], ignore_index=True)
    two.to_csv(tmp_path / "two.csv", index=False)

    prepared = prepare_data([tmp_path / "one.parquet", tmp_path / "two.csv"], demo_catalog())
    p = prepared.labelled.prompts
    assert len(p) == len(ids) + other["prompt_id"].nunique()
    assert f"{same_id}@2" in p.index and p.loc[f"{same_id}@2", "prompt"] != p.loc[same_id, "prompt"]
    renamed = [w for w in prepared.warnings if "renamed" in w]
    assert len(renamed) == 1 and renamed[0].startswith(f"{tmp_path / 'two.csv'}: {other['prompt_id'].nunique()} ")
    assert f"{same_id!r} -> '{same_id}@2'" in renamed[0]
    # the logged test split is kept, also for the prompt the second log repeats without a split
    assert (p.loc[list(ids[:30]), "split"] == "test").all()
    assert p.loc[ids[0], "prompt"] == test_text and "fb-1" not in p.index
    assert set(p.loc[[i for i in p.index if i not in set(ids[:30])], "split"]) == {"train", "calibration"}

    clash = again.assign(split="train")
    pd.concat([other.assign(split="train"), clash], ignore_index=True).to_csv(tmp_path / "three.csv", index=False)
    with pytest.raises(TrainingDataError) as info:
        prepare_data([tmp_path / "one.parquet", tmp_path / "three.csv"], demo_catalog())
    msg = str(info.value)
    assert "1 prompt(s) are in different splits in different logs" in msg
    assert f"{tmp_path / 'one.parquet'}: test" in msg and f"{tmp_path / 'three.csv'}: train" in msg


def test_sidecar_catalogs_that_disagree(tmp_path: Path) -> None:
    from router.catalog import catalog_sidecar_path
    from training.demo import write_demo_log

    a = write_demo_log(tmp_path / "a.csv", n_prompts=80, seed=3)
    b = write_demo_log(tmp_path / "b.jsonl", n_prompts=80, seed=4)
    _routed_with("a").save(catalog_sidecar_path(a))
    _routed_with("b").save(catalog_sidecar_path(b))
    assert prepare_data([a, b]).catalog.name == "a"  # same tiers and prices: only the name differs
    dearer = _routed_with("b")
    dearer.tiers[3] = dearer.tiers[3].model_copy(update={"output_usd_per_1m": 80.0})
    dearer.save(catalog_sidecar_path(b))
    with pytest.raises(TrainingDataError) as info:
        prepare_data([a, b])
    msg = str(info.value)
    assert str(tmp_path / "a.catalog.yaml") in msg and str(tmp_path / "b.catalog.yaml") in msg and "--catalog" in msg
    # a catalog given explicitly wins; a sidecar with other tiers is a warning naming it
    three = demo_catalog().model_copy(update={"tiers": demo_catalog().tiers[1:], "planning": demo_catalog().planning})
    three.save(catalog_sidecar_path(b))
    prepared = prepare_data([a, b], demo_catalog())
    assert prepared.catalog == demo_catalog()
    warned = [w for w in prepared.warnings if w.startswith(str(tmp_path / "b.catalog.yaml"))]
    assert len(warned) == 1 and "routed with tiers small=demo-small" in warned[0]
    assert "training uses catalog 'demo' with tiers nano=demo-nano" in warned[0]
    bad = tmp_path / "c.csv"
    bad.write_text(a.read_text())
    text = demo_catalog().to_yaml()
    assert "output_usd_per_1m: 75.0" in text
    catalog_sidecar_path(bad).write_text(text.replace("output_usd_per_1m: 75.0", "output_usd_per_1m: .inf"))
    bad_price = r"c\.catalog\.yaml: invalid catalog: tiers\.3\.output_usd_per_1m \(tier 'large'\)"
    with pytest.raises(ValueError, match=bad_price):
        prepare_data(bad)


def test_non_finite_numbers_never_reach_training(tmp_path: Path) -> None:
    from training.readers import LogValidationError

    log = demo_log(n_prompts=120, seed=5)
    log.loc[7, "cost_usd"] = np.inf  # one row like this made a router with threshold 0.0001 and gap closed -196%
    with pytest.raises(LogValidationError, match=r"<DataFrame>: column 'cost_usd': 1 row infinite .*\(row 7: inf\)"):
        prepare_data(log, demo_catalog())
    with pytest.raises(LogValidationError, match=r"<DataFrame #2>: column 'cost_usd': 1 row infinite"):
        prepare_data([demo_log(n_prompts=50, seed=6), log], demo_catalog())
    path = tmp_path / "log.csv"
    log.to_csv(path, index=False)
    assert ",inf," in path.read_text()
    with pytest.raises(LogValidationError, match=rf"{path}: column 'cost_usd': 1 row infinite .*\(row 8: inf\)"):
        prepare_data(path, demo_catalog())


def test_retrain_from_feedback_export_through_the_cli(tmp_path: Path) -> None:
    """The loop with real parts: train, route with the champion, record decisions (prompts stored) and feedback in a
    real decision log with the catalog the service records, ``tierwise decisions export``, then
    ``tierwise train --data base.csv --data feedback.csv`` with no --catalog and no hand edits."""
    from typer.testing import CliRunner

    from router.service.decision_log import DecisionLog
    from training.cli import app
    from training.demo import write_demo_catalog, write_demo_log

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--tracking-uri", store, "--register", "loop", "--config", '{"n_estimators": 30, "linear_bags": 1}', "-q"]
    base_path = write_demo_log(tmp_path / "base.csv", n_prompts=400, seed=3)
    first = CliRunner().invoke(
        app, ["train", "--data", str(base_path), "--catalog", str(write_demo_catalog(tmp_path / "c.yaml")), *common]
    )
    assert first.exit_code == 0, first.stderr
    assert "model selection: " in first.stdout  # the layout chosen for this log, with its reason

    # the service routes prompts it saw before and new ones with the champion; feedback arrives for the tier used
    router = Router.load("models:/loop@champion", tracking_uri=store)
    base = demo_log(n_prompts=400, seed=3)
    other = demo_log(n_prompts=200, seed=11)
    new = [t for t in other.drop_duplicates("prompt")["prompt"] if t not in set(base["prompt"])][:150]
    known = base.drop_duplicates("prompt")["prompt"].tolist()[:50]
    routed = {t: router.route(t).tier for t in known + new}
    attempts = pd.concat([base, other])
    db = tmp_path / "decisions.db"
    dlog = DecisionLog(db, store_prompts=True).start()
    dlog.record_catalog("loop/1", _routed_with().to_yaml())
    for i, (text, tier) in enumerate(routed.items()):
        t = demo_catalog().tier(tier)
        hit = attempts[(attempts["prompt"] == text) & (attempts["model"] == t.model)].iloc[0]
        dlog.record_decision(
            request_id=f"req-{i}", endpoint="/v1/route", text=text, role=str(hit["role"]), tier=tier,
            tier_index=demo_catalog().index(tier), model=t.model, threshold=0.8, reason="best_expected_utility",
            probabilities={n: 0.5 for n in demo_catalog().tier_names}, router_version="loop/1", est_cost_usd=None,
            est_top_cost_usd=None, latency_ms=2.0, metadata={"task": str(hit["task"])},
        )
        dlog.record_feedback(
            request_id=f"req-{i}", tier=tier, model=t.model, score=float(hit["score"]), acceptable=None,
            input_tokens=int(hit["input_tokens"]), output_tokens=int(hit["output_tokens"]),
            cost_usd=float(hit["cost_usd"]), latency_ms=float(hit["latency_ms"]),
        )
    assert dlog.flush()
    dlog.close()
    fb_path = tmp_path / "feedback.csv"
    exported = CliRunner().invoke(app, ["decisions", "export", "--db", str(db), "--out", str(fb_path)])
    assert exported.exit_code == 0, exported.stderr
    assert (tmp_path / "feedback.catalog.yaml").is_file()

    second = CliRunner().invoke(app, ["train", "--data", str(base_path), "--data", str(fb_path), *common])
    assert second.exit_code == 0, second.stderr
    run_id = next(line.split()[1] for line in second.stdout.splitlines() if line.startswith("run: "))
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.data.params["catalog"] == "routed-with"  # from feedback.catalog.yaml, written by the export
    summary = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/labelled_summary.json"))
    n_base = base["prompt_id"].nunique()
    assert summary["n_prompts"] == n_base + len(new)  # known prompts merged into the base log's prompts
    observed = summary["tier_observed_prompts"]
    counts = pd.Series(routed).loc[new].value_counts()
    assert observed == {t: n_base + int(counts.get(t, 0)) for t in demo_catalog().tier_names}
    assert summary["single_tier_prompts"] == {t: int(counts.get(t, 0)) for t in demo_catalog().tier_names}
    # the new version was registered from both logs
    assert registry.alias_version("loop", "challenger", store) == "2"
