"""The evaluate stage: cv.json and shots.json shapes, seeds, scoring against brute force, files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline.baselines.base import ColdStartModel
from pipeline.evaluation.comparisons import BOOTSTRAP_RESAMPLES, bootstrap_seed
from pipeline.evaluation.cv import Evaluation, cross_validate, evaluate, read_item_year, task_data
from pipeline.evaluation.jobs import evaluate_model, job_seed
from pipeline.evaluation.metrics import per_user_mae, topk_metrics
from pipeline.evaluation.models import MODEL_NAMES, build_model, is_seeded
from pipeline.evaluation.protocols import kfold_folds, make_folds
from pipeline.evaluation.report import format_table, shots_figure
from pipeline.evaluation.scenarios import Scoring, score_scenarios
from pipeline.evaluation.shots import score_shots
from pipeline.evaluation.splits import SCENARIO_NAMES
from pipeline.evaluation.stats import bootstrap_ci, mean_by_user
from pipeline.features.store import FeatureSet, save_feature_set
from pipeline.io import read_json
from pipeline.params import load_params
from pipeline.paths import Paths
from pipeline.registry.gate import evidence
from tests.eval_fixtures import planted_feature_set

BASELINES = "eval.models=[global_mean, popularity, linear_bias, lightgbm_rank]"
SMALL = [
    "eval.folds=3",
    "eval.support_size=4",
    "eval.shots=[0, 2, 4]",
    "eval.workers=1",
    "eval.seeds=1",
    "seed=9",
]
EXPLICIT_METRICS = [
    "mae",
    "rmse",
    "ndcg@1",
    "ndcg@3",
    "ndcg@5",
    "precision@10",
    "recall@10",
    "f1@10",
    "hr@10",
    "mrr@10",
    "ndcg_all@10",
]
SCORING = Scoring(implicit=False, relevance=4.0, ndcg_ks=(1, 3, 5), top_k=10)


@pytest.fixture(scope="module")
def fs() -> FeatureSet:
    return planted_feature_set(n_users=60, n_items=40, per_user=(8, 25), seed=4)[0]


@pytest.fixture(scope="module")
def result(fs: FeatureSet) -> Evaluation:
    return cross_validate(load_params(None, [BASELINES, *SMALL]), fs)


def test_cv_json_has_the_documented_shape(result: Evaluation) -> None:
    cv = result.cv
    assert set(cv) == {
        "protocol",
        "folds",
        "support_size",
        "seed",
        "seeds",
        "seeded_models",
        "task",
        "weighting",
        "scenarios",
        "per_fold",
        "tests",
        "bootstrap",
        "ablations",
        "sizes",
    }
    assert (cv["protocol"], cv["folds"], cv["support_size"], cv["seed"], cv["task"]) == (
        "kfold",
        3,
        4,
        9,
        "explicit",
    )
    assert (cv["seeds"], cv["seeded_models"], cv["weighting"]) == (1, ["lightgbm_rank"], "user")
    assert cv["bootstrap"] == {"resamples": 2000, "unit": "user", "interval": "percentile"}
    assert list(cv["scenarios"]) == list(SCENARIO_NAMES)
    for scenario, models in cv["scenarios"].items():
        assert list(models) == ["global_mean", "popularity", "linear_bias", "lightgbm_rank"]
        for name, metrics in models.items():
            # a ranking model's scores are not ratings: no MAE / RMSE
            expected = EXPLICIT_METRICS[2:] if name == "lightgbm_rank" else EXPLICIT_METRICS
            assert list(metrics) == expected
            for metric, agg in metrics.items():
                values = cv["per_fold"][scenario][name][metric]
                assert len(values) == 3 and all(isinstance(v, float) for v in values)
                # equal values (e.g. no top-k hit in any fold): scipy's interval is nan, ours the mean
                ref = (values[0], values[0])
                if np.ptp(values) > 0:
                    ref = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
                assert agg["mean"] == pytest.approx(np.mean(values))
                assert agg["std"] == pytest.approx(np.std(values, ddof=1))
                assert agg["ci95"] == pytest.approx(list(ref))
                # MAE and RMSE have per-user values: their mean over users and its bootstrap interval
                users = {"n_users", "mean_users", "ci95_users"}
                assert set(agg) == {"mean", "std", "ci95", *(users if metric in ("mae", "rmse") else ())}
                if metric in ("mae", "rmse"):
                    lo, hi = agg["ci95_users"]
                    assert lo < agg["mean_users"] < hi and agg["n_users"] > 0
        assert len(cv["sizes"][scenario]["query_rows"]) == 3
    got = cv["scenarios"]["new_user"]
    assert got["linear_bias"]["mae"]["mean"] < got["global_mean"]["mae"]["mean"]
    assert cv["tests"] == {} and result.per_user == {"new_user": {}}  # no meta model in this run
    json.dumps(cv, allow_nan=False)


def test_shots_json_has_every_size_and_model(result: Evaluation) -> None:
    shots = result.shots
    assert shots["support_sizes"] == [0, 2, 4] and shots["metric"] == "mae"
    lb = shots["models"]["linear_bias"]
    assert list(lb) == ["support_0", "support_2", "support_4"]
    assert lb["support_4"]["mae"]["mean"] < lb["support_0"]["mae"]["mean"]  # the support set helps
    gm = shots["models"]["global_mean"]
    assert gm["support_0"]["mae"] == gm["support_4"]["mae"]  # a model that ignores the support set
    assert len(shots["per_fold"]["linear_bias"]["support_2"]["mae"]) == 3


def test_cross_validate_is_deterministic(fs: FeatureSet, result: Evaluation) -> None:
    again = cross_validate(load_params(None, [BASELINES, *SMALL]), fs)
    assert json.dumps(again.cv, sort_keys=True) == json.dumps(result.cv, sort_keys=True)
    assert json.dumps(again.shots, sort_keys=True) == json.dumps(result.shots, sort_keys=True)
    other = cross_validate(load_params(None, [BASELINES, *SMALL[:-1], "seed=10"]), fs)
    assert SMALL[-1] == "seed=9"
    assert other.cv["per_fold"] != result.cv["per_fold"]


def test_seeded_models_are_fitted_once_per_seed_and_averaged_per_fold(fs: FeatureSet) -> None:
    params = load_params(
        None,
        [
            "eval.models=[global_mean, mf_foldin]",
            "eval.folds=2",
            "eval.support_size=4",
            "eval.shots=[0, 4]",
            "eval.workers=1",
            "eval.seeds=2",
            "seed=5",
        ],
    )
    got = cross_validate(params, fs)
    cv = got.cv
    assert (cv["seeds"], cv["seeded_models"]) == (2, ["mf_foldin"])
    # global_mean's fit is not random: once per fold; mf_foldin twice per fold
    assert {m: len(t["fit"]) for m, t in got.timings.items()} == {"global_mean": 2, "mf_foldin": 4}
    assert [job_seed(5, f, s) for f in (0, 1) for s in (0, 1)] == [5, 1005, 6, 1006]
    # by hand: each (fold, seed) fitted alone, then per fold the mean over the seeds
    data, scoring, objective = task_data(params, fs)
    parts = []
    for fold in make_folds(params.eval, data.ratings, data.n_items, params.seed):
        runs = [evaluate_model("mf_foldin", params, data, fold, scoring, objective, s) for s in (0, 1)]
        maes = [r.metrics["new_user"]["mae"] for r in runs]
        assert maes[0] != maes[1]  # distinct seeds
        assert cv["per_fold"]["new_user"]["mf_foldin"]["mae"][fold.index] == pytest.approx(np.mean(maes))
        shots = got.shots["per_fold"]["mf_foldin"]["support_4"]["mae"][fold.index]
        assert shots == pytest.approx(np.mean([r.shots[4]["mae"] for r in runs]))
        parts += [r.per_user["new_user"]["mae"] for r in runs]
    # each user's value: the mean over the seeds and folds; the mean over users and its interval
    _, values = mean_by_user(parts)
    agg = cv["scenarios"]["new_user"]["mf_foldin"]["mae"]
    assert agg["mean_users"] == pytest.approx(values.mean())
    assert agg["ci95_users"] == pytest.approx(bootstrap_ci(values, BOOTSTRAP_RESAMPLES, bootstrap_seed(5)))
    # the same data and params give the same cv.json
    again = cross_validate(params, fs)
    assert json.dumps(again.cv, sort_keys=True) == json.dumps(cv, sort_keys=True)


@pytest.mark.parametrize("topk_users", [0, 7])
def test_scenario_scores_match_a_brute_force_reference(fs: FeatureSet, topk_users: int) -> None:
    """Query-row metrics equal a direct predict; top-k equals ranking every unseen pool item, user by user,
    for the ranked users (all, or a sample of 7)."""
    fold = kfold_folds(fs.ratings, fs.n_items, 3, 4, 0.2, 6, 8, seed=2, topk_users=topk_users)[1]
    fold_fs = replace(fs, ratings=fold.train)
    model = build_model("linear_bias", load_params(None), seed=0)
    model.fit(fold_fs, fold.train)
    together = score_scenarios(model, fold_fs, list(fold.scenarios.values()), fold.train, SCORING)
    assert [s.support_group for s in fold.scenarios.values()] == ["known", "revealed", "known", "revealed"]
    for scenario in fold.scenarios.values():
        got = together[scenario.name]
        alone = score_scenarios(model, fold_fs, [scenario], fold.train, SCORING)[scenario.name]
        assert alone.metrics == pytest.approx(got.metrics)
        q = scenario.query
        direct = model.predict(fold_fs, scenario.support, {c: q[c] for c in ("user_index", "item_index")})
        assert got.metrics["mae"] == pytest.approx(
            np.mean(per_user_mae(q["user_index"], q["rating"], direct)[1])
        )
        cand_user, cand_item, relevant = [], [], []
        ranked = np.unique(q["user_index"])
        if topk_users:
            assert scenario.ranked_users.size == min(topk_users, ranked.size)
            ranked = scenario.ranked_users
        for u in ranked:
            seen = set(fold.train["item_index"][fold.train["user_index"] == u])
            seen |= set(scenario.support["item_index"][scenario.support["user_index"] == u])
            items = [i for i in scenario.items if i not in seen]
            cand_user += [u] * len(items)
            cand_item += items
            mine = q["user_index"] == u
            relevant += [(u, i) for i in q["item_index"][mine & (q["rating"] >= 4)]]
        scores = model.predict(fold_fs, scenario.support, {"user_index": cand_user, "item_index": cand_item})
        ref = topk_metrics(
            np.array(cand_user),
            np.array(cand_item),
            scores,
            (np.array([u for u, _ in relevant]), np.array([i for _, i in relevant])),
            10,
        )
        for name, value in ref.items():
            assert got.metrics[name] == pytest.approx(value), (scenario.name, name)


class SupportMean:
    """A protocol model for the shots test: each user's support mean, 3.0 without support."""

    name = "support_mean"
    predicts_ratings = True
    seeded = False

    def fit(self, fs: FeatureSet, train: dict[str, np.ndarray]) -> None:
        pass

    def predict(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray]
    ) -> np.ndarray:
        out = np.full(len(query["user_index"]), 3.0)
        for u in np.unique(support["user_index"]):
            out[np.asarray(query["user_index"]) == u] = support["rating"][support["user_index"] == u].mean()
        return out


