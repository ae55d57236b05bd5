"""Collaborative-filtering baselines: biased MF with fold-in, item-item KNN and most-popular, checked
against exact low-rank structure, the normal equations, a loop-by-loop reference and hand values."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipeline.baselines.item_knn import ItemKNN, item_similarity
from pipeline.baselines.mf_foldin import MFFoldIn
from pipeline.baselines.most_popular import MostPopular
from pipeline.evaluation.metrics import mae
from pipeline.features.store import FeatureSet
from tests.baseline_fixtures import new_user_case
from tests.eval_fixtures import planted_feature_set


def rows(user: list[int], item: list[int], rating: list[float]) -> dict[str, np.ndarray]:
    return {"user_index": np.array(user), "item_index": np.array(item), "rating": np.array(rating)}


def feature_set(n_users: int, n_items: int, ratings: dict[str, np.ndarray]) -> FeatureSet:
    """A planted feature set's shapes and vocab (ratings 1..5) with the given rating rows."""
    fs = planted_feature_set(n_users=n_users, n_items=n_items, per_user=(1, 1))[0]
    return replace(fs, ratings=ratings)


def low_rank(
    n_users: int, n_items: int, rank: int, per_user: int, noise: float, seed: int
) -> tuple[FeatureSet, np.ndarray]:
    """Ratings ``3 + b_u + b_i + p_u·q_i (+ noise)``, in 1..5 by construction; returns (fs, full matrix)."""
    rng = np.random.default_rng(seed)
    full = (
        3.0
        + rng.uniform(-0.5, 0.5, (n_users, 1))
        + rng.uniform(-0.5, 0.5, (1, n_items))
        + rng.uniform(-0.6, 0.6, (n_users, rank)) @ rng.uniform(-0.6, 0.6, (rank, n_items))
    )
    user = np.repeat(np.arange(n_users), per_user)
    item = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    rating = full[user, item] + rng.normal(0, noise, user.size)
    return feature_set(n_users, n_items, {"user_index": user, "item_index": item, "rating": rating}), full


def test_mf_foldin_recovers_an_exact_low_rank_new_user() -> None:
    """Rank 1 plus biases, fully observed, no noise: the fold-in of a new user from 4 support ratings
    (2 unknowns: b_u, p_u) reproduces its 8 held-out ratings."""
    fs, full = low_rank(n_users=31, n_items=12, rank=1, per_user=12, noise=0.0, seed=0)
    is_new = fs.ratings["user_index"] == 30
    train = {c: v[~is_new] for c, v in fs.ratings.items()}
    model = MFFoldIn(factors=1, ridge=1e-6, sweeps=200, seed=0)
    model.fit(fs, train)
    support = rows([30] * 4, [0, 1, 2, 3], list(full[30, :4]))
    query = {"user_index": np.full(8, 30), "item_index": np.arange(4, 12)}
    assert model.predict(fs, support, query) == pytest.approx(full[30, 4:], abs=1e-3)
    assert model.predict(fs, {}, query) != pytest.approx(full[30, 4:], abs=0.05)


def test_mf_foldin_is_the_ridge_solve_of_the_normal_equations() -> None:
    """A new user's (b_u, p_u) from its support rows, a known user's from its training plus support rows."""
    fs, _ = low_rank(n_users=40, n_items=20, rank=3, per_user=10, noise=0.2, seed=1)
    train = {c: v[fs.ratings["user_index"] < 39] for c, v in fs.ratings.items()}
    model = MFFoldIn(factors=3, ridge=2.0, sweeps=5, seed=0)
    model.fit(fs, train)
    support = rows([39, 39, 39, 5], [1, 4, 7, 19], [4.0, 2.5, 3.0, 5.0])
    support["item_index"][3] = np.setdiff1d(np.arange(20), train["item_index"][train["user_index"] == 5])[0]
    got = model.fold_in(fs, support)
    assert model.mean is not None
    for u in (39, 5):
        mine = train["user_index"] == u
        item = np.r_[train["item_index"][mine], support["item_index"][support["user_index"] == u]]
        rating = np.r_[train["rating"][mine], support["rating"][support["user_index"] == u]]
        x = np.c_[np.ones(item.size), model.item_terms[item, 1:]]
        y = rating - model.mean - model.item_terms[item, 0]
        want = np.linalg.solve(x.T @ x + 2.0 * np.eye(4), x.T @ y)
        assert got[u] == pytest.approx(want, abs=1e-10)
    untouched = np.setdiff1d(np.arange(40), [5, 39])
    assert np.array_equal(got[untouched], model.user_terms[untouched])


