"""The serving scorer against the reference (``MetaLearner.adapt_predict``), int8 compression, its report."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from pipeline.features.categorical import encode_user
from pipeline.features.store import FeatureSet
from pipeline.meta.learner import MetaLearner
from pipeline.registry import register as reg
from pipeline.registry.compression import serving_report
from pipeline.registry.scorer import Scorer
from tests.registry_fixtures import A_USER, N_ITEMS, TRAIN_CONFIG, item_id, stage_inputs, tiny_feature_set


@pytest.fixture(scope="module")
def fs() -> FeatureSet:
    return tiny_feature_set()


def _learner(fs: FeatureSet, **changes: object) -> MetaLearner:
    learner = MetaLearner.create({**TRAIN_CONFIG, **changes}, fs, seed=1, device=torch.device("cpu"))
    learner.sampler(fs)  # rating offset and seen items, as training sets them
    return learner


@pytest.fixture(scope="module")
def trained(fs: FeatureSet) -> MetaLearner:
    learner = MetaLearner.create(TRAIN_CONFIG, fs, seed=0, device=torch.device("cpu"))
    learner.fit(fs, progress=False)
    return learner


TASKS = [
    ({"age": 23, "gender": "F", "occupation": "student"}, [0, 1, 2, 12, 13], [5, 5, 4, 1, 2], None),
    ({}, [5, 17], [3, 1], [0, 3, 8, 21, 23]),
    ({"gender": "M"}, [], [], None),
    ({"occupation": "doctor"}, list(range(14)), [1, 2, 3, 4, 5] * 2 + [1, 2, 3, 4], list(range(14, 24))),
]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"algorithm": "fomaml"},
        {"algorithm": "metasgd"},
        {"adapt": "all"},
        {"hidden": [16], "inner_steps": 0},
        {"inner_grad_clip": 0.01},
    ],
    ids=["maml", "fomaml", "metasgd", "adapt-all", "one-layer-no-steps", "clipped-inner-steps"],
)
def test_float_scores_equal_the_learners_adaptation(fs: FeatureSet, changes: dict) -> None:
    learner = _learner(fs, **changes)
    scorer = Scorer(learner)
    assert scorer.cached == (changes.get("adapt", "decision") == "decision")
    for attributes, support, ratings, query in TASKS:
        user = encode_user(attributes, fs.vocab)
        items, stars = np.array(support, np.int64), np.array(ratings, np.float32)
        candidates = np.arange(N_ITEMS) if query is None else np.array(query)
        [expected] = learner.adapt_predict(user[None], [items], [stars], [candidates])
        got = scorer.scores(user, items, stars, None if query is None else candidates)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("adapt", ["decision", "all"])
def test_clicked_items_join_the_text_profile_as_in_the_learner(fs: FeatureSet, adapt: str) -> None:
    learner = _learner(fs, adapt=adapt)
    scorer = Scorer(learner)
    user = encode_user({"gender": "F"}, fs.vocab)
    support, stars, clicked = np.array([3], np.int64), np.array([4.0], np.float32), np.array([7, 9, 11])
    [expected] = learner.adapt_predict(user[None], [support], [stars], [np.arange(N_ITEMS)], [clicked])
    got = scorer.scores(user, support, stars, None, context_items=clicked)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, scorer.scores(user, support, stars, None), atol=1e-6)


def test_support_changes_the_scores(trained: MetaLearner, fs: FeatureSet) -> None:
    scorer = Scorer(trained)
    user = encode_user({}, fs.vocab)
    likes_a = scorer.scores(user, np.array([0, 1, 12]), np.array([5, 5, 1], np.float32), None)
    likes_b = scorer.scores(user, np.array([0, 1, 12]), np.array([1, 1, 5], np.float32), None)
    assert likes_a[:12].mean() > likes_b[:12].mean() + 0.5
    assert np.all((likes_a >= 1.0) & (likes_a <= 5.0))


def test_int8_scores_stay_close_to_float(trained: MetaLearner, fs: FeatureSet) -> None:
    float_scorer, int8_scorer = Scorer(trained), Scorer(trained, "int8")
    differences = []
    for attributes, support, ratings, query in TASKS:
        user = encode_user(attributes, fs.vocab)
        args = (user, np.array(support, np.int64), np.array(ratings, np.float32), query and np.array(query))
        differences.append(np.abs(int8_scorer.scores(*args) - float_scorer.scores(*args)))
    worst = max(d.max() for d in differences)
    assert 0 < worst < 0.05  # quantised for real, and by little


def test_compression_is_checked(fs: FeatureSet) -> None:
    with pytest.raises(ValueError, match=r"compression 'int8' needs train.adapt=decision"):
        Scorer(_learner(fs, adapt="all"), "int8")
    with pytest.raises(ValueError, match=r"compression must be one of none, int8, got 'fp4'"):
        Scorer(_learner(fs), "fp4")  # type: ignore[arg-type]


def test_serving_report_puts_int8_beside_float(trained: MetaLearner, fs: FeatureSet) -> None:
    report = serving_report(trained, fs, "int8", seed=3, sample_users=20)
    assert report["serving.compression"] == "int8" and report["serving.sample_users"] == 20
    assert report["serving.mae_change"] == pytest.approx(
        report["serving.int8.mae"] - report["serving.float.mae"]
    )
    assert 0 < report["serving.prediction_change"] < 0.05
    assert 0.2 < report["serving.float.mae"] < 1.5  # trained on planted tastes: far better than guessing
    assert report["serving.float.latency_ms"] > 0 and report["serving.int8.latency_ms"] > 0
    plain = serving_report(trained, fs, "none", seed=3, sample_users=20)
    assert set(plain) == {
        "serving.compression",
        "serving.sample_users",
        "serving.float.mae",
        "serving.float.latency_ms",
    }
    assert plain["serving.float.mae"] == report["serving.float.mae"]  # the same seeded sample


def test_int8_pyfunc_answers_like_the_float_one(tmp_path: Path, trained: MetaLearner, fs: FeatureSet) -> None:
    paths = stage_inputs(tmp_path, trained, fs)
    models = {}
    for compression in ("none", "int8"):
        folder = tmp_path / compression
        mlflow.pyfunc.save_model(folder, **reg.pyfunc_spec(paths, compression))
        models[compression] = mlflow.pyfunc.load_model(str(folder))
    request = [{"user_id": "new", "ratings": A_USER[:5], "k": N_ITEMS}]
    [plain], [int8] = (models[c].predict(request) for c in ("none", "int8"))
    assert set(plain["items"]) == set(int8["items"])
    plain_scores = dict(zip(plain["items"], plain["scores"], strict=True))
    int8_scores = dict(zip(int8["items"], int8["scores"], strict=True))
    assert max(abs(plain_scores[i] - int8_scores[i]) for i in plain_scores) < 0.05
    assert plain_scores != int8_scores
    assert models["int8"].model_config == {"compression": "int8"}


@pytest.mark.parametrize("compression", ["none", "int8"])
def test_concurrent_requests_do_not_see_each_others_weights(
    trained: MetaLearner, fs: FeatureSet, compression: str
) -> None:
    """The MLflow server runs ``predict`` on a thread pool: scoring from 4 threads at once gives exactly
    what scoring one request after the other gives."""
    scorer = Scorer(trained, compression)  # type: ignore[arg-type]
    rng = np.random.default_rng(5)
    user = encode_user({}, fs.vocab)
    requests = []
    for _ in range(64):
        items = rng.choice(N_ITEMS, 6, replace=False)
        requests.append((user, items, rng.integers(1, 6, 6).astype(np.float32), None))
    sequential = [scorer.scores(*r) for r in requests]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda r: scorer.scores(*r), requests))
    for got, want in zip(concurrent, sequential, strict=True):
        np.testing.assert_array_equal(got, want)


def test_items_predicted_above_the_top_rating_are_still_ranked(tmp_path: Path, fs: FeatureSet) -> None:
    """Scores are clipped to the rating range; the order comes from the unclipped predictions."""
    learner = _learner(fs)
    with torch.no_grad():
        learner.model.global_mean.fill_(9.0)  # every prediction lands above 5
    paths = stage_inputs(tmp_path, learner, fs)
    mlflow.pyfunc.save_model(tmp_path / "model", **reg.pyfunc_spec(paths))
    [out] = mlflow.pyfunc.load_model(str(tmp_path / "model")).predict(
        [{"user_id": "x", "ratings": [], "k": 5}]
    )
    assert out["scores"] == [5.0] * 5
    user, nothing = encode_user({}, fs.vocab), np.array([], np.int64)
    raw = Scorer(learner).scores(user, nothing, nothing.astype(np.float32), None, clip=False)
    assert raw.min() > 5.0 and np.unique(raw).size == N_ITEMS
    assert out["items"] == [item_id(i) for i in np.argsort(-raw)[:5]]
