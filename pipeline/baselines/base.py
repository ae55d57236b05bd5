"""The one interface every cold-start model is evaluated through, and helpers the models share."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from pipeline.evaluation.splits import rows_of_users
from pipeline.features.store import FeatureSet


@runtime_checkable
class ColdStartModel(Protocol):
    """A recommender that trains on some users and predicts for new users from their support sets.

    ``fit`` sees only the ratings of ``train_users``. ``predict`` gets the test users' support sets
    (``user_index``, ``item_index``, ``rating``) and query rows (``user_index``, ``item_index``, no rating)
    and returns one predicted rating per query row, aligned with the query rows.
    """

    name: str

    def fit(self, fs: FeatureSet, train_users: np.ndarray) -> None: ...

    def predict(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray]
    ) -> np.ndarray: ...


def training_ratings(fs: FeatureSet, train_users: np.ndarray) -> dict[str, np.ndarray]:
    """The ratings of ``train_users`` (the only ratings a model may learn from); raises if there are none."""
    rows = rows_of_users(fs.ratings, train_users)
    if rows["rating"].size == 0:
        raise ValueError(f"no ratings for the {np.asarray(train_users).size} training users")
    return rows


def rating_scale(fs: FeatureSet) -> tuple[float, float]:
    """``(rating_min, rating_max)`` from the feature set's vocab.json."""
    try:
        return float(fs.vocab["rating_min"]), float(fs.vocab["rating_max"])
    except KeyError as exc:
        raise ValueError(f"vocab.json: missing key {exc.args[0]!r} (the rating scale)") from None


def clip_to_scale(fs: FeatureSet, pred: np.ndarray) -> np.ndarray:
    """Predictions clipped to the rating scale, as float64."""
    lo, hi = rating_scale(fs)
    return np.clip(np.asarray(pred, dtype=np.float64), lo, hi)