def test_mf_foldin_error_falls_with_more_support_and_seeds_repeat() -> None:
    fs, _ = low_rank(n_users=300, n_items=60, rank=3, per_user=30, noise=0.3, seed=2)
    case = new_user_case(fs, test_share=0.2, support_size=15, seed=0)
    model = MFFoldIn(factors=3, ridge=1.0, sweeps=12, seed=0)
    model.fit(fs, case.train)
    user = case.support["user_index"]
    rank = np.arange(user.size) - np.searchsorted(user, user)  # support rows come grouped by user
    errors = [
        mae(case.y_true, model.predict(fs, {c: v[rank < m] for c, v in case.support.items()}, case.query))
        for m in (0, 2, 5, 15)
    ]
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] - 0.1
    again = MFFoldIn(factors=3, ridge=1.0, sweeps=12, seed=0)
    again.fit(fs, case.train)
    first = model.predict(fs, case.support, case.query)
    assert np.array_equal(first, again.predict(fs, case.support, case.query))
    other = MFFoldIn(factors=3, ridge=1.0, sweeps=12, seed=1)
    other.fit(fs, case.train)
    assert not np.array_equal(first, other.predict(fs, case.support, case.query))


def test_mf_foldin_zero_terms_for_users_without_ratings_and_new_items() -> None:
    fs, _ = low_rank(n_users=20, n_items=10, rank=2, per_user=6, noise=0.1, seed=3)
    train = {c: v[fs.ratings["item_index"] != 9] for c, v in fs.ratings.items()}  # item 9 is new
    train = {c: v[train["user_index"] != 19] for c, v in train.items()}  # user 19 is new
    model = MFFoldIn(factors=2, ridge=1.0, sweeps=4, seed=0)
    model.fit(fs, train)
    assert model.mean is not None
    assert np.array_equal(model.item_terms[9], np.zeros(3)) and np.array_equal(
        model.user_terms[19], np.zeros(3)
    )
    got = model.predict(fs, {}, {"user_index": np.array([19, 3]), "item_index": np.array([4, 9])})
    assert got == pytest.approx(
        np.clip([model.mean + model.item_terms[4, 0], model.mean + model.user_terms[3, 0]], 1, 5), abs=1e-12
    )


def test_mf_foldin_binary_treats_labels_as_ratings_and_scores_in_0_1() -> None:
    fs, _ = low_rank(n_users=60, n_items=20, rank=2, per_user=10, noise=0.3, seed=4)
    labels = replace(fs, ratings={**fs.ratings, "rating": (fs.ratings["rating"] >= 3.0).astype(np.float64)})
    model = MFFoldIn("binary", factors=2, sweeps=4)
    model.fit(labels, labels.ratings)
    pred = model.predict(labels, {}, {c: labels.ratings[c] for c in ("user_index", "item_index")})
    assert not model.predicts_ratings and ((pred >= 0) & (pred <= 1)).all()


# item_knn on 4 users x 4 items (u: ratings of items 0..3, "-" unrated):
# u0: 5 4 - 1   u1: 4 5 2 -   u2: - 2 5 4   u3: 1 - 4 5
KNN_TRAIN = rows(
    [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3],
    [0, 1, 3, 0, 1, 2, 1, 2, 3, 0, 2, 3],
    [5, 4, 1, 4, 5, 2, 2, 5, 4, 1, 4, 5],
)


def reference_knn(train: dict[str, np.ndarray], shrink: float) -> tuple[np.ndarray, np.ndarray]:
    """Baseline residuals (no damping) and the shrunk co-rater cosine, pair by pair with plain loops."""
    r = {(int(u), int(i)): float(v) for u, i, v in zip(*train.values(), strict=True)}
    mu = sum(r.values()) / len(r)
    b_i = {i: np.mean([v - mu for (_, j), v in r.items() if j == i]) for i in range(4)}
    b_u = {u: np.mean([v - mu - b_i[i] for (w, i), v in r.items() if w == u]) for u in range(4)}
    z = np.full((4, 4), np.nan)
    for (u, i), v in r.items():
        z[u, i] = v - mu - b_u[u] - b_i[i]
    sim = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            both = [u for u in range(4) if (u, i) in r and (u, j) in r]
            if i == j or not both:
                continue
            num = sum(z[u, i] * z[u, j] for u in both)
            den = np.sqrt(sum(z[u, i] ** 2 for u in both) * sum(z[u, j] ** 2 for u in both))
            sim[i, j] = num / den * len(both) / (len(both) + shrink)
    return z, sim


