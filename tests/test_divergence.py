"""Non-finite training never passes silently: training stops at the step, the stage fails, register
refuses, the gate never promotes, serving never answers a NaN score."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, ErrorCode

from pipeline.features.store import FeatureSet, save_feature_set
from pipeline.meta.learner import MetaLearner
from pipeline.meta.loop import TrainingDiverged, TrainState
from pipeline.params import Params, load_params
from pipeline.paths import Paths
from pipeline.registry import register as reg
from pipeline.registry.scorer import NonFiniteScores, Scorer
from pipeline.training.launch import TrainingFailed
from pipeline.training.stage import NonFiniteModel, check_finite, train_stage
from tests.registry_fixtures import A_USER, TRAIN_CONFIG, stage_inputs, tiny_feature_set, write_cv

pytestmark = pytest.mark.reliability

DIVERGING = {**TRAIN_CONFIG, "inner_lr": 1e6, "epochs": 2}
"""An inner step so large that the first meta-step's loss is not finite."""


@pytest.fixture(scope="module")
def fs() -> FeatureSet:
    return tiny_feature_set()


@pytest.fixture(scope="module")
def broken(fs: FeatureSet) -> MetaLearner:
    """A learner whose decision MLP holds a NaN, as a diverged run would leave it."""
    learner = MetaLearner.create(TRAIN_CONFIG, fs, seed=0, device=torch.device("cpu"))
    learner.sampler(fs)
    with torch.no_grad():
        learner.model.decision[0].weight[0, 0] = float("nan")
    return learner


def test_training_stops_at_the_first_non_finite_step(fs: FeatureSet) -> None:
    """A huge inner step (inner_lr 1e6): training stops with TrainingDiverged at meta-step 1, naming
    step, epoch and batch, before the step is applied (the weights are unchanged)."""
    learner = MetaLearner.create(DIVERGING, fs, seed=0)
    sampler = learner.sampler(fs)
    before = {k: v.clone() for k, v in learner.tensors().items()}
    with pytest.raises(
        TrainingDiverged, match=r"meta-step 1 of 12 \(epoch 1 of 2, batch 1 of 6\): query loss"
    ):
        learner.train(sampler, TrainState(), progress=False)
    after = learner.tensors()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the step was never applied


def test_check_finite_names_the_broken_weights_and_metrics(broken: MetaLearner, tmp_path: Path) -> None:
    """A model with a NaN weight, or a training history with a NaN loss, fails the train stage's check,
    naming the tensor or the epoch; a finite model passes."""
    broken.save(tmp_path / "model")
    history = [{"epoch": 0, "train_loss": 1.0, "query_mae": 0.8}]
    with pytest.raises(NonFiniteModel, match=r"weights decision.0.weight: 1 non-finite values"):
        check_finite(tmp_path / "model", history)
    fine = MetaLearner.create(TRAIN_CONFIG, tiny_feature_set(), seed=0)
    fine.save(tmp_path / "fine")
    check_finite(tmp_path / "fine", history)
    with pytest.raises(NonFiniteModel, match=r"epoch 1 train_loss = nan"):
        check_finite(tmp_path / "fine", [*history, {"epoch": 1, "train_loss": math.nan, "query_mae": 0.8}])


@pytest.mark.slow
def test_a_diverging_train_stage_fails_and_nothing_is_registered(
    fs: FeatureSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The train stage (2 gloo processes under torchrun) driven to NaN: it fails naming the meta-step,
    writes no model and no metrics, and nothing is registered."""
    paths = Paths(tmp_path)
    save_feature_set(fs, paths.features)
    overrides = [f"train.{k}={json.dumps(v)}" for k, v in DIVERGING.items()]
    params = load_params(None, [*overrides, "train.nproc=2", "train.max_restarts=0"])
    with pytest.raises(TrainingFailed, match=r"TrainingDiverged: training diverged at meta-step 1 of 12"):
        train_stage(params, paths)
    assert not paths.model.exists() and not paths.train_metrics.exists()
    write_cv(paths, 0.8)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(FileNotFoundError, match=r"models/meta.*'train'"):
        reg.register(params, paths)
    client = MlflowClient(tracking_uri=reg.tracking_uri(paths))
    assert client.search_registered_models() == []


def test_register_refuses_a_model_with_non_finite_scores(
    fs: FeatureSet, broken: MetaLearner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """register refuses a model that scores sampled users NaN: no run, no version, no registration.json."""
    paths = stage_inputs(tmp_path, broken, fs)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(reg.ModelRefused, match=r"models/meta is not registered: .* NaN or infinite"):
        reg.register(Params(), paths)
    client = MlflowClient(tracking_uri=reg.tracking_uri(paths))
    assert client.search_registered_models() == []
    experiment = client.get_experiment_by_name(Params().register.experiment)
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []
    assert not paths.registration.exists()


def test_serving_answers_a_nan_score_with_a_server_error(
    fs: FeatureSet, broken: MetaLearner, tmp_path: Path
) -> None:
    """A served model whose scores come out NaN answers an error (HTTP 500), never a NaN ranking."""
    user = fs.user_cats[0]
    with pytest.raises(NonFiniteScores, match=r"NaN or infinite after adapting to 2 support ratings"):
        Scorer(broken).scores(user, np.array([0, 1]), np.array([5.0, 1.0], np.float32), None)
    paths = stage_inputs(tmp_path, broken, fs)
    mlflow.pyfunc.save_model(tmp_path / "pyfunc", **reg.pyfunc_spec(paths))
    served = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc"))
    with pytest.raises(MlflowException, match=r"request 0: the model scored") as info:
        served.predict([{"user_id": "x", "ratings": A_USER, "k": 3}])
    assert info.value.error_code == ErrorCode.Name(INTERNAL_ERROR)
    assert info.value.get_http_status_code() == 500
