"""What compression costs and buys: accuracy and latency of the compressed scorer beside the float one.

Accuracy is the MAE on a seeded sample of users' tasks (``FeatureSet.tasks``): the scorer adapts to a
user's support set and predicts the user's query set, whose ratings it never saw. Latency is the
median wall time of one request shaped like the serving benchmark's: a new user with ``SUPPORT``
ratings, every other item scored, on one torch thread (as each worker of the served model runs:
``benchmarks/serve_load.py``).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from pipeline.features.store import FeatureSet
from pipeline.meta.batching import TaskSet
from pipeline.meta.learners import Learner
from pipeline.registry.scorer import Compression, FoldInScorer, Scorer, make_scorer

SUPPORT = 10
LATENCY_REQUESTS = 40
WARMUP_REQUESTS = 5


def _mae_and_predictions(
    scorer: Scorer | FoldInScorer, tasks: TaskSet, picked: np.ndarray
) -> tuple[float, np.ndarray]:
    predictions, truth = [], []
    for t in picked:
        support_items, support_ratings = tasks.support(t)
        query_items, query_ratings = tasks.query(t)
        predictions.append(scorer.scores(tasks.user_cats[t], support_items, support_ratings, query_items))
        truth.append(query_ratings)
    pred, true = np.concatenate(predictions), np.concatenate(truth)
    return float(np.abs(pred.astype(np.float64) - true).mean()), pred


def _latency_ms(
    scorer: Scorer | FoldInScorer, tasks: TaskSet, picked: np.ndarray, rng: np.random.Generator
) -> float:
    times = []
    for i in range(WARMUP_REQUESTS + LATENCY_REQUESTS):
        t = picked[i % picked.size]
        items, ratings = tasks.support(t)
        keep = rng.permutation(items.size)[:SUPPORT]
        start = time.perf_counter()
        scorer.scores(tasks.user_cats[t], items[keep], ratings[keep], None)
        if i >= WARMUP_REQUESTS:
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def serving_report(
    learner: Learner, fs: FeatureSet, compression: Compression, seed: int, sample_users: int
) -> dict[str, float | str]:
    """``serving.float.{mae,latency_ms}``, and with compression also ``serving.<mode>.{mae,latency_ms}``,
    ``serving.mae_change`` (compressed minus float) and ``serving.prediction_change`` (mean |difference|).

    A model that scores any sampled user's query items NaN or infinite raises :class:`NonFiniteScores`."""
    tasks = TaskSet.from_tasks(fs.tasks, fs.user_cats)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(tasks), min(sample_users, len(tasks)), replace=False))
    modes: list[Compression] = ["none"] if compression == "none" else ["none", compression]
    report: dict[str, float | str] = {"serving.compression": compression, "serving.sample_users": picked.size}
    predictions = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for mode in modes:
            scorer = make_scorer(learner, mode)
            name = "float" if mode == "none" else mode
            mae, pred = _mae_and_predictions(scorer, tasks, picked)
            report[f"serving.{name}.mae"] = mae
            latency = _latency_ms(scorer, tasks, picked, np.random.default_rng(seed))
            report[f"serving.{name}.latency_ms"] = latency
            predictions.append(pred)
    finally:
        torch.set_num_threads(threads)
    if compression != "none":
        report["serving.mae_change"] = float(report[f"serving.{compression}.mae"]) - float(
            report["serving.float.mae"]
        )
        report["serving.prediction_change"] = float(np.abs(predictions[1] - predictions[0]).mean())
    return report
