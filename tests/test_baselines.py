"""Baselines on tiny planted data: hand-computed values, exact reference solvers (scipy lsqr, scikit-learn
logistic regression), new users, new items, known users, the three objectives, seeding and leakage."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import minimize_scalar
from scipy.sparse.linalg import lsqr
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression

from pipeline.baselines.base import ColdStartModel, Objective, check_rows
from pipeline.baselines.content import ContentModel
from pipeline.baselines.cornac_retrain import CornacRetrain
from pipeline.baselines.global_mean import GlobalMean
from pipeline.baselines.item_knn import ItemKNN
from pipeline.baselines.lightgbm_model import (
    LightGBMModel,
    hidden_items,
    out_of_fold_item_totals,
    text_pca,
)
from pipeline.baselines.linear_bias import LinearBias, fit_user_bias
from pipeline.baselines.mf_foldin import MFFoldIn
from pipeline.baselines.most_popular import MostPopular
from pipeline.baselines.popularity import Popularity
from pipeline.evaluation.metrics import auc, mae, ndcg_at_k
from pipeline.evaluation.models import META_FAMILY, MODEL_NAMES
from pipeline.features.store import FeatureSet
from tests.baseline_fixtures import Case, implicit, new_item_case, new_user_case, warm_case
from tests.eval_fixtures import planted_feature_set

MODELS = tuple(name for name in MODEL_NAMES if name not in META_FAMILY)
"""Every baseline of pipeline/baselines/ (the meta-learner family has its own tests)."""


def make(name: str, objective: Objective | Literal["lambdarank"] = "regression") -> ColdStartModel:
    """A small, fast instance of each baseline (``lightgbm_rank`` is LightGBM with objective lambdarank)."""
    if name == "lightgbm_rank":
        return LightGBMModel(support_size=6, seed=0, objective="lambdarank", n_estimators=40)
    if name == "lightgbm":
        return LightGBMModel(support_size=6, seed=0, objective=objective, n_estimators=40)
    assert objective != "lambdarank"
    classes = {
        "global_mean": GlobalMean,
        "popularity": Popularity,
        "most_popular": MostPopular,
        "linear_bias": LinearBias,
        "mf_foldin": MFFoldIn,
        "item_knn": ItemKNN,
        "content": ContentModel,
        "cornac_retrain": CornacRetrain,
    }
    return classes[name](objective)


def fit_predict(model: ColdStartModel, fs: FeatureSet, case: Case) -> np.ndarray:
    model.fit(fs, case.train)
    return model.predict(fs, case.support, case.query)


def rows(user: list[int], item: list[int], rating: list[float]) -> dict[str, np.ndarray]:
    return {"user_index": np.array(user), "item_index": np.array(item), "rating": np.array(rating)}


@pytest.fixture(scope="module")
def planted() -> tuple[FeatureSet, dict[str, np.ndarray]]:
    return planted_feature_set(n_users=150, n_items=60, per_user=(12, 40), seed=5, noise=0.3)


@pytest.fixture(scope="module")
def new_users(planted) -> Case:
    return new_user_case(planted[0], test_share=0.2, support_size=6, seed=1)


@pytest.fixture(scope="module")
def tiny() -> FeatureSet:
    return planted_feature_set(n_users=4, n_items=6, per_user=(2, 2), seed=0)[0]


def test_every_model_follows_the_protocol_and_says_whether_it_predicts_ratings() -> None:
    expected: dict[tuple[str, Objective | Literal["lambdarank"]], bool] = {
        ("global_mean", "regression"): True,
        ("global_mean", "binary"): False,
        ("popularity", "regression"): True,
        ("popularity", "binary"): False,
        ("linear_bias", "regression"): True,
        ("linear_bias", "binary"): False,
        ("most_popular", "regression"): False,
        ("most_popular", "binary"): False,
        ("mf_foldin", "regression"): True,
        ("mf_foldin", "binary"): False,
        ("item_knn", "regression"): True,
        ("item_knn", "binary"): False,
        ("content", "regression"): True,
        ("content", "binary"): False,
        ("cornac_retrain", "regression"): True,
        ("cornac_retrain", "binary"): False,
        ("lightgbm", "regression"): True,
        ("lightgbm", "binary"): False,
        ("lightgbm_rank", "lambdarank"): False,
    }
    for (name, objective), predicts_ratings in expected.items():
        model = make(name, objective)
        assert isinstance(model, ColdStartModel)
        assert (model.name, model.predicts_ratings) == (name, predicts_ratings)
    with pytest.raises(ValueError, match="objective must be one of"):
        GlobalMean("lambdarank")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="objective must be one of"):
        LightGBMModel(5, 0, objective="poisson")  # type: ignore[arg-type]


def test_global_mean_is_the_mean_of_the_training_rows_only(tiny: FeatureSet) -> None:
    model = GlobalMean()
    model.fit(tiny, rows([0, 0, 2, 2], [0, 1, 2, 3], [1, 2, 3, 3]))  # mean 9/4
    query = {"user_index": np.array([1, 3]), "item_index": np.array([0, 5])}
    assert model.predict(tiny, {}, query).tolist() == [2.25, 2.25]
    binary = GlobalMean("binary")
    binary.fit(tiny, rows([0, 1, 2, 3], [0, 0, 1, 1], [1, 0, 0, 0]))  # base rate 1/4
    assert binary.predict(tiny, {}, query).tolist() == [0.25, 0.25]


def test_popularity_is_the_damped_item_mean_by_hand(tiny: FeatureSet) -> None:
    model = Popularity(damping=2.0)
    model.fit(tiny, rows([0, 1, 2], [0, 0, 1], [5, 4, 1]))
    # μ = 10/3; item 0: (5 + 4 + 2·10/3) / (2 + 2) = 47/12; item 1: (1 + 20/3) / (1 + 2) = 23/9; item 2 new: μ
    pred = model.predict(tiny, {}, {"user_index": np.array([3, 3, 3]), "item_index": np.array([0, 1, 2])})
    assert pred == pytest.approx([47 / 12, 23 / 9, 10 / 3])
    binary = Popularity("binary", damping=1.0)
    binary.fit(tiny, rows([0, 1, 2, 3], [0, 0, 0, 1], [1, 1, 0, 0]))
    # base rate 1/2; item 0: (2 + 1·1/2) / (3 + 1) = 5/8; item 1: (0 + 1/2) / (1 + 1) = 1/4
    pred = binary.predict(tiny, {}, {"user_index": np.array([3, 3]), "item_index": np.array([0, 1])})
    assert pred == pytest.approx([5 / 8, 1 / 4])
    with pytest.raises(ValueError, match="damping must be > 0"):
        Popularity(damping=0.0)


def test_rows_are_checked_with_errors_naming_row_column_and_rule(tiny: FeatureSet) -> None:
    with pytest.raises(ValueError, match=r"train: missing column\(s\) \['rating'\]"):
        check_rows(tiny, {"user_index": np.array([0]), "item_index": np.array([0])}, "train")
    with pytest.raises(ValueError, match="train: column 'item_index' has 1 rows, 'user_index' has 2"):
        check_rows(tiny, rows([0, 1], [0], [3, 4]), "train")
    with pytest.raises(ValueError, match=r"query: row 1, column 'item_index' is 6, not an index .* 6 items"):
        check_rows(tiny, {"user_index": np.array([0, 0]), "item_index": np.array([0, 6])}, "query")
    with pytest.raises(ValueError, match="support: row 0, column 'user_index' is -1"):
        check_rows(tiny, rows([-1], [0], [3]), "support")
    with pytest.raises(ValueError, match="train: row 1, column 'rating' is nan, not a finite number"):
        check_rows(tiny, rows([0, 1], [0, 0], [3, np.nan]), "train")
    with pytest.raises(ValueError, match=r"train: row 0, column 'rating' is 4.0, not a 0/1 label"):
        Popularity("binary").fit(tiny, rows([0], [0], [4]))
    with pytest.raises(ValueError, match="train: no rating rows"):
        GlobalMean().fit(tiny, rows([], [], []))
    with pytest.raises(ValueError, match=r"not a relevance in 0\.\.30"):
        LightGBMModel(5, 0, objective="lambdarank").fit(tiny, rows([0], [0], [-2]))
    assert check_rows(tiny, {}, "support")["rating"].size == 0  # no support at all: zero-shot


def test_fit_user_bias_closed_form_by_hand() -> None:
    # residuals r - offset of user 1: 0.0 and -0.3, l2_user 5 -> θu = -0.3 / (2 + 5)
    # user 0 has no rows: θu = 0; user 2: one residual 0.8 -> 0.8 / (1 + 5)
    rating = np.array([3.0, 4.8, 2.7])
    got = fit_user_bias(np.array([3.0, 4.0, 3.0]), rating, np.array([1, 2, 1]), n_users=3, l2_user=5.0)
    assert got == pytest.approx([0.0, -0.3 / 7, 0.8 / 6])


def test_fit_user_bias_binary_is_the_one_dimensional_optimum() -> None:
    rng = np.random.default_rng(2)
    user = rng.integers(0, 5, 40)
    offset, label = rng.normal(size=40), (rng.random(40) < 0.7).astype(float)
    got = fit_user_bias(offset, label, user, n_users=6, l2_user=0.5, objective="binary")
    for u in range(5):
        off, y = offset[user == u], label[user == u]

        def loss(t: float, off: np.ndarray = off, y: np.ndarray = y) -> float:
            return float(np.sum(np.logaddexp(0, off + t) - y * (off + t)) + 0.5 * t * t)

        assert got[u] == pytest.approx(minimize_scalar(loss, tol=1e-12).x, abs=1e-7)
    assert got[5] == 0.0
    all_positive = fit_user_bias(
        np.zeros(3), np.ones(3), np.zeros(3, int), 1, l2_user=0.0, objective="binary"
    )
    assert np.isfinite(all_positive).all() and all_positive[0] > 10  # no finite optimum: large, finite


def _one_hot_design(case_train: dict[str, np.ndarray], n_users: int, n_items: int) -> sp.csr_matrix:
    n = case_train["rating"].size
    ones, row = np.ones(n), np.arange(n)
    return sp.hstack(
        [
            sp.csr_matrix((ones, (row, case_train["user_index"])), shape=(n, n_users)),
            sp.csr_matrix((ones, (row, case_train["item_index"])), shape=(n, n_items)),
        ]
    ).tocsr()


def test_linear_bias_matches_the_exact_regularised_least_squares(planted, new_users: Case) -> None:
    """Adam's fixed iterations land on the ridge solution of the same objective (scipy lsqr reference)."""
    fs, _ = planted
    model = LinearBias(l2_user=3.0, l2_item=7.0)
    model.fit(fs, new_users.train)
    train, n_u, n_i = new_users.train, fs.n_users, fs.n_items
    n = train["rating"].size
    design = sp.hstack([sp.csr_matrix(np.ones((n, 1))), _one_hot_design(train, n_u, n_i)])
    penalty = sp.diags(np.r_[0.0, np.full(n_u, np.sqrt(3.0)), np.full(n_i, np.sqrt(7.0))])
    target = np.r_[train["rating"], np.zeros(1 + n_u + n_i)]
    exact = lsqr(sp.vstack([design, penalty]), target, atol=1e-12, btol=1e-12, iter_lim=10_000)[0]
    assert model.theta0 == pytest.approx(exact[0], abs=1e-5)
    assert np.abs(model.user_bias - exact[1 : 1 + n_u]).max() < 1e-5
    assert np.abs(model.item_bias - exact[1 + n_u :]).max() < 1e-5


