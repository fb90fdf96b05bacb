"""Per-log model selection on the shared benchmarks, and the leave-one-dataset-out estimate of what it gives.

    python benchmarks/select_lodo.py [--datasets all five] [--folds 3] [--seed 0] [--n-boot 200]
                                     [--candidates linear,per_tier,...] [--write-doc docs/selection.md]

1. Out-of-fold probabilities. Each dataset's own test split is dropped (never read for any decision); the other
   prompts are split into ``--folds`` folds by prompt id (``cv_features.fold_of_prompt``), and every candidate
   router is fitted through the real pipeline (``prepare_data`` + ``fit_router`` with TrainConfig overrides) with
   one fold as its test split, giving every prompt a probability matrix from a model that never saw it. Blends
   are means of two candidates' matrices. They are cached (``--work-dir``), so adding a candidate fits only it.
2. Each candidate's figure on a dataset: AIQ / gap closed of its own decisions (the utility rule's knob swept, as
   ``training.pipeline.evaluate`` does) on all out-of-fold prompts pooled (``training.selection``); the mean of the
   per-fold ``evaluate`` figures (what ``cv_features.py`` prints) is shown next to it for today's default.
3. Per-log selection, cross-fitted: a policy (candidate set, fallback reference, bootstrap level) chooses, for each
   fold, a candidate from the out-of-fold figures of the *other* folds' prompts (``CandidateScores.select``), and
   that fold's prompts are routed by the chosen candidate; the pooled gap closed is the policy's figure.
4. Leave-one-dataset-out: for each dataset, the policy with the best mean figure on the other datasets is chosen,
   and the held-out dataset's figure under it is reported. The markdown table goes to stdout (and, with
   ``--write-doc``, into that file with the command that produced it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import quality_data as QD  # noqa: E402
from cv_features import fold_of_prompt  # noqa: E402
from nested_oof import blend, out_of_fold  # noqa: E402

from training.pipeline import TrainConfig, prepare_data  # noqa: E402
from training.selection import CandidateScores, score_candidates  # noqa: E402
from training.variants import get_variant, register_variant, variant_names  # noqa: E402

log = logging.getLogger("tierwise.benchmark")
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Candidate:
    """A candidate router: a registered variant (``training.variants``), or the mean of other candidates'
    probabilities."""

    name: str
    blend_of: tuple[str, ...] = ()


def _concat_static(config: TrainConfig) -> ConcatEncoder:
    """Research encoder factory: the config's encoder and the static one, vectors side by side."""
    from router.encoders import build_encoder

    kw: dict[str, Any] = {"threads": 2, "max_tokens": config.encoder_max_tokens,
                          "head_tokens": config.encoder_head_tokens}
    return ConcatEncoder(build_encoder(config.encoder, layers=config.encoder_layers, **kw),
                         build_encoder("minilm-static", **kw))


def _register_variants() -> None:
    """The benchmark's own variants, registered through the public extension point (the product registers
    ``auto``, ``linear``, ``per_tier`` and ``blend``)."""
    linear = {"layout": "linear"}
    own: list[tuple[str, dict[str, Any], Any]] = [
        ("blend-layout", {"layout": "blend"}, None),
        ("linear-shrink3", {**linear, "group_shrink": 3.0}, None),
        ("linear-shrink30", {**linear, "group_shrink": 30.0}, None),
        ("linear-shrink100", {**linear, "group_shrink": 100.0}, None),
        ("linear-static", {**linear, "encoder": "minilm-static"}, None),
        ("per_tier-static", {"encoder": "minilm-static", "layout": "per_tier"}, None),
        ("linear-both", linear, _concat_static),
        ("per_tier-both", {"layout": "per_tier"}, _concat_static),
    ]
    for name, overrides, encoder in own:
        if name not in variant_names():
            register_variant(name, config=overrides, encoder=encoder, description="select_lodo.py research variant")


