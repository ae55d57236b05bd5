"""The meta-learner family behind the :class:`~pipeline.baselines.base.ColdStartModel` protocol.

The meta-learner trains from per-user tasks (``FeatureSet.tasks``: rows with an ``is_query`` flag) and
adapts from per-user lists, while the evaluation passes flat column tables. This adapter hands the
learner tasks made of the training rows only, regroups the support and query tables by user, and
scatters the predictions back onto the query rows. ``meta``, ``meta_no_text`` and ``finetune`` differ only
in their config (:mod:`pipeline.evaluation.models`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

import numpy as np

from pipeline.baselines.base import unseen_support
from pipeline.evaluation.splits import random_rank
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
    from pipeline.meta.learners import create_learner

    return create_learner


def group_rows(user_index: np.ndarray, users: np.ndarray, *columns: np.ndarray) -> list[list[np.ndarray]]:
    """For each column, one array per user of ``users`` holding that user's rows, in table order."""
    user_index = np.asarray(user_index)
    order = np.argsort(user_index, kind="stable")
    sorted_users = user_index[order]
    starts = np.searchsorted(sorted_users, users, side="left")
    ends = np.searchsorted(sorted_users, users, side="right")
    return [[np.asarray(col)[order[s:e]] for s, e in zip(starts, ends, strict=True)] for col in columns]


def training_tasks(
    tasks: dict[str, np.ndarray], train: dict[str, np.ndarray], seed: int
) -> dict[str, np.ndarray]:
    """Meta-training tasks made of the ``train`` rows only (``user_index``, ``item_index``, ``rating``,
    ``is_query``).

    A row keeps the ``is_query`` flag it has in ``tasks`` (the features stage's split; False for a row
    ``tasks`` lacks, e.g. a sampled negative). A user left without query rows, or (with two rows or more)
    without support rows, gets half of its rows (at least one), drawn with ``seed``, moved to the empty
    side: the meta-learner keeps only users with a query set, and every training user should count.
    """
    user = np.asarray(train["user_index"], dtype=np.int64)
    item = np.asarray(train["item_index"], dtype=np.int64)
    is_query = np.zeros(user.size, dtype=bool)
    if tasks and len(tasks["user_index"]):
        t_user = np.asarray(tasks["user_index"], dtype=np.int64)
        t_item = np.asarray(tasks["item_index"], dtype=np.int64)
        width = int(max(item.max(initial=0), t_item.max(initial=0))) + 1
        t_key = t_user * width + t_item
        order = np.argsort(t_key, kind="stable")
        key = user * width + item
        pos = np.minimum(np.searchsorted(t_key[order], key), order.size - 1)
        found = t_key[order][pos] == key
        is_query = found & np.asarray(tasks["is_query"], dtype=bool)[order][pos]
    rank, size = random_rank(user, seed)
    n_query = np.bincount(user, weights=is_query, minlength=int(user.max(initial=0)) + 1)[user]
    half = np.maximum(1, size // 2)
    is_query = np.where(n_query == 0, rank < half, is_query)
    is_query = np.where((n_query == size) & (size >= 2), rank >= half, is_query)
    return {
        "user_index": user.astype(np.int32),
        "item_index": item.astype(np.int32),
        "rating": np.asarray(train["rating"], dtype=np.float32),
        "is_query": is_query,
    }


class MetaModel:
    """Trains a fresh meta-learner on the training rows; adapts it to each query user's support set.

    ``known_history``: a known user adapts on its training rows as well as its support rows (all its
    evidence, as ``mf_foldin`` keeps a known user's factors); the fold-in (``train.model: foldin``) does.
    """

    seeded = True

    def __init__(
        self,
        config: dict[str, Any],
        seed: int,
        name: str = "meta",
        progress: bool = False,
        create: LearnerFactory | None = None,
        known_history: bool = False,
    ) -> None:
        self.config = config
        self.seed = seed
        self.name = name
        self.predicts_ratings = config.get("objective", "regression") == "regression"
        self.progress = progress
        self.create = create
        self.known_history = known_history
        self.train: dict[str, np.ndarray] = {}
        self.learner: MetaLearnerLike | None = None

    def fit(self, fs: FeatureSet, train: dict[str, np.ndarray]) -> None:
        tasks = training_tasks(fs.tasks, train, self.seed)
        learner_fs = replace(fs, ratings=train, tasks=tasks)
        if self.known_history:
            self.train = {c: np.asarray(train[c]) for c in ("user_index", "item_index", "rating")}
        create = self.create or _meta_learner_factory()
        self.learner = create(self.config, learner_fs, self.seed)
        self.learner.fit(learner_fs, users=np.unique(tasks["user_index"]), progress=self.progress)

    @property
    def ranks(self) -> bool:
        """Whether top-k ranks by the learner's ranking head (:meth:`rank`) instead of :meth:`predict`."""
        return bool(getattr(self.learner, "ranks", False))

    def predict(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray]
    ) -> np.ndarray:
        return self._scores(fs, support, query, rank=False)

    def rank(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray]
    ) -> np.ndarray:
        """The ranking head's scores of the query rows (higher first), adapted as in :meth:`predict`."""
        return self._scores(fs, support, query, rank=True)

    def _scores(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray], rank: bool
    ) -> np.ndarray:
        if self.learner is None:
            raise RuntimeError(f"{self.name}: predict called before fit")
        q_user = np.asarray(query["user_index"])
        users = np.unique(q_user)
        if self.known_history:
            support = self._with_history(fs, support, users)
        empty = np.zeros(0)
        s_items, s_ratings = group_rows(
            support.get("user_index", empty),
            users,
            support.get("item_index", empty).astype(np.int64),
            support.get("rating", empty),
        )
        (q_items,) = group_rows(q_user, users, np.asarray(query["item_index"], dtype=np.int64))
        adapt = self.learner.adapt_rank if rank else self.learner.adapt_predict  # type: ignore[attr-defined]
        preds = adapt(fs.user_cats[users], s_items, s_ratings, q_items)
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

    def _with_history(
        self, fs: FeatureSet, support: dict[str, np.ndarray], users: np.ndarray
    ) -> dict[str, np.ndarray]:
        """``support`` after the training rows of ``users``; support rows repeating a training row dropped."""
        columns = ("user_index", "item_index", "rating")
        rows = {c: np.asarray(support.get(c, np.zeros(0))) for c in columns}
        rows = {c: v[unseen_support(fs, self.train, rows)] for c, v in rows.items()}
        known = np.isin(self.train["user_index"], users)
        return {c: np.concatenate([self.train[c][known], rows[c]]) for c in columns}
