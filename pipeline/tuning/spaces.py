"""The search space of each tunable model: which hyperparameters ``metarec tune`` samples, and where.

Ranges span roughly a tenth to ten times today's defaults (every default lies inside its range, so the
defaults are one point of the space); scales and penalties are searched on a log scale. Settings of the
optimiser (linear_bias's Adam steps), switches (content's ``text_taste``) and LightGBM's feature
construction keep their params.yaml values.

============== ===================================================================================
model          hyperparameters (range; log = log-uniform)
============== ===================================================================================
popularity     damping 0.5-200 log
linear_bias    l2_user, l2_item 0.1-100 log
mf_foldin      factors 2-64 log, ridge 0.1-100 log, sweeps (ALS iterations) 4-30
item_knn       k (neighbours) 5-200 log, shrink 1-1000 log
content        l2_user, l2_item, taste_ridge, item_ridge 0.1-100 log
cornac_retrain k 4-64 log, max_iter 10-200 log, learning_rate 0.001-0.1 log, lambda_reg 0.001-1 log
lightgbm(_rank) num_leaves 8-128 log, learning_rate 0.01-0.3 log, n_estimators 50-800 log,
               min_child_samples 5-300 log
meta (foldin)  factors 8-64 log, epochs 5-60 log, learning_rate 0.0003-0.03 log, item_dropout 0-0.8,
               init_precision 0.5-50 log
melu           inner_lr 0.01-1 log, outer_lr 0.0001-0.03 log, inner_steps 1-10, item_prior 0-50,
               support_shrinkage 0-50, embedding_dim 16 | 32 | 64
============== ===================================================================================

The meta-learners are tuned in ``train``: ``meta`` as the learner ``train.model`` names (the fold-in in
``train.foldin``; MeLU, with ``train.model: melu``, in ``train``'s own fields), ``melu`` in ``train``'s
own fields. ``meta_no_text`` shares ``meta``'s values and ``finetune`` MeLU's: they are not tuned apart.
``global_mean`` and ``most_popular`` have nothing to tune.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from pipeline.params import Params


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int | float) and self.low <= value <= self.high


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log)

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, self.values)

    def __contains__(self, value: object) -> bool:
        return value in self.values


Dimension = FloatRange | IntRange | Choice

_RIDGE = FloatRange(0.1, 100.0, log=True)
_LIGHTGBM: dict[str, Dimension] = {
    "num_leaves": IntRange(8, 128, log=True),
    "learning_rate": FloatRange(0.01, 0.3, log=True),
    "n_estimators": IntRange(50, 800, log=True),
    "min_child_samples": IntRange(5, 300, log=True),
}
SPACES: dict[str, dict[str, Dimension]] = {
    "popularity": {"damping": FloatRange(0.5, 200.0, log=True)},
    "linear_bias": {"l2_user": _RIDGE, "l2_item": _RIDGE},
    "mf_foldin": {
        "factors": IntRange(2, 64, log=True),
        "ridge": _RIDGE,
        "sweeps": IntRange(4, 30),
    },
    "item_knn": {"k": IntRange(5, 200, log=True), "shrink": FloatRange(1.0, 1000.0, log=True)},
    "content": {"l2_user": _RIDGE, "l2_item": _RIDGE, "taste_ridge": _RIDGE, "item_ridge": _RIDGE},
    "cornac_retrain": {
        "k": IntRange(4, 64, log=True),
        "max_iter": IntRange(10, 200, log=True),
        "learning_rate": FloatRange(0.001, 0.1, log=True),
        "lambda_reg": FloatRange(0.001, 1.0, log=True),
    },
    "lightgbm": _LIGHTGBM,
    "lightgbm_rank": _LIGHTGBM,
}
LEARNERS: dict[str, tuple[tuple[str, ...], dict[str, Dimension]]] = {
    "foldin": (
        ("train", "foldin"),
        {
            "factors": IntRange(8, 64, log=True),
            "epochs": IntRange(5, 60, log=True),
            "learning_rate": FloatRange(3e-4, 3e-2, log=True),
            "item_dropout": FloatRange(0.0, 0.8),
            "init_precision": FloatRange(0.5, 50.0, log=True),
        },
    ),
    "melu": (
        ("train",),
        {
            "inner_lr": FloatRange(0.01, 1.0, log=True),
            "outer_lr": FloatRange(1e-4, 3e-2, log=True),
            "inner_steps": IntRange(1, 10),
            "item_prior": FloatRange(0.0, 50.0),
            "support_shrinkage": FloatRange(0.0, 50.0),
            "embedding_dim": Choice((16, 32, 64)),
        },
    ),
}
"""Each meta-learner's params section and search space."""
META_LEARNERS = ("meta", "melu")
"""The models tuned as a meta-learner: ``meta`` (whichever ``train.model`` names) and ``melu``."""
TUNABLE = (*SPACES, *META_LEARNERS)


def learner(model: str, params: Params) -> str | None:
    """The meta-learner ``model`` is (``foldin`` or ``melu``), or None for a baseline."""
    if model == "meta":
        return params.train.model
    return "melu" if model == "melu" else None


def tunable(models: tuple[str, ...], params: Params) -> list[str]:
    """The models of ``models`` that have a search space, in order; ``melu`` is left out when ``meta`` is
    MeLU too (one learner, one study)."""
    out = [m for m in models if m in TUNABLE]
    if "meta" in out and "melu" in out and params.train.model == "melu":
        out.remove("melu")
    return out


def space(model: str, params: Params) -> dict[str, Dimension]:
    """``model``'s search space."""
    kind = learner(model, params)
    return SPACES[model] if kind is None else LEARNERS[kind][1]


def section(model: str, params: Params) -> tuple[str, ...]:
    """Where ``model``'s hyperparameters live in the params: ``("models", model)`` for a baseline."""
    kind = learner(model, params)
    return ("models", model) if kind is None else LEARNERS[kind][0]


def current(params: Params, model: str) -> dict[str, Any]:
    """``model``'s hyperparameters as ``params`` sets them (all of them, searched or not)."""
    node: Any = params
    for key in section(model, params):
        node = getattr(node, key)
    return dict(node.model_dump())


def suggest(trial: optuna.Trial, model: str, params: Params) -> dict[str, Any]:
    """One value per hyperparameter of ``model``'s space, sampled by ``trial``."""
    return {name: dim.suggest(trial, name) for name, dim in space(model, params).items()}


def with_values(params: Params, model: str, values: dict[str, Any]) -> Params:
    """``params`` with ``values`` set in ``model``'s section (validated again)."""
    tree = params.to_dict()
    node = tree
    for key in section(model, params):
        node = node[key]
    node.update(values)
    return Params.model_validate(tree)
