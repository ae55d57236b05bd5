"""The implicit-feedback task (``task.kind: implicit``): ratings become 0/1 labels plus sampled negatives.

A rating ``>= positive_threshold`` is a positive (label 1), a lower rating an observed negative (label 0),
and each user gets ``negatives`` unrated items per positive, drawn at random, as further negatives
(label 0). The resulting table takes the place of the ratings everywhere: the protocols split it into
training, support and query rows exactly as they split ratings, so a sampled negative can be a training
row, a support row or a query row like any other.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pipeline.evaluation.splits import check_ratings
from pipeline.features.store import FeatureSet

USER_CHUNK = 2048


def sample_negatives(
    user: np.ndarray, item: np.ndarray, n_items: int, per_user: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(user, item)`` of ``per_user[u]`` distinct random items each user ``u`` has no row for (all of its
    unrated items when it has fewer), users in ascending order, items in ascending order per user."""
    user = np.asarray(user, dtype=np.int64)
    item = np.asarray(item, dtype=np.int64)
    per_user = np.asarray(per_user, dtype=np.int64)
    rng = np.random.default_rng(seed)
    out_user, out_item = [], []
    for start in range(0, per_user.size, USER_CHUNK):
        stop = min(start + USER_CHUNK, per_user.size)
        keys = rng.random((stop - start, n_items))
        mine = (user >= start) & (user < stop)
        keys[user[mine] - start, item[mine]] = np.inf
        want = np.minimum(per_user[start:stop], np.isfinite(keys).sum(axis=1))
        order = np.argsort(keys, axis=1, kind="stable")
        take = np.arange(n_items)[None, :] < want[:, None]
        rows = np.broadcast_to(np.arange(stop - start)[:, None], order.shape)[take]
        cols = order[take]
        by_item = np.lexsort((cols, rows))
        out_user.append(rows[by_item] + start)
        out_item.append(cols[by_item])
    if not out_user:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_user), np.concatenate(out_item)


def implicit_ratings(
    ratings: dict[str, np.ndarray],
    n_users: int,
    n_items: int,
    positive_threshold: float,
    negatives: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """The implicit table: ``user_index``, ``item_index`` and ``rating`` (the 0/1 label, float32); the rated
    rows first in table order, then the sampled negatives (module docstring)."""
    check_ratings(ratings)
    if negatives < 0:
        raise ValueError(f"negatives must be >= 0, got {negatives}")
    user = np.asarray(ratings["user_index"], dtype=np.int64)
    item = np.asarray(ratings["item_index"], dtype=np.int64)
    label = np.asarray(ratings["rating"], dtype=np.float64) >= positive_threshold
    if not label.any():
        raise ValueError(f"implicit task: no rating is >= task.positive_threshold {positive_threshold}")
    per_user = negatives * np.bincount(user[label], minlength=n_users)
    neg_user, neg_item = sample_negatives(user, item, n_items, per_user, seed)
    return {
        "user_index": np.r_[user, neg_user].astype(np.int32),
        "item_index": np.r_[item, neg_item].astype(np.int32),
        "rating": np.r_[label.astype(np.float32), np.zeros(neg_user.size, np.float32)],
    }


def implicit_feature_set(fs: FeatureSet, positive_threshold: float, negatives: int, seed: int) -> FeatureSet:
    """``fs`` with the implicit table as its ratings and the label scale [0, 1] in its vocab."""
    table = implicit_ratings(fs.ratings, fs.n_users, fs.n_items, positive_threshold, negatives, seed)
    return replace(fs, ratings=table, vocab={**fs.vocab, "rating_min": 0.0, "rating_max": 1.0})
