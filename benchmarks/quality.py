"""Real-data quality benchmark: train and evaluate tierwise on each shared dataset, print one markdown table.

    python benchmarks/quality.py                      # all five evaluations, default TrainConfig()
    python benchmarks/quality.py --datasets routellm-gsm8k,routellm-mmlu --out results.json
    python benchmarks/quality.py --ablations          # plus the variants that were tried (TrainConfig overrides)

Every dataset is trained with the same ``TrainConfig()`` (no per-dataset tuning); only the catalog
(``benchmarks/catalogs/``) and the data options (``benchmarks/quality_data.py``) differ. Metrics are measured on
each dataset's held-out test split, which nothing is fitted or calibrated on (``training.metrics``).
Embeddings are cached (``$TIERWISE_HOME/cache/embeddings``), so a rerun costs only the fitting.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import quality_data as QD  # noqa: E402

from training.pipeline import TrainConfig, evaluate, fit_router, prepare_data  # noqa: E402

# Reference points from the issue (same splits; plain LightGBM-per-model router with the expected-utility rule and
# a kNN router, k = 20): zero AIQ, oracle AIQ, kNN gap closed, LightGBM gap closed, LightGBM cost at 95%,
# two-tier APGR kNN / LightGBM.
REFERENCE: dict[str, dict[str, Any]] = {
    "routerbench-3task": {"zero": 0.823, "oracle": 0.971, "knn_gap": 0.004, "lgbm_gap": 0.10, "lgbm_c95": 0.36},
    "llmrouter-nim9": {"zero": 0.528, "oracle": 0.720, "knn_gap": 0.17, "lgbm_gap": 0.23, "lgbm_c95": 0.12},
    "routellm-mmlu": {"zero": 0.757, "oracle": 0.855, "knn_gap": 0.13, "lgbm_gap": 0.14, "lgbm_c95": 0.54,
                      "apgr": (0.64, 0.65)},
    "routellm-gsm8k": {"zero": 0.747, "oracle": 0.870, "knn_gap": 0.08, "lgbm_gap": 0.16, "lgbm_c95": 0.71,
                       "apgr": (0.55, 0.60)},
}
# RouteLLM's published figures (Ong et al. 2024; routers trained on Chatbot Arena preference data, +~1,500 MMLU
# golden labels for the MMLU-augmented router; not trained in-domain on these splits). MT-Bench: best router (MF)
# APGR 0.802, CPT(50%) 13.4%, CPT(80%) 31.3%. MMLU / GSM8K: the paper reports cost savings at CPT(50%) / CPT(80%)
# relative to random routing (MMLU 1.41x / 1.14x, GSM8K 1.49x / 1.27x); the implied CPTs below (50% / saving,
# 80% / saving) are approximate.
ROUTELLM: dict[str, str] = {
    "routellm-mt-bench": "APGR 0.802, CPT50 13.4%, CPT80 31.3%",
    "routellm-mmlu": "CPT50 ≈35%, CPT80 ≈70%",
    "routellm-gsm8k": "CPT50 ≈34%, CPT80 ≈63%",
}

# Variants measured for the README's "what did not help" (each a TrainConfig override of the defaults).
ABLATIONS: dict[str, dict[str, Any]] = {
    "default (per-log selection, utility rule)": {},
    "linear layout pinned (the selection's fallback)": {"layout": "linear"},
    "blend layout pinned": {"layout": "blend"},
    "mean tier costs instead of per-prompt costs": {"prompt_costs": False},
    "threshold rule instead of utility": {"decision_rule": "threshold"},
    "LightGBM per_tier layout": {"layout": "per_tier"},
    "LightGBM stacked layout": {"layout": "stacked"},
    "previous default (LightGBM stacked + threshold rule)": {"layout": "stacked", "decision_rule": "threshold"},
    "task predicted from the prompt, not named by the caller": {"eval_known_task": False},
    "k-means groups instead of the task column": {"layout": "linear", "task_groups": False},
    "no structural features": {"structural_features": False},
    "fit on train only, knob on the calibration split": {"layout": "linear", "oof_knob": False},
    "Platt calibration per tier": {"layout": "linear", "calibration": "sigmoid"},
    "isotonic calibration": {"layout": "linear", "calibration": "isotonic"},
    "encoder window: no head tokens (tail only)": {"encoder_head_tokens": 0},
    "encoder: last layer only (no middle layer)": {"encoder_layers": "last"},
}

log = logging.getLogger("tierwise.benchmark")


def run_one(name: str, shared_dir: Path, config: TrainConfig) -> dict[str, Any]:
    """Train on the dataset's train split, evaluate on its test split; flat metrics plus counts and timings."""
    ds = QD.DATASETS[name]
    t0 = time.perf_counter()
    df, catalog = ds.load(shared_dir)
    prepared = prepare_data(df, catalog, config=config)
    fitted = fit_router(prepared, config, progress=False)
    report = evaluate(prepared, fitted)
    if report is None:
        raise RuntimeError(f"{name}: no complete test prompts")
    m = report.metrics()
    split = prepared.labelled.prompts["split"].value_counts()
    m.update(
        {
            "n_train": float(split.get("train", 0) + split.get("calibration", 0)),
            "n_fit": float(split.get("train", 0)),
            "n_calibration": float(split.get("calibration", 0)),
            "seconds": time.perf_counter() - t0,
            "layout": fitted.config.layout,
        }
    )
    if fitted.selection is not None:
        m["selection_reason"] = fitted.selection.reason
        m.update(fitted.selection.metrics())
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in m.items()}


