"""cornac_retrain against Cornac's own MF fitted directly on the training plus support rows (the reference),
its use of the support set, its cache of retrained models and its seeding."""

from __future__ import annotations

import numpy as np
import pytest
from cornac.data import Dataset
from cornac.models import MF

from pipeline.baselines.cornac_retrain import CornacRetrain
from pipeline.evaluation.metrics import mae
from tests.baseline_fixtures import new_user_case
from tests.test_baselines_cf import low_rank

HYPER = {"k": 3, "max_iter": 30, "learning_rate": 0.02, "lambda_reg": 0.02}


@pytest.fixture(scope="module")
def case():
    """60 users x 30 items of rank 2 (plus biases); 12 held-out users reveal 8 ratings each; item 29 has
    no rating at all and user 59 none in training (and no support)."""
    fs, _ = low_rank(n_users=60, n_items=30, rank=2, per_user=15, noise=0.2, seed=0)
    keep = (fs.ratings["item_index"] != 29) & (fs.ratings["user_index"] != 59)
    fs = type(fs)(**{**fs.__dict__, "ratings": {c: v[keep] for c, v in fs.ratings.items()}})
    return fs, new_user_case(fs, test_share=0.2, support_size=8, seed=0)


def test_scores_equal_cornac_mf_fitted_directly_on_train_plus_support(case) -> None:
    """The reference: Cornac's Dataset.build and MF on the same rows in the documented order (sorted by
    user and item, then one seeded shuffle); scores by Cornac's ``score`` for pairs it knows, its
    unknown-user rule μ + b_i, and μ + b_u for an item it never saw."""
    fs, c = case
    model = CornacRetrain(**HYPER, seed=3)
    model.fit(fs, c.train)
    rows = {k: np.r_[c.train[k], c.support[k]] for k in ("user_index", "item_index", "rating")}
    order = np.lexsort((rows["item_index"], rows["user_index"]))
    order = order[np.random.default_rng(3).permutation(order.size)]
    data = Dataset.build(
        [(int(rows["user_index"][j]), int(rows["item_index"][j]), rows["rating"][j]) for j in order]
    )
    mf = MF(**HYPER, seed=3).fit(data)
    query_users = np.r_[c.query["user_index"], [59, 59, 0]]
    query_items = np.r_[c.query["item_index"], [0, 29, 29]]
    got = model.predict(fs, c.support, {"user_index": query_users, "item_index": query_items})

    def reference(u: int, i: int) -> float:
        if i in data.iid_map:  # Cornac's score: μ + b_i (+ b_u + p_u·q_i for a user it knows)
            return float(mf.score(data.uid_map.get(u, mf.num_users), data.iid_map[i]))
        return float(mf.global_mean + (mf.u_biases[data.uid_map[u]] if u in data.uid_map else 0.0))

    want = [reference(int(u), int(i)) for u, i in zip(query_users, query_items, strict=True)]
    assert got == pytest.approx(np.clip(want, 1, 5), abs=1e-5)
    assert got[-2] == pytest.approx(mf.global_mean, abs=1e-6)  # user 59 and item 29: both unknown
    assert mae(c.y_true, got[: c.y_true.size]) < 0.35


def test_a_new_users_support_changes_its_scores(case) -> None:
    fs, c = case
    model = CornacRetrain(**HYPER)
    model.fit(fs, c.train)
    with_support = model.predict(fs, c.support, c.query)
    zero_shot = model.predict(fs, {}, c.query)
    happier = model.predict(fs, {**c.support, "rating": np.minimum(c.support["rating"] + 1.0, 5.0)}, c.query)
    assert mae(c.y_true, with_support) < mae(c.y_true, zero_shot) - 0.05
    assert happier.mean() > with_support.mean() + 0.3


def test_retraining_is_cached_by_the_support_rows(case, monkeypatch) -> None:
    """The same support rows in another order, or support rows that only repeat training rows, reuse a
    trained model; new support rows train a new one."""
    fs, c = case
    fits = []
    real_fit = MF.fit

    def counting_fit(self, train_set, val_set=None):
        fits.append(train_set.num_ratings)
        return real_fit(self, train_set, val_set)

    monkeypatch.setattr(MF, "fit", counting_fit)
    model = CornacRetrain(**HYPER, cache_size=2)
    model.fit(fs, c.train)
    first = model.predict(fs, c.support, c.query)
    reverse = {k: v[::-1] for k, v in c.support.items()}
    assert np.array_equal(model.predict(fs, reverse, c.query), first)
    assert len(fits) == 1
    model.predict(fs, {}, c.query)
    model.predict(fs, {k: v[:20] for k, v in c.train.items()}, c.query)  # repeats: the same as no support
    assert fits == [c.train["rating"].size + c.support["rating"].size, c.train["rating"].size]
    model.predict(fs, {k: v[:5] for k, v in c.support.items()}, c.query)  # a third support: evicts the oldest
    model.predict(fs, c.support, c.query)
    assert len(fits) == 4
    model.fit(fs, c.train)  # a new fit forgets the cache
    model.predict(fs, c.support, c.query)
    assert len(fits) == 5


def test_the_seed_fixes_the_scores(case) -> None:
    fs, c = case
    runs = []
    for seed in (0, 0, 1):
        model = CornacRetrain(**HYPER, seed=seed)
        model.fit(fs, c.train)
        runs.append(model.predict(fs, c.support, c.query))
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[2])


def test_binary_labels_are_ratings_and_scores_rank(case) -> None:
    fs, c = case
    labels = {**c.train, "rating": (c.train["rating"] >= 3.0).astype(np.float64)}
    model = CornacRetrain("binary", **HYPER)
    model.fit(fs, labels)
    pred = model.predict(fs, {}, c.query)
    assert not model.predicts_ratings and ((pred >= 0) & (pred <= 1)).all()
    with pytest.raises(RuntimeError, match="before fit"):
        CornacRetrain().predict(fs, {}, c.query)
