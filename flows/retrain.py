"""The retraining flow: each Prefect task reproduces one ``dvc.yaml`` stage.

DVC executes the stages (``dvc repro --single-item <stage>``), so the flow and a plain ``dvc repro``
share one implementation, one lock file and one cache: a stage whose inputs did not change is skipped,
and an interrupted run picks up after the last finished stage.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.params_file import write_overrides
from pipeline.io import read_json
from pipeline.params import load_params
from pipeline.paths import Paths

STAGES = ("ingest", "validate", "features", "train", "evaluate", "register")
SKIPPED = "didn't change, skipping"
"""What ``dvc repro`` prints for a stage it does not run."""
LOG_TAIL_LINES = 40


class StageFailed(RuntimeError):
    """A stage exited non-zero; the message names it and carries the tail of its output."""


def reproduce(stage: str, root: Path) -> str:
    """Run ``dvc repro --single-item stage`` in ``root``, streaming its output; return the output tail."""
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    # dvc.yaml calls `metarec`: make the one beside this interpreter the first on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            tail.append(line.rstrip("\n"))
        code = proc.wait()
    text = "\n".join(tail)
    if code != 0:
        raise StageFailed(f"stage '{stage}' failed (exit {code}):\n{text}")
    return text


@task(name="stage", task_run_name="{stage}", retries=1, retry_delay_seconds=5, timeout_seconds=3600)
def run_stage(stage: str, root: str) -> str:
    get_run_logger().info("dvc repro --single-item %s", stage)
    return reproduce(stage, Path(root))


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
    load_params(params_path, overrides or [])  # reject bad params before any work starts
    if overrides:
        saved = write_overrides(params_path, overrides)
        get_run_logger().info("saved %d override(s) to %s: %s", len(saved), params_file, ", ".join(saved))
    tails = {stage: run_stage(stage, str(base)) for stage in STAGES}

    from pipeline.evaluation.cv import format_table

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