def test_binary_linear_bias_matches_scikit_learn_logistic_regression(planted) -> None:
    """Σ log loss + l2 (Σ θu² + Σ θi²) is scikit-learn's objective with C = 1 / (2 l2) on one-hot features."""
    fs = implicit(planted[0])
    case = new_user_case(fs, test_share=0.2, support_size=6, seed=1)
    model = LinearBias("binary", l2_user=3.0, l2_item=3.0)
    model.fit(fs, case.train)
    reference = LogisticRegression(C=1 / 6, tol=1e-12, max_iter=10_000)
    reference.fit(_one_hot_design(case.train, fs.n_users, fs.n_items), case.train["rating"])
    assert model.theta0 == pytest.approx(reference.intercept_[0], abs=1e-5)
    assert np.abs(model.user_bias - reference.coef_[0][: fs.n_users]).max() < 1e-5
    assert np.abs(model.item_bias - reference.coef_[0][fs.n_users :]).max() < 1e-5
    pred = model.predict(fs, case.support, case.query)
    assert ((pred > 0) & (pred < 1)).all()
    assert auc(case.query["user_index"], case.y_true, pred) > 0.8


def test_linear_bias_recovers_planted_biases(planted, new_users: Case) -> None:
    fs, truth = planted
    model = LinearBias(l2_user=0.5, l2_item=0.5)
    model.fit(fs, new_users.train)
    user_seen = np.unique(new_users.train["user_index"])
    item_seen = np.unique(new_users.train["item_index"])
    for got, want in (
        (model.user_bias[user_seen], truth["user_bias"][user_seen]),
        (model.item_bias[item_seen], truth["item_bias"][item_seen]),
    ):
        got_c, want_c = got - got.mean(), want - want.mean()  # θ0 absorbs any common shift
        assert np.corrcoef(got_c, want_c)[0, 1] > 0.95
        assert np.abs(got_c - want_c).mean() < 0.15


