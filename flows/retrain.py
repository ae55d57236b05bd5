"""The retraining flow: each Prefect task reproduces one ``dvc.yaml`` stage.

DVC executes the stages (``dvc repro --single-item <stage>``), so the flow and a plain ``dvc repro``
share one implementation, one lock file and one cache: a stage whose inputs did not change is skipped,
and an interrupted run picks up after the last finished stage. A stage that fails is retried only when
a retry can heal it (an unreachable server, a timeout), never for bad data; its outputs are put back as
they were, and its own message is what the flow raises.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import State

from flows.errors import ERROR_FILE_ENV, TRANSIENT_EXIT, StageFailed, is_transient, read_report
from flows.params_file import write_overrides
from pipeline.io import read_json
from pipeline.params import ParamsError, load_params, tuned_conflicts
from pipeline.paths import Paths

STAGES = ("source", "ingest", "validate", "features", "train", "evaluate", "register")
FORCED = ("source",)
"""Stages the flow always runs: ``source`` resolves anew where the raw files are (path, mirror)."""
LOG_TAIL_LINES = 15
DVC_FAILURE = "ERROR: failed to reproduce"
DVC_CHATTER = ("Running stage", "> ", "Verifying", "Stage '")
SKIPPED = "didn't change, skipping"
"""What ``dvc repro`` prints for a stage it does not run."""


def reproduce(stage: str, root: Path, force: bool = False) -> str:
    """Run ``dvc repro --single-item stage`` in ``root``, streaming its output; return the output tail.

    On failure the outputs DVC removed before running the stage are checked out again from its cache (as
    ``dvc.lock`` still records them), and :class:`StageFailed` carries the stage's own message.
    """
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", *(["--force"] if force else []), stage]
    with tempfile.TemporaryDirectory(prefix="metarec-stage-") as tmp:
        error_file = Path(tmp) / "error.json"
        # dvc.yaml calls `metarec`: make the one beside this interpreter the first on PATH.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {**os.environ, "PATH": path, ERROR_FILE_ENV: str(error_file)}
        with subprocess.Popen(
            cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail.append(line.rstrip("\n"))
                if not line.startswith(DVC_FAILURE):  # the flow reports the failure once, itself
                    sys.stdout.write(line)
            code = proc.wait()
        record = read_report(error_file)
    if code == 0:
        return "\n".join(tail)
    _restore_outputs(stage, root)
    if record is None:  # not a metarec command, or DVC failed around it (a missing dependency, a lock)
        shown = [line.removeprefix("ERROR: ") for line in tail if line and not line.startswith(DVC_CHATTER)]
        transient = any(f"exited with {TRANSIENT_EXIT}" in line for line in tail if line.startswith("ERROR"))
        raise StageFailed(stage, "\n".join(shown) or f"dvc repro exited with {code}", transient)
    raise StageFailed(stage, str(record.get("message", "")), bool(record.get("transient")))


def _restore_outputs(stage: str, root: Path) -> None:
    """Put back the outputs DVC deleted before the failed run (those its cache holds); best effort."""
    cmd = [sys.executable, "-m", "dvc", "checkout", "--force", "--quiet", stage]
    subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)


def _retry_transient(task: object, task_run: object, state: State) -> bool:
    """Prefect's retry condition: retry only what can heal (:func:`flows.errors.is_transient`)."""
    return isinstance(state.data, BaseException) and is_transient(state.data)


@task(
    name="stage",
    task_run_name="{stage}",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=_retry_transient,
    timeout_seconds=3600,
)
def run_stage(stage: str, root: str) -> str:
    get_run_logger().info("dvc repro --single-item %s", stage)
    return reproduce(stage, Path(root), force=stage in FORCED)


def _metrics_rows(cv: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for scenario, models in cv["scenarios"].items():
        for model, metrics in models.items():
            row: dict[str, Any] = {"scenario": scenario, "model": model}
            row.update({name: round(v["mean"], 4) for name, v in metrics.items()})
            rows.append(row)
    return rows


@flow(name="metarec-retrain", log_prints=True)
def retrain(params_file: str = "params.yaml", overrides: list[str] | None = None, root: str = ".") -> dict:
    """Validate params, record overrides in the params file, then reproduce every stage in order."""
    base = Path(root).resolve()
    paths = Paths(base)
    params_path = base / params_file
    params = load_params(params_path, overrides or [])  # reject bad params before any work starts
    shadowed = tuned_conflicts(params_path, overrides or [])
    if shadowed:
        raise ParamsError(
            f"--set {', '.join(shadowed)}: {params.tuned} sets these and wins over {params_file}; "
            f"change them there, or add --set tuned=null"
        )
    if overrides:
        saved = write_overrides(params_path, overrides)
        get_run_logger().info("saved %d override(s) to %s: %s", len(saved), params_file, ", ".join(saved))
    tails = {stage: run_stage(stage, str(base)) for stage in STAGES}

    from pipeline.evaluation.report import format_table

    cv = read_json(paths.cv_metrics)
    registration = read_json(paths.registration)
    create_table_artifact(_metrics_rows(cv), key="cv-metrics", description="Cross-validated metrics")
    create_markdown_artifact(
        f"Registered **{registration['name']}** version {registration['version']} "
        f"as `{registration['alias']}` (run `{registration['run_id']}`).",
        key="registered-model",
    )
    # `metarec evaluate` printed the table into the streamed output, unless DVC skipped the stage
    return {
        "table": format_table(cv),
        "table_printed": SKIPPED not in tails["evaluate"],
        "registration": registration,
    }