_register_variants()
CANDIDATES: dict[str, Candidate] = {
    c.name: c
    for c in (
        *(Candidate(name) for name in variant_names()),
        # "blend" here is the mean of two nested fits (the name of the earlier tables); the product's blend layout is
        # measured as "blend-layout"
        Candidate("blend", blend_of=("linear", "per_tier")),
        Candidate("blend-static", blend_of=("linear-static", "per_tier-static")),
        Candidate("blend-linear-encoders", blend_of=("linear", "linear-static")),
        Candidate("blend4", blend_of=("linear", "per_tier", "linear-static", "per_tier-static")),
        Candidate("blend-both", blend_of=("linear-both", "per_tier-both")),
    )
}
DEFAULT = "linear"


# --------------------------------------------------------------------------------------------------------------
# 1. out-of-fold probabilities
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Oof:
    """One dataset's out-of-fold arrays (rows: complete prompts of every fold, fold by fold)."""

    prompt_id: np.ndarray
    fold: np.ndarray
    score: np.ndarray
    cost: np.ndarray
    acceptable: np.ndarray
    row_costs: np.ndarray
    proba: dict[str, np.ndarray]
    fold_gap: dict[str, list[float]]
    fit_seconds: dict[str, float]


def _work_file(work: Path, dataset: str, folds: int, seed: int, name: str) -> Path:
    return work / f"{dataset}-f{folds}-s{seed}" / f"{name}.npz"


class ConcatEncoder:
    """Two encoders' unit vectors side by side, each weighted 1/sqrt(2) (unit rows); cached through both."""

    def __init__(self, a: Any, b: Any) -> None:
        self.parts = (a, b)
        self.dim = a.dim + b.dim
        import hashlib

        # its own embedding-cache namespace: a fingerprint derived from both parts' keys
        fp = hashlib.sha256(f"{a.spec.cache_key()}+{b.spec.cache_key()}".encode()).hexdigest()[:16]
        self.spec = a.spec.model_copy(update={"dim": self.dim, "fingerprint": fp})

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        from training.embedding_cache import EmbeddingCache

        cache = EmbeddingCache.default()
        vecs = [cache.embed(p, texts, progress=progress) for p in self.parts]
        return (np.hstack(vecs) / np.sqrt(2.0)).astype(np.float32)


def fit_dataset(
    name: str, shared: Path, work: Path, folds: int, seed: int, wanted: list[str]
) -> Oof:
    """Fit every wanted (non-blend) candidate not yet in ``work`` on every fold; return all arrays."""
    fitted_names = _needed(wanted)
    todo = [c for c in fitted_names if not _work_file(work, name, folds, seed, c).is_file()]
    labels_file = _work_file(work, name, folds, seed, "_labels")
    if not labels_file.is_file() and DEFAULT not in todo:
        todo.insert(0, DEFAULT)  # the labels and prices are written with the default's fit
    if todo:
        df, catalog = QD.DATASETS[name].load(shared)
        df = df[df["split"] != "test"].copy()  # the dataset's test split is never looked at
        prepared = prepare_data(df.assign(split="train"), catalog, config=TrainConfig(layout="linear"))
        lab = prepared.labelled
        fold = fold_of_prompt(pd.DataFrame({"prompt_id": lab.prompts.index.astype(str)}), seed, folds).to_numpy()
        labels_file.parent.mkdir(parents=True, exist_ok=True)
        for c in todo:
            cand = CANDIDATES[c]
            oof = out_of_fold(prepared, get_variant(cand.name), fold)
            pid = np.asarray(lab.prompts.index.astype(str))[oof.rows].astype(str)
            print(f"  {name}: {c} fitted on {folds} folds in {oof.seconds:.0f}s", file=sys.stderr, flush=True)
            if c == DEFAULT:
                # the utility rule's per-prompt prices depend on the log, not on the candidate: the default's
                np.savez(labels_file, pid=pid, fold=oof.fold, score=oof.score, cost=oof.cost, acc=oof.acceptable,
                         rc=oof.row_costs)
            np.savez(_work_file(work, name, folds, seed, c), proba=oof.proba, gap=np.asarray(oof.fold_gap_closed),
                     sec=np.asarray([oof.seconds]), pid=pid)
    z = np.load(labels_file, allow_pickle=False)
    oof = Oof(z["pid"], z["fold"], z["score"], z["cost"], z["acc"], z["rc"], {}, {}, {})
    for c in fitted_names:
        f = np.load(_work_file(work, name, folds, seed, c), allow_pickle=False)
        if f["proba"].shape != oof.score.shape or not np.array_equal(f["pid"], oof.prompt_id):
            raise RuntimeError(f"{name}/{c}: cached probabilities do not match the labels; delete {work}")
        oof.proba[c], oof.fold_gap[c], oof.fit_seconds[c] = f["proba"], f["gap"].tolist(), float(f["sec"].sum())
    for c in wanted:
        if CANDIDATES[c].blend_of:
            oof.proba[c] = blend([oof.proba[b] for b in CANDIDATES[c].blend_of])
    return oof


