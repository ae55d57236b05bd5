"""The content baseline: its damped biases against the exact ridge solution (scipy lsqr), its per-user text
taste against the normal equations and on a planted text preference, and the switch that reads new items'
biases from their text."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import lsqr

from pipeline.baselines.content import ContentModel
from pipeline.evaluation.metrics import mae
from pipeline.features.store import FeatureSet
from tests.eval_fixtures import planted_feature_set

N_USERS, N_ITEMS = 31, 40


def text_feature_set(ratings: dict[str, np.ndarray], seed: int = 0) -> FeatureSet:
    """40 items whose unit text vectors point along +e0 (even items) or -e0 (odd items), plus a little
    noise in 7 other directions; ``N_USERS`` users; the planted set's vocab (ratings 1..5)."""
    rng = np.random.default_rng(seed)
    text = np.c_[np.where(np.arange(N_ITEMS) % 2 == 0, 1.0, -1.0), rng.normal(0, 0.15, (N_ITEMS, 7))]
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    fs = planted_feature_set(n_users=N_USERS, n_items=N_ITEMS, per_user=(1, 1), text_dim=8)[0]
    return replace(fs, item_text=text.astype(np.float32), ratings=ratings)


def all_rows(users: np.ndarray, items: np.ndarray, rating: np.ndarray) -> dict[str, np.ndarray]:
    user, item = np.meshgrid(users, items, indexing="ij")
    return {"user_index": user.ravel(), "item_index": item.ravel(), "rating": rating[user, item].ravel()}


def test_the_text_taste_recovers_a_planted_preference_for_one_text_direction() -> None:
    """Users like the items on one side of the text space (their sign s_u) and dislike the other side:
    r = 3 + s_u x_i0. A new user (s = +1) who reveals 10 ratings is predicted to like the +e0 items it did
    not rate and to dislike the -e0 ones; without the taste every item scores the same for it."""
    sign = np.where(np.arange(N_USERS) % 2 == 0, 1.0, -1.0)
    fs = text_feature_set({})
    full = 3.0 + sign[:, None] * fs.item_text[:, 0].astype(np.float64)[None, :]
    train = all_rows(np.arange(30), np.arange(N_ITEMS), full)
    fs = replace(fs, ratings=train)
    support = all_rows(np.array([30]), np.arange(10), full)
    query = {"user_index": np.full(30, 30), "item_index": np.arange(10, 40)}
    liked = fs.item_text[10:, 0] > 0
    model = ContentModel(taste_ridge=0.1)
    model.fit(fs, train)
    pred = model.predict(fs, support, query)
    assert (pred[liked] > 3.6).all() and (pred[~liked] < 2.4).all()
    assert mae(full[30, 10:], pred) < 0.2
    flat = ContentModel(text_taste=False)
    flat.fit(fs, train)
    without = flat.predict(fs, support, query)
    assert np.ptp(without) < 0.05 and mae(full[30, 10:], without) > 0.8


def test_the_taste_is_the_ridge_solve_on_the_centred_embeddings() -> None:
    """Known user 2 (training rows plus support rows) and new user 5 (support only): score minus the
    biases is x_q·w with w = (XᵀX + taste_ridge·I)⁻¹ Xᵀ z over the user's rows, X the centred text
    embeddings."""
    fs, _ = planted_feature_set(n_users=40, n_items=30, per_user=(6, 15), seed=3, text_dim=8)
    train = {c: v[fs.ratings["user_index"] != 5] for c, v in fs.ratings.items() if c != "timestamp"}
    model = ContentModel(taste_ridge=2.0, l2_user=4.0)
    model.fit(fs, train)
    assert model.mean is not None
    rated_by_2 = train["item_index"][train["user_index"] == 2]
    unrated_by_2 = np.setdiff1d(np.arange(30), rated_by_2)
    support = {
        "user_index": np.array([2, 2, 5, 5, 5]),
        "item_index": np.r_[unrated_by_2[:2], [0, 1, 2]],
        "rating": np.array([5.0, 1.0, 4.0, 2.0, 3.0]),
    }
    query = {"user_index": np.array([2, 2, 5, 5]), "item_index": np.r_[unrated_by_2[2:4], [3, 4]]}
    pred = model.predict(fs, support, query)
    text = fs.item_text.astype(np.float64) - fs.item_text.astype(np.float64).mean(axis=0)
    for u in (2, 5):
        mine = train["user_index"] == u
        item = np.r_[train["item_index"][mine], support["item_index"][support["user_index"] == u]]
        rating = np.r_[train["rating"][mine], support["rating"][support["user_index"] == u]]
        b_u = np.sum(rating - model.mean - model.item_bias[item]) / (item.size + 4.0)
        z = rating - model.mean - b_u - model.item_bias[item]
        x = text[item]
        w = np.linalg.solve(x.T @ x + 2.0 * np.eye(8), x.T @ z)
        q = query["user_index"] == u
        want = model.mean + b_u + model.item_bias[query["item_index"][q]] + text[query["item_index"][q]] @ w
        assert pred[q] == pytest.approx(np.clip(want, 1, 5), abs=1e-9)


