"""The floor every model must beat: predict the mean training rating (binary: the base rate) for everyone."""

from __future__ import annotations

import numpy as np

from pipeline.baselines.base import Objective, check_objective, check_rows
from pipeline.features.store import FeatureSet


class GlobalMean:
    """Predicts the mean of the training ratings (binary: the share of positive labels); ignores the
    support set."""

    name = "global_mean"
    seeded = False

    def __init__(self, objective: Objective = "regression") -> None:
        self.objective = check_objective(objective)
        self.predicts_ratings = objective == "regression"
        self.mean: float | None = None

    def fit(self, fs: FeatureSet, train: dict[str, np.ndarray]) -> None:
        self.mean = float(check_rows(fs, train, "train", self.objective)["rating"].mean())

    def predict(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray]
    ) -> np.ndarray:
        if self.mean is None:
            raise RuntimeError("GlobalMean.predict called before fit")
        return np.full(check_rows(fs, query, "query")["item_index"].size, self.mean, dtype=np.float64)
