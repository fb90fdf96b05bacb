"""Training time of per-log selection against a pinned layout, on one shared dataset (warm embedding cache).

    python benchmarks/train_time.py [--dataset routellm-mmlu] [--layouts linear,auto] [--repeat 2]

Times ``fit_router`` only (data preparation and evaluation excluded): wall clock and process CPU seconds, which are
less sensitive to other jobs on the machine, and the fit's own phases (``FittedRouter.timings``: reading the cached
embeddings, the structural features, model selection, the whole fit). The first, untimed fit warms the embedding
cache and the encoder. For ``tierwise train`` end to end, cold and cached, from 10,000 to 100,000 prompts:
``benchmarks/train_scale.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import quality_data as QD  # noqa: E402

from training.pipeline import TrainConfig, fit_router, prepare_data  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="routellm-mmlu", choices=list(QD.DATASETS))
    ap.add_argument("--layouts", default="linear,auto")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--shared-dir", type=Path, default=QD.DEFAULT_SHARED_DIR)
    args = ap.parse_args(argv)
    df, catalog = QD.DATASETS[args.dataset].load(args.shared_dir)
    prepared = prepare_data(df, catalog)
    fit_router(prepared, TrainConfig(layout="linear"), progress=False)  # warm-up, not timed
    for _ in range(args.repeat):
        for layout in args.layouts.split(","):
            wall, cpu = time.perf_counter(), time.process_time()
            fitted = fit_router(prepared, TrainConfig(layout=layout), progress=False)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            phases = ", ".join(f"{k} {v:.1f} s" for k, v in fitted.timings.items() if k != "embed_new_prompts")
            print(
                f"{layout}: {wall:.1f} s wall, {cpu:.1f} s CPU, fitted layout {fitted.config.layout} ({phases})",
                flush=True,
            )
            if fitted.selection is not None:
                print(fitted.selection.to_markdown(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