def _pct(x: float | None, digits: int = 0) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def results_table(results: dict[str, dict[str, Any]]) -> str:
    header = [
        "dataset", "layout (per-log selection)", "n train / test", "zero AIQ", "oracle AIQ", "tierwise AIQ",
        "gap closed: tierwise / kNN",
        "cost @95% / @100% of best tier", "APGR / CPT50 / CPT80 (tier 0 vs top)",
        "reference (issue): kNN gap / LightGBM gap / LightGBM cost @95% / APGR kNN, LightGBM",
        "RouteLLM published¹",
    ]
    rows = []
    for name, m in results.items():
        ref = REFERENCE.get(name)
        if ref:
            apgr_ref = " / {:.2f}, {:.2f}".format(*ref["apgr"]) if "apgr" in ref else ""
            ref_txt = f"{_pct(ref['knn_gap'], 1 if ref['knn_gap'] < 0.01 else 0)} / {_pct(ref['lgbm_gap'])} / " \
                      f"{_pct(ref['lgbm_c95'])}{apgr_ref} (zero {ref['zero']}, oracle {ref['oracle']})"
        else:
            ref_txt = "-"
        two_tier = f"{_num(m.get('apgr'))} / {_pct(m.get('cpt50'), 1)} / {_pct(m.get('cpt80'), 1)}"
        if name == "llmrouter-nim9":
            two_tier += "²"
        rows.append([
            QD.DATASETS[name].title,
            str(m.get("layout", "-")),
            f"{int(m['n_train'])} / {int(m['n_test'])}",
            _num(m["aiq_zero"]),
            _num(m["aiq_oracle"]),
            _num(m["aiq"]),
            f"{_pct(m.get('gap_closed'), 1)} / {_pct(m.get('gap_closed_knn'), 1)}",
            f"{_pct(m.get('cost_at_95pct'))} / {_pct(m.get('cost_at_100pct'))}",
            two_tier,
            ref_txt,
            ROUTELLM.get(name, "-"),
        ])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    notes = [
        "",
        "Test splits: " + "; ".join(f"{QD.DATASETS[n].title}: {QD.DATASETS[n].split_note}" for n in results) + ".",
        "Gap closed = (AIQ - zero AIQ) / (oracle AIQ - zero AIQ). Cost @95% / @100%: least cost at which the router "
        "reaches 95% / 100% of the best single tier's quality, as a share of always calling the top tier. "
        "The kNN router (k = 20) is fitted on the same training prompts and routes with the same decision rule and "
        "prices as tierwise.",
        "¹ RouteLLM's routers were trained on Chatbot Arena preference data (plus ~1,500 MMLU golden labels for the "
        "augmented router), not on these splits, so they are out-of-domain figures; MMLU / GSM8K CPTs are implied by "
        "the paper's cost savings relative to random routing and are approximate. tierwise is trained in-domain on "
        "70% of each benchmark.",
        "² The top (most expensive) nim9 tier, llama3-chatqa-1.5-70b, is weaker than the cheapest, so the two-tier "
        "view is undefined there.",
    ]
    return "\n".join(lines + notes)


