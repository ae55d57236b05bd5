"""Serve the retraining flow from one machine, with no work pool or worker (``metarec serve-flows``).

``prefect.yaml`` declares the nightly deployment for work pools and workers; serving is the single-machine
way: this process registers ``nightly-served`` (same schedule; its own name, so that it never replaces the
pool's ``nightly``) with the Prefect API, and runs each of its flow runs in a subprocess, in ``root``.
"""

from __future__ import annotations

from pathlib import Path

import prefect
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from flows.retrain import retrain
from pipeline.params import load_params

NIGHTLY_SERVED = "nightly-served"
NIGHTLY_CRON = "0 3 * * *"
TIMEZONE = "UTC"


def build_deployments(
    root: Path,
    params_file: str = "params.yaml",
    overrides: list[str] | None = None,
    cron: str = NIGHTLY_CRON,
    timezone: str = TIMEZONE,
) -> list[RunnerDeployment]:
    """What ``serve_flows`` serves: ``nightly-served`` retrains the working copy ``root`` on ``cron``.

    The params (with ``overrides``) are validated here, so a typo fails now rather than at 3 a.m.
    """
    root = root.resolve()
    load_params(root / params_file, overrides or [])
    nightly = RunnerDeployment.from_flow(
        retrain,
        name=NIGHTLY_SERVED,
        schedules=[Cron(cron, timezone=timezone)],
        parameters={"params_file": params_file, "overrides": list(overrides or []), "root": str(root)},
        description=f"Retraining of {root} ({cron}, {timezone}), served by `metarec serve-flows`.",
        tags=["metarec", "retrain", "served"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return [nightly]


def serve_flows(
    root: Path = Path("."),
    params_file: str = "params.yaml",
    overrides: list[str] | None = None,
    cron: str = NIGHTLY_CRON,
    timezone: str = TIMEZONE,
) -> None:
    """Serve :func:`build_deployments` until interrupted, one flow run at a time (they share ``root``)."""
    prefect.serve(*build_deployments(root, params_file, overrides, cron, timezone), limit=1)
