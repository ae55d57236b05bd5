"""The implicit task: 0/1 labels from the threshold, seeded unrated negatives per positive."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.implicit import implicit_feature_set, implicit_ratings, sample_negatives
from tests.eval_fixtures import planted_feature_set


def test_labels_and_negatives_by_hand() -> None:
    ratings = {
        "user_index": np.array([0, 0, 0, 1, 1, 2], np.int32),
        "item_index": np.array([0, 1, 2, 3, 4, 5], np.int32),
        "rating": np.array([5.0, 4.0, 3.0, 1.0, 4.5, 2.0], np.float32),
        "timestamp": np.arange(6),
    }
    got = implicit_ratings(ratings, n_users=3, n_items=8, positive_threshold=4.0, negatives=2, seed=0)
    assert set(got) == {"user_index", "item_index", "rating"}
    assert got["rating"][:6].tolist() == [1, 1, 0, 0, 1, 0]  # the rated rows first, in table order
    neg_user, neg_item = got["user_index"][6:], got["item_index"][6:]
    assert (got["rating"][6:] == 0).all()
    # user 0: 2 positives -> 4 negatives; user 1: 1 -> 2; user 2: none -> none
    assert np.bincount(neg_user, minlength=3).tolist() == [4, 2, 0]
    for u, rated in ((0, {0, 1, 2}), (1, {3, 4})):
        mine = neg_item[neg_user == u].tolist()
        assert len(set(mine)) == len(mine) and not set(mine) & rated
        assert mine == sorted(mine)


def test_negatives_run_out_at_the_unrated_items_and_are_seeded() -> None:
    user, item = np.array([0, 0, 0]), np.array([0, 1, 2])
    u, i = sample_negatives(user, item, n_items=5, per_user=np.array([10, 2]), seed=3)
    assert u.tolist() == [0, 0, 1, 1] and i[:2].tolist() == [3, 4]
    again = sample_negatives(user, item, 5, np.array([10, 2]), seed=3)
    assert np.array_equal(again[1], i)
    draws = {tuple(sample_negatives(user, item, 5, np.array([0, 2]), seed=s)[1]) for s in range(20)}
    assert len(draws) > 3  # user 1's two negatives vary with the seed


def test_negatives_are_drawn_uniformly() -> None:
    counts = np.zeros(10)
    for s in range(300):
        _, i = sample_negatives(np.array([0]), np.array([0]), 10, np.array([3]), seed=s)
        counts[i] += 1
    assert counts[0] == 0
    # 900 draws over the 9 unrated items: 100 each expected
    assert counts[1:].min() > 65 and counts[1:].max() < 135


def test_implicit_feature_set_and_errors() -> None:
    fs, _ = planted_feature_set(n_users=10, n_items=30, per_user=(5, 8), seed=1)
    imp = implicit_feature_set(fs, positive_threshold=4.0, negatives=1, seed=0)
    assert (imp.vocab["rating_min"], imp.vocab["rating_max"]) == (0.0, 1.0)
    assert imp.vocab["item_ids"] == fs.vocab["item_ids"]
    positives = int((fs.ratings["rating"] >= 4.0).sum())
    assert imp.ratings["rating"].size == fs.ratings["rating"].size + positives
    with pytest.raises(ValueError, match=r"no rating is >= task\.positive_threshold 9"):
        implicit_feature_set(fs, positive_threshold=9.0, negatives=1, seed=0)
