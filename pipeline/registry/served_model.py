"""The model file MLflow logs ("models from code"): the served model is rebuilt from code, never unpickled.

``register`` passes this file's path as ``python_model``; MLflow executes it when it saves and when it
loads the model. Nothing else imports it.
"""

import mlflow

from pipeline.registry.pyfunc import MetaRecModel

mlflow.models.set_model(MetaRecModel())
