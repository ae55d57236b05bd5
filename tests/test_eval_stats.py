"""t-intervals over folds and the paired Wilcoxon test over users, against hand values and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pipeline.evaluation.stats import paired_wilcoxon, summarize


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
