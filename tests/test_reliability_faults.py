"""Faults and restarts, each injected for real: a transient stage error under the Prefect flow, an MLflow
server that is down at registration, an interrupted ``metarec run``, corrupted or tampered checkpoints,
and quarantine under DVC. Nothing that finished is lost or done twice.

A killed DDP worker resuming from its checkpoint is
``tests/test_training_distributed.py::test_killed_worker_resumes_from_checkpoint_and_ends_identical``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app
from flows.errors import TRANSIENT_EXIT
from flows.params_file import write_overrides
from pipeline.features.store import FeatureSet, save_feature_set
from pipeline.meta.learner import MetaLearner
from pipeline.meta.loop import TrainState
from pipeline.paths import Paths
from pipeline.registry import register as reg
from pipeline.training import checkpoint
from pipeline.training.train import run as train_in_process
from tests.meta_fixtures import CHECKPOINTED_CONFIG as CONFIG
from tests.meta_fixtures import synthetic_feature_set
from tests.project import BIN, SMOKE, env_with_bin, make_project, sh, stages_run, stages_skipped
from tests.registry_fixtures import TRAIN_CONFIG, free_port, stage_inputs, tiny_feature_set
from tests.reliability_cases import BY_FOLDER

pytestmark = pytest.mark.reliability

DVC = str(BIN / "dvc")


# -- a transient stage error: the flow's task retry ------------------------------------------------------

STUB_STAGE = '''"""A stand-in stage: logs its run, fails once if fail-once/<stage> exists, writes its out."""
import json
import sys
from pathlib import Path

stage = sys.argv[1]
with open("runs.log", "a") as log:
    log.write(stage + "\\n")
marker = Path("fail-once") / stage
if marker.exists():
    marker.unlink()
    print(f"{stage}: injected transient failure", file=sys.stderr)
    sys.exit(75)  # flows.errors.TRANSIENT_EXIT: a retry may heal it
if (Path("fail-always") / stage).exists():
    sys.exit(f"{stage}: injected deterministic failure")
Path("out").mkdir(exist_ok=True)
Path("out", stage).write_text(stage)
if stage == "evaluate":
    cv = {"protocol": "kfold", "folds": 2, "support_size": 5, "seed": 42}
    cv["scenarios"] = {"new_user": {"meta": {"mae": {"mean": 0.8, "std": 0.1}}}}
    Path("metrics").mkdir(exist_ok=True)
    Path("metrics/cv.json").write_text(json.dumps(cv))
if stage == "register":
    Path("reports").mkdir(exist_ok=True)
    registration = {"name": "metarec", "version": 1, "alias": "champion", "run_id": "stub"}
    Path("reports/registration.json").write_text(json.dumps(registration))
'''


def stub_project(root: Path) -> Path:
    """A git + DVC repo whose six stages (the flow's names) run :data:`STUB_STAGE`, one after another."""
    from flows.retrain import STAGES

    root.mkdir(parents=True)
    (root / "stage.py").write_text(STUB_STAGE)
    (root / "params.yaml").write_text("seed: 42\n")
    stages = {}
    for k, stage in enumerate(STAGES):
        outs: list[object] = [f"out/{stage}"]
        if stage == "evaluate":
            outs.append({"metrics/cv.json": {"cache": False}})
        if stage == "register":
            outs.append({"reports/registration.json": {"cache": False}})
        deps = ["stage.py"] + ([f"out/{STAGES[k - 1]}"] if k else [])
        stages[stage] = {"cmd": f"python stage.py {stage}", "deps": deps, "outs": outs}
    (root / "dvc.yaml").write_text(json.dumps({"stages": stages}, indent=1))
    sh("git", "init", "-q", cwd=root)
    sh(DVC, "init", "-q", cwd=root)
    return root


@pytest.mark.slow
def test_transient_stage_error_is_retried_by_the_flow(
    tmp_path: Path, prefect_harness: None, record_property
) -> None:
    """Stage 'features' fails once (a marker file), under the real retrain flow and Prefect API: the task
    retries, its run has 2 attempts, the flow ends Completed, no other stage runs twice."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.retrain import STAGES, retrain

    root = stub_project(tmp_path / "project")
    (root / "fail-once").mkdir()
    (root / "fail-once" / "features").touch()
    state = retrain(params_file="params.yaml", overrides=[], root=str(root), return_state=True)
    assert state.is_completed(), state.message
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    attempts = {run.name: run.run_count for run in task_runs}
    assert attempts == {stage: 2 if stage == "features" else 1 for stage in STAGES}
    assert all(run.state is not None and run.state.is_completed() for run in task_runs)
    ran = (root / "runs.log").read_text().split()
    assert ran == ["source", "ingest", "validate", "features", "features", "train", "evaluate", "register"]
    record_property("message", f"flow {state.name}; attempts {[(s, attempts[s]) for s in STAGES]}")


@pytest.mark.slow
def test_deterministic_stage_error_is_not_retried(tmp_path: Path, prefect_harness: None) -> None:
    """A stage that fails for a reason a retry cannot heal (exit 1, not 75) runs once; the flow fails at
    once with the stage's own message, and no later stage runs."""
    from flows.errors import StageFailed
    from flows.retrain import retrain

    root = stub_project(tmp_path / "project")
    (root / "fail-always").mkdir()
    (root / "fail-always" / "validate").touch()
    with pytest.raises(StageFailed) as failed:
        retrain(params_file="params.yaml", overrides=[], root=str(root))
    assert failed.value.stage == "validate" and not failed.value.transient
    assert "validate: injected deterministic failure" in failed.value.message
    assert (root / "runs.log").read_text().split() == ["source", "ingest", "validate"]


# -- the MLflow server down at registration --------------------------------------------------------------


@contextmanager
def mlflow_server(port: int, base: Path) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1:``port`` (sqlite store, proxied artifacts under ``base``)."""
    url = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", f"sqlite:///{base / 'server.db'}"]
    cmd += ["--serve-artifacts", "--artifacts-destination", (base / "server-artifacts").as_uri()]
    env = {k: v for k, v in env_with_bin().items() if not k.startswith("MLFLOW_TRACKING")}
    log = base / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            cmd, env=env, cwd=base, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="module")
def fs() -> FeatureSet:
    return tiny_feature_set()


@pytest.fixture
def register_inputs(tmp_path: Path, fs: FeatureSet) -> Paths:
    """A project root holding what ``register`` reads (an untrained model is enough here)."""
    learner = MetaLearner.create(TRAIN_CONFIG, fs, seed=0, device=torch.device("cpu"))
    learner.sampler(fs)
    return stage_inputs(tmp_path / "project", learner, fs)


def register_cli(paths: Paths, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.chdir(paths.root)
    return CliRunner().invoke(app, ["register"])


@pytest.mark.slow
def test_mlflow_server_down_then_up_registers_exactly_once(
    register_inputs: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property
) -> None:
    """MLflow server down at registration: one clear error naming the tracking URI (password redacted),
    at once; once it is up, register works and a rerun reuses the version (exactly one), with the
    artifacts where the server puts them."""
    paths = register_inputs
    port = free_port()
    password = "s3" + "cret"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://ops:{password}@127.0.0.1:{port}")
    start = time.monotonic()
    down = register_cli(paths, monkeypatch)
    assert time.monotonic() - start < 20
    assert down.exit_code == TRANSIENT_EXIT and "Traceback" not in down.output  # a retry may heal it
    message = down.stderr.split("metarec register failed: ", 1)[1].splitlines()[0]
    assert message.startswith(
        f"MLflow tracking server http://ops:***@127.0.0.1:{port} is not reachable "
        "([Errno 111] Connection refused)"
    )
    assert password not in down.output
    assert not paths.registration.exists()

    url = f"http://127.0.0.1:{port}"
    with mlflow_server(port, tmp_path):
        first = register_cli(paths, monkeypatch)  # the same URI, user info and all
        assert first.exit_code == 0, first.output
        registration = json.loads(paths.registration.read_text())
        assert registration["tracking_uri"] == f"http://ops:***@127.0.0.1:{port}"
        again = register_cli(paths, monkeypatch)
        assert again.exit_code == 0, again.output
        assert json.loads(paths.registration.read_text()) == registration
        client = MlflowClient(tracking_uri=url, registry_uri=url)
        versions = client.search_model_versions("name = 'metarec'")
        assert [v.version for v in versions] == ["1"] and registration["version"] == 1
        experiment = client.get_experiment_by_name("metarec")
        assert experiment is not None and experiment.artifact_location.startswith("mlflow-artifacts:")
        assert len(client.search_runs([experiment.experiment_id])) == 1
        assert list((tmp_path / "server-artifacts").rglob("MLmodel"))
        assert not paths.mlflow_artifacts.exists()
    said = [result.stdout.strip().splitlines()[-1] for result in (first, again)]
    shown = f"{message} / then: {said[0]} / rerun: {said[1]}"
    record_property("message", shown.replace(str(port), "PORT"))


@pytest.mark.slow
def test_interrupted_registration_is_finished_not_repeated(
    register_inputs: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property
) -> None:
    """A registration interrupted after its model version was created (no 'gate' tag yet): the rerun
    finishes that version (tags, alias, record) instead of creating a second one."""
    paths = register_inputs
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert register_cli(paths, monkeypatch).exit_code == 0
    first = json.loads(paths.registration.read_text())
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.delete_model_version_tag("metarec", "1", reg.GATE_TAG)
    client.delete_registered_model_alias("metarec", "champion")
    paths.registration.unlink()
    again = register_cli(paths, monkeypatch)
    assert again.exit_code == 0, again.output
    assert [str(v.version) for v in client.search_model_versions("name = 'metarec'")] == ["1"]
    version = client.get_model_version("metarec", "1")
    assert version.tags[reg.GATE_TAG] == "champion: no champion yet"
    assert client.get_registered_model("metarec").aliases == {"champion": 1}
    finished = json.loads(paths.registration.read_text())
    for record in (finished, first):  # the served model's latency is measured again
        record["serving"] = {k: v for k, v in record["serving"].items() if not k.endswith("latency_ms")}
    assert finished == first
    record_property("message", again.stdout.strip())


# -- an interrupted `metarec run` ------------------------------------------------------------------------


def _as_from_a_terminal() -> None:
    """In the child, before exec: SIGINT unblocked and at its default action, as a shell starts a command.

    The signal mask and an ignored SIGINT are inherited through fork and exec; a library in the test
    process that left either behind (after hundreds of tests) would make the run deaf to Ctrl-C."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_interrupted_run_does_not_redo_finished_stages(
    tmp_path: Path, prefect_harness: None, monkeypatch: pytest.MonkeyPatch, capsys, record_property
) -> None:
    """`metarec run` interrupted (Ctrl-C) while 'features' runs: the rerun skips ingest and validate
    (DVC lock and cache) and runs features to register; DVC is clean afterwards."""
    from prefect.settings import PREFECT_API_URL

    from flows.retrain import retrain

    root = make_project(tmp_path / "project")
    write_overrides(root / "params.yaml", SMOKE)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    env = {**env_with_bin(), "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [str(BIN / "metarec"), "run"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=_as_from_a_terminal,
    )
    watchdog = threading.Timer(600, os.killpg, (proc.pid, signal.SIGKILL))
    watchdog.start()
    assert proc.stdout is not None
    seen: list[str] = []
    interrupted = False
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("Running stage 'features'"):
                os.killpg(proc.pid, signal.SIGINT)
                interrupted = True
                break
        seen += proc.stdout.readlines()
        proc.wait(timeout=120)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    first = "".join(seen)
    assert interrupted, first[-3000:]
    assert proc.returncode != 0, first[:2000] + "\n...\n" + first[-1500:]
    assert stages_run(first) == ["source", "ingest", "validate", "features"], first[-3000:]
    status = sh(DVC, "status", cwd=root)
    changed = [
        line[:-1] for line in status.splitlines() if line and not line[0].isspace() and line.endswith(":")
    ]
    assert "features" in changed and not {"source", "ingest", "validate"} & set(changed), status

    capsys.readouterr()
    result = retrain(params_file="params.yaml", overrides=[], root=str(root))
    rerun = capsys.readouterr().out
    assert stages_skipped(rerun) == ["ingest", "validate"]
    assert stages_run(rerun) == ["source", "features", "train", "evaluate", "register"]  # source: forced
    assert result["registration"]["version"] == 1
    assert "up to date" in sh(DVC, "status", cwd=root)
    record_property("message", f"rerun skipped {stages_skipped(rerun)}, ran {stages_run(rerun)}")


