"""Non-personalised item popularity: each item's damped mean training rating (binary: damped share of
positive labels).

``score_i = (Σ_i r + damping · μ) / (n_i + damping)`` with ``μ`` the global mean (binary: base rate) and
``n_i`` the item's training rating count: a well-rated item with many ratings scores high, one with few
ratings stays near ``μ``, and a new item (no training rating) scores exactly ``μ``.
"""

from __future__ import annotations

import numpy as np

from pipeline.baselines.base import Objective, check_objective, check_rows
from pipeline.features.store import FeatureSet


class Popularity:
    """The classic popularity baseline for rating prediction: damped item means; ignores the support set."""

    name = "popularity"
    seeded = False

    def __init__(self, objective: Objective = "regression", damping: float = 10.0) -> None:
        if damping <= 0:
            raise ValueError(f"damping must be > 0, got {damping}")
        self.objective = check_objective(objective)
        self.predicts_ratings = objective == "regression"
        self.damping = damping
        self.item_score = np.zeros(0)

    def fit(self, fs: FeatureSet, train: dict[str, np.ndarray]) -> None:
        rows = check_rows(fs, train, "train", self.objective)
        item, rating = rows["item_index"], rows["rating"]
        mean = rating.mean()
        total = np.bincount(item, weights=rating, minlength=fs.n_items)
        count = np.bincount(item, minlength=fs.n_items)
        self.item_score = (total + self.damping * mean) / (count + self.damping)

    def predict(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray]
    ) -> np.ndarray:
        if self.item_score.size == 0:
            raise RuntimeError("Popularity.predict called before fit")
        return self.item_score[check_rows(fs, query, "query")["item_index"]]
