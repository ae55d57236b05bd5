"""One trial: fit a model with sampled hyperparameters on each tuning fold's trial training rows and score
it on the fold's validation users exactly as ``evaluate`` scores a scenario
(:func:`~pipeline.evaluation.scenarios.score_scenarios`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import optuna

from pipeline.evaluation.cv import ProtocolFolds
from pipeline.evaluation.models import build_model
from pipeline.evaluation.scenarios import score_scenarios
from pipeline.params import Params
from pipeline.tuning.spaces import learner, suggest, with_values
from pipeline.tuning.tracking import TuningRuns
from pipeline.tuning.validation import ValidationSplit


def validation_score(
    model: str, params: Params, protocol: ProtocolFolds, split: ValidationSplit, metric: str
) -> float:
    """``metric`` of ``model`` (built from ``params``, seeded like evaluate's fold) on ``split``'s
    validation users."""
    fold_fs = replace(protocol.data, ratings=split.train)
    fitted = build_model(model, params, seed=params.seed + split.fold, objective=protocol.objective)
    fitted.fit(fold_fs, split.train)
    scored = score_scenarios(fitted, fold_fs, [split.scenario], split.train, protocol.scoring)
    value = scored[split.scenario.name].metrics.get(metric)
    if value is None:
        raise ValueError(f"{model}: {metric} is undefined on the validation users of fold {split.fold}")
    return float(value)


def trial_params(params: Params, model: str, values: dict[str, Any]) -> Params:
    """``params`` with a trial's sampled ``values``; a trial of MeLU (``melu``, or ``meta`` with
    ``train.model: melu``) trains ``round(train.epochs * tune.epochs_scale)`` epochs, at least one (the
    fold-in's epochs are one of its searched values)."""
    if learner(model, params) == "melu":
        values = values | {"epochs": max(1, round(params.train.epochs * params.tune.epochs_scale))}
    return with_values(params, model, values)


@dataclass(frozen=True)
class Objective:
    """Optuna's objective for ``model``'s study: the mean of ``metric`` over the tuning folds, reported
    after each fold so that the pruner can stop a poor trial early."""

    model: str
    study: str
    params: Params
    protocol: ProtocolFolds
    splits: list[ValidationSplit]
    metric: str
    runs: TuningRuns

    def __call__(self, trial: optuna.Trial) -> float:
        values = suggest(trial, self.model, self.params)
        params = trial_params(self.params, self.model, values)
        run_id = self.runs.start_trial(self.model, self.study, trial.number, values)
        status = "FAILED"
        try:
            scores: list[float] = []
            for step, split in enumerate(self.splits):
                scores.append(validation_score(self.model, params, self.protocol, split, self.metric))
                mean = float(np.mean(scores))
                trial.report(mean, step)
                self.runs.log_value(run_id, self.metric, mean, step)
                if step < len(self.splits) - 1 and trial.should_prune():
                    status = "KILLED"
                    raise optuna.TrialPruned(f"{self.metric} {mean:.4f} after fold {split.fold}")
            status = "FINISHED"
            return mean
        finally:
            self.runs.end_trial(run_id, status)
