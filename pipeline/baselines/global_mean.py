"""The floor every model must beat: predict the mean training rating for everyone."""

from __future__ import annotations

import numpy as np

from pipeline.baselines.base import training_ratings
from pipeline.features.store import FeatureSet


class GlobalMean:
    """Predicts the mean of the training users' ratings; ignores the support set."""

    name = "global_mean"

    def __init__(self) -> None:
        self.mean: float | None = None

    def fit(self, fs: FeatureSet, train_users: np.ndarray) -> None:
        self.mean = float(np.mean(training_ratings(fs, train_users)["rating"], dtype=np.float64))

    def predict(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray]
    ) -> np.ndarray:
        if self.mean is None:
            raise RuntimeError("GlobalMean.predict called before fit")
        return np.full(len(query["item_index"]), self.mean, dtype=np.float64)