def test_shots_predict_from_truncated_support_sets(fs: FeatureSet) -> None:
    fold = kfold_folds(fs.ratings, fs.n_items, 3, 4, 0.2, 6, 8, seed=2)[0]
    model = SupportMean()
    assert isinstance(model, ColdStartModel)
    got = score_shots(model, fs, fold.shots, (0, 1, 8), SCORING)
    q = fold.shots.query
    users = np.unique(q["user_index"])
    at_3 = [np.mean(np.abs(q["rating"][q["user_index"] == u] - 3.0)) for u in users]
    assert got[0].metrics["mae"] == pytest.approx(np.mean(at_3))  # every user weighs the same
    for k in (1, 8):
        support = fold.shots.support(k)
        expected = []
        for u in users:
            mine = support["rating"][support["user_index"] == u]
            errors = np.abs(q["rating"][q["user_index"] == u] - (mine.mean() if mine.size else 3.0))
            expected.append(errors.mean())
        assert got[k].metrics["mae"] == pytest.approx(np.mean(expected))


def test_evaluate_writes_metrics_plots_and_report(tmp_path: Path, fs: FeatureSet) -> None:
    paths = Paths(tmp_path)
    save_feature_set(fs, paths.features)
    params = load_params(
        None, ["eval.models=[global_mean, linear_bias]", "eval.folds=2", "eval.shots=[0, 3]"]
    )
    cv = evaluate(params, paths)
    assert read_json(paths.cv_metrics) == json.loads(json.dumps(cv))
    assert read_json(paths.per_user_values) == {"new_user": {}}  # no meta model in this run
    shots = read_json(paths.shots_metrics)
    assert shots["support_sizes"] == [0, 3]
    rows = read_json(paths.evaluation_plots / "new_user.json")
    lb = cv["scenarios"]["new_user"]["linear_bias"]["mae"]
    assert rows[1] == {
        "model": "linear_bias",
        "metric": "mae",
        "value": lb["mean"],
        "ci_low": lb["ci95"][0],
        "ci_high": lb["ci95"][1],
    }
    curve = read_json(paths.evaluation_plots / "shots" / "linear_bias.json")
    assert curve == [
        {"support_size": k, "value": shots["models"]["linear_bias"][f"support_{k}"]["mae"]["mean"]}
        for k in (0, 3)
    ]
    assert sorted(p.name for p in (paths.evaluation_plots / "shots").iterdir()) == [
        "global_mean.json",
        "linear_bias.json",
    ]
    report = (paths.evaluation_report / "report.md").read_text()
    assert (
        "## new_item" in report and "linear_bias" in report and "![support-size curve](shots.png)" in report
    )
    for png in ("scenarios.png", "shots.png"):
        assert (paths.evaluation_report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for folder in (paths.metrics, paths.plots, paths.reports):
        assert not [p for p in folder.rglob(".*") if p.name.endswith(".tmp")]


def test_shots_figure_ticks_the_support_sizes_and_keeps_the_legend_off_the_curves(tmp_path: Path) -> None:
    sizes = [0, 1, 3, 5, 10, 20]
    curve = {
        f"support_{k}": {"mae": {"mean": 0.9 - k / 100, "ci95": [0.85 - k / 100, 0.95 - k / 100]}}
        for k in sizes
    }
    shots = {"metric": "mae", "support_sizes": sizes, "models": {"linear_bias": curve, "meta": curve}}
    fig = shots_figure(shots, tmp_path / "shots.png")
    (ax,) = fig.axes
    assert list(ax.get_xticks()) == sizes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "3", "5", "10", "20"]
    legend = ax.get_legend().get_window_extent()  # laid out by the save
    assert legend.x0 >= ax.get_window_extent().x1  # beside the axes, not over the bands
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["linear_bias", "meta"]
    assert (tmp_path / "shots.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_format_table_shows_every_model_and_metric(result: Evaluation) -> None:
    table = format_table(result.cv, ("mae", "ndcg@3"))
    lines = table.splitlines()
    assert lines[0] == (
        "kfold: 3 folds, task=explicit, support_size=4, seed=9, seeds=1 (lightgbm_rank), weighting=user"
    )
    assert lines[1].split() == ["scenario", "model", "mae", "ndcg@3"]
    lb = result.cv["scenarios"]["warm"]["linear_bias"]["mae"]
    assert f"{lb['mean']:.4f} ± {lb['std']:.4f}" in next(line for line in lines if "linear_bias" in line)
    assert len(lines) == 3 + 4 * 4
    default = format_table(result.cv).splitlines()[1].split()
    assert default == [
        "scenario",
        "model",
        "mae",
        "rmse",
        "ndcg@1",
        "ndcg@3",
        "ndcg@5",
        "recall@10",
        "hr@10",
        "ndcg_all@10",
    ]


def test_build_model_knows_every_name_and_objective() -> None:
    params = load_params(None)
    for name in MODEL_NAMES:
        model = build_model(name, params, seed=0)
        assert isinstance(model, ColdStartModel)
        assert model.name == name
        assert model.predicts_ratings == (name not in ("lightgbm_rank", "most_popular"))
        assert model.seeded == is_seeded(name)
        assert not build_model(name, params, seed=0, objective="binary").predicts_ratings
    meta_no_text = build_model("meta_no_text", params, seed=0, objective="binary")
    assert meta_no_text.config["use_text"] is False and meta_no_text.config["objective"] == "binary"  # type: ignore[attr-defined]
    finetune = build_model("finetune", params, seed=0).config  # type: ignore[attr-defined]
    assert (finetune["model"], finetune["algorithm"]) == ("melu", "joint")
    meta, melu = build_model("meta", params, seed=0), build_model("melu", params, seed=0)
    assert meta.config["model"] == "foldin" and meta.known_history  # type: ignore[attr-defined]
    assert melu.config["model"] == "melu" and not melu.known_history  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="unknown model 'svd'"):
        build_model("svd", params, seed=0)
    random_fits = {
        "meta",
        "meta_no_text",
        "finetune",
        "melu",
        "mf_foldin",
        "cornac_retrain",
        "lightgbm",
        "lightgbm_rank",
    }
    assert {name for name in MODEL_NAMES if is_seeded(name)} == random_fits
    with pytest.raises(ValueError, match="unknown model 'svd'"):
        is_seeded("svd")


