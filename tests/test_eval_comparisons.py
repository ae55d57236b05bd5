"""meta against every baseline: per-user weighting, the paired tests, Holm, the bootstrap intervals and the
text ablation, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pipeline.evaluation.comparisons import (
    BOOTSTRAP_RESAMPLES,
    baseline_tests,
    bootstrap_seed,
    text_ablation,
    user_means,
)
from pipeline.evaluation.report import format_table, render_markdown
from pipeline.evaluation.scenarios import Scoring, query_metrics
from pipeline.evaluation.stats import bootstrap_ci

SCORING = Scoring(implicit=False, relevance=4.0, ndcg_ks=(1,), top_k=10)
IMPLICIT = Scoring(implicit=True, relevance=1.0, ndcg_ks=(1,), top_k=10)


def test_mae_and_rmse_weigh_every_user_the_same() -> None:
    # user 0: one query row, error 2; user 1: three rows, errors 0, 0, 1
    user = np.array([0, 1, 1, 1])
    y_true = np.array([4.0, 3.0, 3.0, 3.0])
    y_pred = np.array([2.0, 3.0, 3.0, 4.0])
    got = query_metrics(user, y_true, y_pred, SCORING, predicts_ratings=True)
    # per user MAE 2 and 1/3 -> (2 + 1/3) / 2 = 7/6 (per row it would be 3/4)
    assert got.metrics["mae"] == pytest.approx(7 / 6)
    # per user RMSE 2 and sqrt(1/3) -> their mean (per row: sqrt(5/4))
    assert got.metrics["rmse"] == pytest.approx((2 + math.sqrt(1 / 3)) / 2)
    users, mae = got.per_user["mae"]
    assert users.tolist() == [0, 1] and mae.tolist() == pytest.approx([2.0, 1 / 3])
    assert got.per_user["rmse"][1].tolist() == pytest.approx([2.0, math.sqrt(1 / 3)])


def test_the_tests_pair_the_values_the_table_averages() -> None:
    user = np.array([0, 1, 1, 1, 2, 2])
    y_true = np.array([4.0, 3.0, 3.0, 3.0, 5.0, 1.0])
    meta = query_metrics(user, y_true, np.array([3.5, 3.0, 3.2, 3.4, 4.0, 1.5]), SCORING, True)
    base = query_metrics(user, y_true, np.array([2.0, 3.0, 3.0, 4.0, 3.0, 3.0]), SCORING, True)
    values = {
        "new_user": {m: {"mae": [r.per_user["mae"]]} for m, r in (("meta", meta), ("global_mean", base))}
    }
    t = baseline_tests(values, SCORING, seed=0)["new_user"]["global_mean"]
    # one fold, the same three users: the mean per-user difference is the difference of the table's MAEs
    assert t["mean_difference"] == pytest.approx(meta.metrics["mae"] - base.metrics["mae"])
    assert t["n_users"] == 3
    means = user_means(values, seed=0)["new_user"]
    assert means["meta"]["mae"]["mean_users"] == pytest.approx(meta.metrics["mae"])
    assert means["global_mean"]["mae"]["n_users"] == 3


def _parts(users: np.ndarray, values: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The values split over two folds, the second in reverse user order."""
    half = users.size // 2
    return [(users[:half], values[:half]), (users[half:][::-1], values[half:][::-1])]


