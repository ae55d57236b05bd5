"""Stage ``evaluate``: every model of ``eval.models`` on the same folds, in four cold-start scenarios.

The protocol (:mod:`pipeline.evaluation.protocols`) gives each fold its training rows and the support and
query rows of ``warm``, ``new_user``, ``new_item`` and ``new_both``. Each model is fitted ONCE per fold on
the training rows, then scores all four scenarios and the support-size curve. Every metric is reported
as mean, standard deviation and 95% t-interval over folds; per scenario, a paired Wilcoxon test over
users compares ``meta`` with the best baseline. Outputs: ``metrics/cv.json``, ``metrics/shots.json``, the
per-user values ``data/evaluation/per_user.json``, the DVC plot data in ``plots/evaluation/`` and the report
``reports/evaluation/report.md``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.baselines.base import Objective
from pipeline.data.errors import DataError
from pipeline.data.ingest import SPLIT_SUFFIX
from pipeline.data.source import dataset_name
from pipeline.evaluation.implicit import implicit_feature_set
from pipeline.evaluation.models import META_MODELS, build_model
from pipeline.evaluation.protocols import make_folds
from pipeline.evaluation.report import headline, scenario_plot_rows, write_report
from pipeline.evaluation.scenarios import Scoring, score_scenarios
from pipeline.evaluation.shots import ShotsPerFold, score_shots, shots_plot_rows, shots_summary
from pipeline.evaluation.split_file import read_split_file
from pipeline.evaluation.splits import SCENARIO_NAMES, Fold
from pipeline.evaluation.stats import paired_wilcoxon, summarize
from pipeline.features.store import FeatureSet, load_feature_set
from pipeline.io import atomic_dir, write_json
from pipeline.params import Params
from pipeline.paths import Paths
from pipeline.progress import Progress

log = logging.getLogger(__name__)

GATE_SCENARIO = "new_user"
GATE_MODEL = "meta"
TABLE_METRICS = ("mae", "rmse", "auc", "ndcg@", "recall@", "hr@")
# scenario -> model -> metric -> one value per fold (None where undefined)
PerFold = dict[str, dict[str, dict[str, list[float | None]]]]
# scenario -> model -> metric -> per fold (users, values)
UserValues = dict[str, dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]]]


@dataclass(frozen=True)
class Evaluation:
    """The stage's results: ``cv`` (``metrics/cv.json``), ``shots`` (``metrics/shots.json``), ``per_user``
    (``{"new_user": {"meta": {metric: {user id: mean over folds}}}}``, what the promotion gate pairs; kept
    out of cv.json, whose every number is a ``dvc metrics show`` column), and the seconds each model spent
    fitting and scoring per fold (``{model: {"fit": [...], "score": [...]}}``; not part of the metrics,
    which must not depend on the machine)."""

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


def _mean_per_user(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per user, the mean of its values over the folds it appears in; users ascending."""
    users = np.concatenate([u for u, _ in parts])
    values = np.concatenate([v for _, v in parts])
    uniq, codes = np.unique(users, return_inverse=True)
    return uniq, np.bincount(codes, weights=values) / np.bincount(codes)


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


def paired_tests(summary: dict[str, Any], user_values: UserValues, scoring: Scoring) -> dict[str, Any]:
    """Per scenario: ``meta`` against the baseline (any model but meta/meta_no_text) with the best mean of
    the primary metric, Wilcoxon signed-rank over users, one-sided in meta's favour."""
    metric = scoring.primary
    tests: dict[str, Any] = {}
    for scenario, models in summary.items():
        if metric not in models.get(GATE_MODEL, {}):
            continue
        baselines = [m for m in models if m not in META_MODELS and metric in models[m]]
        if not baselines:
            continue
        pick = min if scoring.lower_is_better else max
        best = pick(baselines, key=lambda m: models[m][metric]["mean"])
        mine = _mean_per_user(user_values[scenario][GATE_MODEL][metric])
        theirs = _mean_per_user(user_values[scenario][best][metric])
        alternative = "less" if scoring.lower_is_better else "greater"
        test = paired_wilcoxon(*mine, *theirs, alternative=alternative)
        tests[scenario] = {"model": GATE_MODEL, "against": best, "metric": metric, **test}
    return tests


