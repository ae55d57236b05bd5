"""Item-item neighbourhood model on baseline residuals (Koren's KNNBaseline with a shrunk Pearson-baseline
similarity).

The baseline is ``b(u, i) = μ + b_u + b_i``: μ the mean training rating, ``b_i = Σ (r - μ) / (n_i + l2_item)``
over the item's training rows, ``b_u = Σ (r - μ - b_i) / (n_u + l2_user)`` over the user's rows. The
similarity of items i and j is the cosine of the residuals ``z = r - b(u, ·)`` over the training users
who rated both, shrunk by their number n: ``sim(i, j) = n / (n + shrink) · Σ z_ui z_uj /
sqrt(Σ z_ui² · Σ z_uj²)`` (0 without a co-rater), computed with scipy sparse products (never a dense
user-by-item matrix; the item-by-item similarities are dense).

A query (u, i) scores ``b(u, i) + Σ_j sim(i, j) z_uj / Σ_j sim(i, j)`` over the k items j the user rated
(its support rows plus, for a known user, its training rows) that are most similar to i, keeping
positive similarities only; the baseline alone when none is positive. The user's b_u comes from the same
rows. A new item has no similarity and b_i = 0: it scores μ + b_u. Regression scores are clipped to the
rating scale; objective "binary" treats the 0/1 labels as ratings and clips scores to [0, 1] (they only
rank).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from pipeline.baselines.base import Objective, check_objective, check_rows, clip_to_scale, unseen_support
from pipeline.baselines.linear_bias import fit_user_bias
from pipeline.features.store import FeatureSet


def item_similarity(
    user: np.ndarray, item: np.ndarray, residual: np.ndarray, n_users: int, n_items: int, shrink: float
) -> np.ndarray:
    """Dense ``(n_items, n_items)`` shrunk cosine of the residuals over co-raters (module docstring); zero
    diagonal."""
    shape = (n_users, n_items)
    z = sp.csr_matrix((residual, (user, item)), shape=shape)
    rated = sp.csr_matrix((np.ones(residual.size), (user, item)), shape=shape)
    dot = (z.T @ z).toarray()
    square = (z.multiply(z).T @ rated).toarray()  # [i, j]: Σ z_ui² over the users who rated i and j
    co_raters = (rated.T @ rated).toarray()
    norm = np.sqrt(square * square.T)
    sim = np.divide(dot, norm, out=np.zeros_like(dot), where=norm > 0) * co_raters / (co_raters + shrink)
    np.fill_diagonal(sim, 0.0)
    return sim


class ItemKNN:
    """Item-item k-nearest-neighbour residual model on a bias baseline (module docstring)."""

    name = "item_knn"
    seeded = False

    def __init__(
        self,
        objective: Objective = "regression",
        k: int = 40,
        shrink: float = 100.0,
        l2_user: float = 5.0,
        l2_item: float = 10.0,
    ) -> None:
        if k < 1 or shrink < 0 or l2_user < 0 or l2_item < 0:
            raise ValueError("k must be >= 1; shrink, l2_user and l2_item >= 0")
        self.objective = check_objective(objective)
        self.predicts_ratings = objective == "regression"
        self.k = k
        self.shrink = shrink
        self.l2_user = l2_user
        self.l2_item = l2_item
        self.mean: float | None = None
        self.item_bias = np.zeros(0)
        self.similarity = np.zeros((0, 0))
        self.train: dict[str, np.ndarray] = {}

    def _user_bias(self, mean: float, rows: dict[str, np.ndarray], n_users: int) -> np.ndarray:
        offset = mean + self.item_bias[rows["item_index"]]
        return fit_user_bias(offset, rows["rating"], rows["user_index"], n_users, self.l2_user)

    def fit(self, fs: FeatureSet, train: dict[str, np.ndarray]) -> None:
        rows = check_rows(fs, train, "train", self.objective)
        u, i, r = rows["user_index"], rows["item_index"], rows["rating"]
        mean = float(r.mean())
        self.item_bias = fit_user_bias(np.full(r.size, mean), r, i, fs.n_items, self.l2_item)
        user_bias = self._user_bias(mean, rows, fs.n_users)
        residual = r - mean - user_bias[u] - self.item_bias[i]
        self.similarity = item_similarity(u, i, residual, fs.n_users, fs.n_items, self.shrink)
        self.mean, self.train = mean, rows

    def predict(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray]
    ) -> np.ndarray:
        if self.mean is None:
            raise RuntimeError("ItemKNN.predict called before fit")
        s = check_rows(fs, support, "support", self.objective)
        q = check_rows(fs, query, "query")
        s = {c: v[unseen_support(fs, self.train, s)] for c, v in s.items()}
        seen = {c: np.r_[self.train[c], s[c]] for c in self.train}
        user_bias = self._user_bias(self.mean, seen, fs.n_users)
        qu, qi = q["user_index"], q["item_index"]
        score = self.mean + user_bias[qu] + self.item_bias[qi]
        mine = np.isin(seen["user_index"], qu)
        ru, ri = seen["user_index"][mine], seen["item_index"][mine]
        residual = seen["rating"][mine] - self.mean - user_bias[ru] - self.item_bias[ri]
        order = np.argsort(ru, kind="stable")
        ru, ri, residual = ru[order], ri[order], residual[order]
        bounds = np.searchsorted(ru, qu, side="left"), np.searchsorted(ru, qu, side="right")
        q_order = np.argsort(qu, kind="stable")
        for group in np.split(q_order, np.flatnonzero(np.diff(qu[q_order])) + 1):
            lo, hi = bounds[0][group[0]], bounds[1][group[0]]
            if lo == hi:
                continue
            sim = self.similarity[np.ix_(qi[group], ri[lo:hi])]
            z = np.broadcast_to(residual[lo:hi], sim.shape)
            if hi - lo > self.k:
                top = np.argpartition(-sim, self.k - 1, axis=1)[:, : self.k]
                sim, z = np.take_along_axis(sim, top, axis=1), np.take_along_axis(z, top, axis=1)
            weight = np.maximum(sim, 0.0)
            total = weight.sum(axis=1)
            shift = np.divide((weight * z).sum(axis=1), total, out=np.zeros(total.size), where=total > 0)
            score[group] += shift
        return clip_to_scale(fs, score) if self.objective == "regression" else np.clip(score, 0.0, 1.0)
