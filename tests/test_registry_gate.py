"""The promotion gate: fold protocol, the paired test (against scipy and by hand), every decision path."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from pipeline.registry.gate import Evidence, decide, evidence, fold_protocol, paired_p_value
from tests.registry_fixtures import cv_result, per_user_result

SOURCE = Path("metrics/cv.json")
METRIC = "new_user.meta.mae"


def test_fold_protocol_names_what_fixes_the_folds() -> None:
    assert fold_protocol(cv_result(0.8), SOURCE) == "kfold folds=3 support_size=5 seed=42 weighting=user"
    assert fold_protocol(cv_result(0.8, seed=7), SOURCE) != fold_protocol(cv_result(0.8), SOURCE)
    # a cv.json from before per-user weighting averaged over rows: not comparable with one that weights users
    old = cv_result(0.8)
    del old["weighting"]
    assert fold_protocol(old, SOURCE) == "kfold folds=3 support_size=5 seed=42 weighting=rows"
    cv = cv_result(0.8)
    del cv["seed"], cv["support_size"]
    with pytest.raises(ValueError, match=r"metrics/cv.json: missing support_size, seed"):
        fold_protocol(cv, SOURCE)


def test_evidence_reads_mean_folds_and_users() -> None:
    users = {"7": 0.5, "u2": 1.25}
    got = evidence(cv_result(0.8, per_fold=[0.7, 0.9, 0.8]), "mae", SOURCE, per_user_result(users))
    assert got == Evidence("kfold folds=3 support_size=5 seed=42 weighting=user", 0.8, (0.7, 0.9, 0.8), users)
    assert evidence(cv_result(0.8), "rmse", SOURCE).per_fold == pytest.approx((0.98, 1.02, 1.0))
    assert evidence(cv_result(0.8), "mae", SOURCE).per_user == {}
    assert evidence(cv_result(0.8), "mae", SOURCE, per_user_result({})).per_user == {}


def test_evidence_reads_users_from_an_older_cv_json() -> None:
    """Before per-user values had their own file, cv.json held them under ``per_user``."""
    old = {**cv_result(0.8), "per_user": per_user_result({"7": 0.5, "u2": 1.25})}
    assert evidence(old, "mae", SOURCE).per_user == {"7": 0.5, "u2": 1.25}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda cv: cv.pop("per_fold"), r"per_fold.new_user.meta.mae is missing"),
        (lambda cv: cv["scenarios"]["new_user"].pop("meta"), r"scenarios.new_user.meta.mae.mean .* missing"),
        (lambda cv: cv["scenarios"]["new_user"]["meta"]["mae"].update(mean=float("nan")), r"is NaN"),
        (lambda cv: cv["scenarios"]["new_user"]["meta"]["mae"].update(mean=float("inf")), r"or infinite"),
        (lambda cv: cv["per_fold"]["new_user"]["meta"].update(mae=[]), r"is empty"),
        (lambda cv: cv["per_fold"]["new_user"]["meta"].update(mae=["x"]), r"not numeric"),
        (lambda cv: cv.update(per_user={"new_user": {"meta": {"mae": [0.5]}}}), r"must map user id to value"),
    ],
)
def test_evidence_rejects_what_the_gate_cannot_use(change, message: str) -> None:
    cv = cv_result(0.8)
    change(cv)
    with pytest.raises(ValueError, match=r"metrics/cv.json: .*" + message):
        evidence(cv, "mae", SOURCE)


def test_paired_p_value_matches_scipy_and_a_hand_computation() -> None:
    challenger = np.array([0.40, 0.85, 0.55])
    champion = np.array([0.68, 0.72, 0.70])
    # differences 0.28, -0.13, 0.15: mean 0.1, sample sd 0.20952, t = 0.1 / (0.20952 / sqrt 3) = 0.82666
    t = 0.1 / (np.std([0.28, -0.13, 0.15], ddof=1) / math.sqrt(3))
    assert t == pytest.approx(0.82666, abs=1e-5)
    assert paired_p_value(challenger, champion) == pytest.approx(stats.t.sf(t, 2))
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.random(20), rng.random(20)
        expected = stats.ttest_rel(a, b, alternative="less").pvalue
        assert paired_p_value(a, b) == pytest.approx(expected, rel=1e-10)


def test_paired_p_value_degenerate_cases() -> None:
    assert paired_p_value(np.array([0.7, 0.8]), np.array([0.8, 0.9])) == 0.0  # same gain everywhere
    assert paired_p_value(np.array([0.9, 0.8]), np.array([0.8, 0.7])) == 1.0  # same loss everywhere
    assert paired_p_value(np.array([0.8, 0.8]), np.array([0.8, 0.8])) == 1.0  # no change
    assert math.isnan(paired_p_value(np.array([0.7]), np.array([0.8])))


def _evidence(mean: float, folds: tuple[float, ...], seed: int = 42, users: dict | None = None) -> Evidence:
    return Evidence(f"kfold folds={len(folds)} support_size=5 seed={seed}", mean, folds, users or {})


def test_first_version_becomes_champion() -> None:
    got = decide(_evidence(0.9, (0.9, 0.9)), None, None, METRIC, 0.0, 0.05)
    assert (got.alias, got.reason, got.champion_value, got.p_value) == (
        "champion",
        "no champion yet",
        None,
        None,
    )


@pytest.mark.parametrize(
    "challenger",
    [
        _evidence(math.nan, (0.5, 0.5)),
        _evidence(0.5, (0.5, math.inf)),
        _evidence(0.5, ()),
        _evidence(0.5, (0.5, 0.5), users={"1": 0.4, "2": math.nan}),
    ],
    ids=["nan-mean", "infinite-fold", "no-folds", "nan-user"],
)
@pytest.mark.parametrize("champion", [None, 4], ids=["first-version", "against-a-champion"])
def test_a_missing_or_non_finite_challenger_metric_is_never_promoted(
    challenger: Evidence, champion: int | None
) -> None:
    old = _evidence(0.9, (0.9, 0.9), users={"1": 0.9, "2": 0.9}) if champion is not None else None
    got = decide(challenger, old, champion, METRIC, 0.0, 0.05)
    assert got.alias == "challenger"
    assert got.reason.startswith(f"not promoted: the challenger's {METRIC} is missing or not finite")


def test_champion_without_readable_evaluation_is_not_replaced() -> None:
    got = decide(_evidence(0.5, (0.5, 0.5)), None, 3, METRIC, 0.0, 0.05)
    assert got.alias == "challenger"
    assert got.reason == "not compared: champion version 3 has no evaluation the gate can read"


def test_other_fold_protocol_refuses_the_comparison() -> None:
    got = decide(_evidence(0.5, (0.5, 0.5), seed=1), _evidence(0.8, (0.8, 0.8)), 1, METRIC, 0.0, 0.05)
    assert got.alias == "challenger" and got.reason.startswith("not compared: fold protocol")
    assert got.champion_value == 0.8 and got.p_value is None and got.improvement is None


@pytest.mark.parametrize(
    ("new", "margin", "max_p", "alias", "reason"),
    [
        # fold gains 0.06, 0.03, 0.15: t = 2.22, p = 0.078 with 2 degrees of freedom
        ((0.70, 0.75, 0.71), 0.0, 0.05, "challenger", "paired t-test p = 0.07836 is not below max_p 0.05"),
        ((0.70, 0.75, 0.71), 0.0, 0.10, "champion", "improvement 0.0800 > 0, p = 0.07836 < 0.1"),
        ((0.58, 0.60, 0.68), 0.0, 0.05, "champion", "p = 0 < 0.05"),  # the same gain on every fold
        ((0.58, 0.60, 0.68), 0.2, 0.05, "challenger", "improvement 0.1800 is not above min_improvement 0.2"),
        ((0.80, 0.82, 0.90), 0.0, 0.05, "challenger", "improvement -0.0400 is not above"),
    ],
)
def test_champion_moves_only_when_better_by_the_margin_and_significant(
    new: tuple[float, ...], margin: float, max_p: float, alias: str, reason: str
) -> None:
    champion = _evidence(0.80, (0.76, 0.78, 0.86))
    got = decide(_evidence(float(np.mean(new)), new), champion, 1, METRIC, margin, max_p)
    assert got.alias == alias and reason in got.reason, got.reason
    assert got.paired_over == "folds" and got.n_pairs == 3 and got.champion_version == 1
    assert got.improvement == pytest.approx(0.80 - np.mean(new))


def test_pairs_users_when_both_have_per_user_values() -> None:
    rng = np.random.default_rng(3)
    users = [f"u{i}" for i in range(200)]
    old = {u: float(v) for u, v in zip(users, rng.uniform(0.5, 1.2, 200), strict=True)}
    new = {u: v - 0.03 + float(rng.normal(0, 0.05)) for u, v in old.items()}
    new["only-new"] = 0.0  # not in the champion's evaluation: not paired
    champion = _evidence(0.85, (0.80, 0.90), users=old)
    challenger = _evidence(0.82, (0.85, 0.79), users=new)  # folds alone would not be significant
    got = decide(challenger, champion, 1, METRIC, 0.0, 0.05)
    assert (got.paired_over, got.n_pairs, got.alias) == ("users", 200, "champion")
    expected = stats.ttest_rel([new[u] for u in users], [old[u] for u in users], alternative="less").pvalue
    assert got.p_value == pytest.approx(expected)
    without_users = decide(_evidence(0.82, (0.85, 0.79)), champion, 1, METRIC, 0.0, 0.05)
    assert (without_users.paired_over, without_users.alias) == ("folds", "challenger")
