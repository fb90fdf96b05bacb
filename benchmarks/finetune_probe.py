"""Would fine-tuning the encoder help? Cross-validation on the NON-test prompts of the shared datasets.

    python benchmarks/finetune_probe.py [--datasets routerbench-3task] [--seeds 0] [--folds 3]
                                        [--epochs 2] [--batch-size 16]

A research probe, not part of the product (tierwise ships a frozen encoder). For every fold it fits the default
router, then fine-tunes all-MiniLM-L6-v2 end to end (torch, CPU) with one output per tier on top of the mean-pooled
last layer. The outputs are added to the logit of the default router's task prior (the prompt's named task, or its
predicted group), so the network learns what the prompt says beyond its task, the same thing the default's
per-prompt model learns from the frozen embedding. Same token window as the default encoder, masked binary
cross-entropy over the tiers each prompt was tried on, AdamW (encoder 2e-5, heads 1e-3), linear warm-up and decay.

Prints, per dataset, the mean gap closed, two-tier APGR and Brier score over the folds of: the default router,
its task prior alone, the fine-tuned model, and the mean of the default's and the fine-tuned probabilities.
Folds are the ones ``benchmarks/cv_features.py`` uses. On 2 cores, with 2 epochs, a routerbench-3task fold takes about
8 minutes and a GSM8K fold about 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_data as QD
from cv_features import DEFAULT_SHARED, fold_of_prompt

from router.classifier import _logit, _sigmoid
from router.encoders import TokenWindow, _pad_batch, minilm_path
from training.evaluation import tasks_for
from training.pipeline import TrainConfig, evaluate, fit_router, prepare_data


def finetune_residual(
    train_texts: list[str],
    train_y: np.ndarray,
    train_offset: np.ndarray,
    test_texts: list[str],
    window: TokenWindow,
    pad_id: int,
    epochs: int,
    batch_size: int,
    seed: int = 0,
) -> np.ndarray:
    """Fine-tune MiniLM with per-tier heads over fixed offsets (prior logits); return the test rows' residual
    logits ``[n_test, T]``."""
    import torch
    from transformers import AutoModel

    torch.manual_seed(seed)
    encoder = AutoModel.from_pretrained(str(minilm_path()))
    n_tiers = train_y.shape[1]
    head = torch.nn.Linear(encoder.config.hidden_size, n_tiers)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.AdamW(
        [
            {"params": encoder.parameters(), "lr": 2e-5},
            {"params": head.parameters(), "lr": 1e-3},
        ],
        weight_decay=0.01,
    )
    y = torch.tensor(np.nan_to_num(train_y, nan=0.0), dtype=torch.float32)
    tried = torch.tensor(~np.isnan(train_y), dtype=torch.float32)
    offset = torch.tensor(train_offset, dtype=torch.float32)
    train_ids, test_ids = window.ids(train_texts), window.ids(test_texts)

    def pooled(seqs: list[list[int]]) -> torch.Tensor:
        ids, mask = _pad_batch(seqs, pad_id)
        ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
        hidden = encoder(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
        m = mask_t.unsqueeze(-1).float()
        return (hidden * m).sum(1) / m.sum(1)

    steps = epochs * int(np.ceil(len(train_ids) / batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 20) * max(0.0, 1 - i / steps))
    rng = np.random.default_rng(seed)
    encoder.train()
    for _ in range(epochs):
        order = rng.permutation(len(train_ids))
        for start in range(0, len(order), batch_size):
            b = order[start : start + batch_size]
            z = head(pooled([train_ids[i] for i in b])) + offset[b]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y[b], reduction="none") * tried[b]
            (loss.sum() / tried[b].sum().clamp(min=1.0)).backward()
            opt.step()
            sched.step()
            opt.zero_grad()
    encoder.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(test_ids), 64):
            out.append(head(pooled(test_ids[start : start + 64])).numpy())
    return np.concatenate(out).astype(np.float64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="routerbench-3task")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument(
        "--seeds",
        default="0",
        help="comma-separated partition seeds (as in cv_features.py)",
    )
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--shared-dir", type=Path, default=DEFAULT_SHARED)
    args = ap.parse_args(argv)
    if not args.shared_dir.is_dir():
        print(
            f"error: shared data not found at {args.shared_dir} (use --shared-dir)",
            file=sys.stderr,
        )
        return 2
    try:
        import torch
    except ImportError:
        print("error: the probe needs torch (pip install torch==2.13.0)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    tokenizer_json = (minilm_path() / "tokenizer.json").read_text(encoding="utf-8")
    rows = []
    for name in args.datasets.split(","):
        df, catalog = QD.DATASETS[name].load(args.shared_dir)
        df = df[df["split"] != "test"].copy()
        for seed in [int(x) for x in args.seeds.split(",") if x.strip()]:
            fold = fold_of_prompt(df, seed, args.folds)
            for k in range(args.folds):
                t0 = time.time()
                cfg = TrainConfig()
                prepared = prepare_data(
                    df.assign(split=np.where(fold == k, "test", "train")),
                    catalog,
                    config=cfg,
                )
                fitted = fit_router(prepared, cfg, progress=False)
                lab = prepared.labelled
                te = (lab.prompts["split"].to_numpy() == "test") & lab.complete_rows
                fit = fitted.fit_rows
                tasks_fit = tasks_for(lab.prompts.loc[fit], cfg.eval_known_task)
                tasks_te = tasks_for(lab.prompts.loc[te], cfg.eval_known_task)
                clf = fitted.classifier
                default = clf.predict_proba(fitted.features[te], groups=tasks_te)
                prior_te = clf.predict_group_prior(fitted.features[te], groups=tasks_te)
                prior_fit = clf.predict_group_prior(fitted.features[fit], groups=tasks_fit)
                spec = fitted.encoder.spec
                window = TokenWindow.from_json(tokenizer_json, spec.max_tokens, spec.head_tokens)
                pad_id = int(window.tokenizer.token_to_id("[PAD]") or 0)
                texts = lab.prompts["prompt"].astype(str).to_numpy()
                residual = finetune_residual(
                    list(texts[fit]),
                    lab.acceptable[fit],
                    _logit(prior_fit),
                    list(texts[te]),
                    window,
                    pad_id,
                    args.epochs,
                    args.batch_size,
                    seed=seed,
                )
                tuned = _sigmoid(_logit(prior_te) + residual)
                for setting, proba in (
                    ("default (frozen encoder)", default),
                    ("task prior alone", prior_te),
                    (f"fine-tuned encoder ({args.epochs} epochs)", tuned),
                    ("mean of default and fine-tuned", (default + tuned) / 2),
                ):
                    m = evaluate(prepared, fitted, proba_test=proba).metrics()
                    rows.append(
                        (
                            name,
                            setting,
                            m["gap_closed"],
                            m.get("apgr", np.nan),
                            m["brier"],
                        )
                    )
                print(
                    f"{name} seed {seed} fold {k}: {time.time() - t0:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    res = pd.DataFrame(rows, columns=["dataset", "setting", "gap closed", "APGR", "Brier"])
    print(res.groupby(["dataset", "setting"], sort=False).mean().round(4).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
