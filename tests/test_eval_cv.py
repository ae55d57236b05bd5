"""cross_validate's JSON shape and determinism, the evaluate stage's files, the table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.evaluation.cv import build_model, cross_validate, evaluate, format_table, mae_plot_rows
from pipeline.features.store import FeatureSet, save_feature_set
from pipeline.io import read_json
from pipeline.params import load_params
from pipeline.paths import Paths
from tests.eval_fixtures import planted_feature_set

BASELINES = "eval.models=[global_mean, linear_bias, lightgbm]"


@pytest.fixture(scope="module")
def fs() -> FeatureSet:
    return planted_feature_set(n_users=60, n_items=40, per_user=(8, 25), seed=4)[0]


@pytest.fixture(scope="module")
def cv(fs: FeatureSet) -> dict[str, Any]:
    params = load_params(None, [BASELINES, "eval.folds=3", "eval.support_size=4", "eval.ndcg_k=3", "seed=9"])
    return cross_validate(params, fs)


def test_cross_validate_returns_exactly_the_documented_shape(cv: dict[str, Any]) -> None:
    assert set(cv) == {"scenarios", "protocol", "folds", "support_size", "seed", "per_fold"}
    assert (cv["protocol"], cv["folds"], cv["support_size"], cv["seed"]) == ("kfold", 3, 4, 9)
    assert list(cv["scenarios"]) == ["new_user"]
    models = cv["scenarios"]["new_user"]
    assert list(models) == ["global_mean", "linear_bias", "lightgbm"]
    for name, metrics in models.items():
        assert list(metrics) == ["mae", "rmse", "ndcg@3"]
        for metric, agg in metrics.items():
            assert set(agg) == {"mean", "std"}
            values = cv["per_fold"]["new_user"][name][metric]
            assert len(values) == 3 and all(isinstance(v, float) for v in values)
            assert agg["mean"] == pytest.approx(np.mean(values))
            assert agg["std"] == pytest.approx(np.std(values, ddof=1))
    assert models["linear_bias"]["mae"]["mean"] < models["global_mean"]["mae"]["mean"]


def test_cross_validate_is_deterministic(fs: FeatureSet, cv: dict[str, Any]) -> None:
    params = load_params(None, [BASELINES, "eval.folds=3", "eval.support_size=4", "eval.ndcg_k=3", "seed=9"])
    again = cross_validate(params, fs)
    assert json.dumps(again, sort_keys=True) == json.dumps(cv, sort_keys=True)
    other = cross_validate(
        load_params(None, [BASELINES, "eval.folds=3", "eval.support_size=4", "seed=10"]), fs
    )
    assert other["per_fold"] != cv["per_fold"]


def test_evaluate_writes_metrics_and_plot_data(tmp_path: Path, fs: FeatureSet) -> None:
    paths = Paths(tmp_path)
    save_feature_set(fs, paths.features)
    params = load_params(None, ["eval.models=[global_mean, linear_bias]", "eval.folds=2", "eval.ndcg_k=5"])
    cv = evaluate(params, paths)
    assert read_json(paths.cv_metrics) == json.loads(json.dumps(cv))
    assert set(cv["scenarios"]["new_user"]["linear_bias"]) == {"mae", "rmse", "ndcg@5"}
    rows = read_json(paths.plots / "cv_mae.json")
    assert rows == [
        {"model": "global_mean", "mae": cv["scenarios"]["new_user"]["global_mean"]["mae"]["mean"]},
        {"model": "linear_bias", "mae": cv["scenarios"]["new_user"]["linear_bias"]["mae"]["mean"]},
    ]
    assert not list(paths.metrics.glob(".*.tmp")) and not list(paths.plots.glob(".*.tmp"))


def test_format_table_shows_every_model_and_metric(cv: dict[str, Any]) -> None:
    table = format_table(cv)
    lines = table.splitlines()
    assert lines[0] == "kfold: 3 folds over users, support_size=4, seed=9"
    assert lines[1].split() == ["scenario", "model", "mae", "rmse", "ndcg@3"]
    lb = cv["scenarios"]["new_user"]["linear_bias"]["mae"]
    assert f"{lb['mean']:.4f} ± {lb['std']:.4f}" in next(line for line in lines if "linear_bias" in line)
    assert len(lines) == 3 + 3
    assert mae_plot_rows(cv)[2]["model"] == "lightgbm"


def test_build_model_rejects_an_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown model 'svd'"):
        build_model("svd", load_params(None), seed=0)


@pytest.mark.slow
def test_cross_validate_runs_the_meta_learner_deterministically(fs: FeatureSet) -> None:
    pytest.importorskip("pipeline.meta.learner")
    from dataclasses import replace

    from pipeline.evaluation.splits import support_mask

    is_query = ~support_mask(fs.ratings["user_index"], 6, seed=0)
    tasks = {c: fs.ratings[c] for c in ("user_index", "item_index", "rating")} | {"is_query": is_query}
    with_tasks = replace(fs, tasks=tasks)
    overrides = [
        "eval.models=[global_mean, meta]",
        "eval.folds=2",
        "train.epochs=1",
        "train.hidden=[16]",
        "train.embedding_dim=8",
        "train.device=cpu",
    ]
    first = cross_validate(load_params(None, overrides), with_tasks)
    assert list(first["scenarios"]["new_user"]) == ["global_mean", "meta"]
    assert len(first["per_fold"]["new_user"]["meta"]["mae"]) == 2
    second = cross_validate(load_params(None, overrides), with_tasks)
    assert json.dumps(second, sort_keys=True) == json.dumps(first, sort_keys=True)
