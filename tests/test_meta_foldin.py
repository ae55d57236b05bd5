"""The meta-learned fold-in (``train.model: foldin``): its closed-form inner loop against the normal
equations, its predictions against a per-user reference solve, that meta-training makes the fold-in
learn, the ranking head's implicit fold-in against its normal equations and that it learns which items a
user will rate, and that a saved learner predicts as the trained one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.baselines.mf_foldin import MFFoldIn
from pipeline.evaluation.meta_adapter import MetaModel
from pipeline.evaluation.metrics import mae, topk_metrics, unseen_candidates
from pipeline.evaluation.models import build_model
from pipeline.evaluation.scenarios import Scoring, score_scenarios
from pipeline.evaluation.splits import Scenario
from pipeline.features.store import FeatureSet
from pipeline.meta.foldin import FoldInLearner, ridge_heads
from pipeline.meta.learners import load_learner
from pipeline.params import Params
from pipeline.registry.scorer import make_scorer
from tests.baseline_fixtures import new_user_case
from tests.test_baselines_cf import feature_set, low_rank, rows


def test_ridge_heads_solve_the_masked_normal_equations_and_pass_gradients() -> None:
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(3, 5, 4)), requires_grad=True)
    y = torch.tensor(rng.normal(size=(3, 5)))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.float64)
    prior = torch.tensor(rng.normal(size=(3, 4)))
    precision = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64, requires_grad=True)
    got = ridge_heads(x, y, mask, prior, precision)
    for t in range(3):
        keep = mask[t].numpy() == 1
        xt, yt = x[t].detach().numpy()[keep], y[t].numpy()[keep]
        lam = np.diag(precision.detach().numpy())
        want = np.linalg.solve(xt.T @ xt + lam, xt.T @ yt + lam @ prior[t].numpy())
        assert got[t].detach().numpy() == pytest.approx(want, abs=1e-10)
    assert got[2].detach().numpy() == pytest.approx(prior[2].numpy())  # no support: the prior
    assert torch.autograd.gradcheck(lambda a, b: ridge_heads(a, y, mask, prior, b), (x, precision))


def build(objective: str = "regression", seed: int = 0, **foldin: object) -> MetaModel:
    """``eval.models``' ``meta`` (the default ``train.model: foldin``) with ``train.foldin = foldin``."""
    params = Params.model_validate({"train": {"foldin": foldin, "device": "cpu"}})
    model = build_model("meta", params, seed=seed, objective=objective)  # type: ignore[arg-type]
    assert isinstance(model, MetaModel)
    return model


def learner_of(model: MetaModel) -> FoldInLearner:
    assert isinstance(model.learner, FoldInLearner)
    return model.learner


def test_predict_is_the_ridge_solve_over_a_users_training_and_support_rows(tmp_path) -> None:
    """A new user from its support rows, a known user from its training plus new support rows, a user
    with neither at its prior head; the item side as the tower gives it. A saved learner predicts alike."""
    fs, _ = low_rank(n_users=40, n_items=20, rank=2, per_user=8, noise=0.2, seed=1)
    train = {c: v[fs.ratings["user_index"] < 38] for c, v in fs.ratings.items()}
    model = build(factors=3, hidden=8, epochs=2, batch=16)
    model.fit(fs, train)
    learner = learner_of(model)
    unseen = np.setdiff1d(np.arange(20), train["item_index"][train["user_index"] == 5])
    support = rows([38, 38, 38, 5], [1, 4, 7, int(unseen[0])], [4.0, 2.5, 3.0, 5.0])
    query = {"user_index": np.array([38, 5, 39, 38]), "item_index": np.array([2, 3, 6, 9])}
    got = model.predict(fs, support, query)
    with torch.no_grad():
        side = learner.tower()
        x, b = side.x.double().numpy(), side.bias.double().numpy()
        lam = np.diag(learner.tower.log_precision.exp().double().numpy())
        prior = learner.tower.user_prior(torch.as_tensor(fs.user_cats)).double().numpy()
        mean = float(learner.tower.mean)
    assert mean == pytest.approx(train["rating"].mean(), abs=1e-5)
    want = []
    for u, i in zip(query["user_index"], query["item_index"], strict=True):
        mine, new = train["user_index"] == u, support["user_index"] == u
        item = np.r_[train["item_index"][mine], support["item_index"][new]]
        rating = np.r_[train["rating"][mine], support["rating"][new]]
        xu, yu = x[item], rating - mean - b[item]
        head = np.linalg.solve(xu.T @ xu + lam, xu.T @ yu + lam @ prior[u])
        want.append(np.clip(mean + b[i] + x[i] @ head, 1, 5))
    assert got == pytest.approx(np.array(want), abs=1e-5)

    learner.save(tmp_path / "model")
    loaded = load_learner(tmp_path / "model")
    assert isinstance(loaded, FoldInLearner)
    args = (
        fs.user_cats[[38, 39]],
        [np.array([1, 4, 7]), np.array([], int)],
        [np.array([4.0, 2.5, 3.0]), np.array([])],
    )
    queries = [np.arange(21), np.array([0, 20])]  # 20: the unknown item
    for a, b_ in zip(
        learner.adapt_predict(*args, queries), loaded.adapt_predict(*args, queries), strict=True
    ):
        assert np.array_equal(a, b_)