def _needed(wanted: list[str]) -> list[str]:
    out: list[str] = []
    for c in wanted:
        for f in CANDIDATES[c].blend_of or (c,):
            if f not in out:
                out.append(f)
    return out


# --------------------------------------------------------------------------------------------------------------
# 2-4. figures, per-log selection, leave-one-dataset-out
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    candidates: tuple[str, ...]
    reference: str
    level: float

    def label(self) -> str:
        if len(self.candidates) == 1:
            return f"always {self.candidates[0]}"
        return f"{{{', '.join(self.candidates)}}}, fallback {self.reference}, level {self.level:g}"


def policies(names: list[str], sets: list[tuple[str, ...]], levels: list[float]) -> list[Policy]:
    out = [Policy((c,), c, 0.5) for c in names]
    for s in sets:
        for ref in s:
            if ref in ("linear", "blend", "blend-static", "blend4", "blend-both"):
                out += [Policy(s, ref, lv) for lv in levels]
    return out


def _scores(oof: Oof, rows: np.ndarray, names: list[str], n_boot: int, seed: int) -> CandidateScores:
    return score_candidates(
        {c: oof.proba[c][rows] for c in names}, oof.score[rows], oof.cost[rows], oof.acceptable[rows],
        rule="utility", row_costs=oof.row_costs[rows], n_boot=n_boot, seed=seed,
    )


def analyse(
    oofs: dict[str, Oof], names: list[str], pols: list[Policy], n_boot: int, steer: list[str]
) -> dict[str, Any]:
    res: dict[str, Any] = {"pooled": {}, "policy_gap": {}, "choices": {}, "full_choice": {}, "diff_ci": {}}
    for d, oof in oofs.items():
        allrows = np.ones(len(oof.fold), bool)
        full = _scores(oof, allrows, names, n_boot, 0)
        res["pooled"][d] = {c: full.gap_closed(c) for c in names}
        sel = full.select(DEFAULT, level=0.05)
        gap = full.aiq_oracle - full.aiq_zero
        res["diff_ci"][d] = {c: (sel.diff_lower[c] / gap, sel.diff_upper[c] / gap) for c in names}
        inner = {int(k): _scores(oof, oof.fold != k, names, n_boot, 1 + int(k)) for k in np.unique(oof.fold)}
        for pol in pols:
            proba = np.empty_like(oof.score)
            picks = []
            for k, sc in inner.items():
                chosen = sc.select(pol.reference, pol.candidates, pol.level).chosen
                rows = oof.fold == k
                proba[rows] = oof.proba[chosen][rows]
                picks.append(chosen)
            one = score_candidates(
                {"sel": proba}, oof.score, oof.cost, oof.acceptable, rule="utility", row_costs=oof.row_costs,
                n_boot=1,
            )
            res["policy_gap"].setdefault(pol, {})[d] = one.gap_closed("sel")
            res["choices"].setdefault(pol, {})[d] = picks
            res["full_choice"].setdefault(pol, {})[d] = full.select(pol.reference, pol.candidates, pol.level).chosen
    # decided on the other datasets that may steer (MT-Bench's 114 prompts are too few: reported, not steered by)
    res["lodo"] = {d: best_policy(pols, res["policy_gap"], [o for o in steer if o != d]) for d in oofs}
    res["lodo"] = {d: (p, res["policy_gap"][p][d]) for d, p in res["lodo"].items()}
    return res