def test_the_implicit_task_scores_auc_and_top_k(fs: FeatureSet) -> None:
    params = load_params(
        None, ["eval.models=[global_mean, linear_bias]", "task.kind=implicit", "task.negatives=1", *SMALL]
    )
    got = cross_validate(params, fs)
    lb = got.cv["scenarios"]["new_user"]["linear_bias"]
    assert "mae" not in lb and {"auc", "ndcg@3", "hr@10"} <= set(lb)
    assert got.cv["scenarios"]["new_user"]["global_mean"]["auc"]["mean"] == pytest.approx(0.5)
    assert lb["auc"]["mean"] > 0.6
    assert got.shots["metric"] == "auc"


def test_read_item_year_aligns_with_the_vocab(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.ingested.mkdir(parents=True)
    items = pd.DataFrame({"item_id": ["b", "a", "c"], "year": pd.array([1999, 1990, None], dtype="Int64")})
    items.to_parquet(paths.table("items"))
    got = read_item_year(paths, ["a", "b", "c", "d"])
    assert got[:2].tolist() == [1990.0, 1999.0] and np.isnan(got[2:]).all()
    items.drop(columns="year").to_parquet(paths.table("items"))
    with pytest.raises(ValueError, match="no 'year' column"):
        read_item_year(paths, ["a"])


@pytest.mark.slow
def test_meta_models_get_paired_tests_and_the_text_ablation(fs: FeatureSet) -> None:
    is_query = np.zeros(fs.ratings["rating"].size, dtype=bool)
    is_query[::3] = True
    tasks = {c: fs.ratings[c] for c in ("user_index", "item_index", "rating")} | {"is_query": is_query}
    with_tasks = replace(fs, tasks=tasks)
    overrides = [
        "eval.models=[linear_bias, finetune, meta, meta_no_text]",
        "eval.folds=2",
        "eval.shots=[0, 3]",
        "train.epochs=1",
        "train.hidden=[16]",
        "train.embedding_dim=8",
        "train.device=cpu",
        "eval.seeds=2",
    ]
    first = cross_validate(load_params(None, [*overrides, "eval.workers=1"]), with_tasks)
    cv: dict[str, Any] = first.cv
    assert cv["seeded_models"] == ["finetune", "meta", "meta_no_text"]
    assert set(cv["tests"]) == set(SCENARIO_NAMES)
    assert all(list(t) == ["linear_bias", "finetune"] for t in cv["tests"].values())  # every baseline
    assert 0 <= cv["tests"]["new_user"]["linear_bias"]["p_holm"] <= 1
    assert set(cv["ablations"]["use_text"]) == set(SCENARIO_NAMES)
    per_user = first.per_user["new_user"]["meta"]["mae"]
    assert set(per_user) == {fs.vocab["user_ids"][u] for u in np.unique(fs.ratings["user_index"])}
    # what the registry's promotion gate reads from cv.json and per_user.json
    gate = evidence(
        json.loads(json.dumps(cv)), "mae", Path("metrics/cv.json"), json.loads(json.dumps(first.per_user))
    )
    assert gate.mean == cv["scenarios"]["new_user"]["meta"]["mae"]["mean"]
    assert len(gate.per_fold) == 2 and gate.per_user == per_user
    assert gate.protocol == "kfold folds=2 support_size=10 seed=42 weighting=user"
    # the same folds in two worker processes (one torch thread each): the same numbers, in fold order
    second = cross_validate(load_params(None, [*overrides, "eval.workers=2"]), with_tasks)
    for scenario, models in cv["per_fold"].items():
        for model, metrics in models.items():
            for metric, values in metrics.items():
                got = second.cv["per_fold"][scenario][model][metric]
                assert len(got) == len(values) == 2, (scenario, model, metric)
                for a, b in zip(got, values, strict=True):
                    assert (a is None) == (b is None), (scenario, model, metric)
                    assert a is None or a == pytest.approx(b, rel=1e-5, abs=1e-9), (scenario, model, metric)
    assert second.cv["tests"].keys() == cv["tests"].keys()
    fits = {m: len(t["fit"]) for m, t in second.timings.items()}
    assert fits == {"linear_bias": 2, "finetune": 4, "meta": 4, "meta_no_text": 4}
