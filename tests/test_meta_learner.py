"""MetaLearner: seeded batching, fitting, adaptation to (new) users, save/load without pickle."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.meta.batching import TaskSampler, TaskSet
from pipeline.meta.config import TrainConfig
from pipeline.meta.learner import MetaLearner, item_priors
from pipeline.meta.loop import TrainState
from pipeline.params import TrainParams
from tests.meta_fixtures import synthetic_feature_set

SMALL = {
    "embedding_dim": 8,
    "hidden": [16, 8],
    "inner_steps": 2,
    "inner_lr": 0.1,
    "outer_lr": 5e-3,
    "meta_batch": 6,
    "epochs": 3,
    "min_support": 2,
    "max_support": 8,
    "query_size": 3,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def fs():
    return synthetic_feature_set(n_users=30, n_items=25)


@pytest.fixture(scope="module")
def fitted(fs) -> MetaLearner:
    learner = MetaLearner.create({**SMALL, "algorithm": "metasgd"}, fs, seed=3)
    learner.fit(fs, progress=False)
    return learner


def test_train_config_mirrors_train_params() -> None:
    """The plain dataclass the GPU image uses must accept exactly TrainParams' fields, with its defaults."""
    params = TrainParams().model_dump()
    config = TrainConfig.from_dict(params).to_dict()
    assert {f.name for f in fields(TrainConfig)} - {"objective"} == set(params)  # objective: task kind
    assert config == {**params, "hidden": list(params["hidden"]), "objective": "regression"}
    assert TrainConfig().to_dict() == config


