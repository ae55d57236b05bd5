"""Stage ``evaluate``: every model of ``eval.models`` on the same folds, in four cold-start scenarios.

The protocol (:mod:`pipeline.evaluation.protocols`) gives each fold its training rows and the support and
query rows of ``warm``, ``new_user``, ``new_item`` and ``new_both``. Each model is fitted once per fold
(a model whose fit is random: ``eval.seeds`` times, averaged; :mod:`pipeline.evaluation.jobs`) on the
training rows, then scores all four scenarios and the support-size curve. Every metric weighs every user
the same, and is reported as mean, standard deviation and 95% t-interval over folds, with a bootstrap
interval over users where per-user values exist; per scenario, ``meta`` is tested against every baseline
(:mod:`pipeline.evaluation.comparisons`). Outputs: ``metrics/cv.json``, ``metrics/shots.json``, the
per-user values ``data/evaluation/per_user.json``, the DVC plot data in ``plots/evaluation/`` and the report
``reports/evaluation/report.md``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.baselines.base import Objective
from pipeline.data.errors import DataError
from pipeline.data.ingest import SPLIT_SUFFIX
from pipeline.data.source import dataset_name
from pipeline.evaluation.comparisons import (
    BOOTSTRAP,
    PerFold,
    UserValues,
    baseline_tests,
    text_ablation,
    user_means,
)
from pipeline.evaluation.implicit import implicit_feature_set
from pipeline.evaluation.jobs import average_seeds, run_jobs, seed_indices
from pipeline.evaluation.models import is_seeded
from pipeline.evaluation.protocols import make_folds
from pipeline.evaluation.report import headline, scenario_plot_rows, write_report
from pipeline.evaluation.scenarios import WEIGHTING, Scoring
from pipeline.evaluation.shots import ShotsPerFold, shots_plot_rows, shots_summary
from pipeline.evaluation.split_file import read_split_file
from pipeline.evaluation.splits import SCENARIO_NAMES, Fold
from pipeline.evaluation.stats import mean_by_user, summarize
from pipeline.features.store import FeatureSet, load_feature_set
from pipeline.io import atomic_dir, write_json
from pipeline.params import Params
from pipeline.paths import Paths

log = logging.getLogger(__name__)

GATE_SCENARIO = "new_user"
GATE_MODEL = "meta"


@dataclass(frozen=True)
class Evaluation:
    """The stage's results: ``cv`` (``metrics/cv.json``), ``shots`` (``metrics/shots.json``), ``per_user``
    (``{"new_user": {"meta": {metric: {user id: mean over seeds and folds}}}}``, what the promotion gate
    pairs; kept out of cv.json, whose every number is a ``dvc metrics show`` column), and the seconds each
    model spent fitting and scoring (``{model: {"fit": [...], "score": [...]}}``, one entry per fit: fold
    by fold, seed by seed; not part of the metrics, which must not depend on the machine)."""

    cv: dict[str, Any]
    shots: dict[str, Any]
    per_user: dict[str, Any]
    timings: dict[str, dict[str, list[float]]]


def task_data(params: Params, fs: FeatureSet) -> tuple[FeatureSet, Scoring, Objective]:
    """The feature set the models see (implicit task: 0/1 labels with sampled negatives), how scenarios
    are scored, and the models' objective."""
    t, ev = params.task, params.eval
    if t.kind == "implicit":
        seed = int(np.random.SeedSequence([params.seed, 1]).generate_state(1)[0])
        data = implicit_feature_set(fs, t.positive_threshold, t.negatives, seed)
        return data, Scoring(True, 1.0, ev.ndcg_ks, ev.top_k), "binary"
    return fs, Scoring(False, t.positive_threshold, ev.ndcg_ks, ev.top_k), "regression"


def _summaries(per_fold: PerFold) -> dict[str, Any]:
    """``{scenario: {model: {metric: summarize(defined values)}}}``; metrics undefined in every fold are
    left out."""
    out: dict[str, Any] = {}
    for scenario, models in per_fold.items():
        out[scenario] = {}
        for model, metrics in models.items():
            defined = {m: [v for v in values if v is not None] for m, values in metrics.items()}
            out[scenario][model] = {m: summarize(v) for m, v in defined.items() if v}
    return out


