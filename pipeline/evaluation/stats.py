"""Uncertainty of the evaluation: t-intervals over folds, and paired tests over users between two models."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats


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
    ua, va = np.asarray(users_a), np.asarray(values_a, dtype=np.float64)
    ub, vb = np.asarray(users_b), np.asarray(values_b, dtype=np.float64)
    if ua.size != va.size or ub.size != vb.size:
        raise ValueError("paired_wilcoxon: users and values must have the same length")
    common, ia, ib = np.intersect1d(ua, ub, return_indices=True)
    a, b = va[ia], vb[ib]
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
