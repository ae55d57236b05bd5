"""Hyperparameter tuning (``metarec tune``): Optuna studies scored on validation users carved from the
training users of the evaluation's folds, so that tuning never sees a fold's test users."""
