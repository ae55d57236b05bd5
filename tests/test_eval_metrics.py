"""Metrics against values worked out by hand (the arithmetic is in each test) and against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from pipeline.evaluation.metrics import mae, ndcg_at_k, rmse


def test_mae_and_rmse_by_hand() -> None:
    y_true = np.array([4.0, 2.0, 5.0])
    y_pred = np.array([3.5, 3.0, 5.0])
    # errors 0.5, -1.0, 0.0
    assert mae(y_true, y_pred) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert rmse(y_true, y_pred) == pytest.approx(math.sqrt((0.25 + 1.0 + 0.0) / 3))


def test_mae_rmse_reject_misaligned_or_non_finite() -> None:
    with pytest.raises(ValueError, match="3 rows but y_pred has 2"):
        mae(np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="non-finite"):
        rmse(np.ones(2), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="at least one"):
        mae(np.array([]), np.array([]))


def test_ndcg_single_user_by_hand() -> None:
    # ranked by prediction: relevances 3, 1, 2 -> gains 7, 1, 3
    # DCG@2 = 7/log2(2) + 1/log2(3); ideal order 3, 2, 1 -> IDCG@2 = 7/log2(2) + 3/log2(3)
    expected = (7 + 1 / math.log2(3)) / (7 + 3 / math.log2(3))
    got = ndcg_at_k(np.zeros(3), np.array([3.0, 1.0, 2.0]), np.array([0.9, 0.8, 0.1]), k=2)
    assert got == pytest.approx(expected)
    assert got == pytest.approx(7.6309298 / 8.8927893, abs=1e-6)  # 0.858103


def test_ndcg_uses_graded_relevance_where_binary_would_not_tell() -> None:
    """recommenders issue #1749: with relevance = rating >= 4, both rankings below score a perfect 1."""
    y_true = np.array([5.0, 4.0, 1.0])
    right = np.array([0.9, 0.5, 0.1])  # ranks 5, 4, 1
    swapped = np.array([0.5, 0.9, 0.1])  # ranks 4, 5, 1
    # swapped: DCG@2 = (2^4-1)/1 + (2^5-1)/log2(3) = 15 + 31/log2(3); IDCG@2 = 31 + 15/log2(3)
    expected = (15 + 31 / math.log2(3)) / (31 + 15 / math.log2(3))
    assert ndcg_at_k(np.zeros(3), y_true, swapped, k=2) == pytest.approx(expected)
    assert expected == pytest.approx(34.558823 / 40.463946, abs=1e-6)  # 0.854065
    assert ndcg_at_k(np.zeros(3), y_true, right, k=2) == pytest.approx(1.0)
    binary = (y_true >= 4).astype(float)
    assert ndcg_at_k(np.zeros(3), binary, swapped, k=2) == pytest.approx(1.0)


def test_ndcg_averages_users_and_scores_short_lists_on_all_rows() -> None:
    # user 7: relevances by prediction 1, 3 (k=3 > 2 rows) -> DCG = 1 + 7/log2(3); IDCG = 7 + 1/log2(3)
    # user 2: one row -> 1.0
    user = np.array([7, 2, 7])
    y_true = np.array([1.0, 4.0, 3.0])
    y_pred = np.array([2.0, 1.0, 1.0])
    user7 = (1 + 7 / math.log2(3)) / (7 + 1 / math.log2(3))
    assert ndcg_at_k(user, y_true, y_pred, k=3) == pytest.approx((user7 + 1.0) / 2)


def test_ndcg_ties_are_broken_pessimistically_whatever_the_row_order() -> None:
    # tie at the top: the 1-star row is ranked first -> DCG@1 = 2^1-1 = 1, IDCG@1 = 2^5-1 = 31
    for order in ([0, 1], [1, 0]):
        y_true = np.array([1.0, 5.0])[order]
        assert ndcg_at_k(np.zeros(2), y_true, np.array([3.0, 3.0]), k=1) == pytest.approx(1 / 31)
    # a tie below a distinct top prediction: ranking 5 | (2, 4 tied -> 2 first)
    # DCG@3 = 31 + 3/log2(3) + 15/2; IDCG@3 = 31 + 15/log2(3) + 3/2
    got = ndcg_at_k(np.zeros(3), np.array([4.0, 5.0, 2.0]), np.array([1.0, 2.0, 1.0]), k=3)
    assert got == pytest.approx((31 + 3 / math.log2(3) + 7.5) / (31 + 15 / math.log2(3) + 1.5))


def test_ndcg_leaves_out_users_with_zero_ideal_dcg() -> None:
    user = np.array([0, 0, 1, 1])
    y_true = np.array([1.0, 2.0, 0.0, 0.0])
    y_pred = np.array([0.9, 0.1, 0.5, 0.4])
    # user 0: gains by prediction 1, 3 -> (1 + 3/log2(3)) / (3 + 1/log2(3)); user 1 has IDCG 0
    expected = (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3))
    assert ndcg_at_k(user, y_true, y_pred, k=5) == pytest.approx(expected)
    with pytest.raises(ValueError, match="undefined"):
        ndcg_at_k(np.zeros(2), np.zeros(2), np.ones(2), k=1)


def test_ndcg_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        ndcg_at_k(np.zeros(2), np.ones(2), np.ones(2), k=0)
    with pytest.raises(ValueError, match="must be >= 0"):
        ndcg_at_k(np.zeros(2), np.array([1.0, -1.0]), np.ones(2), k=1)
    with pytest.raises(ValueError, match="user has 3 rows"):
        ndcg_at_k(np.zeros(3), np.ones(2), np.ones(2), k=1)


def test_ndcg_matches_scikit_learn_without_ties() -> None:
    """scikit-learn's ndcg_score with gains 2^rel - 1 passed as its (linear) relevance, user by user."""
    rng = np.random.default_rng(3)
    sizes = rng.integers(2, 15, size=40)
    user = np.repeat(np.arange(sizes.size) * 3 + 5, sizes)
    perm = rng.permutation(user.size)
    user = user[perm]
    y_true = rng.integers(1, 6, user.size).astype(float)
    y_pred = rng.normal(size=user.size)
    for k in (1, 3, 10):
        reference = np.mean(
            [ndcg_score([np.exp2(y_true[user == u]) - 1], [y_pred[user == u]], k=k) for u in np.unique(user)]
        )
        assert ndcg_at_k(user, y_true, y_pred, k) == pytest.approx(reference, rel=1e-12)
