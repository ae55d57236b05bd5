"""Non-personalised top-k by popularity: each item scores its number of training ratings (binary: of
positive labels). A ranking model: the scores are counts, not ratings; a new item scores 0."""

from __future__ import annotations

import numpy as np

from pipeline.baselines.base import Objective, check_objective, check_rows
from pipeline.features.store import FeatureSet


class MostPopular:
    """Scores items by their training rating count (binary: positive-label count); ignores the support set."""

    name = "most_popular"
    seeded = False
    predicts_ratings = False

    def __init__(self, objective: Objective = "regression") -> None:
        self.objective = check_objective(objective)
        self.item_count = np.zeros(0)

    def fit(self, fs: FeatureSet, train: dict[str, np.ndarray]) -> None:
        rows = check_rows(fs, train, "train", self.objective)
        weight = rows["rating"] if self.objective == "binary" else None
        count = np.bincount(rows["item_index"], weights=weight, minlength=fs.n_items)
        self.item_count = count.astype(np.float64)

    def predict(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray]
    ) -> np.ndarray:
        if self.item_count.size == 0:
            raise RuntimeError("MostPopular.predict called before fit")
        return self.item_count[check_rows(fs, query, "query")["item_index"]]
