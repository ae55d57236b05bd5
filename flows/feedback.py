"""The feedback flow: validate a file of new ratings, store it as a DVC-tracked batch, retrain when due.

A batch is stored once (content hash): adding the same file again adds nothing and triggers nothing.
Once ``feedback.retrain_after`` ratings have arrived since the last retraining run, the retrain flow
runs as a subflow; its ``ingest`` stage merges every batch, because ``dvc.yaml``'s ingest stage depends
on the feedback folder. Only the retraining runs this flow starts reset the count (``reports/feedback.json``);
a scheduled retraining in between merges the batches too, and a triggered one after it finds the
data stages up to date.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.retrain import retrain
from pipeline.data.errors import DataError
from pipeline.feedback.batches import add_batch, list_batches, mark_trained, pending_ratings, read_feedback
from pipeline.feedback.validate import validate_feedback
from pipeline.params import load_params
from pipeline.paths import Paths


@task(name="add-feedback")
def add_feedback(file: str, params_file: str, overrides: list[str], root: str) -> dict[str, Any]:
    """Read and validate ``file``; store its ratings as a new batch unless the same rows are stored."""
    paths = Paths(Path(root))
    params = load_params(paths.root / params_file, overrides)
    problems: list[DataError] = []
    ratings, lines = read_feedback(Path(file), problems)
    validate_feedback(ratings, lines, Path(file), params, paths, problems)
    batch, added = add_batch(ratings, paths.feedback)
    get_run_logger().info(
        "%s %s (%d ratings)", "stored" if added else "already stored as", batch.name, batch.rows
    )
    return {"batch": batch.name, "seq": batch.seq, "rows": batch.rows, "added": added}


@task(name="dvc-add")
def track(batch: str, root: str) -> None:
    """``dvc add`` the batch file: DVC caches it, git keeps the small ``.dvc`` pointer."""
    path = Paths(Path(root)).feedback / batch
    cmd = [sys.executable, "-m", "dvc", "add", "--quiet", str(path.relative_to(Path(root)))]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"dvc add {path} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")


@flow(name="metarec-feedback", log_prints=True)
def feedback(
    file: str, params_file: str = "params.yaml", overrides: list[str] | None = None, root: str = "."
) -> dict[str, Any]:
    """Add ``file`` as a feedback batch; run the retrain flow once enough new ratings have arrived.

    ``overrides`` (``--set``) apply to this flow's own checks and threshold; a triggered retraining
    reads the params file as it is.
    """
    base = Path(root).resolve()
    paths = Paths(base)
    params = load_params(base / params_file, overrides or [])
    result = add_feedback(str(Path(file).resolve()), params_file, list(overrides or []), str(base))
    if not (paths.feedback / f"{result['batch']}.dvc").exists():
        track(result["batch"], str(base))
    pending = pending_ratings(paths)
    due = pending >= params.feedback.retrain_after
    result.update(pending=pending, retrain_after=params.feedback.retrain_after, retrained=due)
    if due:
        through = max(b.seq for b in list_batches(paths.feedback))
        get_run_logger().info("%d new ratings since the last retraining: retraining", pending)
        result["registration"] = retrain(params_file=params_file, root=str(base))["registration"]
        mark_trained(paths, through)
    return result
