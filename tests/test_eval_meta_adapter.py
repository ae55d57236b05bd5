"""The meta-learner adapter: regrouping flat tables into per-user lists and scattering predictions back."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from pipeline.evaluation.meta_adapter import MetaModel, group_rows, training_tasks
from pipeline.evaluation.protocols import kfold_folds
from pipeline.evaluation.splits import support_mask
from pipeline.features.store import FeatureSet
from pipeline.params import Params
from tests.eval_fixtures import planted_feature_set


def test_group_rows_by_hand() -> None:
    user = np.array([4, 2, 4, 9, 2])
    item = np.array([10, 11, 12, 13, 14])
    rating = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    items, ratings = group_rows(user, np.array([2, 4, 7]), item, rating)
    assert [a.tolist() for a in items] == [[11, 14], [10, 12], []]
    assert [a.tolist() for a in ratings] == [[2.0, 5.0], [1.0, 3.0], []]


def test_training_tasks_keep_the_flags_of_the_training_rows_and_fill_empty_sides() -> None:
    tasks = {
        "user_index": np.array([0, 0, 0, 1, 1, 1, 2, 2]),
        "item_index": np.array([0, 1, 2, 0, 1, 2, 0, 1]),
        "rating": np.ones(8),
        "is_query": np.array([False, True, True, False, True, False, True, True]),
    }
    # user 0 keeps its flags; user 1 loses its only query row (item 1); user 2 keeps only query rows;
    # user 3 is not in tasks at all (e.g. sampled negatives); user 4 has one row
    train = {
        "user_index": np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 3, 4]),
        "item_index": np.array([2, 0, 1, 0, 2, 0, 1, 5, 6, 7, 8, 9]),
        "rating": np.arange(12, dtype=np.float64),
    }
    got = training_tasks(tasks, train, seed=0)
    assert (
        got["rating"].tolist() == list(range(12))
        and got["item_index"].tolist() == train["item_index"].tolist()
    )
    flags = got["is_query"]
    assert flags[:3].tolist() == [True, False, True]
    assert flags[3:5].sum() == 1  # half of 2 rows, at least 1
    assert flags[5:7].sum() == 1  # half moved to the support side
    assert flags[7:11].sum() == 2
    assert flags[11]  # a single row is a query (the user trains with an empty support set)
    assert np.array_equal(training_tasks(tasks, train, seed=0)["is_query"], flags)
    assert training_tasks({}, train, seed=0)["is_query"][:3].sum() == 1


class SupportMeanLearner:
    """A stand-in with MetaLearner's interface: query item i of a user scores support mean + i / 1000."""

    def __init__(self, config: dict[str, Any], fs: FeatureSet, seed: int) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fs = fs

    def fit(self, fs: FeatureSet, users: np.ndarray, progress: bool = True) -> list[dict]:
        self.users = users
        return []

    def adapt_predict(self, user_cats, support_items, support_ratings, query_items) -> list[np.ndarray]:
        self.calls.append({"user_cats": user_cats, "support_items": support_items})
        return [
            (np.mean(r) if len(r) else 0.0) + np.asarray(q) / 1000
            for r, q in zip(support_ratings, query_items, strict=True)
        ]


def test_predictions_land_on_their_query_rows() -> None:
    fs, _ = planted_feature_set(n_users=5, n_items=10, per_user=(3, 3))
    model = MetaModel({}, seed=0, name="finetune", create=SupportMeanLearner)
    train = {c: fs.ratings[c][fs.ratings["user_index"] < 2] for c in ("user_index", "item_index", "rating")}
    model.fit(fs, train)
    support = {
        "user_index": np.array([3, 2, 3]),
        "item_index": np.array([1, 2, 3]),
        "rating": np.array([4.0, 2.0, 5.0]),
    }
    query = {"user_index": np.array([4, 3, 2, 3]), "item_index": np.array([7, 5, 6, 8])}
    pred = model.predict(fs, support, query)
    # user 3: support mean 4.5; user 2: 2.0; user 4: no support -> 0.0
    assert pred == pytest.approx([0.007, 4.505, 2.006, 4.508])
    (call,) = model.learner.calls
    assert np.array_equal(call["user_cats"], fs.user_cats[[2, 3, 4]])
    assert [a.tolist() for a in call["support_items"]] == [[2], [1, 3], []]
    assert np.array_equal(model.learner.users, [0, 1])
    # the learner sees the training rows only, as ratings and as tasks
    assert np.array_equal(model.learner.fs.ratings["item_index"], train["item_index"])
    assert np.array_equal(model.learner.fs.tasks["user_index"], train["user_index"])
    assert model.name == "finetune" and model.predicts_ratings
    assert not MetaModel({"objective": "binary"}, seed=0).predicts_ratings


class ShortLearner(SupportMeanLearner):
    def adapt_predict(self, user_cats, support_items, support_ratings, query_items) -> list[np.ndarray]:
        return [np.zeros(max(len(q) - 1, 0)) for q in query_items]


def test_a_learner_returning_too_few_predictions_is_an_error() -> None:
    fs, _ = planted_feature_set(n_users=5, n_items=10, per_user=(3, 3))
    model = MetaModel({}, seed=0, create=ShortLearner)
    model.fit(fs, {c: fs.ratings[c][:3] for c in ("user_index", "item_index", "rating")})
    empty = {"user_index": np.array([], int), "item_index": np.array([], int), "rating": np.array([])}
    with pytest.raises(ValueError, match="returned 1 predictions for user 2's 2 query items"):
        model.predict(fs, empty, {"user_index": np.array([2, 2]), "item_index": np.array([1, 2])})


@pytest.mark.slow
def test_adapter_around_the_real_meta_learner() -> None:
    """Tiny MetaLearner (MeLU; the fold-in's adapter is in test_meta_foldin.py): the adapter's rows equal
    the learner's own per-user predictions."""
    fs, _ = planted_feature_set(n_users=80, n_items=40, per_user=(12, 30), seed=5)
    is_query = ~support_mask(fs.ratings["user_index"], 8, seed=0)
    tasks = {c: fs.ratings[c] for c in ("user_index", "item_index", "rating")} | {"is_query": is_query}
    fs = replace(fs, tasks=tasks)
    fold = kfold_folds(fs.ratings, fs.n_items, 4, 6, 0.1, 20, 10, seed=1)[0]
    config = Params().train.model_dump() | {
        "model": "melu",
        "epochs": 1,
        "hidden": (16,),
        "embedding_dim": 8,
        "meta_batch": 16,
        "device": "cpu",
    }
    model = MetaModel(config, seed=0)
    model.fit(replace(fs, ratings=fold.train), fold.train)
    scenario = fold.scenarios["new_user"]
    query = {c: scenario.query[c] for c in ("user_index", "item_index")}
    pred = model.predict(fs, scenario.support, query)
    assert pred.shape == scenario.query["rating"].shape
    assert np.all((pred >= 1.0) & (pred <= 5.0))
    u = scenario.users[1]
    s_rows = scenario.support["user_index"] == u
    q_rows = query["user_index"] == u
    (direct,) = model.learner.adapt_predict(
        fs.user_cats[[u]],
        [scenario.support["item_index"][s_rows]],
        [scenario.support["rating"][s_rows]],
        [query["item_index"][q_rows]],
    )
    assert pred[q_rows] == pytest.approx(direct, abs=1e-5)
    # items only in the held-out item fold were never seen: the model scores them with the unknown row
    seen = model.learner.model.item_seen.numpy()
    assert not seen[fold.new_items].any() and seen[np.unique(fold.train["item_index"])].all()
