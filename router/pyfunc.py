"""MLflow pyfunc flavour of a tierwise router.

``mlflow.pyfunc.load_model("models:/tierwise@champion").predict(df)`` takes a DataFrame with a ``prompt`` column
(optional ``role``, ``task``, ``threshold``) and returns one row per prompt: ``tier``, ``model``, ``reason``,
``threshold``, ``p_acceptable.<tier>`` for every tier and ``estimated_cost_usd.<field>`` (``tier``, ``top_tier``,
``input_tokens``, ``output_tokens``): the HTTP API's ``/v1/route`` response flattened the way
``pandas.json_normalize`` flattens it, so the names are the same in Python, HTTP and the pyfunc.
``mlflow models serve`` works the same way.

Models are logged as MLflow *models-from-code* (a short script that calls ``mlflow.models.set_model``, see
``training.registry``), with the signature of :func:`model_signature` and the input example of :func:`input_example`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlflow.pyfunc
import pandas as pd

COST_FIELDS = ("tier", "top_tier", "input_tokens", "output_tokens")  # the HTTP API's estimated_cost_usd
INPUT_EXAMPLE_PROMPT = "Summarise this contract clause in one sentence: the supplier may terminate on 30 days notice."


def input_example() -> pd.DataFrame:
    """The input example stored with the model (MLflow checks at logging time that it predicts)."""
    return pd.DataFrame({"prompt": [INPUT_EXAMPLE_PROMPT]})


def model_signature(tier_names: Sequence[str]) -> Any:
    """Signature of the pyfunc: a required ``prompt``, optional ``role`` / ``task`` / ``threshold`` columns and a
    ``threshold`` param in; ``tier``, ``model``, ``reason``, ``threshold``, ``p_acceptable.<tier>`` per tier and the
    ``estimated_cost_usd.*`` columns out (USD may be missing: a tier without list prices nor a cost model)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    inputs = Schema(
        [
            ColSpec("string", "prompt"),
            ColSpec("string", "role", required=False),
            ColSpec("string", "task", required=False),
            ColSpec("double", "threshold", required=False),
        ]
    )
    out_cols: list[ColSpec | TensorSpec] = [ColSpec("string", c) for c in ("tier", "model", "reason")]
    out_cols.append(ColSpec("double", "threshold"))
    out_cols += [ColSpec("double", f"p_acceptable.{t}") for t in tier_names]
    out_cols += [ColSpec("double", f"estimated_cost_usd.{k}", required=False) for k in COST_FIELDS[:2]]
    out_cols += [ColSpec("long", f"estimated_cost_usd.{k}") for k in COST_FIELDS[2:]]
    outputs = Schema(out_cols)
    params = ParamSchema([ParamSpec("threshold", "double", None)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


class TierwisePyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]  # lazily exported by mlflow
    """Wraps :class:`router.core.Router`; the bundle travels as the ``bundle`` artifact."""

    def load_context(self, context: Any) -> None:
        from router.core import Router

        self.router = Router.from_bundle(context.artifacts["bundle"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from router.classifier import task_names

        if isinstance(model_input, pd.Series):
            model_input = model_input.to_frame("prompt")
        if not isinstance(model_input, pd.DataFrame) or "prompt" not in model_input.columns:
            raise ValueError("tierwise pyfunc expects a DataFrame with a 'prompt' column")
        prompts = model_input["prompt"].astype(str).tolist()
        roles = model_input["role"].tolist() if "role" in model_input else None
        tasks = task_names(model_input["task"]) if "task" in model_input else None
        threshold = (params or {}).get("threshold")
        proba = self.router.predict_proba_array(prompts, roles, tasks)
        rows = []
        for i, p in enumerate(proba):
            thr = threshold
            if thr is None and "threshold" in model_input and pd.notna(model_input["threshold"].iloc[i]):
                thr = float(model_input["threshold"].iloc[i])
            d = self.router.decide(p, threshold=thr, role=roles[i] if roles else None, prompt_chars=len(prompts[i]))
            rows.append(
                {
                    "tier": d.tier,
                    "model": d.model,
                    "reason": d.reason,
                    "threshold": d.threshold,
                    **{f"p_acceptable.{t}": v for t, v in d.p_acceptable.items()},
                    **_cost_columns(d.estimated_cost_usd),
                }
            )
        return pd.DataFrame(rows)


def _cost_columns(cost: Any) -> dict[str, Any]:
    """The ``estimated_cost_usd.*`` columns of one decision (NaN: unknown USD)."""
    values = {k: getattr(cost, k, None) for k in COST_FIELDS}
    out: dict[str, Any] = {f"estimated_cost_usd.{k}": float("nan") if v is None else v for k, v in values.items()}
    return out
