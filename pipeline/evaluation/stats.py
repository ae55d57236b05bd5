"""Uncertainty of the evaluation: t-intervals over folds, per-user means, paired tests and bootstrap
intervals over users, and Holm's correction for many tests."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

BOOTSTRAP_CHUNK = 250  # resamples drawn at once (memory: chunk x users indices)


def summarize(values: list[float] | np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """``{"mean", "std", "ci95": [lo, hi]}`` of per-fold values.

    ``std`` is the sample standard deviation (ddof 1); the interval is Student's t over the folds,
    ``mean ± t(0.975, n - 1) · std / sqrt(n)``, and collapses to the mean for a single value.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0 or not np.isfinite(arr).all():
        raise ValueError(f"summarize needs finite values, got {arr.tolist()}")
    mean = float(arr.mean())
    if arr.size == 1:
        return {"mean": mean, "std": 0.0, "ci95": [mean, mean]}
    std = float(arr.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, arr.size - 1)) * std / math.sqrt(arr.size)
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def mean_by_user(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """``(users, values)``: per user, the mean of its values over the parts (folds, seeds) it appears in;
    users ascending."""
    users = np.concatenate([np.asarray(u) for u, _ in parts])
    values = np.concatenate([np.asarray(v, dtype=np.float64) for _, v in parts])
    uniq, codes = np.unique(users, return_inverse=True)
    return uniq, np.bincount(codes, weights=values) / np.bincount(codes)


def paired_values(
    users_a: np.ndarray, values_a: np.ndarray, users_b: np.ndarray, values_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(users, a, b)``: the users both A and B were scored on (ascending) and each one's two values."""
    ua, va = np.asarray(users_a), np.asarray(values_a, dtype=np.float64)
    ub, vb = np.asarray(users_b), np.asarray(values_b, dtype=np.float64)
    if ua.size != va.size or ub.size != vb.size:
        raise ValueError("paired values: users and values must have the same length")
    common, ia, ib = np.intersect1d(ua, ub, return_indices=True)
    return common, va[ia], vb[ib]


def paired_wilcoxon(
    users_a: np.ndarray,
    values_a: np.ndarray,
    users_b: np.ndarray,
    values_b: np.ndarray,
    alternative: str,
) -> dict[str, Any]:
    """Wilcoxon signed-rank test of model A against model B over the users both were scored on.

    ``alternative``: ``"less"`` (A's values are lower, e.g. its MAE) or ``"greater"`` (e.g. its AUC), or
    ``"two-sided"``. Returns ``{"test", "alternative", "n_users", "mean_difference" (A - B), "statistic",
    "p_value"}``; statistic and p-value are None when fewer than two users differ.
    """
    common, a, b = paired_values(users_a, values_a, users_b, values_b)
    out: dict[str, Any] = {
        "test": "wilcoxon",
        "alternative": alternative,
        "n_users": int(common.size),
        "mean_difference": float(np.mean(a - b)) if common.size else None,
        "statistic": None,
        "p_value": None,
    }
    if np.count_nonzero(a != b) < 2:
        return out
    result = stats.wilcoxon(a, b, alternative=alternative)
    out.update(statistic=float(result.statistic), p_value=float(result.pvalue))
    return out


def bootstrap_ci(
    values: np.ndarray, resamples: int, seed: int, confidence: float = 0.95
) -> list[float] | None:
    """Percentile bootstrap interval ``[lo, hi]`` of the mean of ``values`` (one per user): ``resamples``
    resamples of the users with replacement, drawn from ``numpy.random.default_rng(seed)``, so two calls
    with the same seed and number of users draw the same resamples. None without values."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        return None
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        stop = min(start + BOOTSTRAP_CHUNK, resamples)
        means[start:stop] = arr[rng.integers(0, arr.size, (stop - start, arr.size))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return [float(lo), float(hi)]


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None: no test, left out of the family).

    With the m p-values sorted ascending, ``p_(i)`` (i = 1..m) becomes ``max over j <= i of
    min(1, (m - j + 1) · p_(j))``: rejecting where the adjusted value is below alpha keeps the chance of
    any false rejection in the family at most alpha.
    """
    tested = [(p, i) for i, p in enumerate(p_values) if p is not None]
    out: list[float | None] = [None] * len(p_values)
    m = len(tested)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(tested)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
