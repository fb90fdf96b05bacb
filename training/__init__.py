"""tierwise offline pipeline: logs -> labels -> features -> classifier -> evaluation -> MLflow."""
