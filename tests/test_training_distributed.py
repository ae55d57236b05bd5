"""The train stage: torchrun with gloo equals single-process training; checkpoints resume a killed run.

The tests that compare runs take both learners (``train.model`` melu and foldin), which share the loop,
the sampler contract and the checkpoints."""

from __future__ import annotations

import json
import logging
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.features.store import save_feature_set
from pipeline.meta.learners import create_learner, load_learner
from pipeline.training import checkpoint
from pipeline.training.launch import TrainingFailed, train_distributed
from pipeline.training.train import CRASH_MODE_ENV, CRASH_RANK_ENV, CRASH_STEP_ENV, fingerprint, run
from tests.meta_fixtures import CHECKPOINTED_CONFIG as CONFIG
from tests.meta_fixtures import FOLDIN_CHECKPOINTED_CONFIG, synthetic_feature_set

# 30 users / meta-batch 8 → 4 meta-steps per epoch (the last one has 6 tasks), 12 in all.
SEED = 11


@pytest.fixture(scope="module")
def fs():
    return synthetic_feature_set(n_users=30, n_items=25, seed=5)


@pytest.fixture(scope="module")
def fs_dir(fs, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("features")
    save_feature_set(fs, folder)
    return folder


@pytest.fixture(scope="module", params=["melu", "foldin"])
def config(request) -> dict:
    return CONFIG if request.param == "melu" else FOLDIN_CHECKPOINTED_CONFIG


@pytest.fixture(scope="module")
def reference(fs, config):
    """Uninterrupted single-process training: the model every other run must reproduce."""
    learner = create_learner(config, fs, seed=SEED)
    learner.history = learner.fit(fs, progress=False)  # type: ignore[union-attr]
    return learner


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), atol=atol, rtol=0), (
            f"{k}: {(a[k] - b[k]).abs().max()}"
        )


def test_in_process_run_resumes_past_a_corrupted_checkpoint(
    fs, fs_dir, config, reference, tmp_path, caplog
) -> None:
    ckpts, out = tmp_path / "ckpt", tmp_path / "model"
    history = run(fs_dir, config, out, ckpts, SEED)
    assert history == reference.history
    assert_same_weights(load_learner(out).tensors(), reference.tensors(), atol=0)
    assert [c.name for c in sorted(ckpts.iterdir())] == ["step-00000006", "step-00000009", "step-00000012"]
    saved = json.loads((out / "history.json").read_text())
    assert saved == history and len(saved) == 3

    newest = ckpts / "step-00000012" / "weights.safetensors"
    data = bytearray(newest.read_bytes())
    data[-5] ^= 0xFF
    newest.write_bytes(bytes(data))
    assert checkpoint.verify(newest.parent) == "sha256 mismatch for weights.safetensors"
    shutil.rmtree(out)
    with caplog.at_level(logging.WARNING, logger="pipeline.training.checkpoint"):
        again = run(fs_dir, config, out, ckpts, SEED)
    assert "step-00000012 skipped: sha256 mismatch" in caplog.text
    assert again == history
    assert_same_weights(load_learner(out).tensors(), reference.tensors(), atol=0)


