"""The support-size curve (``metrics/shots.json``): ``new_user`` metrics as the new users reveal 0, 1, 3, ...
ratings, from the models already fitted for the fold (each size is one more predict call, no fit)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.baselines.base import ColdStartModel
from pipeline.evaluation.scenarios import ScenarioResult, Scoring, query_metrics
from pipeline.evaluation.splits import Shots
from pipeline.evaluation.stats import summarize
from pipeline.features.store import FeatureSet

# per model, per support size, per metric: one value per fold (None where undefined)
ShotsPerFold = dict[str, dict[int, dict[str, list[float | None]]]]


def score_shots(
    model: ColdStartModel, fs: FeatureSet, shots: Shots, sizes: tuple[int, ...], scoring: Scoring
) -> dict[int, ScenarioResult]:
    """``model``'s query-row metrics on the fixed shots query set for each support size in ``sizes``."""
    q = shots.query
    user = np.asarray(q["user_index"], dtype=np.int64)
    y_true = np.asarray(q["rating"], dtype=np.float64)
    query = {"user_index": user, "item_index": np.asarray(q["item_index"], dtype=np.int64)}
    out = {}
    for k in sizes:
        pred = np.asarray(model.predict(fs, shots.support(k), query), dtype=np.float64)
        if pred.shape != user.shape:
            raise ValueError(f"{model.name}: {pred.size} predictions for {user.size} query rows")
        out[k] = query_metrics(user, y_true, pred, scoring, model.predicts_ratings)
    return out


def shots_summary(per_fold: ShotsPerFold, sizes: tuple[int, ...], scoring: Scoring) -> dict[str, Any]:
    """``metrics/shots.json``: ``{"scenario", "metric", "support_sizes", "models": {model: {"support_<k>":
    {metric: {"mean", "std", "ci95"}}}}, "per_fold": ...}``; metrics undefined in every fold are left out."""
    models: dict[str, Any] = {}
    for name, by_size in per_fold.items():
        models[name] = {}
        for k in sizes:
            defined = {m: [v for v in values if v is not None] for m, values in by_size.get(k, {}).items()}
            models[name][f"support_{k}"] = {m: summarize(v) for m, v in defined.items() if v}
    return {
        "scenario": "new_user",
        "metric": scoring.primary,
        "support_sizes": list(sizes),
        "models": models,
        "per_fold": {
            name: {f"support_{k}": by_size.get(k, {}) for k in sizes} for name, by_size in per_fold.items()
        },
    }


def shots_plot_rows(shots: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per model, ``[{"support_size": k, "value": mean of the primary metric}]``: one DVC line per model."""
    metric = shots["metric"]
    out = {}
    for name, by_size in shots["models"].items():
        aggs = [(k, by_size[f"support_{k}"].get(metric)) for k in shots["support_sizes"]]
        out[name] = [{"support_size": k, "value": agg["mean"]} for k, agg in aggs if agg is not None]
    return out