def text_ablation(per_fold: PerFold, scoring: Scoring) -> dict[str, Any]:
    """Per scenario: the relative improvement of ``meta`` over ``meta_no_text`` in the primary metric, per
    fold (``(no_text - meta) / no_text`` for an error, the reverse for AUC), summarised over folds."""
    metric = scoring.primary
    out = {}
    for scenario, models in per_fold.items():
        mine = models.get("meta", {}).get(metric)
        theirs = models.get("meta_no_text", {}).get(metric)
        if not mine or not theirs:
            continue
        pairs = [(a, b) for a, b in zip(mine, theirs, strict=True) if a is not None and b is not None]
        if not pairs:
            continue
        sign = 1.0 if scoring.lower_is_better else -1.0
        rel = [sign * (b - a) / b for a, b in pairs]
        out[scenario] = {"metric": metric, **summarize(rel), "per_fold": rel}
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


@dataclass(frozen=True)
class ModelResult:
    """One model on one fold: ``metrics[scenario][metric]`` (None where undefined), per-user values
    ``per_user[scenario][metric] = (users, values)``, the support-size curve ``shots[k][metric]``, and the
    seconds spent fitting and scoring."""

    metrics: dict[str, dict[str, float | None]]
    per_user: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
    shots: dict[int, dict[str, float | None]]
    fit_s: float
    score_s: float


def evaluate_model(
    name: str,
    params: Params,
    data: FeatureSet,
    fold: Fold,
    scoring: Scoring,
    objective: Objective,
    threads: int | None = None,
) -> ModelResult:
    """Fit model ``name`` on the fold's training rows (seed ``seed + fold.index``); score the four
    scenarios and the support-size curve. ``threads``: LightGBM's threads (default: its own)."""
    fold_fs = replace(data, ratings=fold.train)
    start = time.perf_counter()
    model = build_model(name, params, seed=params.seed + fold.index, objective=objective, threads=threads)
    model.fit(fold_fs, fold.train)
    fitted = time.perf_counter()
    scored = score_scenarios(model, fold_fs, list(fold.scenarios.values()), fold.train, scoring)
    shots = score_shots(model, fold_fs, fold.shots, params.eval.shots, scoring)
    result = ModelResult(
        metrics={scenario: dict(r.metrics) for scenario, r in scored.items()},
        per_user={scenario: dict(r.per_user) for scenario, r in scored.items()},
        shots={k: dict(r.metrics) for k, r in shots.items()},
        fit_s=fitted - start,
        score_s=time.perf_counter() - fitted,
    )
    log.info(
        "fold %d %s: fit %.1fs, scoring %.1fs; new_user %s",
        fold.index,
        name,
        result.fit_s,
        result.score_s,
        {m: result.metrics["new_user"].get(m) for m in (scoring.primary, "ndcg@3")},
    )
    return result


def _start_worker(torch_threads: int) -> None:
    """Worker processes share the cores: each gets its share of torch's threads."""
    import torch

    torch.set_num_threads(torch_threads)


def _evaluate_all(
    params: Params, data: FeatureSet, folds: list[Fold], scoring: Scoring, objective: Objective
) -> dict[tuple[int, str], ModelResult]:
    """Every ``(fold index, model)``'s :class:`ModelResult`: in this process, or with ``eval.workers`` > 1
    in that many spawned worker processes, which split the cores between them."""
    jobs = [(fold, name) for fold in folds for name in params.eval.models]
    workers = min(params.eval.workers, len(jobs))
    results: dict[tuple[int, str], ModelResult] = {}
    with Progress(len(jobs), "evaluate", "fit") as bar:
        if workers <= 1:
            for fold, name in jobs:
                bar.set_postfix(fold=fold.index, model=name)
                results[fold.index, name] = evaluate_model(name, params, data, fold, scoring, objective)
                bar.update()
            return results
        threads = max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=(threads,)
        ) as pool:
            futures = {
                pool.submit(evaluate_model, name, params, data, fold, scoring, objective, threads): (
                    fold.index,
                    name,
                )
                for fold, name in jobs
            }
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.set_postfix(fold=futures[future][0], model=futures[future][1])
                bar.update()
    return results