def small_model() -> MetaModel:
    return build(factors=8, hidden=16, epochs=40, batch=32, learning_rate=0.01, item_dropout=0.0)


def test_meta_training_learns_a_fold_in_that_rivals_mf_and_seeds_repeat() -> None:
    """Rank-3 ratings: new users' error falls with their support and ends near ALS MF's fold-in."""
    fs, _ = low_rank(n_users=300, n_items=60, rank=3, per_user=30, noise=0.3, seed=2)
    case = new_user_case(fs, test_share=0.2, support_size=15, seed=0)
    model = small_model()
    model.fit(fs, case.train)
    user = case.support["user_index"]
    rank = np.arange(user.size) - np.searchsorted(user, user)  # support rows come grouped by user
    errors = [
        mae(case.y_true, model.predict(fs, {c: v[rank < m] for c, v in case.support.items()}, case.query))
        for m in (0, 2, 5, 15)
    ]
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] - 0.1
    mf = MFFoldIn(factors=3, ridge=1.0, sweeps=12, seed=0)
    mf.fit(fs, case.train)
    assert errors[-1] < mae(case.y_true, mf.predict(fs, case.support, case.query)) + 0.03
    first = model.predict(fs, case.support, case.query)
    again = small_model()
    again.fit(fs, case.train)
    assert np.array_equal(first, again.predict(fs, case.support, case.query))


def test_built_from_params_and_scores_new_items_and_labels() -> None:
    """``eval.models`` builds it from ``train.foldin``; a new item scores from its content; the binary
    objective scores in [0, 1] and does not predict ratings."""
    fs, _ = low_rank(n_users=30, n_items=12, rank=2, per_user=6, noise=0.1, seed=3)
    model = build(seed=7, factors=4, epochs=2)
    with pytest.raises(RuntimeError, match="before fit"):
        model.predict(fs, {}, {"user_index": np.array([0]), "item_index": np.array([0])})
    train = {c: v[fs.ratings["item_index"] != 11] for c, v in fs.ratings.items()}  # item 11 is new
    model.fit(fs, train)
    learner = learner_of(model)
    assert (learner.config.foldin.factors, learner.config.foldin.epochs, learner.seed) == (4, 2, 7)
    assert not learner.tower.seen[11] and learner.tower.seen[:11].all()
    got = model.predict(fs, {}, {"user_index": np.array([0, 1]), "item_index": np.array([11, 3])})
    assert np.isfinite(got).all() and ((got >= 1) & (got <= 5)).all()
    labels = {**train, "rating": (train["rating"] >= 3.5).astype(float)}
    binary = build("binary", factors=2, hidden=4, epochs=2)
    binary.fit(fs, labels)
    scores = binary.predict(fs, {}, {"user_index": np.arange(5), "item_index": np.arange(5)})
    assert not binary.predicts_ratings and ((scores >= 0) & (scores <= 1)).all()


def test_the_served_scorer_solves_as_adapt_predict_and_serves_in_float() -> None:
    """The pyfunc's scorer (item side cached at load) gives what ``adapt_predict`` gives, for a user with
    ratings and one without; int8 compression, which quantises MeLU's MLP, is refused with the fix."""
    fs, _ = low_rank(n_users=30, n_items=15, rank=2, per_user=6, noise=0.1, seed=4)
    model = build(factors=3, hidden=8, epochs=2)
    model.fit(fs, fs.ratings)
    learner = learner_of(model)
    scorer = make_scorer(learner)
    items, ratings = np.array([2, 5, 9]), np.array([4.0, 1.0, 3.5], np.float32)
    [want] = learner.adapt_predict(fs.user_cats[[3]], [items], [ratings], [np.arange(fs.n_items)])
    assert scorer.scores(fs.user_cats[3], items, ratings, None) == pytest.approx(want, abs=1e-5)
    candidates = np.array([0, 7, 15])  # 15: the unknown item
    [cold] = learner.adapt_predict(fs.user_cats[[0]], [np.array([], int)], [np.array([])], [candidates])
    assert scorer.scores(fs.user_cats[0], np.array([], int), np.array([]), candidates) == pytest.approx(
        cold, abs=1e-5
    )
    unclipped = scorer.scores(fs.user_cats[3], items, ratings, None, clip=False)
    assert unclipped.shape == (fs.n_items,) and np.isfinite(unclipped).all()
    with pytest.raises(ValueError, match=r"register\.compression 'int8'.*set register\.compression none"):
        make_scorer(learner, "int8")