# -- quarantine under DVC: validate never rewrites ingest's output ---------------------------------------


@pytest.mark.slow
def test_quarantine_under_dvc_leaves_ingest_unchanged(tmp_path: Path, record_property) -> None:
    """Quarantine through `dvc repro validate`: the bad row goes to data/quarantine, ingest's DVC out is
    not rewritten (dvc status clean, nothing reruns), the quarantined count is a DVC metric."""
    root = make_project(tmp_path / "project")
    case = BY_FOLDER["ml100k-unknown-item"]
    settings = ["validate.on_error=quarantine", "validate.max_bad_fraction=0.1"]
    write_overrides(root / "params.yaml", [*case.overrides(), *settings])
    assert stages_run(sh(DVC, "repro", "validate", cwd=root)) == ["source", "ingest", "validate"]
    status = sh(DVC, "status", "--with-deps", "validate", cwd=root)
    assert "up to date" in status, status
    assert stages_run(sh(DVC, "repro", "validate", cwd=root)) == []
    shown = json.loads(sh(DVC, "metrics", "show", "--json", "metrics/validation.json", cwd=root))
    metrics = shown[""]["data"]["metrics/validation.json"]["data"]
    assert (metrics["quarantined"], metrics["ratings"]) == (1, 15)
    metrics["quarantined_fraction"] = round(metrics["quarantined_fraction"], 4)
    record_property("message", f"dvc status: {status.strip()}; metrics/validation.json: {metrics}")


