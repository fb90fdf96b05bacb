"""Cross-validation on the NON-test prompts of the shared datasets: the default TrainConfig against one variant.

    python benchmarks/cv_features.py [--datasets routerbench-3task,llmrouter-nim9,routellm-gsm8k,routellm-mmlu]
                                     [--folds 3] [--seeds 0,1,2] [--variant '{"structural_features": false}']

The variant is a JSON object of TrainConfig overrides (default: structural features off; e.g.
``'{"prompt_costs": false}'`` for the tiers' mean costs instead of the per-prompt cost model).

Each dataset's own test split is dropped; the rest is split into seeded folds by prompt id, and every fold is
evaluated once as the test split (the pipeline carves its calibration split out of the remaining prompts); with
several ``--seeds``, every seed is another random partition into folds. Prints
the mean gap closed, two-tier APGR and cost at 95% per dataset and setting. Used to decide a default without
looking at the test splits that benchmarks/quality.py reports.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_data as QD  # noqa: E402

from training.pipeline import TrainConfig, evaluate, fit_router, prepare_data  # noqa: E402

DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _bucket(key: str, n: int) -> int:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % n


def fold_of_prompt(df: pd.DataFrame, seed: int, folds: int) -> pd.Series:
    """Each row's fold (0 .. folds - 1), seeded by prompt id; seed 0 is the partition of earlier README figures."""
    salt = "cv" if seed == 0 else f"cv{seed}"
    return df["prompt_id"].map(lambda s: _bucket(f"{salt}:{s}", folds))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="routerbench-3task,llmrouter-nim9,routellm-gsm8k,routellm-mmlu")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seeds", default="0", help="comma-separated partition seeds; results are averaged over all")
    ap.add_argument("--shared-dir", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--variant", default='{"structural_features": false}', help="TrainConfig overrides (JSON)")
    args = ap.parse_args(argv)
    try:
        variant = json.loads(args.variant)
        TrainConfig(**variant)
    except (ValueError, TypeError) as exc:
        print(f"error: --variant is not a valid TrainConfig override: {exc}", file=sys.stderr)
        return 2
    label = ", ".join(f"{k}={v}" for k, v in variant.items())
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        print(f"error: --seeds must be comma-separated integers, got {args.seeds!r}", file=sys.stderr)
        return 2
    if not args.shared_dir.is_dir():
        print(f"error: shared data not found at {args.shared_dir} (use --shared-dir)", file=sys.stderr)
        return 2
    rows = []
    for name in args.datasets.split(","):
        df, catalog = QD.DATASETS[name].load(args.shared_dir)
        df = df[df["split"] != "test"].copy()
        for seed in seeds:
            fold = fold_of_prompt(df, seed, args.folds)
            for k in range(args.folds):
                fold_df = df.assign(split=np.where(fold == k, "test", "train"))
                for setting, overrides in (("default", {}), (label, variant)):
                    cfg = TrainConfig(**overrides)
                    prepared = prepare_data(fold_df, catalog, config=cfg)
                    m = evaluate(prepared, fit_router(prepared, cfg, progress=False)).metrics()
                    rows.append((name, setting, m["gap_closed"], m.get("apgr", np.nan), m["cost_at_95pct"]))
    res = pd.DataFrame(rows, columns=["dataset", "setting", "gap closed", "APGR", "cost @95%"])
    print(res.groupby(["dataset", "setting"], sort=False).mean().round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