def test_checkpoints_of_another_run_are_not_resumed(fs, tmp_path, caplog) -> None:
    learner = create_learner(CONFIG, fs, seed=SEED)
    state = learner.train(learner.sampler(fs), checkpoint.TrainState(), progress=False)
    checkpoint.save_checkpoint(tmp_path, learner, state, fingerprint(learner.config, fs, SEED))
    other = fingerprint(learner.config, fs, SEED + 1)
    with caplog.at_level(logging.WARNING):
        assert checkpoint.load_latest(tmp_path, other, torch.device("cpu")) is None
    assert "other data, config or seed" in caplog.text
    found = checkpoint.load_latest(tmp_path, fingerprint(learner.config, fs, SEED), torch.device("cpu"))
    assert found is not None and found.state.step == state.step and found.state.history == state.history


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(fs_dir, config, reference, tmp_path) -> None:
    result = train_distributed(fs_dir, config, tmp_path / "model", nproc=2, seed=SEED)
    trained = load_learner(tmp_path / "model")
    assert_same_weights(trained.tensors(), reference.tensors(), atol=1e-6)
    assert result["restarts"] == 0
    assert np.allclose(
        [h["train_loss"] for h in result["history"]], [h["train_loss"] for h in reference.history], rtol=1e-6
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind_config", [CONFIG, FOLDIN_CHECKPOINTED_CONFIG], ids=["melu", "foldin"])
def test_two_gloo_processes_train_through_an_empty_shard(tmp_path, kind_config) -> None:
    """25 users, meta-batch 8: every epoch's last batch holds 1 task, so rank 1's shard is empty."""
    fs = synthetic_feature_set(n_users=25, n_items=25, seed=5)
    save_feature_set(fs, tmp_path / "features")
    single = create_learner(kind_config, fs, seed=SEED)
    history = single.fit(fs, progress=False)
    result = train_distributed(tmp_path / "features", kind_config, tmp_path / "model", nproc=2, seed=SEED)
    assert_same_weights(load_learner(tmp_path / "model").tensors(), single.tensors(), atol=1e-6)
    assert np.allclose(
        [h["train_loss"] for h in result["history"]], [h["train_loss"] for h in history], rtol=1e-6
    )


@pytest.mark.slow
def test_two_nodes_through_a_c10d_rendezvous_equal_one_process(fs_dir, config, reference, tmp_path) -> None:
    """The multi-node launch: two torchrun launchers (one process each) meet at a c10d rendezvous on
    127.0.0.1, as two machines would; the node that gets rank 0 writes the model of one process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    outs = [tmp_path / "node-a", tmp_path / "node-b"]
    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(
                lambda out: train_distributed(
                    fs_dir,
                    config,
                    out,
                    nproc=1,
                    seed=SEED,
                    nnodes=2,
                    rdzv_endpoint=f"127.0.0.1:{port}",
                    rdzv_id="test-two-nodes",
                ),
                outs,
            )
        )
    written = [out for out in outs if (out / "weights.safetensors").exists()]
    assert len(written) == 1, "exactly one node holds rank 0 and writes the model"
    assert sorted(r["history"] is None for r in results) == [False, True]
    assert_same_weights(load_learner(written[0]).tensors(), reference.tensors(), atol=1e-6)
    with pytest.raises(ValueError, match="rendezvous endpoint"):
        train_distributed(fs_dir, CONFIG, tmp_path / "x", nproc=1, nnodes=2)


@pytest.mark.slow
def test_killed_worker_resumes_from_checkpoint_and_ends_identical(
    fs_dir, config, reference, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv(CRASH_STEP_ENV, "8")  # rank 1 dies after meta-step 8; the newest checkpoint is step 6
    result = train_distributed(
        fs_dir, config, tmp_path / "model", nproc=2, seed=SEED, checkpoints=tmp_path / "ckpt", max_restarts=1
    )
    assert result["restarts"] == 1
    trained = load_learner(tmp_path / "model")
    assert_same_weights(trained.tensors(), reference.tensors(), atol=1e-6)


@pytest.mark.slow
def test_torchrun_logs_progress_per_tenth_not_per_step(fs_dir, tmp_path, caplog, monkeypatch) -> None:
    """The workers' output is a pipe: 150 meta-steps over 10 epochs log at most 11 progress lines (every
    10 % and the end), not a bar redrawn on a new line per step."""
    monkeypatch.delenv("METAREC_PROGRESS", raising=False)
    config = {**CONFIG, "epochs": 10, "meta_batch": 2}  # 15 meta-steps per epoch
    with caplog.at_level(logging.INFO, logger="pipeline.training.launch"):
        train_distributed(fs_dir, config, tmp_path / "model", nproc=1, seed=SEED)
    lines = [r.getMessage() for r in caplog.records if "meta-train" in r.getMessage()]
    assert 1 <= len(lines) <= 10 + 1, lines
    assert "meta-train: 150/150 step (100%)" in lines[-1] and "query_mae=" in lines[-1]
    assert not [line for line in lines if "it/s" in line or "step/s" in line]  # no tqdm bar


@pytest.mark.slow
def test_failed_worker_log_tail_is_in_the_error(tmp_path) -> None:
    missing = tmp_path / "no-features"
    with pytest.raises(TrainingFailed) as info:
        train_distributed(missing, CONFIG, tmp_path / "model", nproc=2)
    message = str(info.value)
    assert "failing worker" in message and "no-features" in message and "Traceback" in message
    assert not (tmp_path / "model").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "error"),
    [("raise", "RuntimeError: fault injection: rank 1 raises at meta-step 2"), ("exit", "exit code 1")],
)
def test_the_error_shown_is_the_failing_ranks(fs_dir, tmp_path, monkeypatch, mode: str, error: str) -> None:
    """Rank 1 fails; rank 0 then loses its peer in the all-reduce (or is stopped by torchrun): the
    report names rank 1's error and shows its log, not the healthy rank's."""
    monkeypatch.setenv(CRASH_STEP_ENV, "2")
    monkeypatch.setenv(CRASH_RANK_ENV, "1")
    monkeypatch.setenv(CRASH_MODE_ENV, mode)
    with pytest.raises(TrainingFailed) as info:
        train_distributed(fs_dir, CONFIG, tmp_path / "model", nproc=2, seed=SEED)
    report = str(info.value).split("\n", 1)[1]
    assert report.startswith(
        f"failing worker, local rank 1: {error}\n--- stderr.log of the failing worker, local rank 1"
    )
    assert "[rank0]" not in report and "closed by peer" not in report


def test_in_process_run_equals_fit(fs_dir, config, reference, tmp_path) -> None:
    assert run(fs_dir, config, tmp_path / "model", None, SEED) == reference.history


def _overrides(config: dict, prefix: str = "train") -> list[str]:
    """``--set`` overrides of a (nested) train config."""
    out = []
    for k, v in config.items():
        out += _overrides(v, f"{prefix}.{k}") if isinstance(v, dict) else [f"{prefix}.{k}={json.dumps(v)}"]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind_config", [CONFIG, FOLDIN_CHECKPOINTED_CONFIG], ids=["melu", "foldin"])
def test_train_stage_writes_model_metrics_and_curve(fs, tmp_path, kind_config) -> None:
    from pipeline.params import load_params
    from pipeline.paths import Paths
    from pipeline.training.stage import train_stage

    paths = Paths(tmp_path)
    save_feature_set(fs, paths.features)
    overrides = [*_overrides(kind_config), "train.nproc=1", f"seed={SEED}"]
    summary = train_stage(load_params(None, overrides), paths)
    assert summary["epochs"] == 3 and summary["nproc"] == 1 and summary["restarts"] == 0
    assert json.loads(paths.train_metrics.read_text())["query_mae"] == summary["query_mae"]
    curve = json.loads(paths.train_curve.read_text())
    assert [row["epoch"] for row in curve] == [0, 1, 2]
    assert sorted(p.name for p in paths.model.iterdir()) == [
        "config.json",
        "history.json",
        "weights.safetensors",
    ]
    loaded, expected = load_learner(paths.model), create_learner(kind_config, fs, SEED)
    assert type(loaded) is type(expected) and loaded.config.foldin == expected.config.foldin
    assert loaded.config.epochs == expected.config.epochs
    assert sorted(p.name for p in paths.checkpoints.iterdir())[-1] == "step-00000012"


def test_leftovers_of_a_killed_checkpoint_writer_are_removed(fs, tmp_path) -> None:
    learner = create_learner(CONFIG, fs, seed=SEED)
    state = checkpoint.TrainState(step=3)
    leftover = tmp_path / ".step-00000006.abc.tmp"
    leftover.mkdir()
    (leftover / "weights.safetensors").write_bytes(b"half")
    for step in (3, 6, 9, 12):
        state.step = step
        checkpoint.save_checkpoint(tmp_path, learner, state, "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000006", "step-00000009", "step-00000012"]
    assert checkpoint.verify(tmp_path / "step-00000012") is None
