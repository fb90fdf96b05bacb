"""Offline routing of logged prompts: ``tierwise route-log`` (what the router would have done, back-filling).

* :mod:`router.offline.reader`: streams the prompts of a log (CSV, JSON Lines, Parquet; long or wide) in chunks,
  checked and renamed, with the source row of each (errors name the file, the column and the rows);
* :mod:`router.offline.route_log`: routes them locally with bounded memory and writes one Parquet row per distinct
  prompt id, atomically;
* :mod:`router.offline.spark`: the same on Spark through the registered MLflow pyfunc (``mlflow.pyfunc.spark_udf``).

Like the rest of ``router/``, nothing here imports ``training/``; pyspark is imported only by
:mod:`router.offline.spark`.
"""
