"""Two router variants on one dataset's test split: each one's gap closed, and how sure the difference is.

    python benchmarks/paired_test.py [--dataset routellm-gsm8k] [--variants linear,per_tier] [--n-boot 2000]

Both variants (names registered in ``training.variants``) are trained on the dataset's train split exactly as
``benchmarks/quality.py`` trains them and scored on the same test prompts with the product's decisions (the utility
rule's knob swept, ``training.selection.score_candidates``: its point figures equal ``training.pipeline.evaluate``).
A paired bootstrap over the test prompts gives the 5% .. 95% quantiles of AIQ(second) - AIQ(first): when they
straddle 0, a test split of this size cannot tell the two apart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import quality_data as QD  # noqa: E402

from training.evaluation import model_proba  # noqa: E402
from training.pipeline import heldout_set, prepare_data  # noqa: E402
from training.selection import score_candidates  # noqa: E402
from training.variants import fit_variant  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="routellm-gsm8k", choices=list(QD.DATASETS))
    ap.add_argument("--variants", default="linear,per_tier", help="two registered variant names")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--shared-dir", type=Path, default=QD.DEFAULT_SHARED_DIR)
    args = ap.parse_args(argv)
    names = args.variants.split(",")
    if len(names) != 2:
        ap.error("--variants takes two names")
    df, catalog = QD.DATASETS[args.dataset].load(args.shared_dir)
    prepared = prepare_data(df, catalog)
    probas, prices = {}, None
    for name in names:
        fitted = fit_variant(prepared, name)
        es = heldout_set(prepared, fitted.config)
        router = fitted.as_router()
        probas[name] = model_proba(router, es, features=fitted.features[es.rows])
        if prices is None:  # the first variant's prices (the cost model depends on the log, not on the variant)
            prices = {"rule": router.decision_rule, "tier_costs": router.tier_costs,
                      "row_costs": router.row_costs(es.prompts)}
            score, cost, acceptable = es.score, es.cost, es.acceptable > 0.5
        print(f"{name}: fitted layout {fitted.config.layout}", file=sys.stderr, flush=True)
    assert prices is not None
    sc = score_candidates(probas, score, cost, acceptable, n_boot=args.n_boot, **prices)
    ia, ib = sc.names.index(names[0]), sc.names.index(names[1])
    print(f"## {args.dataset}: {len(score)} test prompts, {args.n_boot} paired bootstrap resamples\n")
    print("| variant | AIQ | gap closed |\n|---|---|---|")
    for name in names:
        print(f"| {name} | {sc.aiq[sc.names.index(name)]:.4f} | {100 * sc.gap_closed(name):.1f}% |")
    lo, hi = np.quantile(sc.boot_aiq[:, ib] - sc.boot_aiq[:, ia], [0.05, 0.95])
    print(f"\nAIQ({names[1]}) - AIQ({names[0]}): {sc.aiq[ib] - sc.aiq[ia]:+.4f}, "
          f"bootstrap 5% .. 95%: {lo:+.4f} .. {hi:+.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
