"""Rating-prediction, ranking and top-k metrics: pure, vectorised functions of aligned numpy arrays.

Rows are (user, item) pairs: ``y_true`` the observed rating (or 0/1 label), ``y_pred``/``score`` the
model's output for the same row. Every ranking metric has a ``per_user_*`` twin returning
``(users, values)`` with ``users`` sorted ascending, so two models scored on the same rows can be compared
user by user (paired tests); the aggregate is the plain mean of those values.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

import numpy as np

TOPK_METRICS = ("precision", "recall", "f1", "hr", "mrr", "ndcg_all")
"""Top-k metrics over all of a user's unrated candidates (``ndcg_all``: binary nDCG, apart from the graded
``ndcg@k`` of the query rows)."""


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


def _users(user: np.ndarray, n_rows: int, what: str = "y_true") -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct users and each row's position among them."""
    users = np.asarray(user).ravel()
    if users.size != n_rows:
        raise ValueError(f"user has {users.size} rows but {what} has {n_rows}")
    uniq, codes = np.unique(users, return_inverse=True)
    return uniq, codes


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean absolute error over all rows (every rating weighs the same, not every user)."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Root mean squared error over all rows (every rating weighs the same, not every user)."""
    t, p = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((t - p) ** 2)))


def per_user_mae(user: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(users, MAE of each user's rows)``; their mean weighs every user the same, unlike :func:`mae`."""
    t, p = _pair(y_true, y_pred)
    uniq, codes = _users(user, t.size)
    counts = np.bincount(codes, minlength=uniq.size)
    return uniq, np.bincount(codes, weights=np.abs(t - p), minlength=uniq.size) / counts


def per_user_rmse(user: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(users, RMSE of each user's rows)``."""
    t, p = _pair(y_true, y_pred)
    uniq, codes = _users(user, t.size)
    counts = np.bincount(codes, minlength=uniq.size)
    return uniq, np.sqrt(np.bincount(codes, weights=(t - p) ** 2, minlength=uniq.size) / counts)


def _dcg_per_user(
    codes: np.ndarray, n_users: int, gains: np.ndarray, order: np.ndarray, k: int
) -> np.ndarray:
    """DCG@k of each user when its rows are ranked in ``order`` (rows sorted by user code first)."""
    sorted_codes = codes[order]
    starts = np.searchsorted(sorted_codes, np.arange(n_users))
    rank = np.arange(order.size) - starts[sorted_codes]
    discount = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    return np.bincount(sorted_codes, weights=gains[order] * discount, minlength=n_users)


def per_user_ndcg_at_k(
    user: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(users, nDCG@k)`` of each user whose rows (its query items) carry ranking information.

    Per user: relevance is the true rating (graded, not binarised), gain ``2**rel - 1``, discount
    ``1 / log2(rank + 1)`` with rank 1 at the top, and only the top ``k`` ranks count. The ideal DCG ranks
    the same rows by ``y_true``; a user with fewer than ``k`` rows is scored on all of them.
    Ties in ``y_pred`` are broken pessimistically: tied rows are ranked by ascending true rating (then by
    row order), so a model earns no credit for an order it did not predict, and the score does not
    depend on the order of the input rows. Users whose ideal DCG is 0 (every relevance 0) carry no
    ranking information and are left out. Relevances must be non-negative.
    """
    t, p = _pair(y_true, y_pred)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    uniq, codes = _users(user, t.size)
    if (t < 0).any():
        raise ValueError(f"relevance (y_true) must be >= 0; row {int(np.argmax(t < 0))} is {t[t < 0][0]}")
    gains = np.exp2(t) - 1.0
    rows = np.arange(t.size)
    by_pred = np.lexsort((rows, t, -p, codes))
    by_true = np.lexsort((rows, -t, codes))
    dcg = _dcg_per_user(codes, uniq.size, gains, by_pred, k)
    idcg = _dcg_per_user(codes, uniq.size, gains, by_true, k)
    scored = idcg > 0
    if not scored.any():
        raise ValueError("nDCG is undefined: every user's true relevances are all 0")
    return uniq[scored], dcg[scored] / idcg[scored]


def ndcg_at_k(user: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, k: int) -> float:
    """Mean over users of nDCG@k of the user's rows; see :func:`per_user_ndcg_at_k` for gain and ties."""
    return float(np.mean(per_user_ndcg_at_k(user, y_true, y_pred, k)[1]))


def _labels(y_true: np.ndarray, n_rows: int) -> np.ndarray:
    t = np.asarray(y_true).ravel()
    if t.size != n_rows:
        raise ValueError(f"y_true has {t.size} rows but score has {n_rows}")
    bad = ~np.isin(t, (0, 1))
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"y_true must hold 0/1 labels; row {row} is {t[row]}")
    return t.astype(bool)


def per_user_auc(user: np.ndarray, y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(users, ROC AUC of each user's rows)`` over the users that have both a positive and a negative row.

    ``y_true`` holds 0/1 labels (binarise explicit ratings first, e.g. ``rating >= 4``). AUC is the chance
    that a random positive row of the user outscores a random negative one, a tie counting one half
    (Mann-Whitney U with average ranks, as ``sklearn.metrics.roc_auc_score``).
    """
    s = np.asarray(score, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("metrics need at least one rating")
    if not np.isfinite(s).all():
        raise ValueError(f"score holds {int((~np.isfinite(s)).sum())} non-finite values")
    positive = _labels(y_true, s.size)
    uniq, codes = _users(user, s.size, "score")
    order = np.lexsort((s, codes))
    sorted_codes, sorted_s = codes[order], s[order]
    new_group = np.r_[True, (sorted_codes[1:] != sorted_codes[:-1]) | (sorted_s[1:] != sorted_s[:-1])]
    group = np.cumsum(new_group) - 1
    first = np.flatnonzero(new_group)
    size = np.diff(np.r_[first, s.size])
    user_start = np.searchsorted(sorted_codes, np.arange(uniq.size))
    # 1-based rank within the user, ties sharing the mean of the ranks they span
    avg_rank = (first - user_start[sorted_codes[first]])[group] + (size[group] + 1) / 2.0
    pos = positive[order]
    n_pos = np.bincount(codes, weights=positive, minlength=uniq.size)
    n_neg = np.bincount(codes, minlength=uniq.size) - n_pos
    rank_sum = np.bincount(sorted_codes, weights=np.where(pos, avg_rank, 0.0), minlength=uniq.size)
    both = (n_pos > 0) & (n_neg > 0)
    if not both.any():
        raise ValueError("AUC is undefined: no user has both a positive and a negative row")
    u_stat = rank_sum[both] - n_pos[both] * (n_pos[both] + 1) / 2.0
    return uniq[both], u_stat / (n_pos[both] * n_neg[both])


def auc(user: np.ndarray, y_true: np.ndarray, score: np.ndarray) -> float:
    """Mean per-user ROC AUC over the users with both classes (see :func:`per_user_auc`).

    Per user, not global: a recommender ranks items for one user at a time, and a global AUC would also
    reward separating generous users from harsh ones.
    """
    return float(np.mean(per_user_auc(user, y_true, score)[1]))


def relevant_rows(
    user: np.ndarray, item: np.ndarray, rating: np.ndarray, threshold: float = 4.0
) -> tuple[np.ndarray, np.ndarray]:
    """``(user, item)`` of the rows rated ``>= threshold``: the relevant query items (threshold 1 for 0/1
    labels)."""
    keep = np.asarray(rating, dtype=np.float64).ravel() >= threshold
    return np.asarray(user).ravel()[keep], np.asarray(item).ravel()[keep]


def unseen_candidates(
    users: np.ndarray, n_items: int, seen_user: np.ndarray, seen_item: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(user, item)`` rows of every item in ``range(n_items)`` that each of ``users`` has not rated in
    ``(seen_user, seen_item)`` (its training and support rows): the candidates top-k ranks."""
    users = np.unique(np.asarray(users))
    if users.size == 0:
        return users, np.zeros(0, dtype=np.int64)
    seen_user = np.asarray(seen_user).ravel().astype(np.int64)
    seen_item = np.asarray(seen_item).ravel().astype(np.int64)
    seen = np.zeros((users.size, n_items), dtype=bool)
    pos = np.searchsorted(users, seen_user)
    inside = (pos < users.size) & (users[np.minimum(pos, users.size - 1)] == seen_user)
    seen[pos[inside], seen_item[inside]] = True
    rows, items = np.nonzero(~seen)
    return users[rows], items


def _relevant_arrays(
    relevant: Mapping[int, Set[int]] | tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(relevant, Mapping):
        pairs = np.array([(u, i) for u, items in relevant.items() for i in items], dtype=np.int64)
        return pairs.reshape(-1, 2)[:, 0], pairs.reshape(-1, 2)[:, 1]
    rel_user, rel_item = relevant
    rel_user, rel_item = np.asarray(rel_user).ravel(), np.asarray(rel_item).ravel()
    if rel_user.size != rel_item.size:
        raise ValueError(f"relevant: {rel_user.size} users but {rel_item.size} items")
    return rel_user.astype(np.int64), rel_item.astype(np.int64)


def per_user_topk(
    user: np.ndarray,
    item: np.ndarray,
    score: np.ndarray,
    relevant: Mapping[int, Set[int]] | tuple[np.ndarray, np.ndarray],
    k: int = 10,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(users, {metric: values})`` of precision, recall, f1, hr, mrr and ndcg_all at ``k`` per user with
    >= 1 relevant item.

    ``(user, item, score)`` are the candidate rows: for each user every item it has not rated in training
    or support (see :func:`unseen_candidates`), scored by the model. ``relevant`` gives each user's relevant
    items, as ``{user: set of items}`` or as aligned ``(user, item)`` arrays (e.g. :func:`relevant_rows`):
    the query items rated >= 4, or labelled 1. Every relevant item must be among its user's candidates.
    A user's top-k are its ``k`` highest-scoring candidates, ties broken pessimistically: among equal
    scores the non-relevant items rank first (then by item index), so a model that cannot tell items
    apart (a constant score) hits nothing by luck of the item order. With ``hits`` relevant items in the
    top-k: precision = hits / k (k even if the user has fewer candidates), recall = hits / #relevant, f1 their
    harmonic mean (0 when both are 0), hr = 1 if hits > 0, mrr = 1 / rank of the first relevant item in
    the top-k (0 if none), ndcg_all = Σ over hits of 1 / log2(rank + 1) divided by its ideal value,
    Σ_{r <= min(k, #relevant)} 1 / log2(r + 1) (binary gains, rank 1 at the top). Users without relevant
    items are left out.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    s = np.asarray(score, dtype=np.float64).ravel()
    items = np.asarray(item).ravel().astype(np.int64)
    if items.size != s.size:
        raise ValueError(f"item has {items.size} rows but score has {s.size}")
    if s.size == 0:
        raise ValueError("top-k metrics need at least one candidate row")
    if not np.isfinite(s).all():
        raise ValueError(f"score holds {int((~np.isfinite(s)).sum())} non-finite values")
    uniq, codes = _users(user, s.size, "score")
    if (items < 0).any():
        raise ValueError(f"item indices must be >= 0; row {int(np.argmax(items < 0))} is negative")
    width = int(items.max()) + 1
    keys = codes.astype(np.int64) * width + items
    sorted_keys = np.sort(keys)
    dup = sorted_keys[1:] == sorted_keys[:-1]
    if dup.any():
        key = int(sorted_keys[1:][dup][0])
        raise ValueError(f"candidate (user {uniq[key // width]}, item {key % width}) appears more than once")

    rel_user, rel_item = _relevant_arrays(relevant)
    rel_pos = np.minimum(np.searchsorted(uniq, rel_user), uniq.size - 1)
    inside = (uniq[rel_pos] == rel_user) & (rel_item >= 0) & (rel_item < width)
    rel_keys = np.where(inside, rel_pos * width + rel_item, -1)
    missing = ~np.isin(rel_keys, keys)
    if missing.any():
        j = int(np.argmax(missing))
        raise ValueError(
            f"relevant item {rel_item[j]} of user {rel_user[j]} is not among the user's candidate rows"
        )
    is_rel = np.isin(keys, rel_keys)

    order = np.lexsort((items, is_rel, -s, codes))
    sorted_codes = codes[order]
    starts = np.searchsorted(sorted_codes, np.arange(uniq.size))
    rank = np.arange(s.size) - starts[sorted_codes]
    hit = (rank < k) & is_rel[order]
    hits = np.bincount(sorted_codes, weights=hit, minlength=uniq.size)
    n_rel = np.bincount(codes, weights=is_rel, minlength=uniq.size)
    reciprocal = np.zeros(uniq.size)
    np.maximum.at(reciprocal, sorted_codes[hit], 1.0 / (rank[hit] + 1.0))
    dcg = np.bincount(sorted_codes[hit], weights=1.0 / np.log2(rank[hit] + 2.0), minlength=uniq.size)
    ideal = np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))
    scored = n_rel > 0
    precision = hits[scored] / k
    recall = hits[scored] / n_rel[scored]
    with np.errstate(invalid="ignore"):
        f1 = np.where(hits[scored] > 0, 2 * precision * recall / (precision + recall), 0.0)
    values = {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "hr": (hits[scored] > 0).astype(np.float64),
        "mrr": reciprocal[scored],
        "ndcg_all": dcg[scored] / ideal[np.minimum(n_rel[scored], k).astype(np.int64) - 1],
    }
    return uniq[scored], values


def topk_metrics(
    user: np.ndarray,
    item: np.ndarray,
    score: np.ndarray,
    relevant: Mapping[int, Set[int]] | tuple[np.ndarray, np.ndarray],
    k: int = 10,
) -> dict[str, float]:
    """``{"precision@k", "recall@k", "f1@k", "hr@k", "mrr@k", "ndcg_all@k"}``: each the mean over the users
    with >= 1 relevant item of the per-user value defined in :func:`per_user_topk` (f1 is averaged per
    user, not computed from the mean precision and recall)."""
    users, values = per_user_topk(user, item, score, relevant, k)
    if users.size == 0:
        raise ValueError("top-k metrics are undefined: no user has a relevant item")
    return {f"{name}@{k}": float(np.mean(values[name])) for name in TOPK_METRICS}
