"""t-intervals over folds, per-user means, the paired Wilcoxon test, bootstrap intervals over users and
Holm's correction, against hand values and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pipeline.evaluation.stats import (
    bootstrap_ci,
    holm,
    mean_by_user,
    paired_values,
    paired_wilcoxon,
    summarize,
)


def test_summarize_matches_a_hand_computed_t_interval() -> None:
    got = summarize([0.70, 0.74, 0.72, 0.78, 0.76])
    # mean 0.74; deviations -.04 -.00 -.02 .04 .02 -> sum of squares 0.004, std sqrt(0.004 / 4) = 0.0316228
    # t(0.975, 4) = 2.776445; half width 2.776445 * 0.0316228 / sqrt(5) = 0.0392648
    assert got["mean"] == pytest.approx(0.74)
    assert got["std"] == pytest.approx(0.0316228, abs=1e-7)
    assert got["ci95"] == pytest.approx([0.74 - 0.0392648, 0.74 + 0.0392648], abs=1e-6)


def test_summarize_of_one_value_and_of_bad_values() -> None:
    assert summarize([0.5]) == {"mean": 0.5, "std": 0.0, "ci95": [0.5, 0.5]}
    with pytest.raises(ValueError, match="finite"):
        summarize([0.5, math.nan])
    with pytest.raises(ValueError, match="finite"):
        summarize([])


def test_paired_wilcoxon_pairs_users_and_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    users_a = np.arange(30)
    a = rng.normal(0.8, 0.1, 30)
    b = a + rng.normal(0.03, 0.05, 30)
    # B is given in another order and has two users A lacks: only the 30 common users are paired
    perm = rng.permutation(30)
    users_b = np.r_[users_a[perm], [100, 101]]
    values_b = np.r_[b[perm], [0.0, 9.0]]
    got = paired_wilcoxon(users_a, a, users_b, values_b, alternative="less")
    ref = stats.wilcoxon(a, b, alternative="less")
    assert got["test"] == "wilcoxon" and got["alternative"] == "less" and got["n_users"] == 30
    assert got["p_value"] == pytest.approx(ref.pvalue)
    assert got["statistic"] == pytest.approx(ref.statistic)
    assert got["mean_difference"] == pytest.approx(np.mean(a - b))
    assert got["p_value"] < 0.05


def test_paired_wilcoxon_exact_p_value_by_hand() -> None:
    # five users, A lower for every one: under H0 each sign is a coin flip, P(all five negative) = 1/32
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    b = a + np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    got = paired_wilcoxon(np.arange(5), a, np.arange(5), b, alternative="less")
    assert got["p_value"] == pytest.approx(1 / 32)
    assert paired_wilcoxon(np.arange(5), a, np.arange(5), b, "greater")["p_value"] == pytest.approx(1.0)


def test_paired_wilcoxon_without_enough_differences_has_no_p_value() -> None:
    a = np.array([1.0, 2.0, 3.0])
    got = paired_wilcoxon(np.arange(3), a, np.arange(3), a + np.array([0, 0, 0.1]), "less")
    assert got["p_value"] is None and got["statistic"] is None and got["n_users"] == 3


def test_mean_by_user_averages_over_the_parts_a_user_is_in() -> None:
    # user 7 in both parts (0.2, 0.6), user 3 in the second only, user 5 in the first only
    users, values = mean_by_user(
        [(np.array([7, 5]), np.array([0.2, 1.0])), (np.array([3, 7]), np.array([0.5, 0.6]))]
    )
    assert users.tolist() == [3, 5, 7]
    assert values.tolist() == pytest.approx([0.5, 1.0, 0.4])


def test_paired_values_keep_the_common_users_in_order() -> None:
    users, a, b = paired_values(
        np.array([4, 1, 2]), np.array([0.4, 0.1, 0.2]), np.array([2, 9, 4]), [2.0, 9.0, 4.0]
    )
    assert (users.tolist(), a.tolist(), b.tolist()) == ([2, 4], [0.2, 0.4], [2.0, 4.0])
    with pytest.raises(ValueError, match="same length"):
        paired_values(np.arange(2), np.zeros(3), np.arange(2), np.zeros(2))


def test_holm_by_hand() -> None:
    # m = 4 tested: sorted 0.005, 0.01, 0.03, 0.04 -> 4 x .005 = .02; 3 x .01 = .03; 2 x .03 = .06;
    # 1 x .04 = .04, raised to the running maximum .06; None is no test and not counted
    got = holm([0.01, 0.04, 0.03, None, 0.005])
    assert got[3] is None
    assert [got[i] for i in (0, 1, 2, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # 2 x 0.5 = 1, capped; 0.6 raised to it
    assert holm([0.02]) == pytest.approx([0.02]) and holm([]) == [] and holm([None]) == [None]


def test_bootstrap_ci_by_hand_and_against_the_normal_interval() -> None:
    assert bootstrap_ci(np.full(5, 0.7), 100, seed=1) == pytest.approx([0.7, 0.7])
    # two users 0 and 1: a resample's mean is 0, 0.5 or 1 with chances 1/4, 1/2, 1/4 -> the 2.5 % and
    # 97.5 % percentiles of 2,000 resamples are 0 and 1
    assert bootstrap_ci(np.array([0.0, 1.0]), 2000, seed=3) == [0.0, 1.0]
    assert bootstrap_ci(np.array([]), 2000, seed=3) is None
    values = np.random.default_rng(0).normal(0.8, 0.3, 400)
    got = bootstrap_ci(values, 2000, seed=5)
    assert got is not None
    half = 1.96 * values.std(ddof=1) / np.sqrt(values.size)  # 0.029
    assert got == pytest.approx([values.mean() - half, values.mean() + half], abs=0.004)
    # the same seed and number of users draw the same resamples: a shifted sample's interval shifts
    shifted = bootstrap_ci(values + 1.0, 2000, seed=5)
    assert shifted == pytest.approx([got[0] + 1.0, got[1] + 1.0])
    assert bootstrap_ci(values, 2000, seed=6) != got
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_ci(values, 0, seed=5)
