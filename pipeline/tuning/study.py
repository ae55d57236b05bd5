"""Optuna studies: the storage, one study per model, named after what its trials depend on.

A study's name carries a hash of the data and of every setting its trials depend on (not the number of
trials), so an interrupted ``metarec tune`` resumes its studies and a changed setting starts new ones.
A storage that cannot be opened or written fails with one line naming its URL.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import optuna
from sqlalchemy.exc import SQLAlchemyError

from pipeline.params import Params
from pipeline.registry.register import redact
from pipeline.tuning.spaces import current, space

Direction = Literal["minimize", "maximize"]
IGNORED_TUNE_KEYS = ("trials", "models", "storage", "experiment")
"""``tune`` keys a trial's value does not depend on."""
FINISHED = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.PRUNED,
    optuna.trial.TrialState.FAIL,
)
"""The trial states that spend the budget."""


class StudyStorageError(RuntimeError):
    """The Optuna storage cannot be opened or written; the message names its URL."""


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip()
    return text.splitlines()[0] if text else type(cause).__name__


@contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn the storage's failures (SQLAlchemy, a missing database driver, Optuna's storage errors) into
    one :class:`StudyStorageError` line naming ``url``."""
    try:
        yield
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError, ImportError) as exc:
        raise StudyStorageError(f"optuna storage {redact(url)}: {_first_line(exc)}") from None


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The RDB storage at SQLAlchemy URL ``url`` (tables created when missing)."""
    with storage_errors(url):
        return optuna.storages.RDBStorage(url)


def data_digest(ratings: dict[str, np.ndarray]) -> str:
    """sha256 of the rating rows the folds are made of."""
    h = hashlib.sha256()
    for name in ("user_index", "item_index", "rating"):
        h.update(np.ascontiguousarray(ratings[name]).tobytes())
    return h.hexdigest()


def study_name(params: Params, model: str, data: str) -> str:
    """``<tune.study_prefix>-<model>-<hash>``: the hash covers the data digest ``data``, the seed, the
    data, features, task and evaluation settings (not ``eval.models``, ``eval.workers``), the tune
    settings but trials/models/storage/experiment, and ``model``'s hyperparameters outside its search
    space (so a tuned-params file written by the study does not start a new one)."""
    tree = params.to_dict()
    relevant = {key: tree[key] for key in ("seed", "data", "validate", "features", "task")}
    relevant["eval"] = {k: v for k, v in tree["eval"].items() if k not in ("models", "workers")}
    relevant["tune"] = {k: v for k, v in tree["tune"].items() if k not in IGNORED_TUNE_KEYS}
    relevant["model"] = {k: v for k, v in current(params, model).items() if k not in space(model, params)}
    blob = json.dumps([relevant, data], sort_keys=True).encode()
    return f"{params.tune.study_prefix}-{model}-{hashlib.sha256(blob).hexdigest()[:10]}"


def load_study(
    storage: optuna.storages.RDBStorage, url: str, name: str, direction: Direction, seed: int, median: bool
) -> optuna.Study:
    """The study ``name`` (created when new): TPE sampler seeded with ``seed`` plus the number of trials
    the study already holds (a process that joins or resumes a study does not repeat the samples of
    the one that started it), median pruning over the validation folds when ``median``."""
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(n_startup_trials=5) if median else optuna.pruners.NopPruner()
    )
    with storage_errors(url):
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction=direction,
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=pruner,
            load_if_exists=True,
        )
        held = len(study.get_trials(deepcopy=False))
    if held:
        study.sampler = optuna.samplers.TPESampler(seed=seed + held)
    return study


def finished_trials(study: optuna.Study) -> int:
    """Trials that finished (complete, pruned or failed): the part of the budget already spent."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def optimize(
    study: optuna.Study,
    url: str,
    objective: Callable[[optuna.Trial], float],
    trials: int,
    catch: tuple[type[Exception], ...],
    callbacks: list[Callable[[optuna.Study, Any], None]],
) -> None:
    """Run the trials left of the budget ``trials``; the storage's failures name ``url``.

    Several processes (or machines) may run one study on a shared storage: each stops once the study as
    a whole has finished ``trials`` trials, so together they overshoot by at most the trials that were
    still running elsewhere.
    """
    left = trials - finished_trials(study)
    if left > 0:
        budget = optuna.study.MaxTrialsCallback(trials, states=FINISHED)
        with storage_errors(url):
            study.optimize(objective, n_trials=left, catch=catch, callbacks=[*callbacks, budget])