# -- corrupted and tampered checkpoints ------------------------------------------------------------------

"""30 users / meta-batch 8: 4 meta-steps per epoch, 12 in all; checkpoints at 3, 6, 9, 12 (3 kept)."""
SEED = 11


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_newest_checkpoint_is_skipped_and_training_resumes_from_the_previous(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, record_property
) -> None:
    """A byte flipped in the newest checkpoint: its checksum fails, it is skipped with a warning, training
    resumes from the one before and ends with the same model as an uninterrupted run."""
    fs = synthetic_feature_set(n_users=30, n_items=25, seed=5)
    features, ckpts = tmp_path / "features", tmp_path / "ckpt"
    save_feature_set(fs, features)
    history = train_in_process(features, CONFIG, tmp_path / "model", ckpts, SEED)
    reference = MetaLearner.load(tmp_path / "model").tensors()
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000006", "step-00000009", "step-00000012"]

    flip_a_byte(ckpts / "step-00000012" / "optimizer.pt")
    with caplog.at_level(logging.INFO):
        again = train_in_process(features, CONFIG, tmp_path / "model-again", ckpts, SEED)
    assert "step-00000012 skipped: sha256 mismatch for optimizer.pt" in caplog.text
    assert "step-00000009 (meta-step 9)" in caplog.text  # resumed from the previous checkpoint
    assert again == history
    resumed = MetaLearner.load(tmp_path / "model-again").tensors()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    skipped = next(r.getMessage() for r in caplog.records if "skipped" in r.getMessage())
    record_property("message", skipped.replace(f"{tmp_path}/", ""))


