"""The shared real-data benchmarks as canonical long logs (read-only access to ``shared/data``; nothing is copied).

Each loader returns ``(attempts, catalog)``: the canonical long log of :mod:`training.readers` (with a ``split``
column) and the benchmark's catalog from ``benchmarks/catalogs/``. The data options here (column mapping,
contamination filter, the routellm split) are the only per-dataset choices; every dataset is trained with the same
``TrainConfig()``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Offline-safe defaults for every benchmark (they import this module first, before any encoder is built).
for _key, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ("TOKENIZERS_PARALLELISM", "false"),
):
    os.environ.setdefault(_key, _value)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from router.catalog import Catalog  # noqa: E402
from training.readers import LogOptions, read_log  # noqa: E402

CATALOG_DIR = Path(__file__).resolve().parent / "catalogs"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SHARED_DIR = REPO_ROOT.parent / "shared" / "data"

ROUTELLM_SPLIT_SEED = 0
ROUTELLM_TEST_FRACTION = 0.3
CHARS_PER_TOKEN = 4.0


@dataclass(frozen=True)
class Dataset:
    """One benchmark: how to read it, with which catalog, and how it is split."""

    name: str
    title: str
    catalog: str
    loader: Callable[[Path], pd.DataFrame]
    split_note: str

    def load(self, shared_dir: Path) -> tuple[pd.DataFrame, Catalog]:
        return self.loader(Path(shared_dir)), Catalog.from_yaml(CATALOG_DIR / self.catalog)


def _routerbench(shared: Path) -> pd.DataFrame:
    opts = LogOptions(
        format="wide",
        columns={"sample_id": "prompt_id", "eval_name": "task", "routerdc_split": "split"},
        score_pattern="perf__{model}",
        cost_pattern="cost_usd__{model}",
    )
    return read_log(shared / "routerbench-3task" / "routerbench_3task_wide.parquet", opts)


def _nim9(shared: Path) -> pd.DataFrame:
    opts = LogOptions(
        format="wide",
        columns={"row_id": "prompt_id", "task_name": "task"},
        score_pattern="score__{model}",
        cost_pattern=None,
    )
    return read_log(shared / "llmrouter-nim9" / "llmrouter_nim9_wide.parquet", opts)


def split_group(prompt_id: str) -> str:
    """The unit the routellm split keeps together: an MT-Bench question (both turns; turn 2 contains turn 1),
    otherwise the prompt itself."""
    if prompt_id.startswith("mtbench-"):
        return prompt_id.rsplit("-t", 1)[0]
    return prompt_id


def seeded_split(
    prompt_ids: pd.Series, test_fraction: float = ROUTELLM_TEST_FRACTION, seed: int = ROUTELLM_SPLIT_SEED
) -> pd.Series:
    """``train`` / ``test`` per row from a seeded SHA-1 of the prompt's split group (machine independent)."""
    groups = prompt_ids.astype(str).map(split_group)
    u = groups.map(lambda g: int.from_bytes(hashlib.sha1(f"{seed}:{g}".encode()).digest()[:8], "big") / 2.0**64)
    return pd.Series(np.where(u.to_numpy() < test_fraction, "test", "train"), index=prompt_ids.index)


def _routellm(task: str) -> Callable[[Path], pd.DataFrame]:
    def load(shared: Path) -> pd.DataFrame:
        opts = LogOptions(where=f"contaminated == False and task == '{task}'")
        df = read_log(shared / "routellm-evals" / "routellm_evals_long.parquet", opts)
        df["split"] = seeded_split(df["prompt_id"]).to_numpy()
        # The finer task label (MMLU subject, MT-Bench category) is the log's task column: the group prior learns
        # per-subject rates from it (at serving time groups are predicted from the prompt). GSM8K has none.
        sub = df["subtask"].astype("string").str.strip()
        if sub.notna().all() and (sub != "").all():
            df["task"] = sub.to_numpy()
        if "response" in df and df["response"].notna().all():
            # GSM8K logs both models' answers: estimate output tokens from their length.
            df["output_tokens"] = df["response"].astype(str).str.len() / CHARS_PER_TOKEN
        return df

    return load


_RL_SPLIT = "seeded 70/30 split by prompt (seed 0; MT-Bench turns of a question kept together), contaminated excluded"

DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("routerbench-3task", "routerbench-3task", "routerbench-3task.yaml", _routerbench, "RouterDC split"),
        Dataset("llmrouter-nim9", "llmrouter-nim9", "llmrouter-nim9.yaml", _nim9, "LLMRouter split"),
        Dataset("routellm-mmlu", "routellm MMLU", "routellm.yaml", _routellm("mmlu"), _RL_SPLIT),
        Dataset("routellm-gsm8k", "routellm GSM8K", "routellm.yaml", _routellm("gsm8k"), _RL_SPLIT),
        Dataset("routellm-mt-bench", "routellm MT-Bench", "routellm.yaml", _routellm("mt_bench"), _RL_SPLIT),
    )
}
