"""MLflow pyfunc flavour of a tierwise router.

``mlflow.pyfunc.load_model("models:/tierwise@champion").predict(df)`` takes a DataFrame with a ``prompt`` column
(optional ``role``, ``task``, ``threshold``) and returns one row per prompt: ``tier``, ``model``, ``reason``,
``threshold`` and ``p_<tier>`` for every tier. ``mlflow models serve`` works the same way.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd


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
                    **{f"p_{t}": v for t, v in d.probabilities.items()},
                }
            )
        return pd.DataFrame(rows)