def test_every_checkpoint_bad_means_a_fresh_start_and_at_least_two_are_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, record_property
) -> None:
    """Every checkpoint corrupted: each is warned about and none is used (training starts afresh);
    keeping fewer than two checkpoints is refused, so the newest always has a fallback."""
    fs = synthetic_feature_set(n_users=30, n_items=25, seed=5)
    learner = MetaLearner.create(CONFIG, fs, seed=SEED)
    for step in (3, 6, 9):
        checkpoint.save_checkpoint(tmp_path, learner, TrainState(step=step), "run", keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000006", "step-00000009"]
    for folder in tmp_path.iterdir():
        flip_a_byte(folder / "weights.safetensors")
    with caplog.at_level(logging.WARNING):
        assert checkpoint.load_latest(tmp_path, "run", torch.device("cpu")) is None
    assert caplog.text.count("sha256 mismatch for weights.safetensors") == 2
    with pytest.raises(ValueError, match="keep at least 2 checkpoints") as refused:
        checkpoint.save_checkpoint(tmp_path, learner, TrainState(step=12), "run", keep=1)
    record_property("message", f"load_latest: None after 2 warnings; refused: {refused.value}")


def test_another_runs_checkpoints_never_prune_this_runs(tmp_path: Path) -> None:
    """Checkpoints of an earlier run with other params (a later step) are dropped, not counted: this run's
    newest ones stay, and training resumes from them."""
    fs = synthetic_feature_set(n_users=30, n_items=25, seed=5)
    learner = MetaLearner.create(CONFIG, fs, seed=SEED)
    for step in (7500, 7550):
        checkpoint.save_checkpoint(tmp_path, learner, TrainState(step=step), "earlier-run")
    for step in (50, 100):
        checkpoint.save_checkpoint(tmp_path, learner, TrainState(step=step), "this-run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000050", "step-00000100"]
    resumed = checkpoint.load_latest(tmp_path, "this-run", torch.device("cpu"))
    assert resumed is not None and resumed.state.step == 100


class _Payload:
    """Unpickling this would create ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_tampered_checkpoint_with_a_pickle_payload_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, record_property
) -> None:
    """A checkpoint whose optimizer.pt carries a code-running pickle (checksums forged to match): the
    weights-only loader refuses it, nothing runs, the previous checkpoint is used."""
    fs = synthetic_feature_set(n_users=30, n_items=25, seed=5)
    learner = MetaLearner.create(CONFIG, fs, seed=SEED)
    for step in (3, 6):
        checkpoint.save_checkpoint(tmp_path / "ckpt", learner, TrainState(step=step), "run")
    newest = tmp_path / "ckpt" / "step-00000006"
    marker = tmp_path / "pwned"
    torch.save({"optimizer": _Payload(marker), "torch_rng": torch.get_rng_state()}, newest / "optimizer.pt")
    manifest = {name: checkpoint.sha256_file(newest / name) for name in checkpoint.FILES}
    (newest / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        found = checkpoint.load_latest(tmp_path / "ckpt", "run", torch.device("cpu"))
    assert found is not None and found.state.step == 3
    assert not marker.exists()
    assert "step-00000006 skipped: not loadable without pickle" in caplog.text
    skipped = next(r.getMessage() for r in caplog.records if "skipped" in r.getMessage())
    record_property("message", skipped.replace(f"{tmp_path}/", ""))
