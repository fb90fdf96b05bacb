"""The notebooks run top to bottom on the SYNTHETIC demo data, and are committed without outputs.

One small router is trained and registered in a temporary SQLite MLflow store; each notebook is then executed by
nbclient in a fresh ``python3`` kernel that runs this interpreter (a private kernelspec on ``JUPYTER_PATH`` pins
it), with its parameters passed as environment variables.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("routing_quality", "savings_report")
MODEL = "tierwise-nb"
TIMEOUT = 300  # seconds per cell


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_clean(name: str) -> None:
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"
    for i, cell in enumerate(code):
        assert cell.outputs == [], f"{name}.ipynb code cell {i} has outputs: clear them before committing"
        assert cell.execution_count is None, f"{name}.ipynb code cell {i} has an execution count: clear outputs"
    assert "TIERWISE_NB_" in code[0].source, "parameters are read from the environment in the first code cell"
    assert "SYNTHETIC" in nb.cells[0].source


# --------------------------------------------------------------------------------------------------------------
# execution
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(work: Path) -> str:
    from training.demo import demo_catalog, demo_log
    from training.pipeline import TrainConfig, train

    uri = f"sqlite:///{work / 'mlflow.db'}"
    result = train(
        # linear: what selection keeps on this log, without scoring the candidates
        demo_log(n_prompts=600),
        catalog=demo_catalog(),
        config=TrainConfig(layout="linear"),
        register=MODEL,
        tracking_uri=uri,
        progress=False,
    )
    assert result.promoted
    return uri


@pytest.fixture(scope="module")
def kernel_env(store: str, work: Path) -> Iterator[None]:
    """Environment of the kernels: this interpreter as ``python3`` and the notebook parameters."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec_dir = work / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tierwise tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(work / "jupyter"))  # searched before user and system kernelspecs
        mp.setenv("MLFLOW_TRACKING_URI", store)
        mp.setenv("TIERWISE_NB_MODEL_URI", f"models:/{MODEL}@champion")
        mp.setenv("MPLBACKEND", "Agg")
        for var in (
            "TIERWISE_TRACKING_URI",
            "TIERWISE_NB_DATA",
            "TIERWISE_NB_DECISIONS",
            "TIERWISE_NB_CATALOG",
            "TIERWISE_NB_SPLIT",
            "TIERWISE_NB_DEMO_PROMPTS",
            "TIERWISE_NB_FORMAT",
            "TIERWISE_NB_COLUMNS",
            "TIERWISE_NB_WHERE",
        ):
            mp.delenv(var, raising=False)
        assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable
        yield


def _execute(name: str, cwd: Path, **env: str) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    nb = _read(name)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        NotebookClient(
            nb, kernel_name="python3", timeout=TIMEOUT, resources={"metadata": {"path": str(cwd)}}
        ).execute()  # raises CellExecutionError (with the traceback) when a cell fails
    return nb


def _outputs(nb: nbformat.NotebookNode, containing: str | None = None) -> list[dict]:
    cells = [c for c in nb.cells if c.cell_type == "code" and (containing is None or containing in c.source)]
    assert cells, f"no code cell contains {containing!r}"
    return [o for c in cells for o in c.outputs]


def _count(outputs: list[dict], mime: str, needle: str | None = None) -> int:
    return sum(1 for o in outputs if mime in o.get("data", {}) and (needle is None or needle in o["data"][mime]))


def _text(outputs: list[dict]) -> str:
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")


def test_routing_quality_runs(kernel_env: None, work: Path) -> None:
    nb = _execute("routing_quality", work)
    outs = _outputs(nb)
    assert not [o for o in outs if o.get("output_type") == "error"]
    assert _count(outs, "image/png") >= 4  # cost-quality, tier mix, confusion, reliability
    assert "SYNTHETIC demo log" in _text(outs)
    assert f"{MODEL}/1" in _text(outs)
    assert _count(_outputs(nb, "evaluate_model("), "text/markdown", "AIQ") == 1
    assert _count(_outputs(nb, "per_task_breakdown("), "text/html", "under_routing") == 1
    worst = _outputs(nb, "worst_under_routed(")
    assert _count(worst, "text/html", "quality_lost") == 1
    assert "under-routed" in _text(worst)
    assert _count(_outputs(nb, "plot_reliability("), "text/html", "ECE") == 1
    # the signal decomposition: the router against base rates and the task prior alone
    assert _count(_outputs(nb, "plot_reliability("), "text/html", "group_prior") == 1
    assert _count(_outputs(nb, "evaluate_model("), "text/markdown", "removes") == 1


def test_savings_report_runs_on_labelled_demo(kernel_env: None, work: Path) -> None:
    nb = _execute("savings_report", work, TIERWISE_NB_MONTHLY_REQUESTS="250000")
    outs = _outputs(nb)
    assert _count(outs, "image/png") == 1
    assert "SYNTHETIC demo log" in _text(outs) and "test prompts" in _text(outs)
    assert _count(_outputs(nb, "savings_summary("), "text/html", "always large") == 1
    assert _count(_outputs(nb, "savings_breakdown("), "text/html", "saved_usd") == 2  # by task, by tier
    assert _count(_outputs(nb, "monthly_projection("), "text/markdown", "250,000 requests") == 1


def test_savings_report_runs_on_decision_log(kernel_env: None, work: Path) -> None:
    from router.service.decision_log import DecisionLog
    from training.demo import demo_catalog

    cat = demo_catalog()
    top = cat.tiers[-1]
    db = work / "decisions.db"
    dlog = DecisionLog(db).start()
    for i in range(40):
        tier = cat.tiers[i % len(cat.tiers)]
        text = f"SYNTHETIC request {i}: " + "word " * (5 + 3 * i)
        dlog.record_decision(
            request_id=f"req-{i}",
            endpoint="/v1/route",
            text=text,
            role="single",
            tier=tier.name,
            tier_index=i % len(cat.tiers),
            model=tier.model,
            threshold=0.8,
            reason="cheapest_tier_meeting_threshold",
            probabilities={t: 0.9 for t in cat.tier_names},
            router_version=f"{MODEL}/1",
            est_cost_usd=tier.price_usd(len(text) / 4, 200),
            est_top_cost_usd=top.price_usd(len(text) / 4, 200),
            latency_ms=3.0,
            metadata={"task": ("chat", "code")[i % 2]},
        )
    assert dlog.flush()
    dlog.close()
    nb = _execute("savings_report", work, TIERWISE_NB_DECISIONS=str(db))
    outs = _outputs(nb)
    assert "40 decisions" in _text(outs)
    assert _count(outs, "image/png") == 1
    assert _count(_outputs(nb, "savings_breakdown("), "text/html", "code") >= 1
