"""Metrics against values worked out by hand (the arithmetic is in each test), against scikit-learn
(nDCG, ROC AUC) and against a plain-Python top-k reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import ndcg_score, roc_auc_score

from pipeline.evaluation.metrics import (
    auc,
    mae,
    ndcg_at_k,
    per_user_auc,
    per_user_mae,
    per_user_ndcg_at_k,
    per_user_rmse,
    per_user_topk,
    relevant_rows,
    rmse,
    topk_metrics,
    unseen_candidates,
)


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


def test_ndcg_per_user_values_are_the_mean_ndcg_terms() -> None:
    # user 4: one row -> 1.0; user 1: relevances by prediction 1, 3 -> (1 + 7/log2(3)) / (7 + 1/log2(3))
    user = np.array([4, 1, 1])
    users, values = per_user_ndcg_at_k(user, np.array([2.0, 1.0, 3.0]), np.array([0.0, 0.9, 0.1]), k=5)
    assert users.tolist() == [1, 4]
    assert values == pytest.approx([(1 + 7 / math.log2(3)) / (7 + 1 / math.log2(3)), 1.0])
    assert ndcg_at_k(user, np.array([2.0, 1.0, 3.0]), np.array([0.0, 0.9, 0.1]), k=5) == pytest.approx(
        values.mean()
    )


def test_per_user_mae_and_rmse_by_hand() -> None:
    user = np.array([3, 1, 3])
    y_true = np.array([4.0, 2.0, 5.0])
    y_pred = np.array([3.0, 2.0, 5.5])
    # user 1: error 0; user 3: errors 1, -0.5 -> MAE 0.75, RMSE sqrt((1 + 0.25) / 2)
    users, values = per_user_mae(user, y_true, y_pred)
    assert users.tolist() == [1, 3]
    assert values.tolist() == pytest.approx([0.0, 0.75])
    assert per_user_rmse(user, y_true, y_pred)[1].tolist() == pytest.approx([0.0, math.sqrt(0.625)])
    assert mae(y_true, y_pred) == pytest.approx(0.5)  # rows weigh the same: 1.5 / 3, not (0 + 0.75) / 2
    with pytest.raises(ValueError, match="user has 2 rows"):
        per_user_mae(np.array([1, 3]), y_true, y_pred)


def test_auc_by_hand_with_a_tie_and_one_class_users_left_out() -> None:
    # user 0: positives score 0.8, 0.3; negatives 0.3, 0.1 -> pairs 0.8>0.3, 0.8>0.1, 0.3=0.3 (1/2),
    #   0.3>0.1 -> 3.5 / 4 = 0.875
    # user 2: the positive (0.2) is below the negative (0.9) -> 0; user 1 has only positives: left out
    user = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    y_true = np.array([1, 0, 1, 0, 1, 1, 0, 1])
    score = np.array([0.8, 0.3, 0.3, 0.1, 0.5, 0.2, 0.9, 0.2])
    users, values = per_user_auc(user, y_true, score)
    assert users.tolist() == [0, 2]
    assert values.tolist() == pytest.approx([0.875, 0.0])
    assert auc(user, y_true, score) == pytest.approx(0.4375)
    perm = np.random.default_rng(0).permutation(user.size)
    assert auc(user[perm], y_true[perm], score[perm]) == pytest.approx(0.4375)


def test_auc_matches_scikit_learn_per_user_with_ties() -> None:
    rng = np.random.default_rng(7)
    sizes = rng.integers(2, 25, size=60)
    user = rng.permutation(np.repeat(np.arange(sizes.size) * 2 + 1, sizes))
    y_true = (rng.random(user.size) < 0.4).astype(int)
    score = np.round(rng.normal(size=user.size), 1)  # coarse: many ties
    reference = {
        u: roc_auc_score(y_true[user == u], score[user == u])
        for u in np.unique(user)
        if 0 < y_true[user == u].sum() < (user == u).sum()
    }
    users, values = per_user_auc(user, y_true, score)
    assert users.tolist() == sorted(reference)
    assert values == pytest.approx([reference[u] for u in users], rel=1e-12)
    assert auc(user, y_true, score) == pytest.approx(np.mean(list(reference.values())), rel=1e-12)


def test_auc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="0/1 labels; row 1 is 4"):
        auc(np.zeros(2), np.array([1, 4]), np.ones(2))
    with pytest.raises(ValueError, match="undefined"):
        auc(np.array([0, 1]), np.array([1, 0]), np.ones(2))
    with pytest.raises(ValueError, match="non-finite"):
        auc(np.zeros(2), np.array([1, 0]), np.array([np.inf, 0.0]))


def _topk_example() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, set[int]]]:
    user = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 3, 3])
    item = np.array([0, 1, 2, 3, 4, 5, 1, 2, 0, 1, 0, 1, 2, 3, 4])
    score = np.array([0.9, 0.1, 0.5, 0.5, 0.7, 0.2, 0.3, 0.3, 1.0, 0.0, 5, 4, 3, 2, 1])
    return user, item, score, {0: {2, 5}, 1: {2}, 2: set(), 3: {4}}


def test_topk_metrics_by_hand() -> None:
    # Ties are broken pessimistically: the non-relevant item of a tie ranks first.
    # k = 3. user 0: order 0 (.9), 4 (.7), then the tie at .5: 3 (not relevant) before 2 (relevant), 5, 1
    #   -> top 0, 4, 3; relevant {2, 5}: no hit -> all 0
    # user 1: tie -> item 1 (not relevant) before 2; relevant {2}: hit at rank 2 -> P 1/3 (over k), R 1,
    #   F1 0.5, HR 1, MRR 1/2
    # user 2: no relevant item -> left out; user 3: relevant 4 ranked 5th -> all 0
    user, item, score, relevant = _topk_example()
    got = topk_metrics(user, item, score, relevant, k=3)
    assert got == pytest.approx(
        {
            "precision@3": (1 / 3) / 3,
            "recall@3": 1 / 3,
            "f1@3": 0.5 / 3,
            "hr@3": 1 / 3,
            "mrr@3": (1 / 2) / 3,
            "ndcg_all@3": (1 / np.log2(3)) / 3,  # user 1: its one relevant item at rank 2, ideal rank 1
        }
    )
    users, values = per_user_topk(user, item, score, relevant, k=3)
    assert users.tolist() == [0, 1, 3]
    assert values["mrr"].tolist() == pytest.approx([0.0, 1 / 2, 0.0])
    # k = 4: user 0 hits item 2 at rank 4 -> P 1/4, R 1/2, F1 2(1/4)(1/2)/(3/4) = 1/3, MRR 1/4;
    # user 1: P 1/4, R 1, F1 2(1/4)(1)/(5/4) = 0.4, MRR 1/2
    assert topk_metrics(user, item, score, relevant, k=4) == pytest.approx(
        {
            "precision@4": (1 / 4 + 1 / 4) / 3,
            "recall@4": (1 / 2 + 1) / 3,
            "f1@4": (1 / 3 + 0.4) / 3,
            "hr@4": 2 / 3,
            "mrr@4": (1 / 4 + 1 / 2) / 3,
            # user 0: a hit at rank 4 of an ideal two at ranks 1 and 2
            "ndcg_all@4": ((1 / np.log2(5)) / (1 + 1 / np.log2(3)) + 1 / np.log2(3)) / 3,
        }
    )
    # a constant score: every relevant item ranks after the non-relevant ones, so only user 1, whose two
    # candidates both fit in the top 3, has a hit (in index order user 0's item 2 would count too)
    assert topk_metrics(user, item, np.zeros(user.size), relevant, k=3)["hr@3"] == pytest.approx(1 / 3)
    rel_user, rel_item = np.array([0, 0, 1, 3]), np.array([2, 5, 2, 4])
    assert topk_metrics(user, item, score, (rel_user, rel_item), k=3) == pytest.approx(got)
    perm = np.random.default_rng(1).permutation(user.size)
    assert topk_metrics(user[perm], item[perm], score[perm], relevant, k=3) == pytest.approx(got)
    # k = 1: only user 0's item 0 and user 1's item 1 are picked, neither relevant
    assert topk_metrics(user, item, score, relevant, k=1)["hr@1"] == 0.0


def _topk_reference(
    user: np.ndarray, item: np.ndarray, score: np.ndarray, relevant: dict[int, set[int]], k: int
) -> dict[str, float]:
    """Per user with a relevant item: sort its candidates by (-score, relevant, item) and count, in plain
    Python."""
    out: dict[str, list[float]] = {m: [] for m in ("precision", "recall", "f1", "hr", "mrr", "ndcg_all")}
    for u in sorted(set(user.tolist())):
        rel = relevant.get(u, set())
        if not rel:
            continue
        pairs = zip(score[user == u].tolist(), item[user == u].tolist(), strict=True)
        ranked = sorted(pairs, key=lambda t: (-t[0], t[1] in rel, t[1]))
        top = [i for _, i in ranked[:k]]
        hits = sum(i in rel for i in top)
        p, r = hits / k, hits / len(rel)
        out["precision"].append(p)
        out["recall"].append(r)
        out["f1"].append(2 * p * r / (p + r) if hits else 0.0)
        out["hr"].append(float(hits > 0))
        out["mrr"].append(next((1 / (n + 1) for n, i in enumerate(top) if i in rel), 0.0))
        dcg = sum(1 / math.log2(n + 2) for n, i in enumerate(top) if i in rel)
        out["ndcg_all"].append(dcg / sum(1 / math.log2(n + 2) for n in range(min(k, len(rel)))))
    return {f"{m}@{k}": float(np.mean(v)) for m, v in out.items()}


def test_topk_metrics_match_a_plain_python_reference() -> None:
    rng = np.random.default_rng(11)
    user_parts, item_parts = [], []
    relevant: dict[int, set[int]] = {}
    for u in range(40):
        items = np.sort(rng.choice(60, size=int(rng.integers(5, 50)), replace=False))
        user_parts.append(np.full(items.size, u))
        item_parts.append(items)
        relevant[u] = set(rng.choice(items, size=int(rng.integers(0, 6)), replace=False).tolist())
    user, item = np.concatenate(user_parts), np.concatenate(item_parts)
    score = np.round(rng.random(user.size), 1)  # ties, broken pessimistically
    for k in (1, 5, 10):
        assert topk_metrics(user, item, score, relevant, k) == pytest.approx(
            _topk_reference(user, item, score, relevant, k), rel=1e-12
        )


def test_topk_metrics_reject_bad_candidates() -> None:
    user, item, score, relevant = _topk_example()
    with pytest.raises(ValueError, match="relevant item 7 of user 1 is not among"):
        topk_metrics(user, item, score, {**relevant, 1: {7}}, k=3)
    with pytest.raises(ValueError, match="relevant item 0 of user 9 is not among"):
        topk_metrics(user, item, score, {9: {0}}, k=3)
    with pytest.raises(ValueError, match=r"candidate \(user 0, item 1\) appears more than once"):
        topk_metrics(np.r_[user, 0], np.r_[item, 1], np.r_[score, 0.0], relevant, k=3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        topk_metrics(user, item, score, relevant, k=0)
    with pytest.raises(ValueError, match="no user has a relevant item"):
        topk_metrics(user, item, score, {}, k=3)


def test_unseen_candidates_and_relevant_rows_by_hand() -> None:
    # seen: user 0 item 1; user 2 items 0, 2; user 5 (not asked for) item 1 -> of items 0..2,
    # user 0 has 0 and 2 left, user 2 has 1
    seen_user, seen_item = np.array([0, 2, 2, 5]), np.array([1, 0, 2, 1])
    got_user, got_item = unseen_candidates(np.array([2, 0, 2]), 3, seen_user, seen_item)
    assert list(zip(got_user.tolist(), got_item.tolist(), strict=True)) == [(0, 0), (0, 2), (2, 1)]
    assert unseen_candidates(np.array([], dtype=int), 3, seen_user, seen_item)[1].size == 0
    rel_user, rel_item = relevant_rows(np.array([1, 1, 2]), np.array([5, 6, 7]), np.array([4.0, 3.5, 5.0]))
    assert (rel_user.tolist(), rel_item.tolist()) == ([1, 2], [5, 7])