def signal_table(results: dict[str, dict[str, Any]]) -> str:
    """Brier score on the test prompts of every tier's base rate, the task prior alone and the router."""
    header = [
        "dataset", "Brier: base rates", "Brier: task prior alone", "Brier: tierwise",
        "share of the base-rate Brier removed: task prior / tierwise",
    ]
    rows = []
    for name, m in results.items():
        base, prior, full = m.get("brier_ref_base_rates"), m.get("brier_ref_group_prior"), m.get("brier")
        prior_skill = None if base is None or prior is None else 1 - prior / base
        rows.append([
            QD.DATASETS[name].title, _num(base, 4), _num(prior, 4), _num(full, 4),
            f"{_pct(prior_skill, 1)} / {_pct(m.get('brier_skill'), 1)}",
        ])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def ablation_table(abl: dict[str, dict[str, dict[str, Any]]], names: list[str]) -> str:
    header = ["variant (TrainConfig override)"] + [f"{QD.DATASETS[n].title}: gap / c@95 / APGR" for n in names]
    rows = []
    for variant, res in abl.items():
        cells = [variant]
        for n in names:
            m = res.get(n)
            if m is None:
                cells.append("error")
                continue
            apgr = "-" if n == "llmrouter-nim9" else _num(m.get("apgr"), 2)
            cells.append(f"{_pct(m.get('gap_closed'), 1)} / {_pct(m.get('cost_at_95pct'))} / {apgr}")
        rows.append(cells)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(QD.DATASETS), help="comma-separated: " + ", ".join(QD.DATASETS))
    ap.add_argument("--out", type=Path, help="write every metric as JSON here")
    ap.add_argument("--shared-dir", type=Path, default=QD.DEFAULT_SHARED_DIR,
                    help="the shared data folder (default: ../shared/data relative to the repository)")
    ap.add_argument("--ablations", action="store_true", help="also run the variants in ABLATIONS")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        warnings.filterwarnings("ignore")
        logging.getLogger("tierwise").setLevel(logging.ERROR)

    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in QD.DATASETS]
    if unknown:
        print(f"unknown dataset(s): {', '.join(unknown)}; choose from {', '.join(QD.DATASETS)}", file=sys.stderr)
        return 2
    shared = args.shared_dir.expanduser().resolve()
    if not shared.is_dir():
        print(f"shared data folder not found: {shared} (pass --shared-dir PATH to the folder that holds "
              f"routerbench-3task/, llmrouter-nim9/ and routellm-evals/)", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    config = TrainConfig()
    results = {}
    for n in names:
        results[n] = run_one(n, shared, config)
        print(f"{n}: done in {results[n]['seconds']:.0f}s", file=sys.stderr, flush=True)
    out: dict[str, Any] = {"config": config.model_dump(mode="json"), "results": results}
    print(results_table(results))
    print()
    print(signal_table(results))
    if args.ablations:
        abl: dict[str, dict[str, dict[str, Any]]] = {}
        for variant, override in ABLATIONS.items():
            cfg = TrainConfig(**override)
            abl[variant] = {}
            for n in names:
                if not override:
                    abl[variant][n] = results[n]
                    continue
                try:
                    abl[variant][n] = run_one(n, shared, cfg)
                except Exception as exc:  # one failing variant must not hide the others
                    print(f"{variant} / {n}: {type(exc).__name__}: {exc}", file=sys.stderr)
            print(f"ablation {variant!r}: done", file=sys.stderr, flush=True)
        print()
        print(ablation_table(abl, names))
        out["ablations"] = {v: {"override": ABLATIONS[v], "results": r} for v, r in abl.items()}
    wall = time.perf_counter() - t0
    print(f"\nwall time {wall:.0f}s ({os.cpu_count()} CPUs); regenerate with: python benchmarks/quality.py"
          + (" --ablations" if args.ablations else ""))
    out["wall_seconds"] = wall
    if args.out:
        args.out.write_text(json.dumps(out, indent=1, default=float), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
