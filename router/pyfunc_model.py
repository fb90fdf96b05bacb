"""tierwise router as an MLflow models-from-code pyfunc (the bundle is the ``bundle`` artifact).

MLflow stores this script with the model instead of a cloudpickle of the model object, so loading does not depend on
the training interpreter's pickle format. Only MLflow runs it (``training.registry`` logs its path).
"""

import mlflow.models

from router.pyfunc import TierwisePyfunc

mlflow.models.set_model(TierwisePyfunc())