def test_linear_bias_user_biases_for_new_known_and_zero_shot_users(tiny: FeatureSet) -> None:
    model = LinearBias(l2_user=2.0, l2_item=1.0)
    model.fit(tiny, rows([0, 0, 1, 1, 2], [0, 1, 0, 2, 1], [5, 4, 2, 1, 3]))
    theta0, bi, bu = model.theta0, model.item_bias, model.user_bias.copy()
    assert theta0 is not None and bi[3:].tolist() == [0.0, 0.0, 0.0]  # new items 3..5: θi = 0
    support = rows([1, 3, 3], [1, 0, 4], [4, 2, 5])
    got = model.user_biases(tiny, support)
    # known user 1: train rows (0: 2), (2: 1) plus support (1: 4), refitted with l2_user 2:
    #   θu = [(2 - θ0 - θi0) + (1 - θ0 - θi2) + (4 - θ0 - θi1)] / (3 + 2)
    assert got[1] == pytest.approx((7 - 3 * theta0 - bi[0] - bi[2] - bi[1]) / 5)
    # new user 3: support only -> [(2 - θ0 - θi0) + (5 - θ0 - 0)] / (2 + 2)
    assert got[3] == pytest.approx((7 - 2 * theta0 - bi[0]) / 4)
    assert got[0] == bu[0] and got[2] == bu[2]  # known users without support keep their trained θu
    assert model.user_biases(tiny, {})[3] == 0.0  # a new user without support: θu = 0
    pred = model.predict(tiny, support, {"user_index": np.array([3, 0]), "item_index": np.array([5, 1])})
    assert pred == pytest.approx(np.clip([theta0 + got[3], theta0 + bu[0] + bi[1]], 1, 5))


