"""The feedback loop for real: ``metarec feedback add`` (Prefect flow) in a git + DVC project on small
synthetic data; batches become DVC-tracked files, and enough new ratings trigger the retrain flow."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows.params_file import write_overrides
from pipeline.feedback.batches import list_batches, trained_through
from pipeline.paths import Paths
from tests.project import BIN, make_project
from tests.project import SMOKE as BASE_SMOKE

SMOKE = [
    *BASE_SMOKE,
    "train.nproc=1",
    "eval.models=[global_mean, meta]",
    "register.sample_users=20",
    "feedback.retrain_after=20",
]
"""The smoke params of ``tests/project.py``, one process; 20 new ratings trigger a retraining."""

pytestmark = pytest.mark.slow


def _run(*args: str, cwd: Path, expect: int = 0) -> str:
    """Run a command as a user would (``metarec`` and ``dvc`` from this venv); its stdout and stderr."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    if PREFECT_API_URL.value():
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()  # the session's test server, not a new one each
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    output = done.stdout + done.stderr
    assert done.returncode == expect, f"{' '.join(args)} exited {done.returncode}:\n{output[-4000:]}"
    return output


def project(root: Path) -> Path:
    """A git + DVC repository with the pipeline, the (empty) feedback folder and the smoke params."""
    make_project(root)
    write_overrides(root / "params.yaml", SMOKE)
    return root


def feedback_file(path: Path, users: list[str], items: list[str], start: int) -> Path:
    rows = [
        {"user_id": user, "item_id": item, "rating": 1 + (k + j) % 5, "timestamp": start + 10 * k + j}
        for k, user in enumerate(users)
        for j, item in enumerate(items)
    ]
    if path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_feedback_batches_are_tracked_and_trigger_a_retraining(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness: None
) -> None:
    """Real ``metarec`` processes against the session's Prefect test server and a temporary MLflow store."""
    root = project(tmp_path / "project")
    paths = Paths(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    _run(str(BIN / "dvc"), "repro", "ingest", cwd=root)  # the catalogue new ratings are checked against
    source_ratings = len(pd.read_parquet(paths.table("ratings")))
    items = [f"i{n:05d}" for n in range(1, 7)]

    # 2 new users x 6 items = 12 ratings: stored and tracked, not yet enough to retrain
    first = feedback_file(tmp_path / "week1.csv", ["fb-a", "fb-b"], items, 1_700_000_000)
    output = _run(str(BIN / "metarec"), "feedback", "add", str(first), cwd=root)
    assert "12 ratings stored as feedback/000001-" in output
    assert "12 new since the last retraining (retrain after 20)" in output
    [batch] = list_batches(paths.feedback)
    pointer = yaml.safe_load((paths.feedback / f"{batch.name}.dvc").read_text())
    assert pointer["outs"][0]["path"] == batch.name
    md5 = pointer["outs"][0]["md5"]
    assert (root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).is_file()  # reachable later
    assert f"/{batch.name}" in (paths.feedback / ".gitignore").read_text()

    # the same ratings again, in the other format: nothing stored, nothing triggered
    again = feedback_file(tmp_path / "week1-again.jsonl", ["fb-a", "fb-b"], items, 1_700_000_000)
    output = _run(str(BIN / "metarec"), "feedback", "add", str(again), cwd=root)
    assert "already stored as feedback/000001-" in output
    assert len(list_batches(paths.feedback)) == 1

    # 10 more ratings: 22 since the last training, so the retrain flow runs and ingest merges both batches
    second = feedback_file(tmp_path / "week2.csv", ["fb-c", "u00001"], items[:5], 1_700_100_000)
    output = _run(str(BIN / "metarec"), "feedback", "add", str(second), cwd=root)
    assert "retrained: registered metarec version 1 as champion" in output
    assert trained_through(paths) == 2
    ratings = pd.read_parquet(paths.table("ratings"))
    users = pd.read_parquet(paths.table("users"))
    assert {"fb-a", "fb-b", "fb-c"} <= set(users["user_id"]) and len(ratings) >= source_ratings + 12 + 5
    assert len(ratings[ratings["user_id"].isin(["fb-a", "fb-b", "fb-c"])]) == 17
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert any(dep["path"] == "feedback" for dep in lock["stages"]["ingest"]["deps"])
    assert "up to date" in _run(str(BIN / "dvc"), "status", cwd=root)