def test_meta_against_every_baseline_with_holm_over_all_tests() -> None:
    rng = np.random.default_rng(0)
    users = np.arange(30)
    meta = rng.normal(0.75, 0.1, 30)
    models = {
        "linear_bias": meta + rng.normal(0.02, 0.05, 30),
        "finetune": meta + rng.normal(0.0, 0.05, 30),  # of the meta family, but a baseline
        "global_mean": meta + 0.2 + rng.normal(0.0, 0.01, 30),
        "meta_no_text": meta - 0.1,  # under test, not a baseline, even when better
    }
    values = {
        scenario: {
            "meta": {"mae": _parts(users, meta + shift)},
            **{name: {"mae": _parts(users, v + shift)} for name, v in models.items()},
            "lightgbm_rank": {"ndcg@1": _parts(users, meta)},  # no MAE: not compared
        }
        for scenario, shift in (("warm", 0.0), ("new_user", 0.1))
    }
    values["new_item"] = {"linear_bias": {"mae": _parts(users, meta)}}  # no meta: no tests
    tests = baseline_tests(values, SCORING, seed=42)
    assert list(tests) == ["warm", "new_user"]
    assert all(list(t) == ["linear_bias", "finetune", "global_mean"] for t in tests.values())
    p_values = []
    for scenario in ("warm", "new_user"):
        for name in ("linear_bias", "finetune", "global_mean"):
            t = tests[scenario][name]
            diff = meta - models[name]  # the shift cancels
            ref = stats.wilcoxon(meta, models[name], alternative="less").pvalue
            assert (t["metric"], t["n_users"], t["alternative"], t["test"]) == ("mae", 30, "less", "wilcoxon")
            assert t["mean_difference"] == pytest.approx(diff.mean())
            assert t["p_value"] == pytest.approx(ref)
            ci = bootstrap_ci(diff, BOOTSTRAP_RESAMPLES, bootstrap_seed(42))
            assert t["difference_ci95"] == pytest.approx(ci)
            assert t["difference_ci95"][0] < diff.mean() < t["difference_ci95"][1]
            p_values.append(t["p_value"])
    # Holm over the six tests, by hand: sort, multiply by 6, 5, ..., 1, running maximum, cap at 1
    order = np.argsort(p_values)
    adjusted = np.maximum.accumulate(np.minimum(1.0, (6 - np.arange(6)) * np.array(p_values)[order]))
    expected = np.empty(6)
    expected[order] = adjusted
    got = [
        tests[s][n]["p_holm"]
        for s in ("warm", "new_user")
        for n in ("linear_bias", "finetune", "global_mean")
    ]
    assert got == pytest.approx(expected.tolist())
    assert tests["warm"]["global_mean"]["p_holm"] == pytest.approx(
        6 * tests["warm"]["global_mean"]["p_value"]
    )


def test_tests_without_a_difference_have_no_p_value_and_stay_out_of_holm() -> None:
    users = np.arange(4)
    same = np.array([0.5, 0.6, 0.7, 0.8])
    values = {
        "warm": {
            "meta": {"mae": [(users, same)]},
            "popularity": {"mae": [(users, same)]},  # identical: no test
            "linear_bias": {"mae": [(users, same + 0.1)]},
        }
    }
    tests = baseline_tests(values, SCORING, seed=0)["warm"]
    assert tests["popularity"]["p_value"] is None and tests["popularity"]["p_holm"] is None
    assert tests["popularity"]["difference_ci95"] == pytest.approx([0.0, 0.0])
    # one test in the family: Holm leaves it alone; all four users lower -> exact p = 1/16
    assert tests["linear_bias"]["p_value"] == pytest.approx(1 / 16)
    assert tests["linear_bias"]["p_holm"] == pytest.approx(1 / 16)


def test_implicit_tests_are_on_auc_in_meta_s_favour_when_higher() -> None:
    users = np.arange(5)
    auc = np.array([0.6, 0.7, 0.8, 0.9, 0.65])
    values = {"new_user": {"meta": {"auc": [(users, auc)]}, "linear_bias": {"auc": [(users, auc - 0.1)]}}}
    t = baseline_tests(values, IMPLICIT, seed=0)["new_user"]["linear_bias"]
    assert (t["metric"], t["alternative"]) == ("auc", "greater")
    assert t["mean_difference"] == pytest.approx(0.1) and t["p_value"] == pytest.approx(1 / 32)