def test_linear_bias_predict_is_the_closed_form_for_a_new_user(planted, new_users: Case) -> None:
    fs, _ = planted
    model = LinearBias(l2_user=5.0)
    pred = fit_predict(model, fs, new_users)
    assert model.theta0 is not None
    u = new_users.query["user_index"][0]
    s_rows = new_users.support["user_index"] == u
    residual = new_users.support["rating"][s_rows] - model.theta0
    residual -= model.item_bias[new_users.support["item_index"][s_rows]]
    theta_u = residual.sum() / (s_rows.sum() + 5.0)
    q_rows = new_users.query["user_index"] == u
    expected = np.clip(model.theta0 + theta_u + model.item_bias[new_users.query["item_index"][q_rows]], 1, 5)
    assert pred[q_rows] == pytest.approx(expected)


def test_text_pca_matches_scikit_learn_up_to_sign() -> None:
    x = np.random.default_rng(0).normal(size=(50, 12)).astype(np.float32)
    got = text_pca(x, 4)
    want = PCA(n_components=4, svd_solver="full").fit_transform(x.astype(np.float64))
    for c in range(4):
        assert np.abs(got[:, c]).tolist() == pytest.approx(np.abs(want[:, c]).tolist(), abs=1e-8)


@pytest.mark.parametrize(
    "name", ["popularity", "linear_bias", "mf_foldin", "item_knn", "content", "cornac_retrain", "lightgbm"]
)
def test_baselines_beat_global_mean_on_new_users(planted, new_users: Case, name: str) -> None:
    fs, _ = planted
    floor = mae(new_users.y_true, fit_predict(make("global_mean"), fs, new_users))
    got = mae(new_users.y_true, fit_predict(make(name), fs, new_users))
    assert (
        got
        < {
            "popularity": 0.85,
            "linear_bias": 0.7,
            "mf_foldin": 0.7,
            "item_knn": 0.75,
            "content": 0.7,
            "cornac_retrain": 0.7,
            "lightgbm": 0.7,
        }[name]
        * floor
    )