def _sizes(folds: list[Fold]) -> dict[str, Any]:
    out: dict[str, Any] = {"train_rows": [int(f.train["rating"].size) for f in folds]}
    for name in SCENARIO_NAMES:
        scenarios = [f.scenarios[name] for f in folds]
        out[name] = {
            "query_rows": [int(s.query["rating"].size) for s in scenarios],
            "query_users": [int(s.users.size) for s in scenarios],
            "support_rows": [int(s.support["rating"].size) for s in scenarios],
        }
    return out


def cross_validate(
    params: Params, fs: FeatureSet, item_year: np.ndarray | None = None, states: np.ndarray | None = None
) -> Evaluation:
    """Fit every model of ``eval.models`` on each fold of ``eval.protocol`` (once, or ``eval.seeds`` times
    if its fit is random, averaged per fold); score the four scenarios and the support-size curve.
    ``melu`` needs ``item_year`` (release year per item, NaN if unknown), ``melu_split`` the split's
    ``states`` (one per rating row of ``fs``).

    Every fit's seed derives from ``seed``, the fold and the seed index
    (:func:`~pipeline.evaluation.jobs.job_seed`): the same data and params give the same result.
    """
    ev = params.eval
    data, scoring, objective = task_data(params, fs)
    folds = make_folds(ev, data.ratings, data.n_items, params.seed, item_year, states)
    per_fold: PerFold = {s: {m: {} for m in ev.models} for s in SCENARIO_NAMES}
    user_values: UserValues = {s: {m: {} for m in ev.models} for s in SCENARIO_NAMES}
    shots_per_fold: ShotsPerFold = {m: {k: {} for k in ev.shots} for m in ev.models}
    timings: dict[str, dict[str, list[float]]] = {m: {"fit": [], "score": []} for m in ev.models}
    results = run_jobs(params, data, folds, scoring, objective)
    for fold in folds:  # in fold order, wherever the fits ran
        for name in ev.models:
            result = average_seeds([results[fold.index, name, s] for s in seed_indices(name, ev.seeds)])
            for scenario_name, metrics in result.metrics.items():
                for metric, value in metrics.items():
                    per_fold[scenario_name][name].setdefault(metric, []).append(value)
            for scenario_name, pairs in result.per_user.items():
                for metric, pair in pairs.items():
                    user_values[scenario_name][name].setdefault(metric, []).append(pair)
            for k, metrics in result.shots.items():
                for metric, value in metrics.items():
                    shots_per_fold[name][k].setdefault(metric, []).append(value)
            timings[name]["fit"] += result.fit_s
            timings[name]["score"] += result.score_s
    for model, seconds in timings.items():  # the workers' own log lines do not reach the stage's log
        log.info(
            "%s: %d fits, %.1fs fitting, %.1fs scoring (summed over fits)",
            model,
            len(seconds["fit"]),
            sum(seconds["fit"]),
            sum(seconds["score"]),
        )
    summary = _summaries(per_fold)
    for scenario, models in user_means(user_values, params.seed).items():
        for model, by_metric in models.items():
            for metric, over_users in by_metric.items():
                summary[scenario][model][metric] |= over_users
    user_ids = np.asarray(fs.vocab["user_ids"])
    per_user: dict[str, Any] = {GATE_SCENARIO: {}}
    if GATE_MODEL in ev.models:
        per_user[GATE_SCENARIO][GATE_MODEL] = {
            metric: dict(zip(user_ids[u].tolist(), v.tolist(), strict=True))
            for metric, parts in user_values[GATE_SCENARIO][GATE_MODEL].items()
            for u, v in [mean_by_user(parts)]
        }
    cv = {
        "protocol": ev.protocol,
        "folds": ev.folds,
        "support_size": ev.support_size,
        "seed": params.seed,
        "seeds": ev.seeds,
        "seeded_models": [m for m in ev.models if is_seeded(m)],
        "task": params.task.kind,
        "weighting": WEIGHTING,
        "scenarios": summary,
        "per_fold": per_fold,
        "tests": baseline_tests(user_values, scoring, params.seed),
        "bootstrap": dict(BOOTSTRAP),
        "ablations": {"use_text": text_ablation(per_fold, scoring)},
        "sizes": _sizes(folds),
    }
    return Evaluation(cv, shots_summary(shots_per_fold, ev.shots, scoring), per_user, timings)