def test_the_ranking_state_is_the_implicit_fold_in_of_a_users_items() -> None:
    """``rank`` scores ``c_i + g_i·v_u``, ``v_u`` solved from the normal equations of the user's training
    plus support items (all trained items weak negatives); a user without ratings ranks by ``c_i``; the
    served scorer ranks alike, and ``rank_weight: 0`` leaves no ranking head."""
    fs, _ = low_rank(n_users=30, n_items=15, rank=2, per_user=6, noise=0.1, seed=5)
    train = {c: v[fs.ratings["user_index"] < 28] for c, v in fs.ratings.items()}
    model = build(factors=3, hidden=8, epochs=2)
    model.fit(fs, train)
    learner = learner_of(model)
    assert model.ranks and learner.ranks
    support = rows([28, 28, 4], [1, 6, 0], [5.0, 2.0, 4.0])
    query = {"user_index": np.array([28, 28, 4, 29]), "item_index": np.array([2, 3, 9, 5])}
    got = model.rank(fs, support, query)
    with torch.no_grad():
        side = learner.tower()
        g, c = side.rank_x.double().numpy(), side.rank_bias.double().numpy()
        alpha = float(learner.tower.log_rank_alpha.exp())
        lam = np.diag(learner.tower.log_rank_precision.exp().double().numpy())
    trained = g[np.unique(train["item_index"])]
    gram = trained.T @ trained / len(trained)
    want = []
    for u, i in zip(query["user_index"], query["item_index"], strict=True):
        mine, new = train["user_index"] == u, support["user_index"] == u
        items = np.unique(
            np.r_[train["item_index"][mine], support["item_index"][new]]
        )  # a repeat counts once
        state = np.linalg.solve(g[items].T @ g[items] + alpha * gram + lam, g[items].sum(0))
        want.append(c[i] + g[i] @ state)
    assert got == pytest.approx(np.array(want), abs=1e-5)
    assert got[3] == pytest.approx(c[5], abs=1e-6)  # no ratings: the ranking bias alone
    scorer = make_scorer(learner)
    [served] = learner.adapt_rank(
        fs.user_cats[[28]], [np.array([1, 6])], [np.array([5.0, 2.0])], [np.arange(15)]
    )
    assert scorer.ranking(np.array([1, 6]), None) == pytest.approx(served, abs=1e-5)
    assert not build(factors=3, rank_weight=0.0).ranks


def two_tastes(seed: int) -> FeatureSet:
    """200 users in two groups, each rating 8 items of its own half of 40 items (more often the half's
    first items); the ratings themselves are noise, so only the ranking head can tell the groups apart."""
    rng = np.random.default_rng(seed)
    popularity = np.r_[np.linspace(2, 1, 20), np.linspace(2, 1, 20)]
    user, item = [], []
    for u in range(200):
        half = np.arange(20) + 20 * (u % 2)
        p = popularity[half] / popularity[half].sum()
        user += [u] * 8
        item += list(rng.choice(half, 8, replace=False, p=p))
    rating = rng.integers(1, 6, len(user)).astype(float)
    return feature_set(
        200, 40, {"user_index": np.array(user), "item_index": np.array(item), "rating": rating}
    )


def test_the_ranking_head_learns_which_items_a_new_user_rates_and_top_k_uses_it() -> None:
    """New users' top-5 from 3 support items: the ranking head finds the user's half (recall far above
    ranking by predicted rating), and the evaluation's top-k metrics are those of the ranking head."""
    fs = two_tastes(seed=0)
    new = fs.ratings["user_index"] >= 160
    train = {c: v[~new] for c, v in fs.ratings.items()}
    first = np.r_[True, fs.ratings["user_index"][1:] != fs.ratings["user_index"][:-1]]
    position = np.arange(new.size) - np.maximum.accumulate(np.where(first, np.arange(new.size), 0))
    support = {c: v[new & (position < 3)] for c, v in fs.ratings.items()}
    query = {c: v[new & (position >= 3)] for c, v in fs.ratings.items()}
    model = build(factors=4, hidden=8, epochs=30, batch=32, learning_rate=0.02, item_dropout=0.0)
    model.fit(fs, train)
    users = np.arange(160, 200)
    cand_user, cand_item = unseen_candidates(users, 40, support["user_index"], support["item_index"])
    candidates = {"user_index": cand_user, "item_index": cand_item}
    relevant = (query["user_index"], query["item_index"])
    by_rank = topk_metrics(cand_user, cand_item, model.rank(fs, support, candidates), relevant, k=5)
    by_rating = topk_metrics(cand_user, cand_item, model.predict(fs, support, candidates), relevant, k=5)
    assert by_rank["recall@5"] > 0.35 and by_rank["recall@5"] > by_rating["recall@5"] + 0.15
    scenario = Scenario(
        name="new_user",
        support=support,
        query=query,
        items=np.arange(40),
        ranked_users=users,
        support_group="new_user",
    )
    scoring = Scoring(implicit=False, relevance=1.0, ndcg_ks=(3,), top_k=5)
    [result] = score_scenarios(model, fs, [scenario], train, scoring).values()
    assert result.metrics["recall@5"] == pytest.approx(by_rank["recall@5"])