def test_item_knn_similarities_and_a_prediction_match_the_reference() -> None:
    fs = feature_set(5, 4, KNN_TRAIN)
    model = ItemKNN(k=2, shrink=1.0, l2_user=0.0, l2_item=0.0)
    model.fit(fs, KNN_TRAIN)
    _, sim = reference_knn(KNN_TRAIN, shrink=1.0)
    assert model.similarity == pytest.approx(sim, abs=1e-12)
    # new user 4 rated items 0, 1, 3; query item 2: its 2 most similar rated items, positive ones only
    support = rows([4, 4, 4], [0, 1, 3], [2.0, 5.0, 3.0])
    mu = KNN_TRAIN["rating"].mean()
    b_i = np.array([np.mean(KNN_TRAIN["rating"][KNN_TRAIN["item_index"] == i]) - mu for i in range(4)])
    b_u = np.mean(support["rating"] - mu - b_i[[0, 1, 3]])
    z = support["rating"] - mu - b_u - b_i[[0, 1, 3]]
    top = np.argsort(-sim[2, [0, 1, 3]])[:2]
    w = np.maximum(sim[2, [0, 1, 3]][top], 0)
    want = mu + b_u + b_i[2] + (w @ z[top]) / w.sum()
    got = model.predict(fs, support, {"user_index": np.array([4]), "item_index": np.array([2])})
    assert got == pytest.approx([np.clip(want, 1, 5)], abs=1e-12)


def test_item_knn_falls_back_to_the_baseline_without_a_neighbour() -> None:
    fs = feature_set(5, 5, KNN_TRAIN)  # item 4: no training rating
    model = ItemKNN(k=2, shrink=1.0, l2_user=0.0, l2_item=0.0)
    model.fit(fs, KNN_TRAIN)
    mu = KNN_TRAIN["rating"].mean()
    query = {"user_index": np.array([4, 0]), "item_index": np.array([2, 4])}
    b_i = np.array([np.mean(KNN_TRAIN["rating"][KNN_TRAIN["item_index"] == i]) - mu for i in range(4)])
    b_u0 = np.mean(np.array([5.0, 4.0, 1.0]) - mu - b_i[[0, 1, 3]])
    assert model.predict(fs, {}, query) == pytest.approx([mu + b_i[2], mu + b_u0], abs=1e-12)


def test_item_knn_shrinkage_damps_a_similarity_with_one_co_rater() -> None:
    """Items 0 and 1 share one rater: the cosine of two scalars is their sign, shrunk to 1 / (1 + 100)."""
    user, item = np.array([0, 0, 1, 2]), np.array([0, 1, 0, 1])
    residual = np.array([0.5, -2.0, 1.0, 1.0])
    assert item_similarity(user, item, residual, 3, 2, 0.0)[0, 1] == pytest.approx(-1.0)
    assert item_similarity(user, item, residual, 3, 2, 100.0)[0, 1] == pytest.approx(-1.0 / 101)


def test_most_popular_orders_items_by_their_training_rating_count() -> None:
    train = rows([0, 1, 2, 0, 1, 0, 3], [2, 2, 2, 0, 0, 3, 1], [1, 5, 3, 4, 2, 5, 1])
    fs = feature_set(4, 5, train)
    model = MostPopular()
    model.fit(fs, train)
    got = model.predict(fs, {}, {"user_index": np.zeros(5, int), "item_index": np.arange(5)})
    assert got.tolist() == [2.0, 1.0, 3.0, 1.0, 0.0] and not model.predicts_ratings
    binary = MostPopular("binary")
    binary.fit(fs, {**train, "rating": (train["rating"] >= 4).astype(float)})
    assert binary.predict(fs, {}, {"user_index": np.zeros(5, int), "item_index": np.arange(5)}).tolist() == [
        1.0,
        0.0,
        1.0,
        1.0,
        0.0,
    ]