def read_item_year(paths: Paths, item_ids: list[str]) -> np.ndarray:
    """Release year per FeatureSet item (``item_ids``: vocab order) from the ingested items table; NaN
    where unknown. Raises if the table has no ``year`` column."""
    path = paths.table("items")
    items = pd.read_parquet(path)
    if "year" not in items.columns or "item_id" not in items.columns:
        raise ValueError(f"{path}: no 'year' column; eval.protocol melu needs the items' release years")
    year = pd.to_numeric(items["year"], errors="coerce").astype("float64")
    by_id = pd.Series(year.to_numpy(), index=items["item_id"].astype(str))
    return by_id.reindex(pd.Index(item_ids, dtype=str)).to_numpy(dtype=np.float64, na_value=np.nan)


def split_states(params: Params, paths: Paths, fs: FeatureSet) -> np.ndarray:
    """The MeLU split's state of every rating of ``fs`` (protocol ``melu_split``): from ``eval.split_file``,
    else from the split file the ``source`` stage linked next to the data."""
    if params.task.kind != "explicit":
        raise ValueError("eval.protocol melu_split scores explicit ratings; set task.kind: explicit")
    name = f"{dataset_name(params.data)}{SPLIT_SUFFIX}"
    path = Path(params.eval.split_file) if params.eval.split_file else paths.source / name
    if params.eval.split_file is None and not path.exists():
        rule = "protocol melu_split: the data folder has no such file; set eval.split_file"
        raise DataError(name, None, None, rule)
    return read_split_file(path, fs.ratings, fs.vocab["user_ids"], fs.vocab["item_ids"])


def protocol_inputs(
    params: Params, paths: Paths, fs: FeatureSet
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """What ``eval.protocol`` needs besides the ratings: the items' release years (``melu``) and the
    split's states (``melu_split``); None where the protocol needs nothing."""
    protocol = params.eval.protocol
    item_year = read_item_year(paths, fs.vocab["item_ids"]) if protocol == "melu" else None
    states = split_states(params, paths, fs) if protocol == "melu_split" else None
    return item_year, states


@dataclass(frozen=True)
class ProtocolFolds:
    """The folds ``evaluate`` reports, with the feature set the models see (implicit task: 0/1 labels),
    the scoring and the objective (:func:`task_data`)."""

    data: FeatureSet
    scoring: Scoring
    objective: Objective
    folds: list[Fold]


def protocol_folds(params: Params, paths: Paths, fs: FeatureSet) -> ProtocolFolds:
    """The folds of ``eval.protocol`` on ``fs``, built as :func:`cross_validate` builds them."""
    item_year, states = protocol_inputs(params, paths, fs)
    data, scoring, objective = task_data(params, fs)
    folds = make_folds(params.eval, data.ratings, data.n_items, params.seed, item_year, states)
    return ProtocolFolds(data, scoring, objective, folds)


def evaluate(params: Params, paths: Paths) -> dict[str, Any]:
    """Stage ``evaluate``: cross-validate on ``paths.features``; write ``metrics/cv.json``,
    ``metrics/shots.json``, ``data/evaluation/per_user.json``, ``plots/evaluation/`` and
    ``reports/evaluation/`` atomically; return cv.json."""
    fs = load_feature_set(paths.features)
    result = cross_validate(params, fs, *protocol_inputs(params, paths, fs))
    write_json(result.cv, paths.cv_metrics)
    write_json(headline(result.cv), paths.headline_metrics)
    write_json(result.shots, paths.shots_metrics)
    write_json(result.per_user, paths.per_user_values)
    with atomic_dir(paths.evaluation_plots) as tmp:
        for scenario in SCENARIO_NAMES:
            write_json(scenario_plot_rows(result.cv, scenario), tmp / f"{scenario}.json")
        for name, rows in shots_plot_rows(result.shots).items():
            write_json(rows, tmp / "shots" / f"{name}.json")
    report = write_report(result.cv, result.shots, paths.evaluation_report)
    log.info("evaluation written: %s, %s, %s", paths.cv_metrics, paths.shots_metrics, report)
    return result.cv
