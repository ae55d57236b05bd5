"""Train/support/query cases cut from a FeatureSet for the baseline tests, independent of the evaluation
engine's splitters: new users (held-out users reveal a few support ratings), new items (held-out items
have no training rating) and warm (held-out ratings of known users on known items)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pipeline.features.store import FeatureSet

RATING_COLUMNS = ("user_index", "item_index", "rating")


@dataclass(frozen=True)
class Case:
    """What a model sees (train, support, query without ratings) and the query's true ratings."""

    train: dict[str, np.ndarray]
    support: dict[str, np.ndarray]
    query: dict[str, np.ndarray]
    y_true: np.ndarray


def _rows(ratings: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {c: np.asarray(ratings[c])[mask] for c in RATING_COLUMNS}


def _case(train_mask: np.ndarray, support_mask: np.ndarray, query_mask: np.ndarray, fs: FeatureSet) -> Case:
    query = _rows(fs.ratings, query_mask)
    return Case(
        train=_rows(fs.ratings, train_mask),
        support=_rows(fs.ratings, support_mask),
        query={c: query[c] for c in ("user_index", "item_index")},
        y_true=query["rating"].astype(np.float64),
    )


def new_user_case(fs: FeatureSet, test_share: float = 0.2, support_size: int = 6, seed: int = 0) -> Case:
    """A seeded ``test_share`` of the users is held out; each reveals ``min(support_size, n - 1)`` random
    ratings as support and is queried on the rest."""
    rng = np.random.default_rng(seed)
    user = np.asarray(fs.ratings["user_index"])
    users = np.unique(user)
    test_users = rng.choice(users, size=max(1, round(test_share * users.size)), replace=False)
    in_test = np.isin(user, test_users)
    order = np.lexsort((rng.random(user.size), user))
    sorted_user = user[order]
    starts = np.searchsorted(sorted_user, sorted_user)
    counts = np.bincount(user)[sorted_user]
    rank = np.empty(user.size, dtype=np.int64)
    rank[order] = np.arange(user.size) - starts
    rank_limit = np.minimum(support_size, counts - 1)
    limit = np.empty(user.size, dtype=np.int64)
    limit[order] = rank_limit
    is_support = in_test & (rank < limit)
    return _case(~in_test, is_support, in_test & ~is_support, fs)


def new_item_case(fs: FeatureSet, item_share: float = 0.25, seed: int = 0) -> Case:
    """A seeded ``item_share`` of the items is held out: all their ratings form the query (users known,
    no support)."""
    rng = np.random.default_rng(seed)
    item = np.asarray(fs.ratings["item_index"])
    items = np.unique(item)
    new_items = rng.choice(items, size=max(1, round(item_share * items.size)), replace=False)
    is_new = np.isin(item, new_items)
    return _case(~is_new, np.zeros(item.size, dtype=bool), is_new, fs)


def warm_case(fs: FeatureSet, query_share: float = 0.2, seed: int = 0) -> Case:
    """A seeded ``query_share`` of all rows is the query; the rest trains (users and items known, no
    support)."""
    held = np.random.default_rng(seed).random(len(fs.ratings["rating"])) < query_share
    return _case(~held, np.zeros(held.size, dtype=bool), held, fs)


def implicit(fs: FeatureSet, threshold: float = 4.0) -> FeatureSet:
    """The same feature set with ratings turned into 0/1 labels (1 = rated >= ``threshold``)."""
    labels = (np.asarray(fs.ratings["rating"]) >= threshold).astype(np.float32)
    return replace(fs, ratings={**fs.ratings, "rating": labels})