def test_lightgbm_scores_new_items_from_their_attributes(planted) -> None:
    """Planted item biases follow the genres: only LightGBM (genres, text) ranks and rates new items;
    linear_bias gives them θi = 0 and popularity the global mean, so every query item of a user ties."""
    fs, _ = planted
    case = new_item_case(fs, item_share=0.25, seed=1)
    user = case.query["user_index"]
    scores = {name: fit_predict(make(name), fs, case) for name in ("popularity", "linear_bias", "lightgbm")}
    floor = ndcg_at_k(user, case.y_true, scores["linear_bias"], 3)
    assert ndcg_at_k(user, case.y_true, scores["popularity"], 3) == pytest.approx(floor)
    assert ndcg_at_k(user, case.y_true, scores["lightgbm"], 3) > floor + 0.2
    assert mae(case.y_true, scores["lightgbm"]) < 0.9 * mae(case.y_true, scores["linear_bias"])
    without = LightGBMModel(support_size=6, seed=0, n_estimators=40, new_item_share=0.0)
    assert mae(case.y_true, scores["lightgbm"]) < mae(case.y_true, fit_predict(without, fs, case)) - 0.05


def test_lightgbm_rank_returns_ranking_scores_that_rank_well(planted, new_users: Case) -> None:
    fs, _ = planted
    user = new_users.query["user_index"]
    scores = fit_predict(make("lightgbm_rank"), fs, new_users)
    assert ndcg_at_k(user, new_users.y_true, scores, 3) > 0.85
    assert (
        ndcg_at_k(user, new_users.y_true, scores, 3)
        > ndcg_at_k(user, new_users.y_true, fit_predict(make("global_mean"), fs, new_users), 3) + 0.4
    )
    assert scores.min() < 1.0  # raw ranking scores, not clipped to the 1..5 scale


def test_binary_objective_scores_are_probabilities_that_separate_the_classes(planted) -> None:
    fs = implicit(planted[0])
    case = new_user_case(fs, test_share=0.2, support_size=6, seed=1)
    user = case.query["user_index"]
    for name in ("popularity", "linear_bias", "mf_foldin", "item_knn", "lightgbm"):
        pred = fit_predict(make(name, "binary"), fs, case)
        assert ((pred >= 0) & (pred <= 1)).all(), name
        # item_knn: planted biases only, so its neighbour term is noise, and 0/1 clipping ties scores
        assert auc(user, case.y_true, pred) > (0.75 if name == "item_knn" else 0.8), name
    base_rate = fit_predict(make("global_mean", "binary"), fs, case)
    assert base_rate == pytest.approx(np.full(user.size, case.train["rating"].mean()))


