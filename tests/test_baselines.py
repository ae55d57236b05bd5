"""Baselines on tiny planted data: global_mean, linear_bias (vs hand values and an exact solver), lightgbm."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import lsqr
from sklearn.decomposition import PCA

from pipeline.baselines.base import ColdStartModel, training_ratings
from pipeline.baselines.global_mean import GlobalMean
from pipeline.baselines.lightgbm_model import LightGBMModel, out_of_fold_item_totals, text_pca
from pipeline.baselines.linear_bias import LinearBias, new_user_bias
from pipeline.evaluation.meta_adapter import MetaModel
from pipeline.evaluation.metrics import mae
from pipeline.evaluation.splits import Split, kfold_splits
from pipeline.features.store import FeatureSet
from tests.eval_fixtures import planted_feature_set


def _query(split: Split) -> dict[str, np.ndarray]:
    return {c: split.query_set[c] for c in ("user_index", "item_index")}


def _fit_predict(model: ColdStartModel, fs: FeatureSet, split: Split) -> np.ndarray:
    model.fit(fs, split.train_users)
    return model.predict(fs, split.support_set, _query(split))


@pytest.fixture(scope="module")
def planted() -> tuple[FeatureSet, dict[str, np.ndarray], Split]:
    fs, truth = planted_feature_set(n_users=150, n_items=60, per_user=(12, 40), seed=5, noise=0.3)
    return fs, truth, kfold_splits(fs.ratings, folds=5, support_size=6, seed=1)[0]


def test_every_model_follows_the_protocol() -> None:
    for model in (GlobalMean(), LinearBias(), LightGBMModel(5, 0), MetaModel({}, seed=0)):
        assert isinstance(model, ColdStartModel)


def test_global_mean_is_the_mean_of_training_ratings_only() -> None:
    fs, _ = planted_feature_set(n_users=4, n_items=6, per_user=(2, 2), seed=0)
    fs = replace(fs, ratings={**fs.ratings, "rating": np.array([1, 2, 4, 5, 3, 3, 2, 2], np.float32)})
    model = GlobalMean()
    model.fit(fs, np.array([0, 2]))  # users 0 and 2 rated 1, 2 and 3, 3: mean 9/4
    pred = model.predict(fs, {}, {"user_index": np.array([1, 3]), "item_index": np.array([0, 5])})
    assert pred.tolist() == [2.25, 2.25]


def test_training_ratings_refuse_an_empty_training_set() -> None:
    fs, _ = planted_feature_set(n_users=4, n_items=6, per_user=(2, 2))
    with pytest.raises(ValueError, match="no ratings for the 1 training users"):
        training_ratings(fs, np.array([99]))


def test_new_user_bias_closed_form_by_hand() -> None:
    # support residuals r - θ0 - θi of user 1: 0.0 and -0.3, l2_user 5 -> θu = -0.3 / (2 + 5)
    # user 0 has no support: θu = 0; user 2: one residual 0.8 -> 0.8 / (1 + 5)
    got = new_user_bias(np.array([0.0, 0.8, -0.3]), np.array([1, 2, 1]), n_users=3, l2_user=5.0)
    assert got == pytest.approx([0.0, -0.3 / 7, 0.8 / 6])


def test_linear_bias_matches_the_exact_regularised_least_squares(planted) -> None:
    """Adam's fixed iterations land on the ridge solution of the same objective (scipy lsqr reference)."""
    fs, _, split = planted
    model = LinearBias(l2_user=3.0, l2_item=7.0)
    model.fit(fs, split.train_users)
    rows = training_ratings(fs, split.train_users)
    n, n_u, n_i = rows["rating"].size, fs.n_users, fs.n_items
    ones = np.ones(n)
    design = sp.hstack(
        [
            sp.csr_matrix(ones[:, None]),
            sp.csr_matrix((ones, (np.arange(n), rows["user_index"])), shape=(n, n_u)),
            sp.csr_matrix((ones, (np.arange(n), rows["item_index"])), shape=(n, n_i)),
        ]
    )
    penalty = sp.diags(np.r_[0.0, np.full(n_u, np.sqrt(3.0)), np.full(n_i, np.sqrt(7.0))])
    target = np.r_[rows["rating"], np.zeros(1 + n_u + n_i)]
    exact = lsqr(sp.vstack([design, penalty]), target, atol=1e-12, btol=1e-12, iter_lim=10_000)[0]
    assert model.theta0 == pytest.approx(exact[0], abs=1e-5)
    assert np.abs(model.user_bias - exact[1 : 1 + n_u]).max() < 1e-5
    assert np.abs(model.item_bias - exact[1 + n_u :]).max() < 1e-5