def test_meta_packages_import_without_pydantic_mlflow_prefect() -> None:
    code = (
        "import sys, pipeline.meta.learner, pipeline.training.train, pipeline.training.launch, "
        "pipeline.training.stage;"
        "bad = [m for m in ('pydantic', 'mlflow', 'prefect') if m in sys.modules]; print(bad); "
        "sys.exit(bool(bad))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_taskset_groups_support_and_query_by_user(fs) -> None:
    users = np.array([4, 1, 9])
    ts = TaskSet.from_tasks(fs.tasks, fs.user_cats, users)
    assert ts.users.tolist() == [1, 4, 9]
    for t, u in enumerate(ts.users):
        rows = fs.tasks["user_index"] == u
        s_items, s_ratings = ts.support(t)
        q_items, _ = ts.query(t)
        assert sorted(s_items) == sorted(fs.tasks["item_index"][rows & ~fs.tasks["is_query"]])
        assert sorted(q_items) == sorted(fs.tasks["item_index"][rows & fs.tasks["is_query"]])
        assert len(s_ratings) == len(s_items)
    assert np.array_equal(ts.user_cats, fs.user_cats[[1, 4, 9]])
    with pytest.raises(ValueError, match="no training task"):
        TaskSet.from_tasks(fs.tasks, fs.user_cats, np.array([10_000]))


def sampler_for(ts: TaskSet, **overrides: object) -> TaskSampler:
    kwargs = {
        "meta_batch": 8,
        "min_support": 2,
        "max_support": 5,
        "query_size": 2,
        "resplit": False,
        "item_dropout": 0.3,
        "unknown_item": 25,
        "seed": 1,
    }
    return TaskSampler(ts, **{**kwargs, **overrides})


def test_sampler_is_seeded_subsamples_and_shards_consistently(fs) -> None:
    ts = TaskSet.from_tasks(fs.tasks, fs.user_cats)
    a, b = sampler_for(ts), sampler_for(ts)
    whole, n = a.batch(2, 1)
    again, _ = b.batch(2, 1)
    assert n == 8 and all(
        torch.equal(getattr(whole, f), getattr(again, f)) for f in whole.__dataclass_fields__
    )
    for k, t in enumerate(a.batch_tasks(2, 1)):
        s, q = int(whole.support_mask[k].sum()), int(whole.query_mask[k].sum())
        available_support, available_query = ts.support(t)[0], ts.query(t)[0]
        assert min(2, len(available_support)) <= s <= 5 and q == min(2, len(available_query))
        assert set(whole.support_items[k, :s].tolist()) <= set(available_support.tolist())
        assert set(whole.query_items[k, :q].tolist()) <= set(available_query.tolist())
    dropped = (whole.support_ids == 25) & (whole.support_mask > 0)
    kept = ~dropped & (whole.support_mask > 0)
    assert dropped.any() and torch.equal(whole.support_ids[kept], whole.support_items[kept])
    shards = [a.batch(2, 1, rank, 3)[0] for rank in range(3)]
    assert sum(s.n_tasks for s in shards) == 8
    for rank, shard in enumerate(shards):
        for k in range(shard.n_tasks):
            t = rank + 3 * k
            m = int(shard.support_mask[k].sum())
            assert torch.equal(shard.support_items[k, :m], whole.support_items[t, :m])
            assert torch.equal(shard.query_ratings[k], whole.query_ratings[t, : shard.query_ratings.shape[1]])
    other_epoch, _ = a.batch(3, 1)
    assert not torch.equal(other_epoch.support_items, whole.support_items)
    covered = np.concatenate([a.batch_tasks(0, i) for i in range(a.n_batches)])
    assert sorted(covered) == list(range(len(ts)))
    with pytest.raises(ValueError, match="min_support"):
        sampler_for(ts, min_support=6)


def test_resplit_draws_support_and_query_from_all_of_a_users_ratings(fs) -> None:
    ts = TaskSet.from_tasks(fs.tasks, fs.user_cats)
    sampler = sampler_for(
        ts, meta_batch=len(ts), min_support=100, max_support=100, query_size=3, resplit=True
    )
    batch, _ = sampler.batch(0, 0)
    for k, t in enumerate(sampler.batch_tasks(0, 0)):
        s, q = int(batch.support_mask[k].sum()), int(batch.query_mask[k].sum())
        support, query = batch.support_items[k, :s].tolist(), batch.query_items[k, :q].tolist()
        everything = np.concatenate([ts.support(t)[0], ts.query(t)[0]]).tolist()
        assert s == len(everything) // 2 and q == min(3, len(everything) - s)  # support: at most half
        assert not set(support) & set(query) and set(support) | set(query) <= set(everything)

    def query_of_task0(epoch: int) -> tuple[int, ...]:
        k = sampler.batch_tasks(epoch, 0).tolist().index(0)
        return tuple(sampler.batch(epoch, 0)[0].query_items[k, :3].tolist())

    queries = {query_of_task0(e) for e in range(4)}
    assert len(queries) > 1  # a new split every epoch


def test_fit_is_seeded_and_learns(fs) -> None:
    runs = []
    for seed in (3, 3, 4):
        learner = MetaLearner.create(SMALL, fs, seed=seed)
        history = learner.fit(fs, progress=False)
        runs.append((learner.tensors(), history))
    (w1, h1), (w2, h2), (w3, _) = runs
    assert h1 == h2 and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert any(not torch.equal(w1[k], w3[k]) for k in w1)
    assert [h["epoch"] for h in h1] == [0, 1, 2]
    assert h1[-1]["train_loss"] < h1[0]["train_loss"]


class ThreadSum:
    """An all-reduce (sum, in rank order) between ranks that train in threads of one process."""

    def __init__(self, world_size: int) -> None:
        self.barrier = threading.Barrier(world_size, timeout=60)  # a failed rank breaks it
        self.parts: list[torch.Tensor] = [torch.zeros(0)] * world_size

    def reducer(self, rank: int) -> Callable[[torch.Tensor], None]:
        def reduce(flat: torch.Tensor) -> None:
            self.parts[rank] = flat.clone()
            self.barrier.wait()
            total = sum(self.parts[1:], self.parts[0])
            self.barrier.wait()
            flat.copy_(total)

        return reduce


@pytest.mark.parametrize("n_users", range(16, 24))
def test_sharded_training_equals_one_process_for_every_remainder(fs, n_users: int) -> None:
    """meta_batch 4 on 2 ranks: user counts 16..23 leave every remainder mod 8; with 17 and 21 the last
    batch holds 1 task and rank 1's shard is empty, yet it joins every all-reduce with zero sums."""
    config, users = {**SMALL, "meta_batch": 4, "epochs": 2}, np.arange(n_users)
    single = MetaLearner.create(config, fs, seed=2)
    expected = single.train(single.sampler(fs, users), TrainState(), progress=False)
    learners = [MetaLearner.create(config, fs, seed=2) for _ in range(2)]
    samplers = [learner.sampler(fs, users) for learner in learners]
    last = samplers[1].n_batches - 1
    assert (samplers[1].batch(0, last, 1, 2)[0].n_tasks == 0) == (n_users % 4 == 1)
    reduce = ThreadSum(2)

    def train(rank: int) -> TrainState:
        return learners[rank].train(
            samplers[rank], TrainState(), rank=rank, world_size=2, reduce=reduce.reducer(rank), progress=False
        )

    with ThreadPoolExecutor(2) as pool:
        states = list(pool.map(train, range(2)))
    for state, learner in zip(states, learners, strict=True):
        assert state.step == expected.step == 2 * samplers[0].n_batches
        for key in ("train_loss", "query_mae"):
            got, want = [h[key] for h in state.history], [h[key] for h in expected.history]
            assert np.allclose(got, want, rtol=1e-6), key
        theirs, ours = learner.tensors(), single.tensors()
        assert all(torch.allclose(theirs[k], ours[k], rtol=0, atol=1e-6) for k in ours)


def test_fit_restricts_to_users_and_sets_offset_and_seen_items(fs) -> None:
    users = np.arange(10)
    learner = MetaLearner.create({**SMALL, "epochs": 1}, fs, seed=0)
    learner.fit(fs, users, progress=False)
    rows = np.isin(fs.tasks["user_index"], users)
    assert learner.model.global_mean.item() == pytest.approx(fs.tasks["rating"][rows].mean(), rel=1e-6)
    seen = np.zeros(fs.n_items + 1, bool)
    seen[np.unique(fs.tasks["item_index"][rows])] = True
    assert np.array_equal(learner.model.item_seen.numpy(), seen)


def test_adapt_predict_matches_per_user_calls_and_clips(fitted, fs) -> None:
    rng = np.random.default_rng(0)
    n = 7
    uc = fs.user_cats[:n]
    s_items = [rng.choice(25, k, replace=False) for k in (0, 3, 10, 1, 5, 2, 4)]
    s_ratings = [rng.integers(1, 6, len(i)).astype(np.float32) for i in s_items]
    q_items = [rng.choice(26, k, replace=False) for k in (4, 1, 6, 2, 9, 3, 1)]  # 25 = unknown item
    together = fitted.adapt_predict(uc, s_items, s_ratings, q_items)
    for u in range(n):
        alone = fitted.adapt_predict(uc[u : u + 1], [s_items[u]], [s_ratings[u]], [q_items[u]])[0]
        assert together[u].shape == (len(q_items[u]),)
        np.testing.assert_allclose(together[u], alone, rtol=1e-5, atol=1e-5)
        assert together[u].min() >= 1.0 and together[u].max() <= 5.0
    shifted = copy.deepcopy(fitted)
    shifted.model.global_mean.fill_(50.0)
    assert np.all(shifted.adapt_predict(uc[:1], [np.arange(0)], [np.array([])], [np.arange(3)])[0] == 5.0)


def test_empty_support_scores_with_the_meta_initialisation(fitted, fs) -> None:
    uc = fs.user_cats[:3]
    q_items = [np.array([0, 5, 7]), np.array([2]), np.array([24, 1])]
    preds = fitted.adapt_predict(uc, [np.array([], np.int64)] * 3, [np.array([], np.float32)] * 3, q_items)
    with torch.no_grad():
        for u in range(3):
            direct = fitted.model(torch.as_tensor(uc[u]), torch.as_tensor(q_items[u])).clamp(1.0, 5.0)
            np.testing.assert_allclose(preds[u], direct.numpy(), rtol=1e-6)
    adapted = fitted.adapt_predict(
        uc[:1], [np.array([0, 1, 2])], [np.array([1.0, 1.0, 1.0], np.float32)], q_items[:1]
    )
    assert np.all(adapted[0] < preds[0])  # three 1-star ratings pull this user's predictions down


def test_adapt_predict_serves_users_outside_the_feature_set(fitted) -> None:
    new_users = np.array([[0, 0], [2, 4]])  # all-unknown codes; a combination no training user has
    preds = fitted.adapt_predict(
        new_users,
        [np.array([3]), np.array([], np.int64)],
        [np.array([4.0], np.float32), np.array([], np.float32)],
        [np.arange(5)] * 2,
    )
    assert [p.shape for p in preds] == [(5,), (5,)]
    with pytest.raises(ValueError, match="row 1, column 1: code 9"):
        fitted.adapt_predict(
            np.array([[0, 0], [1, 9]]), [np.array([])] * 2, [np.array([])] * 2, [np.arange(2)] * 2
        )
    with pytest.raises(ValueError, match=r"query_items\[0\]: item index outside"):
        fitted.adapt_predict(np.array([[0, 0]]), [np.array([])], [np.array([])], [np.array([26])])
    with pytest.raises(ValueError, match=r"support_ratings\[0\]: rating 200.0 outside \[1.0, 5.0\]"):
        fitted.adapt_predict(np.array([[0, 0]]), [np.array([1])], [np.array([200.0])], [np.array([1])])
    with pytest.raises(ValueError, match="2 support items but 1 support ratings"):
        fitted.adapt_predict(np.array([[0, 0]]), [np.array([1, 2])], [np.array([3.0])], [np.array([1])])


def test_save_load_round_trip_gives_identical_predictions(fitted, fs, tmp_path) -> None:
    folder = tmp_path / "model"
    fitted.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "weights.safetensors"]
    loaded = MetaLearner.load(folder)
    assert loaded.config == fitted.config and loaded.model.dims == fitted.model.dims
    args = (
        fs.user_cats[:4],
        [np.array([1, 2]), np.array([], np.int64), np.array([3]), np.arange(6)],
        [np.array([5.0, 4.0]), np.array([]), np.array([2.0]), np.full(6, 3.0)],
        [np.arange(4), np.arange(25), np.array([25]), np.array([7, 8])],
    )
    for a, b in zip(fitted.adapt_predict(*args), loaded.adapt_predict(*args), strict=True):
        assert np.array_equal(a, b)
    assert all(torch.equal(v, loaded.tensors()[k]) for k, v in fitted.tensors().items())
    assert any(k.startswith("lr.") for k in loaded.tensors())
    fitted.save(folder)  # replacing an existing model works
    # a model saved before support_shrinkage / inner_grad_clip existed adapts as it was trained: without
    config = json.loads((folder / "config.json").read_text())
    assert config["train"].pop("support_shrinkage") == fitted.config.support_shrinkage == 10.0
    assert config["train"].pop("inner_grad_clip") == fitted.config.inner_grad_clip == 10.0
    (folder / "config.json").write_text(json.dumps(config))
    old = MetaLearner.load(folder).config
    assert old.support_shrinkage == 0.0 and old.inner_grad_clip == 0.0
    with pytest.raises(FileNotFoundError, match=r"weights\.safetensors"):
        MetaLearner.load(tmp_path / "nowhere")