def best_policy(pols: list[Policy], gaps: dict[Policy, dict[str, float]], datasets: list[str]) -> Policy:
    """The policy with the best mean gap closed on ``datasets``. Exact ties (policies that choose the same
    candidates there) go to the larger candidate set, which can only add on a log unlike these, then to the
    stricter bootstrap level."""
    return max(
        pols, key=lambda p: (round(float(np.mean([gaps[p][d] for d in datasets])), 9), len(p.candidates), -p.level)
    )


def _pct(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.1f}%"


def tables(oofs: dict[str, Oof], names: list[str], pols: list[Policy], res: dict[str, Any], ship: Policy) -> str:
    ds = list(oofs)
    title = {d: QD.DATASETS[d].title for d in ds}
    head = ["dataset", "OOF prompts", f"{DEFAULT} (the previous default, selection's fallback): pooled / mean of folds"]
    head += [c for c in names if c != DEFAULT]
    head += [
        f"per-log selection ({ship.label()})",
        "leave-one-dataset-out: policy chosen on the other steering datasets → figure (minus {DEFAULT})",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for d in ds:
        oof = oofs[d]
        cells = [title[d], str(len(oof.fold))]
        cells.append(f"{_pct(res['pooled'][d][DEFAULT])} / {_pct(float(np.mean(oof.fold_gap[DEFAULT])))}")
        for c in names:
            if c == DEFAULT:
                continue
            lo, hi = res["diff_ci"][d][c]
            cells.append(f"{_pct(res['pooled'][d][c])} ({100 * lo:+.1f} .. {100 * hi:+.1f})")
        picks = res["choices"][ship][d]
        cells.append(f"{_pct(res['policy_gap'][ship][d])} (folds: {', '.join(picks)})")
        pol, fig = res["lodo"][d]
        cells.append(f"{pol.label()} → {_pct(fig)} ({100 * (fig - res['pooled'][d][DEFAULT]):+.1f})")
        lines.append("| " + " | ".join(cells) + " |")
    out = "\n".join(lines)
    # every policy's figure per dataset (the LODO choice is made from these rows)
    head2 = ["policy"] + [title[d] for d in ds] + ["mean"]
    rows2 = ["| " + " | ".join(head2) + " |", "|" + "|".join("---" for _ in head2) + "|"]
    for p in pols:
        g = [res["policy_gap"][p][d] for d in ds]
        rows2.append("| " + " | ".join([p.label()] + [_pct(x) for x in g] + [_pct(float(np.mean(g)))]) + " |")
    title2 = "Gap closed of every policy (per-log selection cross-fitted over the folds):"
    return f"{out}\n\n{title2}\n\n" + "\n".join(rows2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(QD.DATASETS))
    ap.add_argument("--candidates", default="linear,per_tier,blend,linear-shrink3,linear-shrink30,linear-shrink100")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="fold partition seed (cv_features.fold_of_prompt)")
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--levels", default="0.5,0.2,0.1,0.05", help="bootstrap levels the policies may use")
    ap.add_argument("--steer", default="routerbench-3task,llmrouter-nim9,routellm-mmlu,routellm-gsm8k",
                    help="datasets whose figures choose the policies (the others are only reported)")
    ap.add_argument("--ship", default="", help="JSON [candidates, reference, level] of the policy to show per log")
    ap.add_argument("--shared-dir", type=Path, default=QD.DEFAULT_SHARED_DIR)
    ap.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "tierwise-select")
    ap.add_argument("--fit-only", action="store_true", help="fit and cache the out-of-fold probabilities only")
    ap.add_argument("--write-doc", type=Path, help="also write the tables into this markdown file")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("tierwise").setLevel(logging.ERROR)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    names = [c.strip() for c in args.candidates.split(",") if c.strip()]
    bad = [d for d in datasets if d not in QD.DATASETS] + [c for c in names if c not in CANDIDATES]
    if bad or DEFAULT not in names:
        print(f"error: unknown dataset/candidate {bad} (the candidates must include {DEFAULT!r}); datasets: "
              f"{', '.join(QD.DATASETS)}; candidates: {', '.join(CANDIDATES)}", file=sys.stderr)
        return 2
    if not args.shared_dir.is_dir():
        print(f"error: shared data not found at {args.shared_dir} (use --shared-dir)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    oofs = {}
    for d in datasets:
        oofs[d] = fit_dataset(d, args.shared_dir, args.work_dir, args.folds, args.seed, names)
        secs = ", ".join(f"{c} {s:.0f}s" for c, s in oofs[d].fit_seconds.items())
        print(f"{d}: {len(oofs[d].fold)} out-of-fold prompts; fit time over folds: {secs}", file=sys.stderr, flush=True)
    if args.fit_only:
        return 0
    levels = [float(x) for x in args.levels.split(",")]
    sets = _policy_sets(names)
    pols = policies(names, sets, levels)
    steer = [d for d in args.steer.split(",") if d in oofs] or list(oofs)
    res = analyse(oofs, names, pols, args.n_boot, steer)
    ship = Policy(*json.loads(args.ship)) if args.ship else best_policy(pols, res["policy_gap"], steer)
    if isinstance(ship.candidates, list):
        ship = Policy(tuple(ship.candidates), ship.reference, float(ship.level))
    if ship not in res["policy_gap"]:
        print(f"error: --ship policy {ship} is not among the evaluated policies", file=sys.stderr)
        return 2
    text = tables(oofs, names, pols, res, ship)
    cmd = "python benchmarks/select_lodo.py " + " ".join(argv if argv is not None else sys.argv[1:])
    wall = time.perf_counter() - t0
    print(text)
    print(f"\nwall time {wall:.0f}s; command: {cmd}")
    if args.write_doc:
        write_doc(args.write_doc, f"Produced by `{cmd}` ({wall:.0f} s).\n\n{text}\n")
    if args.out:
        args.out.write_text(json.dumps({
            "pooled": res["pooled"],
            "policies": {p.label(): res["policy_gap"][p] for p in pols},
            "lodo": {d: [p.label(), g] for d, (p, g) in res["lodo"].items()},
            "fold_gap": {d: o.fold_gap for d, o in oofs.items()},
            "fit_seconds": {d: o.fit_seconds for d, o in oofs.items()},
        }, indent=1, default=float), encoding="utf-8")
    return 0


BEGIN, END = "<!-- select_lodo.py: begin -->", "<!-- select_lodo.py: end -->"


def write_doc(path: Path, block: str) -> None:
    """Replace the generated block of ``path`` (between BEGIN and END), or append one; the prose around it stays."""
    from router.atomic_io import write_text_atomic

    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    new = f"{BEGIN}\n{block}{END}"
    if BEGIN in old and END in old:
        text = old[: old.index(BEGIN)] + new + old[old.index(END) + len(END) :]
    else:
        text = (old.rstrip() + "\n\n" if old else "") + new + "\n"
    write_text_atomic(path, text)


def _policy_sets(names: list[str]) -> list[tuple[str, ...]]:
    """Candidate sets the policies choose among: the default plus each other candidate, the MiniLM ones, all."""
    sets: list[tuple[str, ...]] = []
    for c in names:
        if c != DEFAULT:
            sets.append((DEFAULT, c))
    minilm = tuple(c for c in names if "static" not in c and "both" not in c)
    for s in (minilm, tuple(names)):
        if len(s) > 2 and s not in sets:
            sets.append(s)
    for extra in (("linear", "per_tier", "blend"),):
        if all(c in names for c in extra) and extra not in sets:
            sets.append(extra)
    return sets


if __name__ == "__main__":
    raise SystemExit(main())