def test_linear_bias_recovers_planted_biases(planted) -> None:
    fs, truth, split = planted
    model = LinearBias(l2_user=0.5, l2_item=0.5)
    model.fit(fs, split.train_users)
    item_seen = np.isin(np.arange(fs.n_items), training_ratings(fs, split.train_users)["item_index"])
    for got, want in (
        (model.user_bias[split.train_users], truth["user_bias"][split.train_users]),
        (model.item_bias[item_seen], truth["item_bias"][item_seen]),
    ):
        got_c, want_c = got - got.mean(), want - want.mean()  # θ0 absorbs any common shift
        assert np.corrcoef(got_c, want_c)[0, 1] > 0.95
        assert np.abs(got_c - want_c).mean() < 0.15


def test_linear_bias_predicts_theta0_plus_biases_for_a_new_user(planted) -> None:
    fs, _, split = planted
    model = LinearBias(l2_user=5.0)
    pred = _fit_predict(model, fs, split)
    u = split.test_users[0]
    s_rows = split.support_set["user_index"] == u
    residual = (
        split.support_set["rating"][s_rows]
        - model.theta0
        - model.item_bias[split.support_set["item_index"][s_rows]]
    )
    theta_u = residual.sum() / (s_rows.sum() + 5.0)
    q_rows = split.query_set["user_index"] == u
    expected = np.clip(model.theta0 + theta_u + model.item_bias[split.query_set["item_index"][q_rows]], 1, 5)
    assert pred[q_rows] == pytest.approx(expected)


def test_text_pca_matches_scikit_learn_up_to_sign() -> None:
    x = np.random.default_rng(0).normal(size=(50, 12)).astype(np.float32)
    got = text_pca(x, 4)
    want = PCA(n_components=4, svd_solver="full").fit_transform(x.astype(np.float64))
    for c in range(4):
        assert np.abs(got[:, c]).tolist() == pytest.approx(np.abs(want[:, c]).tolist(), abs=1e-8)


@pytest.mark.parametrize("name", ["linear_bias", "lightgbm"])
def test_baselines_beat_global_mean_on_planted_data(planted, name: str) -> None:
    fs, _, split = planted
    y = split.query_set["rating"]
    floor = mae(y, _fit_predict(GlobalMean(), fs, split))
    model = LinearBias() if name == "linear_bias" else LightGBMModel(support_size=6, seed=0, n_estimators=50)
    got = mae(y, _fit_predict(model, fs, split))
    assert got < 0.8 * floor


def test_lightgbm_is_deterministic_and_uses_the_given_support_set(planted) -> None:
    fs, _, split = planted
    first = _fit_predict(LightGBMModel(support_size=6, seed=3, n_estimators=30), fs, split)
    second = _fit_predict(LightGBMModel(support_size=6, seed=3, n_estimators=30, num_threads=1), fs, split)
    assert np.array_equal(first, second)
    model = LightGBMModel(support_size=6, seed=3, n_estimators=30)
    model.fit(fs, split.train_users)
    happier = {**split.support_set, "rating": np.minimum(split.support_set["rating"] + 1.5, 5.0)}
    assert model.predict(fs, happier, _query(split)).mean() > first.mean() + 0.3


@pytest.mark.parametrize("name", ["global_mean", "linear_bias", "lightgbm"])
def test_test_users_query_ratings_never_reach_a_model(planted, name: str) -> None:
    """Scrambling the test users' query ratings in the feature set changes no prediction."""
    fs, _, split = planted

    def make() -> ColdStartModel:
        if name == "global_mean":
            return GlobalMean()
        return (
            LinearBias() if name == "linear_bias" else LightGBMModel(support_size=6, seed=0, n_estimators=20)
        )

    before = _fit_predict(make(), fs, split)
    rating = fs.ratings["rating"].copy()
    in_test = np.isin(fs.ratings["user_index"], split.test_users)
    rating[in_test] = 6.0 - rating[in_test]
    scrambled = replace(fs, ratings={**fs.ratings, "rating": rating})
    after = _fit_predict(make(), scrambled, split)
    assert np.array_equal(before, after)


def test_out_of_fold_item_totals_by_hand() -> None:
    # users 0..3 in folds {0, 1} and {2}; user 3 in no fold (a new user); items 0 and 1
    user = np.array([0, 0, 1, 2, 2, 3])
    item = np.array([0, 1, 0, 0, 1, 1])
    rating = np.array([5.0, 1.0, 3.0, 4.0, 2.0, 9.0])
    sums, counts, row = out_of_fold_item_totals(user, item, rating, 4, 2, [np.array([0, 1]), np.array([2])])
    assert row.tolist() == [1, 1, 2, 0]
    # row 0: everyone -> item 0: 5 + 3 + 4 = 12 (3), item 1: 1 + 2 + 9 = 12 (3)
    # row 1: without users 0, 1 -> item 0: 4 (1), item 1: 2 + 9 = 11 (2)
    # row 2: without user 2 -> item 0: 5 + 3 = 8 (2), item 1: 1 + 9 = 10 (2)
    assert sums.tolist() == [[12.0, 12.0], [4.0, 11.0], [8.0, 10.0]]
    assert counts.tolist() == [[3.0, 3.0], [1.0, 2.0], [2.0, 2.0]]