def test_lightgbm_is_deterministic_and_uses_the_given_support_set(planted, new_users: Case) -> None:
    fs, _ = planted
    first = fit_predict(LightGBMModel(support_size=6, seed=3, n_estimators=30), fs, new_users)
    second = fit_predict(LightGBMModel(support_size=6, seed=3, n_estimators=30, num_threads=1), fs, new_users)
    assert np.array_equal(first, second)
    other_seed = fit_predict(LightGBMModel(support_size=6, seed=4, n_estimators=30), fs, new_users)
    assert not np.array_equal(first, other_seed)
    model = LightGBMModel(support_size=6, seed=3, n_estimators=30)
    model.fit(fs, new_users.train)
    happier = {**new_users.support, "rating": np.minimum(new_users.support["rating"] + 1.5, 5.0)}
    assert model.predict(fs, happier, new_users.query).mean() > first.mean() + 0.3


def test_lightgbm_uses_what_it_learned_about_known_users(planted) -> None:
    """A known user with no support is scored from its training rows: better than as a stranger."""
    fs, _ = planted
    case = warm_case(fs, query_share=0.2, seed=0)
    model = LightGBMModel(support_size=6, seed=0, n_estimators=40)
    model.fit(fs, case.train)
    known = mae(case.y_true, model.predict(fs, {}, case.query))
    model.train = {c: v[:0] for c, v in model.train.items()}  # forget the users, keep the trees
    assert known < 0.8 * mae(case.y_true, model.predict(fs, {}, case.query))


@pytest.mark.parametrize(
    "name", ["linear_bias", "mf_foldin", "item_knn", "content", "cornac_retrain", "lightgbm"]
)
def test_support_rows_that_repeat_training_rows_count_once(planted, name: str) -> None:
    """The engine may pass a known user's training rows as its support (warm): they must change nothing."""
    fs, _ = planted
    case = warm_case(fs, query_share=0.2, seed=0)
    model = make(name)
    model.fit(fs, case.train)
    repeated = {
        c: v[np.isin(case.train["user_index"], case.query["user_index"])] for c, v in case.train.items()
    }
    assert np.array_equal(model.predict(fs, repeated, case.query), model.predict(fs, {}, case.query))
    fresh = {c: v[:1] for c, v in case.query.items()} | {"rating": np.array([5.0])}  # a new row counts
    assert not np.array_equal(model.predict(fs, fresh, case.query), model.predict(fs, {}, case.query))


@pytest.mark.parametrize("name", MODELS)
def test_predictions_follow_the_query_rows_and_allow_zero_shot(planted, new_users: Case, name: str) -> None:
    fs, _ = planted
    model = make(name)
    model.fit(fs, new_users.train)
    pred = model.predict(fs, new_users.support, new_users.query)
    assert pred.shape == new_users.y_true.shape and np.isfinite(pred).all()
    perm = np.random.default_rng(0).permutation(pred.size)
    shuffled = {c: v[perm] for c, v in new_users.query.items()}
    assert model.predict(fs, new_users.support, shuffled) == pytest.approx(pred[perm], abs=1e-12)
    assert np.isfinite(model.predict(fs, {}, new_users.query)).all()


@pytest.mark.parametrize("name", MODELS)
def test_only_the_given_rows_reach_a_model(planted, new_users: Case, name: str) -> None:
    """Scrambling every rating in the feature set (the train argument untouched) changes no prediction."""
    fs, _ = planted
    before = fit_predict(make(name), fs, new_users)
    scrambled = replace(fs, ratings={**fs.ratings, "rating": 6.0 - fs.ratings["rating"]})
    assert np.array_equal(before, fit_predict(make(name), scrambled, new_users))


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


def test_hidden_items_spare_the_test_time_row_and_hide_the_share_asked() -> None:
    hide = hidden_items(6, 2000, 0.2, seed=0)
    assert not hide[0].any()
    assert hide[1:].mean() == pytest.approx(0.2, abs=0.01)
    assert np.array_equal(hide, hidden_items(6, 2000, 0.2, seed=0))
