"""The evaluation's fits: one job per (fold, model, seed), run in this process or in a pool of workers.

A model whose fit is random (its class's ``seeded``) is fitted ``eval.seeds`` times per fold, seed
index ``s`` with :func:`job_seed`; a deterministic one once. Each job fits on the fold's training rows and
scores the four scenarios and the support-size curve; :func:`average_seeds` merges a model's seeds on one
fold into one result.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace

import numpy as np

from pipeline.baselines.base import Objective
from pipeline.evaluation.models import META_FAMILY, build_model, is_seeded
from pipeline.evaluation.scenarios import Scoring, score_scenarios
from pipeline.evaluation.shots import score_shots
from pipeline.evaluation.splits import Fold
from pipeline.evaluation.stats import mean_by_user
from pipeline.features.store import FeatureSet
from pipeline.params import Params
from pipeline.progress import Progress

log = logging.getLogger(__name__)

SEED_STRIDE = 1000
"""Seed index s of fold f trains with ``seed + f + SEED_STRIDE * s``: s = 0 is the single-seed run."""
# (fold index, model, seed index)
JobKey = tuple[int, str, int]


def job_seed(seed: int, fold: int, seed_index: int) -> int:
    """The training seed of fold ``fold``'s fit number ``seed_index``: ``seed + fold + 1000 · seed_index``
    (distinct for fewer than 1000 folds; seed index 0 gives fold f the seed ``seed + f``)."""
    return seed + fold + SEED_STRIDE * seed_index


def seed_indices(name: str, seeds: int) -> range:
    """The seed indices model ``name`` is fitted with on each fold: ``range(seeds)`` if its fit is random,
    else ``range(1)``."""
    return range(seeds if is_seeded(name) else 1)


@dataclass(frozen=True)
class ModelResult:
    """One model on one fold: ``metrics[scenario][metric]`` (None where undefined), per-user values
    ``per_user[scenario][metric] = (users, values)``, the support-size curve ``shots[k][metric]``, and the
    seconds spent fitting and scoring (one entry per seed)."""

    metrics: dict[str, dict[str, float | None]]
    per_user: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
    shots: dict[int, dict[str, float | None]]
    fit_s: list[float]
    score_s: list[float]


def _mean_defined(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _mean_metrics(tables: list[dict[str, float | None]]) -> dict[str, float | None]:
    names = dict.fromkeys(m for t in tables for m in t)
    return {m: _mean_defined([t.get(m) for t in tables]) for m in names}


def average_seeds(results: list[ModelResult]) -> ModelResult:
    """One model's results on one fold, one per seed, as one: each metric the mean over the seeds where
    it is defined (None if none), each user's value the mean over the seeds that scored it; the timings
    are kept per seed."""
    if len(results) == 1:
        return results[0]
    first = results[0]
    return ModelResult(
        metrics={s: _mean_metrics([r.metrics[s] for r in results]) for s in first.metrics},
        per_user={
            s: {
                m: mean_by_user([r.per_user[s][m] for r in results if m in r.per_user[s]])
                for m in dict.fromkeys(m for r in results for m in r.per_user[s])
            }
            for s in first.per_user
        },
        shots={k: _mean_metrics([r.shots[k] for r in results]) for k in first.shots},
        fit_s=[t for r in results for t in r.fit_s],
        score_s=[t for r in results for t in r.score_s],
    )


def evaluate_model(
    name: str,
    params: Params,
    data: FeatureSet,
    fold: Fold,
    scoring: Scoring,
    objective: Objective,
    seed_index: int = 0,
    threads: int | None = None,
) -> ModelResult:
    """Fit model ``name`` on the fold's training rows (seed :func:`job_seed`); score the four scenarios and
    the support-size curve. ``threads``: LightGBM's threads (default: its own)."""
    fold_fs = replace(data, ratings=fold.train)
    start = time.perf_counter()
    seed = job_seed(params.seed, fold.index, seed_index)
    model = build_model(name, params, seed=seed, objective=objective, threads=threads)
    model.fit(fold_fs, fold.train)
    fitted = time.perf_counter()
    scored = score_scenarios(model, fold_fs, list(fold.scenarios.values()), fold.train, scoring)
    shots = score_shots(model, fold_fs, fold.shots, params.eval.shots, scoring)
    result = ModelResult(
        metrics={scenario: dict(r.metrics) for scenario, r in scored.items()},
        per_user={scenario: dict(r.per_user) for scenario, r in scored.items()},
        shots={k: dict(r.metrics) for k, r in shots.items()},
        fit_s=[fitted - start],
        score_s=[time.perf_counter() - fitted],
    )
    log.info(
        "fold %d %s seed %d: fit %.1fs, scoring %.1fs; new_user %s",
        fold.index,
        name,
        seed,
        result.fit_s[0],
        result.score_s[0],
        {m: result.metrics["new_user"].get(m) for m in (scoring.primary, "ndcg@3")},
    )
    return result


def _start_worker(torch_threads: int) -> None:
    """Worker processes share the cores: each gets its share of torch's threads."""
    import torch

    torch.set_num_threads(torch_threads)


def run_jobs(
    params: Params, data: FeatureSet, folds: list[Fold], scoring: Scoring, objective: Objective
) -> dict[JobKey, ModelResult]:
    """Every ``(fold index, model, seed index)``'s :class:`ModelResult`: in this process, or with
    ``eval.workers`` > 1 in that many spawned worker processes, which split the cores between them."""
    ev = params.eval
    jobs = [(fold, name, s) for fold in folds for name in ev.models for s in seed_indices(name, ev.seeds)]
    # the meta-learners' fits are the long jobs: handed out first, they do not leave a core idle at the end
    jobs.sort(key=lambda job: job[1] not in META_FAMILY)
    workers = min(ev.workers, len(jobs))
    results: dict[JobKey, ModelResult] = {}
    with Progress(len(jobs), "evaluate", "fit") as bar:
        if workers <= 1:
            for fold, name, s in jobs:
                bar.set_postfix(fold=fold.index, model=name, seed=s)
                results[fold.index, name, s] = evaluate_model(name, params, data, fold, scoring, objective, s)
                bar.update()
            return results
        threads = max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=(threads,)
        ) as pool:
            futures = {
                pool.submit(evaluate_model, name, params, data, fold, scoring, objective, s, threads): (
                    fold.index,
                    name,
                    s,
                )
                for fold, name, s in jobs
            }
            for future in as_completed(futures):
                key = futures[future]
                results[key] = future.result()
                bar.set_postfix(fold=key[0], model=key[1], seed=key[2])
                bar.update()
    return results
