"""Stage ``tune`` (``metarec tune``): an Optuna study per model on validation users, then the tuned-params
file.

The folds are the ones ``evaluate`` reports (:func:`~pipeline.evaluation.cv.protocol_folds`); tuning uses
the first ``tune.folds`` of them and, in each, only the training rows: validation users are a seeded share
of the fold's training users (:mod:`pipeline.tuning.validation`). Every model gets the same budget of
``tune.trials`` trials, sampled by a seeded TPE sampler from its space (:mod:`pipeline.tuning.spaces`) and
scored like ``evaluate`` scores a scenario. The studies live in ``tune.storage`` (by default
``data/tuning/optuna.db``), MLflow records one parent run with a child run per trial, and the best values
go to the tuned-params file only once every study finished.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna

from pipeline.evaluation.cv import protocol_folds
from pipeline.evaluation.models import build_model
from pipeline.evaluation.scenarios import Scoring
from pipeline.features.store import load_feature_set
from pipeline.params import Params
from pipeline.paths import Paths
from pipeline.progress import Progress
from pipeline.tuning.objective import Objective
from pipeline.tuning.spaces import TUNABLE, current, space, tunable
from pipeline.tuning.study import (
    Direction,
    data_digest,
    finished_trials,
    load_study,
    open_storage,
    optimize,
    study_name,
)
from pipeline.tuning.tracking import tuning_runs
from pipeline.tuning.tuned import write_tuned
from pipeline.tuning.validation import tuning_rows, validation_split

log = logging.getLogger(__name__)

LOWER_IS_BETTER = ("mae", "rmse")
TRIAL_ERRORS = (ValueError, FloatingPointError)
"""A trial whose model fails on its sampled values (diverges, predicts NaN) is recorded as failed and the
study goes on; any other error stops the tuning."""


def models_to_tune(params: Params) -> list[str]:
    """``tune.models``, or every model of ``eval.models`` with a search space; each must have one."""
    if params.tune.models is None:
        models = tunable(params.eval.models, params)
        if not models:
            raise ValueError(f"eval.models {list(params.eval.models)}: none has hyperparameters to tune")
        return models
    fixed = [m for m in params.tune.models if m not in TUNABLE]
    if fixed:
        raise ValueError(f"tune.models: {fixed} have no search space; tunable: {sorted(TUNABLE)}")
    return list(params.tune.models)


def metric_for(model: str, params: Params, scoring: Scoring) -> str:
    """``tune.metric``; ``auto``: the evaluation's primary metric (MAE, implicit task AUC), or for a model
    whose scores only rank (no MAE) nDCG at the largest ``eval.ndcg_ks``."""
    ranks_only = not build_model(
        model, params, seed=0, objective="binary" if scoring.implicit else "regression"
    ).predicts_ratings
    metric = params.tune.metric
    if metric == "auto":
        if scoring.primary == "mae" and ranks_only:
            return f"ndcg@{max(params.eval.ndcg_ks)}"
        return scoring.primary
    if metric in LOWER_IS_BETTER and ranks_only:
        raise ValueError(f"tune.metric {metric}: {model} does not predict ratings")
    if metric == "auc" and not scoring.implicit:
        raise ValueError("tune.metric auc: the explicit task has no AUC; set task.kind: implicit")
    if metric.startswith("ndcg@") and int(metric[5:]) not in params.eval.ndcg_ks:
        raise ValueError(f"tune.metric {metric}: k must be one of eval.ndcg_ks {list(params.eval.ndcg_ks)}")
    return metric


def start_from_params(study: optuna.Study, params: Params, model: str) -> None:
    """A new study's first trial evaluates ``model``'s values as the params set them, so the tuned values
    are never worse on the validation users than the ones they replace (it counts in the budget)."""
    if not study.get_trials(deepcopy=False):
        values = current(params, model)
        study.enqueue_trial({name: values[name] for name in space(model, params)})


def tune(params: Params, paths: Paths) -> dict[str, Any]:
    """Tune every model of :func:`models_to_tune`; write the tuned-params file; return per model its
    study, metric, best value, best values and trial counts."""
    cfg = params.tune
    if params.tuned is None:
        raise ValueError("tuned is null: name the file `metarec tune` writes (e.g. params/tuned.yaml)")
    target = paths.tuned_params(params.tuned)
    models = models_to_tune(params)
    url = cfg.storage
    if url is None:
        paths.tuning.mkdir(parents=True, exist_ok=True)
        url = paths.tuning_storage
    storage = open_storage(url)
    fs = load_feature_set(paths.features)
    protocol = protocol_folds(params, paths, fs)
    if cfg.folds > len(protocol.folds):
        raise ValueError(
            f"tune.folds {cfg.folds}: eval.protocol {params.eval.protocol} has {len(protocol.folds)} folds"
        )
    seed = params.seed if cfg.seed is None else cfg.seed
    rows = tuning_rows(protocol.data.ratings, protocol.folds)
    if rows is None:
        log.warning(
            "eval.protocol %s: every row is a test row of some fold; tuning uses fold 0..%d's training "
            "rows, which hold other folds' test users (docs/training.md#tuning-metarec-tune)",
            params.eval.protocol,
            cfg.folds - 1,
        )
    splits = [
        validation_split(fold, cfg.validation_share, params.eval.support_size, cfg.sample_users, seed, rows)
        for fold in protocol.folds[: cfg.folds]
    ]
    metrics = {model: metric_for(model, params, protocol.scoring) for model in models}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    digest = data_digest(protocol.data.ratings)
    best: dict[str, dict[str, Any]] = {}
    with tuning_runs(params, paths, models) as runs:
        for model, metric in metrics.items():
            name = study_name(params, model, digest)
            direction: Direction = "minimize" if metric in LOWER_IS_BETTER else "maximize"
            study = load_study(storage, url, name, direction, seed, cfg.pruner == "median")
            start_from_params(study, params, model)
            objective = Objective(model, name, params, protocol, splits, metric, runs)
            with Progress(cfg.trials, f"tune {model}", "trial", initial=finished_trials(study)) as bar:
                optimize(study, url, objective, cfg.trials, TRIAL_ERRORS, [lambda *_: bar.update()])
            best[model] = _best(study, name, metric)
            log.info("%s: best %s %.4f with %s", model, metric, best[model]["value"], best[model]["values"])
        text = write_tuned(target, best, params)
        runs.finish(best, text)
    return {"tuned": str(target), "models": best}


def _best(study: optuna.Study, name: str, metric: str) -> dict[str, Any]:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(
            f"study {name}: no trial finished ({len(states)} tried); see the MLflow child runs"
        )
    trial = study.best_trial
    return {
        "study": name,
        "metric": metric,
        "value": float(study.best_value),
        "values": dict(trial.params),
        "trial": trial.number,
        "trials": len(states),
        "pruned": states.count(optuna.trial.TrialState.PRUNED),
        "failed": states.count(optuna.trial.TrialState.FAIL),
    }
