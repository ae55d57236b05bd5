"""Stage ``evaluate``: K-fold cross-validation over users of every model in ``eval.models``.

Every model sees the same folds and the same support/query sets, so per-fold numbers can be compared
pairwise. The result is plain JSON (``metrics/cv.json``) and, for ``dvc plots``, one MAE row per model.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pipeline.baselines.base import ColdStartModel
from pipeline.baselines.global_mean import GlobalMean
from pipeline.baselines.lightgbm_model import LightGBMModel
from pipeline.baselines.linear_bias import LinearBias
from pipeline.evaluation.meta_adapter import MetaModel
from pipeline.evaluation.metrics import mae, ndcg_at_k, rmse
from pipeline.evaluation.splits import kfold_splits
from pipeline.features.store import FeatureSet, load_feature_set
from pipeline.io import write_json
from pipeline.params import Params
from pipeline.paths import Paths

log = logging.getLogger(__name__)

SCENARIO = "new_user"


def build_model(name: str, params: Params, seed: int) -> ColdStartModel:
    """A fresh, unfitted model called ``name`` (one of ``EvalParams.models``)."""
    if name == "global_mean":
        return GlobalMean()
    if name == "linear_bias":
        return LinearBias()
    if name == "lightgbm":
        return LightGBMModel(support_size=params.eval.support_size, seed=seed)
    if name == "meta":
        return MetaModel(params.train.model_dump(), seed=seed, progress=True)
    raise ValueError(f"eval.models: unknown model {name!r}")


def score(user: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, ndcg_k: int) -> dict[str, float]:
    """MAE, RMSE and nDCG@k of one model on one fold's query set."""
    return {
        "mae": mae(y_true, y_pred),
        "rmse": rmse(y_true, y_pred),
        f"ndcg@{ndcg_k}": ndcg_at_k(user, y_true, y_pred, ndcg_k),
    }


def _mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1) over folds."""
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0}


def cross_validate(params: Params, fs: FeatureSet) -> dict[str, Any]:
    """Run every model of ``eval.models`` on the same seeded user folds (scenario ``new_user``).

    Returns ``{"scenarios": {"new_user": {model: {metric: {"mean", "std"}}}}, "protocol": "kfold",
    "folds", "support_size", "seed", "per_fold": {"new_user": {model: {metric: [one value per fold]}}}}``.
    Fold f's models are seeded with ``seed + f``; the same data and params give the same result.
    """
    ev = params.eval
    splits = kfold_splits(fs.ratings, ev.folds, ev.support_size, params.seed, scenario=SCENARIO)
    per_fold: dict[str, dict[str, list[float]]] = {name: {} for name in ev.models}
    with tqdm(total=len(splits) * len(ev.models), desc="cross-validate", unit="fit") as bar:
        for f, split in enumerate(splits):
            support = {c: split.support_set[c] for c in ("user_index", "item_index", "rating")}
            query = {c: split.query_set[c] for c in ("user_index", "item_index")}
            y_true = split.query_set["rating"]
            for name in ev.models:
                bar.set_postfix(fold=f, model=name)
                start = time.perf_counter()
                model = build_model(name, params, seed=params.seed + f)
                model.fit(fs, split.train_users)
                y_pred = np.asarray(model.predict(fs, support, query), dtype=np.float64)
                if y_pred.shape != y_true.shape:
                    raise ValueError(f"{name}: {y_pred.shape[0]} predictions for {y_true.size} query rows")
                scores = score(query["user_index"], y_true, y_pred, ev.ndcg_k)
                for metric, value in scores.items():
                    per_fold[name].setdefault(metric, []).append(value)
                log.info(
                    "fold %d %s: %s in %.1fs",
                    f,
                    name,
                    " ".join(f"{m}={v:.4f}" for m, v in scores.items()),
                    time.perf_counter() - start,
                )
                bar.update()
    summary = {name: {m: _mean_std(v) for m, v in metrics.items()} for name, metrics in per_fold.items()}
    return {
        "scenarios": {SCENARIO: summary},
        "protocol": "kfold",
        "folds": ev.folds,
        "support_size": ev.support_size,
        "seed": params.seed,
        "per_fold": {SCENARIO: per_fold},
    }


def mae_plot_rows(cv: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{"model", "mae"}]`` (mean over folds, scenario ``new_user``) for a DVC bar plot."""
    return [{"model": name, "mae": m["mae"]["mean"]} for name, m in cv["scenarios"][SCENARIO].items()]


def format_table(cv: dict[str, Any]) -> str:
    """The CV metrics as a fixed-width table: one row per scenario and model, ``mean ± std`` per metric."""
    header = (
        f"{cv['protocol']}: {cv['folds']} folds over users, support_size={cv['support_size']}, "
        f"seed={cv['seed']}"
    )
    rows = [
        (scenario, model, metrics)
        for scenario, models in cv["scenarios"].items()
        for model, metrics in models.items()
    ]
    metric_names = list(rows[0][2]) if rows else []
    cells = [["scenario", "model", *metric_names]]
    cells += [
        [scenario, model, *(f"{m[k]['mean']:.4f} ± {m[k]['std']:.4f}" for k in metric_names)]
        for scenario, model, m in rows
    ]
    widths = [max(len(row[c]) for row in cells) for c in range(len(cells[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([header, *lines])


def evaluate(params: Params, paths: Paths) -> dict[str, Any]:
    """Stage ``evaluate``: cross-validate on ``paths.features``; write ``metrics/cv.json`` and
    ``plots/cv_mae.json`` atomically; return the CV result."""
    fs = load_feature_set(paths.features)
    cv = cross_validate(params, fs)
    write_json(cv, paths.cv_metrics)
    write_json(mae_plot_rows(cv), paths.plots / "cv_mae.json")
    log.info("cross-validation:\n%s", format_table(cv))
    return cv