def test_without_text_the_model_ignores_item_text(fs) -> None:
    """``use_text=False`` (the meta_no_text ablation): no text input at all, so other text changes nothing."""
    other = replace(fs, item_text=np.random.default_rng(9).normal(size=fs.item_text.shape).astype(np.float32))
    preds = []
    for feature_set in (fs, other):
        learner = MetaLearner.create({**SMALL, "epochs": 1, "use_text": False}, feature_set, seed=1)
        learner.fit(feature_set, progress=False)
        assert learner.model.text is None and learner.model.dims.text_dim == 0
        preds.append(
            learner.adapt_predict(
                fs.user_cats[:2], [np.array([1])] * 2, [np.array([4.0])] * 2, [np.arange(5)] * 2
            )
        )
    for a, b in zip(*preds, strict=True):
        assert np.array_equal(a, b)
    with_text = MetaLearner.create({**SMALL, "epochs": 1}, other, seed=1)
    with_text.fit(other, progress=False)
    assert with_text.model.text is not None
    assert not np.allclose(
        with_text.adapt_predict(fs.user_cats[:1], [np.array([1])], [np.array([4.0])], [np.arange(5)])[0],
        preds[1][0],
    )


def test_binary_objective_learns_labels_and_returns_probabilities(fs) -> None:
    """Implicit feedback: 0/1 labels, the offset starts at the base rate's log-odds, outputs are P(1)."""
    labels = (fs.tasks["rating"] >= 4).astype(np.float32)
    implicit = replace(fs, tasks={**fs.tasks, "rating": labels})
    learner = MetaLearner.create({**SMALL, "objective": "binary"}, implicit, seed=0)
    history = learner.fit(implicit, progress=False)
    rate = labels.mean()
    assert learner.model.global_mean.item() == pytest.approx(np.log(rate / (1 - rate)), rel=1e-5)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    probs = learner.adapt_predict(
        fs.user_cats[:3], [np.array([0, 1])] * 3, [np.array([1.0, 0.0])] * 3, [np.arange(25)] * 3
    )
    assert all(p.min() >= 0.0 and p.max() <= 1.0 for p in probs)
    assert len({round(float(v), 6) for v in probs[0]}) > 1
    with pytest.raises(ValueError, match=r"rating 4.0 outside \[0.0, 1.0\]"):
        learner.adapt_predict(fs.user_cats[:1], [np.array([1])], [np.array([4.0])], [np.array([1])])