def test_the_damped_biases_are_the_exact_ridge_solution() -> None:
    """With l2_user = l2_item = λ, enough sweeps reach min Σ (r - μ - b_u - b_i)² + λ (Σ b_u² + Σ b_i²)
    (scipy lsqr on the one-hot design, damp √λ)."""
    fs, _ = planted_feature_set(n_users=50, n_items=25, per_user=(5, 20), seed=1)
    train = {c: fs.ratings[c] for c in ("user_index", "item_index", "rating")}
    model = ContentModel(l2_user=3.0, l2_item=3.0, sweeps=300, text_taste=False)
    model.fit(fs, train)
    assert model.mean is not None
    n = train["rating"].size
    ones, row = np.ones(n), np.arange(n)
    design = sp.hstack(
        [
            sp.csr_matrix((ones, (row, train["user_index"])), shape=(n, 50)),
            sp.csr_matrix((ones, (row, train["item_index"])), shape=(n, 25)),
        ]
    )
    exact = lsqr(design, train["rating"] - model.mean, damp=np.sqrt(3.0), atol=1e-12, btol=1e-12)[0]
    assert model.item_bias == pytest.approx(exact[50:], abs=1e-6)
    query = {"user_index": np.arange(50), "item_index": np.zeros(50, dtype=np.int64)}
    assert model.predict(fs, {}, query) == pytest.approx(np.clip(model.mean + exact[:50] + exact[50], 1, 5))


def test_new_items_biases_follow_their_text_only_when_the_switch_is_on() -> None:
    """Item bias b_i = 0.8 x_i0 (its text), ratings r = 3 + b_u + b_i; items 30..39 have no training
    rating. With ``item_text_bias`` the ridge reads their biases back from their text; without, they are 0."""
    rng = np.random.default_rng(4)
    fs = text_feature_set({})
    item_bias = 0.8 * fs.item_text[:, 0].astype(np.float64)
    full = 3.0 + rng.normal(0, 0.3, (N_USERS, 1)) + item_bias[None, :]
    train = all_rows(np.arange(N_USERS), np.arange(30), full)
    fs = replace(fs, ratings=train)
    query = {
        "user_index": np.repeat(np.arange(N_USERS), 10),
        "item_index": np.tile(np.arange(30, 40), N_USERS),
    }
    y_true = full[query["user_index"], query["item_index"]]
    on = ContentModel(item_text_bias=True, item_ridge=0.01, l2_item=0.0, text_taste=False)
    on.fit(fs, train)
    assert on.item_bias[30:] == pytest.approx(item_bias[30:] - item_bias[:30].mean(), abs=0.05)
    off = ContentModel(text_taste=False)
    off.fit(fs, train)
    assert np.array_equal(off.item_bias[30:], np.zeros(10))
    assert mae(y_true, on.predict(fs, {}, query)) < 0.1 < 0.5 < mae(y_true, off.predict(fs, {}, query))


def test_users_without_rows_get_the_item_terms_only_and_binary_scores_rank() -> None:
    fs, _ = planted_feature_set(n_users=30, n_items=20, per_user=(5, 12), seed=2)
    train = {c: v[fs.ratings["user_index"] != 29] for c, v in fs.ratings.items() if c != "timestamp"}
    model = ContentModel()
    model.fit(fs, train)
    assert model.mean is not None
    query = {"user_index": np.full(20, 29), "item_index": np.arange(20)}
    assert model.predict(fs, {}, query) == pytest.approx(np.clip(model.mean + model.item_bias, 1, 5))
    empty = {"user_index": np.zeros(0, dtype=np.int64), "item_index": np.zeros(0, dtype=np.int64)}
    assert model.predict(fs, {}, empty).size == 0
    labels = {**train, "rating": (train["rating"] >= 3.5).astype(np.float64)}
    binary = ContentModel("binary")
    binary.fit(fs, labels)
    pred = binary.predict(fs, {}, {c: labels[c] for c in ("user_index", "item_index")})
    assert not binary.predicts_ratings and ((pred >= 0) & (pred <= 1)).all()
    with pytest.raises(ValueError, match="taste_ridge and item_ridge > 0"):
        ContentModel(taste_ridge=0.0)
