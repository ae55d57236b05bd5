"""MLflow records of a tuning: one parent run per ``metarec tune``, one nested child run per trial.

The parent run holds the tune settings, each model's best validation value and the tuned-params file;
a child run (tag ``mlflow.parentRunId``) holds its trial's sampled values and the validation metric, the
mean over the folds so far after each fold (step), and ends FINISHED, KILLED (pruned) or FAILED. The
store is the project's (``MLFLOW_TRACKING_URI``, else ``mlruns.db``), through the registry's helpers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pipeline.params import Params
from pipeline.paths import Paths
from pipeline.registry.register import (
    check_tracking_server,
    experiment_id,
    flatten,
    metric_key,
    redact,
    tracking_uri,
)

TUNED_ARTIFACT = "tuned.yaml"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _call(uri: str, method: Any, *args: Any, **kwargs: Any) -> Any:
    """``method(*args, **kwargs)``; MLflow's failure as one line naming the store ``uri``."""
    try:
        return method(*args, **kwargs)
    except MlflowException as exc:
        text = str(exc.message).strip()
        raise RuntimeError(f"MLflow at {redact(uri)}: {text.splitlines()[0] if text else exc}") from None


class TuningRuns:
    """The parent run of one tuning, and the child runs of its trials."""

    def __init__(self, client: MlflowClient, uri: str, experiment: str, parent: str) -> None:
        self.client, self.uri, self.experiment, self.parent = client, uri, experiment, parent

    def start_trial(self, model: str, study: str, number: int, values: dict[str, Any]) -> str:
        """A child run for trial ``number`` of ``model``'s study, with its sampled ``values``."""
        tags = {MLFLOW_PARENT_RUN_ID: self.parent, "model": model, "study": study, "trial": str(number)}
        name = f"{model}-trial-{number}"
        run = _call(self.uri, self.client.create_run, self.experiment, run_name=name, tags=tags)
        params = [Param(k, str(v)) for k, v in values.items()]
        _call(self.uri, self.client.log_batch, run.info.run_id, params=params)
        return str(run.info.run_id)

    def log_value(self, run_id: str, metric: str, value: float, step: int) -> None:
        key = metric_key(metric)
        _call(self.uri, self.client.log_metric, run_id, key, value, timestamp=_now_ms(), step=step)

    def end_trial(self, run_id: str, status: str) -> None:
        """``status``: FINISHED, KILLED (pruned) or FAILED."""
        _call(self.uri, self.client.set_terminated, run_id, status)

    def finish(self, best: dict[str, dict[str, Any]], tuned_text: str) -> None:
        """Log each model's best value (``best.<model>.<metric>``) and the tuned-params file."""
        metrics = [
            Metric(metric_key(f"best.{model}.{b['metric']}"), float(b["value"]), _now_ms(), 0)
            for model, b in best.items()
        ]
        _call(self.uri, self.client.log_batch, self.parent, metrics=metrics)
        _call(self.uri, self.client.log_text, self.parent, tuned_text, TUNED_ARTIFACT)


@contextmanager
def tuning_runs(params: Params, paths: Paths, models: list[str]) -> Iterator[TuningRuns]:
    """Start the parent run (the tune settings and the models tuned as params); end it FINISHED, or FAILED
    when the block raises."""
    uri = tracking_uri(paths)
    check_tracking_server(uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = _call(uri, experiment_id, client, params.tune.experiment, uri, paths.mlflow_artifacts)
    parent = _call(uri, client.create_run, experiment, run_name=f"tune-{params.digest()[:8]}")
    parent_id = str(parent.info.run_id)
    settings = flatten({"tune": params.tune.model_dump(mode="json")}) | {
        "tune.tuned_models": ",".join(models)
    }
    _call(uri, client.log_batch, parent_id, params=[Param(k, str(v)) for k, v in settings.items()])
    try:
        yield TuningRuns(client, uri, experiment, parent_id)
    except BaseException:
        _call(uri, client.set_terminated, parent_id, "FAILED")
        raise
    _call(uri, client.set_terminated, parent_id, "FINISHED")
