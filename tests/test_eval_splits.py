"""User K-fold and the new_user support/query split."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.splits import (
    SCENARIOS,
    kfold_splits,
    new_user_split,
    support_mask,
    user_folds,
)


def _ratings(counts: dict[int, int]) -> dict[str, np.ndarray]:
    """``counts[u]`` ratings for user u, rows shuffled, items 0..n-1, rating = item % 5 + 1."""
    user = np.concatenate([np.full(n, u) for u, n in counts.items()])
    item = np.concatenate([np.arange(n) for n in counts.values()])
    perm = np.random.default_rng(1).permutation(user.size)
    return {
        "user_index": user[perm].astype(np.int32),
        "item_index": item[perm].astype(np.int32),
        "rating": (item[perm] % 5 + 1).astype(np.float32),
        "timestamp": np.arange(user.size, dtype=np.int64),
    }


def test_user_folds_partition_the_users() -> None:
    users = np.repeat(np.arange(0, 46, 2), 3)  # 23 distinct users, each listed three times
    folds = user_folds(users, 5, seed=7)
    assert len(folds) == 5
    together = np.concatenate(folds)
    assert np.array_equal(np.sort(together), np.unique(users))  # each user exactly once
    assert sorted(len(f) for f in folds) == [4, 4, 5, 5, 5]
    assert all(np.array_equal(a, b) for a, b in zip(folds, user_folds(users, 5, seed=7), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(folds, user_folds(users, 5, seed=8), strict=True))


def test_user_folds_reject_too_few_users() -> None:
    with pytest.raises(ValueError, match="cannot split 3 users into 5 folds"):
        user_folds(np.arange(3), 5, seed=0)


def test_support_mask_sizes_follow_the_rule() -> None:
    counts = {0: 25, 1: 11, 2: 10, 3: 4, 4: 1}
    ratings = _ratings(counts)
    mask = support_mask(ratings["user_index"], support_size=10, seed=3)
    n_support = {u: int(mask[ratings["user_index"] == u].sum()) for u in counts}
    # n > 10: exactly 10; n <= 10: n - 1 (one query rating left); a single rating: empty support
    assert n_support == {0: 10, 1: 10, 2: 9, 3: 3, 4: 0}
    assert np.array_equal(mask, support_mask(ratings["user_index"], 10, seed=3))
    assert not np.array_equal(mask, support_mask(ratings["user_index"], 10, seed=4))


def test_support_mask_draws_every_rating_about_equally() -> None:
    user = np.zeros(20, dtype=np.int64)
    hits = sum(support_mask(user, 5, seed=s).astype(int) for s in range(400))
    # each of 20 ratings is in the support set with probability 5/20: 100 of 400 draws expected
    assert hits.min() > 65 and hits.max() < 135


def test_new_user_split_keeps_test_ratings_out_of_training() -> None:
    ratings = _ratings({u: 8 + u for u in range(12)})
    split = new_user_split(ratings, np.arange(8), np.arange(8, 12), support_size=5, seed=0)
    assert split.scenario == "new_user"
    for part in (split.support_set, split.query_set):
        assert set(np.unique(part["user_index"])) <= {8, 9, 10, 11}
        assert set(part) == set(ratings)
    n_test_rows = int(np.isin(ratings["user_index"], [8, 9, 10, 11]).sum())
    assert split.support_set["rating"].size == 4 * 5
    assert split.query_set["rating"].size == n_test_rows - 20
    pairs = set(zip(split.support_set["user_index"], split.support_set["item_index"], strict=True))
    assert pairs.isdisjoint(zip(split.query_set["user_index"], split.query_set["item_index"], strict=True))
    with pytest.raises(ValueError, match="both train and test"):
        new_user_split(ratings, np.arange(9), np.arange(8, 12), support_size=5, seed=0)


def test_new_user_split_names_a_missing_column() -> None:
    ratings = _ratings({0: 3, 1: 3})
    del ratings["rating"]
    with pytest.raises(ValueError, match=r"missing column\(s\) \['rating'\]"):
        new_user_split(ratings, np.array([0]), np.array([1]), 1, 0)


def test_kfold_splits_cover_every_user_once_and_are_seeded() -> None:
    counts = {u: 3 + (u * 7) % 20 for u in range(30)}
    ratings = _ratings(counts)
    splits = kfold_splits(ratings, folds=4, support_size=5, seed=11)
    tested = np.concatenate([s.test_users for s in splits])
    assert np.array_equal(np.sort(tested), np.arange(30))
    for s in splits:
        assert np.intersect1d(s.train_users, s.test_users).size == 0
        assert np.union1d(s.train_users, s.test_users).size == 30
        rows = s.support_set["rating"].size + s.query_set["rating"].size
        assert rows == sum(counts[u] for u in s.test_users)
        assert np.array_equal(np.unique(s.query_set["user_index"]), s.test_users)  # >= 1 query rating each
        for u in s.test_users:
            assert (s.support_set["user_index"] == u).sum() == min(5, counts[u] - 1)
    again = kfold_splits(ratings, folds=4, support_size=5, seed=11)
    for a, b in zip(splits, again, strict=True):
        assert np.array_equal(a.test_users, b.test_users)
        for col in ratings:
            assert np.array_equal(a.support_set[col], b.support_set[col])
            assert np.array_equal(a.query_set[col], b.query_set[col])
    other = kfold_splits(ratings, folds=4, support_size=5, seed=12)
    assert any(not np.array_equal(a.test_users, b.test_users) for a, b in zip(splits, other, strict=True))


def test_kfold_splits_reject_unknown_scenario() -> None:
    assert "new_user" in SCENARIOS
    with pytest.raises(ValueError, match="unknown scenario 'warm'"):
        kfold_splits(_ratings({0: 3, 1: 3}), 2, 1, 0, scenario="warm")
