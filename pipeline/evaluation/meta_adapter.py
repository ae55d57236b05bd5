"""The meta-learner behind the :class:`~pipeline.baselines.base.ColdStartModel` protocol.

The meta-learner takes per-user lists (support items and ratings, query items) while the evaluation
passes flat column tables; this adapter regroups the tables by user and scatters the predictions back
onto the query rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from pipeline.features.store import FeatureSet


class MetaLearnerLike(Protocol):
    """The part of ``pipeline.meta.learner.MetaLearner`` the adapter uses."""

    def fit(self, fs: FeatureSet, users: np.ndarray, progress: bool = ...) -> Any: ...

    def adapt_predict(
        self,
        user_cats: np.ndarray,
        support_items: list[np.ndarray],
        support_ratings: list[np.ndarray],
        query_items: list[np.ndarray],
    ) -> list[np.ndarray]: ...


LearnerFactory = Callable[[dict[str, Any], FeatureSet, int], MetaLearnerLike]


def _meta_learner_factory() -> LearnerFactory:
    from pipeline.meta.learner import MetaLearner

    return MetaLearner.create


def group_rows(user_index: np.ndarray, users: np.ndarray, *columns: np.ndarray) -> list[list[np.ndarray]]:
    """For each column, one array per user of ``users`` holding that user's rows, in table order."""
    user_index = np.asarray(user_index)
    order = np.argsort(user_index, kind="stable")
    sorted_users = user_index[order]
    starts = np.searchsorted(sorted_users, users, side="left")
    ends = np.searchsorted(sorted_users, users, side="right")
    return [[np.asarray(col)[order[s:e]] for s, e in zip(starts, ends, strict=True)] for col in columns]


class MetaModel:
    """Trains a fresh meta-learner on the training users; adapts it to each test user's support set."""

    name = "meta"

    def __init__(
        self,
        config: dict[str, Any],
        seed: int,
        progress: bool = False,
        create: LearnerFactory | None = None,
    ) -> None:
        self.config = config
        self.seed = seed
        self.progress = progress
        self.create = create
        self.learner: MetaLearnerLike | None = None

    def fit(self, fs: FeatureSet, train_users: np.ndarray) -> None:
        create = self.create or _meta_learner_factory()
        self.learner = create(self.config, fs, self.seed)
        self.learner.fit(fs, users=np.asarray(train_users), progress=self.progress)

    def predict(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray]
    ) -> np.ndarray:
        if self.learner is None:
            raise RuntimeError("MetaModel.predict called before fit")
        q_user = np.asarray(query["user_index"])
        users = np.unique(q_user)
        s_items, s_ratings = group_rows(
            support["user_index"], users, support["item_index"], support["rating"]
        )
        (q_items,) = group_rows(q_user, users, query["item_index"])
        preds = self.learner.adapt_predict(fs.user_cats[users], s_items, s_ratings, q_items)
        if len(preds) != users.size:
            raise ValueError(f"meta-learner returned {len(preds)} prediction arrays for {users.size} users")
        flat = [np.asarray(p, dtype=np.float64).ravel() for p in preds]
        for user, p, q in zip(users, flat, q_items, strict=True):
            if p.size != q.size:
                raise ValueError(
                    f"meta-learner returned {p.size} predictions for user {user}'s {q.size} query items"
                )
        out = np.empty(q_user.size, dtype=np.float64)
        out[np.argsort(q_user, kind="stable")] = np.concatenate(flat) if flat else out
        return out