def test_user_means_and_their_bootstrap_intervals() -> None:
    values = {
        "warm": {
            "linear_bias": {
                # user 1 in both folds (0.4, 0.6 -> 0.5); users 0 and 2 once
                "mae": [(np.array([0, 1]), np.array([0.2, 0.4])), (np.array([1, 2]), np.array([0.6, 0.9]))],
                "rmse": [],
            }
        }
    }
    got = user_means(values, seed=7)["warm"]["linear_bias"]
    assert list(got) == ["mae"]  # a metric without per-user values is left out
    assert got["mae"]["n_users"] == 3
    assert got["mae"]["mean_users"] == pytest.approx((0.2 + 0.5 + 0.9) / 3)
    expected = bootstrap_ci(np.array([0.2, 0.5, 0.9]), BOOTSTRAP_RESAMPLES, bootstrap_seed(7))
    assert got["mae"]["ci95_users"] == pytest.approx(expected)


def test_text_ablation_by_hand() -> None:
    per_fold: dict = {
        "new_item": {"meta": {"mae": [0.8, 0.9, None]}, "meta_no_text": {"mae": [1.0, 1.0, 0.9]}},
        "warm": {"meta": {"mae": [0.8]}},  # no meta_no_text: no ablation
    }
    got = text_ablation(per_fold, SCORING)
    assert list(got) == ["new_item"]
    # (1.0 - 0.8) / 1.0 = 0.2, (1.0 - 0.9) / 1.0 = 0.1; the fold without meta's value is left out
    assert got["new_item"]["per_fold"] == pytest.approx([0.2, 0.1])
    assert got["new_item"]["mean"] == pytest.approx(0.15) and got["new_item"]["metric"] == "mae"


def _cv_with_tests() -> dict:
    agg = {"mean": 0.77, "std": 0.01, "ci95": [0.76, 0.78]}
    users = {"n_users": 40, "mean_users": 0.771, "ci95_users": [0.75, 0.79]}
    test = {
        "metric": "mae",
        "n_users": 40,
        "mean_difference": -0.005,
        "difference_ci95": [-0.009, -0.001],
        "p_value": 0.0125,
        "p_holm": 0.025,
        "alternative": "less",
        "test": "wilcoxon",
    }
    sizes = {"query_rows": [100, 90], "query_users": [20, 20], "support_rows": [80, 80]}
    return {
        "protocol": "kfold",
        "folds": 2,
        "support_size": 10,
        "seed": 42,
        "seeds": 3,
        "seeded_models": ["lightgbm", "meta"],
        "task": "explicit",
        "weighting": "user",
        "scenarios": {"new_user": {"meta": {"mae": agg | users}, "lightgbm": {"mae": agg | users}}},
        "tests": {"new_user": {"lightgbm": test, "global_mean": test | {"p_value": None, "p_holm": None}}},
        "bootstrap": {"resamples": 2000, "unit": "user", "interval": "percentile"},
        "ablations": {"use_text": {}},
        "sizes": {"new_user": sizes},
    }


def test_table_and_report_show_each_baseline_s_difference_interval_and_holm_p() -> None:
    cv = _cv_with_tests()
    lines = format_table(cv).splitlines()
    assert lines[0] == (
        "kfold: 2 folds, task=explicit, support_size=10, seed=42, seeds=3 (lightgbm, meta), weighting=user"
    )
    assert lines[-3].startswith("meta - baseline, mae per user")
    assert "Holm over the 1 tests with a p" in lines[-3]
    assert lines[-2] == "new_user vs lightgbm: -0.0050 [-0.0090, -0.0010] p=0.0125 p_holm=0.025 (40 users)"
    assert lines[-1] == "new_user vs global_mean: -0.0050 [-0.0090, -0.0010] p=n/a p_holm=n/a (40 users)"
    shots = {"metric": "mae", "support_sizes": [0], "models": {}}
    report = render_markdown(cv, shots)
    assert "Weighting `user`: every user weighs the same" in report
    assert "(lightgbm, meta) are fitted with 3 seeds per fold" in report
    assert "| model | mae | mae (users) |" in report
    assert "| meta | 0.7700 [0.7600, 0.7800] | 0.7710 [0.7500, 0.7900] |" in report
    assert "| new_user | lightgbm | -0.0050 [-0.0090, -0.0010] | 40 | 0.0125 | 0.025 |" in report
    assert "Holm's correction over the 1 (scenario, baseline) tests with a p-value" in report