@pytest.mark.parametrize("projection", ["trained", "frozen"])
def test_text_projection_is_trained_or_stays_frozen(fs, projection: str) -> None:
    """The language model is the transfer source: its projection is fine-tuned only when asked."""
    learner = MetaLearner.create({**SMALL, "epochs": 2, "text_projection": projection, "adapt": "all"}, fs, 2)
    before = learner.model.text.weight.detach().clone()
    learner.fit(fs, progress=False)
    names = set(learner.objective.meta_parameters())
    changed = not torch.equal(before, learner.model.text.weight)
    assert ("text.weight" in names) == changed == (projection == "trained")
    assert ("text.weight" in learner.objective.adapted) == (projection == "trained")


def test_item_priors_by_hand() -> None:
    """Regression: mean + sum(r - mean) / (n + shrink); binary: shrunk log-odds against the base rate."""
    tasks = {
        "user_index": np.array([0, 0, 1, 1, 1]),
        "item_index": np.array([0, 1, 0, 2, 1]),
        "rating": np.array([5.0, 3.0, 3.0, 1.0, 3.0], np.float32),
        "is_query": np.array([False, True, False, True, True]),
    }
    taskset = TaskSet.from_tasks(tasks, np.zeros((2, 1), np.int64))
    mean, prior = item_priors(taskset, 4, TrainConfig(item_prior=2.0))
    assert mean == pytest.approx(3.0)  # (5 + 3 + 3 + 1 + 3) / 5
    # item 0: (2 + 0) / (2 + 2); item 1: (0 + 0) / 4; item 2: -2 / (1 + 2); item 3 (no rating): 0
    np.testing.assert_allclose(prior, [0.5, 0.0, -2 / 3, 0.0])
    assert not item_priors(taskset, 4, TrainConfig(item_prior=0.0))[1].any()
    labels = {**tasks, "rating": np.array([1.0, 0.0, 1.0, 0.0, 1.0], np.float32)}
    base, logits = item_priors(
        TaskSet.from_tasks(labels, np.zeros((2, 1), np.int64)),
        4,
        TrainConfig(item_prior=2.0, objective="binary"),
    )
    assert base == pytest.approx(np.log(0.6 / 0.4))
    rate0 = (2 + 2 * 0.6) / (2 + 2)  # item 0: two positives of two, shrunk by 2 pseudo-ratings at 0.6
    assert logits[0] == pytest.approx(np.log(rate0 / (1 - rate0)) - base)
    assert logits[3] == pytest.approx(0.0)