def cross_validate(
    params: Params, fs: FeatureSet, item_year: np.ndarray | None = None, states: np.ndarray | None = None
) -> Evaluation:
    """Fit every model of ``eval.models`` once per fold of ``eval.protocol``; score the four scenarios and
    the support-size curve. ``melu`` needs ``item_year`` (release year per item, NaN if unknown),
    ``melu_split`` the split's ``states`` (one per rating row of ``fs``).

    Fold f's models are seeded with ``seed + f``: the same data and params give the same result.
    """
    ev = params.eval
    data, scoring, objective = task_data(params, fs)
    folds = make_folds(ev, data.ratings, data.n_items, params.seed, item_year, states)
    per_fold: PerFold = {s: {m: {} for m in ev.models} for s in SCENARIO_NAMES}
    user_values: UserValues = {s: {m: {} for m in ev.models} for s in SCENARIO_NAMES}
    shots_per_fold: ShotsPerFold = {m: {k: {} for k in ev.shots} for m in ev.models}
    timings: dict[str, dict[str, list[float]]] = {m: {"fit": [], "score": []} for m in ev.models}
    results = _evaluate_all(params, data, folds, scoring, objective)
    for fold in folds:  # in fold order, wherever the fits ran
        for name in ev.models:
            result = results[fold.index, name]
            for scenario_name, metrics in result.metrics.items():
                for metric, value in metrics.items():
                    per_fold[scenario_name][name].setdefault(metric, []).append(value)
            for scenario_name, pairs in result.per_user.items():
                for metric, pair in pairs.items():
                    user_values[scenario_name][name].setdefault(metric, []).append(pair)
            for k, metrics in result.shots.items():
                for metric, value in metrics.items():
                    shots_per_fold[name][k].setdefault(metric, []).append(value)
            timings[name]["fit"].append(result.fit_s)
            timings[name]["score"].append(result.score_s)
    summary = _summaries(per_fold)
    user_ids = np.asarray(fs.vocab["user_ids"])
    per_user: dict[str, Any] = {GATE_SCENARIO: {}}
    if GATE_MODEL in ev.models:
        per_user[GATE_SCENARIO][GATE_MODEL] = {
            metric: dict(zip(user_ids[u].tolist(), v.tolist(), strict=True))
            for metric, parts in user_values[GATE_SCENARIO][GATE_MODEL].items()
            for u, v in [_mean_per_user(parts)]
        }
    cv = {
        "protocol": ev.protocol,
        "folds": ev.folds,
        "support_size": ev.support_size,
        "seed": params.seed,
        "task": params.task.kind,
        "scenarios": summary,
        "per_fold": per_fold,
        "tests": paired_tests(summary, user_values, scoring),
        "ablations": {"use_text": text_ablation(per_fold, scoring)},
        "sizes": _sizes(folds),
    }
    return Evaluation(cv, shots_summary(shots_per_fold, ev.shots, scoring), per_user, timings)


def format_table(cv: dict[str, Any], metrics: tuple[str, ...] | None = None) -> str:
    """The CV metrics as a fixed-width table: one row per scenario and model, ``mean ± std`` per metric,
    then the paired tests. ``metrics``: these columns (default: MAE, RMSE, AUC, nDCG, recall and HR; the
    report has them all)."""
    header = (
        f"{cv['protocol']}: {cv['folds']} folds, task={cv.get('task', 'explicit')}, "
        f"support_size={cv['support_size']}, seed={cv['seed']}"
    )
    rows = [
        (scenario, model, values)
        for scenario, models in cv["scenarios"].items()
        for model, values in models.items()
    ]
    present = dict.fromkeys(m for _, _, values in rows for m in values)
    names = list(metrics or (m for m in present if m.startswith(TABLE_METRICS)))
    cells = [["scenario", "model", *names]]
    for scenario, model, values in rows:
        shown = [f"{values[n]['mean']:.4f} ± {values[n]['std']:.4f}" if n in values else "" for n in names]
        cells.append([scenario, model, *shown])
    widths = [max(len(row[c]) for row in cells) for c in range(len(cells[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for scenario, t in cv.get("tests", {}).items():
        p = "n/a" if t["p_value"] is None else f"{t['p_value']:.3g}"
        lines.append(
            f"{scenario}: {t['model']} vs {t['against']} on {t['metric']}: {t['test']} p={p} "
            f"({t['alternative']}, {t['n_users']} users)"
        )
    return "\n".join([header, *lines])


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
