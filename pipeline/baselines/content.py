"""Content baseline: damped biases, a per-user text taste, and (optionally) new items' biases read from their
text and attributes (CB2CF / DropoutNet style: content regressed onto what collaborative filtering learned).

    r(u, i) ≈ μ + b_u + b_i + x_i·w_u

μ is the mean training rating. The damped biases come from ``sweeps`` alternating closed-form updates on
the training rows, ``b_i = Σ (r - μ - b_u) / (n_i + l2_item)`` then ``b_u = Σ (r - μ - b_i) / (n_u +
l2_user)``. A new item (no training rating) has b_i = 0, unless ``item_text_bias`` is on: then a ridge
regression (scikit-learn, penalty ``item_ridge``, intercept unpenalised) from the item's content (text
embedding, multi-hot attributes such as genres, one-hot categorical codes) to the training items' mean
residual ``Σ (r - μ - b_u) / n_i``, each item weighted by ``sqrt(n_i)``, predicts it. It is a switch
because a text-predicted bias can hurt: MeLU's new items (MovieLens-1M) are the films of 1998-2000, and
older films rate higher, so biases learnt on old films overrate new ones.

At predict, each query user's b_u is the damped update above over all its rows: its training rows (a
known user) plus its support rows (other than repeats of training rows); 0 without rows. With
``text_taste`` on, its taste ``w_u`` is a ridge regression (scikit-learn, penalty ``taste_ridge``, no
intercept) from the text embeddings ``x_i`` of the items in those rows to their residuals
``r - μ - b_u - b_i``, the embeddings centred on their mean over all items (so the taste only tells
items apart and cannot undo the damping of b_u); a user without rows has no taste.

Regression scores are clipped to the rating scale; objective "binary" treats the 0/1 labels as ratings
(a linear probability model): scores are clipped to [0, 1] and only rank (``predicts_ratings`` False).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import Ridge

from pipeline.baselines.base import Objective, check_objective, check_rows, clip_to_scale, unseen_support
from pipeline.baselines.linear_bias import fit_user_bias
from pipeline.features.store import FeatureSet


def item_content(fs: FeatureSet) -> np.ndarray:
    """Per item: its text embedding, multi-hot attributes and one-hot categorical codes (code 0, unknown,
    included), as one float64 matrix."""
    one_hot = [np.eye(card)[fs.item_cats[:, f]] for f, card in enumerate(fs.item_cards)]
    return np.hstack([fs.item_text, fs.item_multi, *one_hot]).astype(np.float64)


class ContentModel:
    """Damped biases plus a per-user ridge text taste; new items' biases optionally from their content."""

    name = "content"
    seeded = False

    def __init__(
        self,
        objective: Objective = "regression",
        l2_user: float = 5.0,
        l2_item: float = 10.0,
        sweeps: int = 10,
        text_taste: bool = True,
        taste_ridge: float = 3.0,
        item_text_bias: bool = False,
        item_ridge: float = 10.0,
    ) -> None:
        if l2_user < 0 or l2_item < 0 or sweeps < 1 or taste_ridge <= 0 or item_ridge <= 0:
            raise ValueError("l2_user and l2_item must be >= 0, sweeps >= 1, taste_ridge and item_ridge > 0")
        self.objective = check_objective(objective)
        self.predicts_ratings = objective == "regression"
        self.l2_user = l2_user
        self.l2_item = l2_item
        self.sweeps = sweeps
        self.text_taste = text_taste
        self.taste_ridge = taste_ridge
        self.item_text_bias = item_text_bias
        self.item_ridge = item_ridge
        self.mean: float | None = None
        self.item_bias = np.zeros(0)
        self.train: dict[str, np.ndarray] = {}

    def fit(self, fs: FeatureSet, train: dict[str, np.ndarray]) -> None:
        rows = check_rows(fs, train, "train", self.objective)
        u, i, r = rows["user_index"], rows["item_index"], rows["rating"]
        mean = float(r.mean())
        user_bias = np.zeros(fs.n_users)
        for _ in range(self.sweeps):
            item_bias = fit_user_bias(mean + user_bias[u], r, i, fs.n_items, self.l2_item)
            user_bias = fit_user_bias(mean + item_bias[i], r, u, fs.n_users, self.l2_user)
        if self.item_text_bias:
            count = np.bincount(i, minlength=fs.n_items)
            known = count > 0
            residual = (
                np.bincount(i, weights=r - mean - user_bias[u], minlength=fs.n_items)[known] / count[known]
            )
            x = item_content(fs)
            ridge = Ridge(alpha=self.item_ridge).fit(x[known], residual, sample_weight=np.sqrt(count[known]))
            if (~known).any():
                item_bias[~known] = ridge.predict(x[~known])
        self.mean, self.item_bias, self.train = mean, item_bias, rows

    def _fitted_mean(self) -> float:
        if self.mean is None:
            raise RuntimeError("ContentModel used before fit")
        return self.mean

    def user_rows(self, fs: FeatureSet, support: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every row the model knows a user by: the training rows, then the support rows that repeat none."""
        s = check_rows(fs, support, "support", self.objective)
        s = {c: v[unseen_support(fs, self.train, s)] for c, v in s.items()}
        return {c: np.r_[self.train[c], s[c]] for c in self.train}

    def predict(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray]
    ) -> np.ndarray:
        mean = self._fitted_mean()
        q = check_rows(fs, query, "query")
        qu, qi = q["user_index"], q["item_index"]
        seen = self.user_rows(fs, support)
        mine = np.isin(seen["user_index"], qu)
        ru, ri, rr = seen["user_index"][mine], seen["item_index"][mine], seen["rating"][mine]
        user_bias = fit_user_bias(mean + self.item_bias[ri], rr, ru, fs.n_users, self.l2_user)
        score = mean + user_bias[qu] + self.item_bias[qi]
        if self.text_taste:
            score += self.taste(fs, ru, ri, rr - mean - user_bias[ru] - self.item_bias[ri], qu, qi)
        return clip_to_scale(fs, score) if self.objective == "regression" else np.clip(score, 0.0, 1.0)

    def taste(
        self,
        fs: FeatureSet,
        user: np.ndarray,
        item: np.ndarray,
        residual: np.ndarray,
        query_user: np.ndarray,
        query_item: np.ndarray,
    ) -> np.ndarray:
        """``x_i·w_u`` of each query row: ``w_u`` the ridge fit of the user's residuals on the centred text
        embeddings of its rated items (``user``, ``item``, ``residual``: the query users' rows); 0 for a
        user without rows."""
        text = fs.item_text.astype(np.float64)
        text -= text.mean(axis=0)
        out = np.zeros(query_user.size)
        if query_user.size == 0:
            return out
        order = np.argsort(user, kind="stable")
        user, item, residual = user[order], item[order], residual[order]
        starts = np.searchsorted(user, query_user, side="left")
        ends = np.searchsorted(user, query_user, side="right")
        q_order = np.argsort(query_user, kind="stable")
        for group in np.split(q_order, np.flatnonzero(np.diff(query_user[q_order])) + 1):
            lo, hi = starts[group[0]], ends[group[0]]
            if lo == hi:
                continue
            ridge = Ridge(alpha=self.taste_ridge, fit_intercept=False).fit(text[item[lo:hi]], residual[lo:hi])
            out[group] = ridge.predict(text[query_item[group]])
        return out
