"""Rating-prediction and ranking metrics: pure, vectorised functions of aligned numpy arrays.

All functions take one row per (user, item) rating: ``y_true`` the observed rating, ``y_pred`` the
model's prediction for the same row.
"""

from __future__ import annotations

import numpy as np


def _pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} rows but y_pred has {p.size}")
    if t.size == 0:
        raise ValueError("metrics need at least one rating")
    if not np.isfinite(p).all():
        raise ValueError(f"y_pred holds {int((~np.isfinite(p)).sum())} non-finite values")
    return t, p


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean absolute error over all rows (every rating weighs the same, not every user)."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Root mean squared error over all rows (every rating weighs the same, not every user)."""
    t, p = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((t - p) ** 2)))


def _dcg_per_user(
    codes: np.ndarray, n_users: int, gains: np.ndarray, order: np.ndarray, k: int
) -> np.ndarray:
    """DCG@k of each user when its rows are ranked in ``order`` (rows sorted by user code first)."""
    sorted_codes = codes[order]
    starts = np.searchsorted(sorted_codes, np.arange(n_users))
    rank = np.arange(order.size) - starts[sorted_codes]
    discount = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    return np.bincount(sorted_codes, weights=gains[order] * discount, minlength=n_users)


def ndcg_at_k(user: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, k: int) -> float:
    """Mean over users of nDCG@k of the user's rows (its query items) ranked by ``y_pred``.

    Per user: relevance is the true rating (graded, not binarised), gain ``2**rel - 1``, discount
    ``1 / log2(rank + 1)`` with rank 1 at the top, and only the top ``k`` ranks count. The ideal DCG ranks
    the same rows by ``y_true``; a user with fewer than ``k`` rows is scored on all of them.
    Ties in ``y_pred`` are broken pessimistically: tied rows are ranked by ascending true rating (then by
    row order), so a model earns no credit for an order it did not predict, and the score does not
    depend on the order of the input rows. Users whose ideal DCG is 0 (every relevance 0) carry no
    ranking information and are left out of the mean. Relevances must be non-negative.
    """
    t, p = _pair(y_true, y_pred)
    users = np.asarray(user).ravel()
    if users.shape != t.shape:
        raise ValueError(f"user has {users.size} rows but y_true has {t.size}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if (t < 0).any():
        raise ValueError(f"relevance (y_true) must be >= 0; row {int(np.argmax(t < 0))} is {t[t < 0][0]}")
    uniq, codes = np.unique(users, return_inverse=True)
    n_users = uniq.size
    gains = np.exp2(t) - 1.0
    rows = np.arange(t.size)
    by_pred = np.lexsort((rows, t, -p, codes))
    by_true = np.lexsort((rows, -t, codes))
    dcg = _dcg_per_user(codes, n_users, gains, by_pred, k)
    idcg = _dcg_per_user(codes, n_users, gains, by_true, k)
    scored = idcg > 0
    if not scored.any():
        raise ValueError("nDCG is undefined: every user's true relevances are all 0")
    return float(np.mean(dcg[scored] / idcg[scored]))
