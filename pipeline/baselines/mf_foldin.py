"""Biased matrix factorisation r(u, i) ≈ μ + b_u + b_i + p_u·q_i, trained by alternating ridge least squares
(ALS), with each query user folded in from its ratings at predict.

μ is the mean training rating. Each sweep solves, in closed form for every user at once, the ridge
regression of ``r - μ - b_i`` on ``[1, q_i]`` over the user's training rows,

    min over (b_u, p_u) of  Σ_i (r_ui - μ - b_i - b_u - p_u·q_i)² + ridge · (b_u² + |p_u|²),

then the same for every item with the user terms fixed. Factors start from a seeded N(0, init_scale²);
biases from 0. A user or item without training rows gets zero terms.

At predict, every user with support rows (other than repeats of its training rows) is folded in: its
(b_u, p_u) is the same ridge solve on its training rows (if it is a known user) plus those support rows,
with μ, b_i and q_i fixed. A known user without new support keeps its trained terms; a new user without
support gets b_u = 0, p_u = 0 (score μ + b_i). A new item (no training rating) has b_i = 0, q_i = 0
(score μ + b_u). Regression scores are clipped to the rating scale.

Objective "binary" treats the 0/1 labels as ratings (a linear probability model): scores are clipped to
[0, 1] and only rank (``predicts_ratings`` is False).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from pipeline.baselines.base import Objective, check_objective, check_rows, clip_to_scale, unseen_support
from pipeline.features.store import FeatureSet


def ridge_terms(
    entity: np.ndarray,
    other: np.ndarray,
    target: np.ndarray,
    n_entities: int,
    other_factors: np.ndarray,
    ridge: float,
) -> np.ndarray:
    """``[bias, factors]`` of each entity: the ridge solve of ``target`` on ``[1, other_factors[other]]``
    over the entity's rows, shape ``(n_entities, 1 + k)``; zeros for an entity without rows."""
    x = np.hstack([np.ones((other_factors.shape[0], 1)), other_factors])
    d = x.shape[1]
    shape = (n_entities, x.shape[0])
    indicator = sp.csr_matrix((np.ones(target.size), (entity, other)), shape=shape)
    outer = (x[:, :, None] * x[:, None, :]).reshape(-1, d * d)
    gram = np.asarray(indicator @ outer).reshape(n_entities, d, d) + ridge * np.eye(d)
    rhs = np.asarray(sp.csr_matrix((target, (entity, other)), shape=shape) @ x)
    return np.linalg.solve(gram, rhs[..., None])[..., 0]


class MFFoldIn:
    """Biased matrix factorisation by ALS; query users folded in from their ratings by ridge regression."""

    name = "mf_foldin"
    seeded = True

    def __init__(
        self,
        objective: Objective = "regression",
        factors: int = 16,
        ridge: float = 10.0,
        sweeps: int = 12,
        seed: int = 0,
        init_scale: float = 0.1,
    ) -> None:
        if factors < 1 or sweeps < 1 or ridge <= 0 or init_scale < 0:
            raise ValueError("factors and sweeps must be >= 1, ridge > 0, init_scale >= 0")
        self.objective = check_objective(objective)
        self.predicts_ratings = objective == "regression"
        self.factors = factors
        self.ridge = ridge
        self.sweeps = sweeps
        self.seed = seed
        self.init_scale = init_scale
        self.mean: float | None = None
        self.user_terms = np.zeros((0, factors + 1))
        self.item_terms = np.zeros((0, factors + 1))
        self.train: dict[str, np.ndarray] = {}

    def fit(self, fs: FeatureSet, train: dict[str, np.ndarray]) -> None:
        rows = check_rows(fs, train, "train", self.objective)
        u, i, r = rows["user_index"], rows["item_index"], rows["rating"]
        mean = float(r.mean())
        rng = np.random.default_rng(self.seed)
        user, item = (
            np.hstack([np.zeros((n, 1)), rng.normal(0, self.init_scale, (n, self.factors))])
            for n in (fs.n_users, fs.n_items)
        )
        for _ in range(self.sweeps):
            user = ridge_terms(u, i, r - mean - item[i, 0], fs.n_users, item[:, 1:], self.ridge)
            item = ridge_terms(i, u, r - mean - user[u, 0], fs.n_items, user[:, 1:], self.ridge)
        self.mean, self.user_terms, self.item_terms, self.train = mean, user, item, rows

    def _fitted_mean(self) -> float:
        if self.mean is None:
            raise RuntimeError("MFFoldIn used before fit")
        return self.mean

    def fold_in(self, fs: FeatureSet, support: dict[str, np.ndarray]) -> np.ndarray:
        """``[b_u, p_u]`` of every user index given the support rows (see the module docstring)."""
        mean = self._fitted_mean()
        s = check_rows(fs, support, "support", self.objective)
        s = {c: v[unseen_support(fs, self.train, s)] for c, v in s.items()}
        terms = self.user_terms.copy()
        refit = np.unique(s["user_index"])
        if refit.size == 0:
            return terms
        known = np.isin(self.train["user_index"], refit)
        user = np.r_[self.train["user_index"][known], s["user_index"]]
        item = np.r_[self.train["item_index"][known], s["item_index"]]
        target = np.r_[self.train["rating"][known], s["rating"]] - mean - self.item_terms[item, 0]
        terms[refit] = ridge_terms(user, item, target, fs.n_users, self.item_terms[:, 1:], self.ridge)[refit]
        return terms

    def predict(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray]
    ) -> np.ndarray:
        mean = self._fitted_mean()
        user = self.fold_in(fs, support)
        q = check_rows(fs, query, "query")
        pu, qi = user[q["user_index"]], self.item_terms[q["item_index"]]
        z = mean + pu[:, 0] + qi[:, 0] + np.einsum("nk,nk->n", pu[:, 1:], qi[:, 1:])
        return clip_to_scale(fs, z) if self.objective == "regression" else np.clip(z, 0.0, 1.0)
