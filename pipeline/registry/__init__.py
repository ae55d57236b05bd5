"""Stage ``register``: the served pyfunc model and its registration in the MLflow model registry."""
