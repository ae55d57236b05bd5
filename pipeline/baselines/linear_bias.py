"""Biases-only model z(u, i) = θ0 + θu + θi: the classic strong baseline for rating prediction.

Training minimises, over the training ratings,

    J = Σ loss(r, z) + l2_user · Σ_u θu² + l2_item · Σ_i θi²

with loss ``(r - z)²`` and prediction ``z`` clipped to the rating scale (objective "regression"), or
the log loss of ``sigmoid(z)`` against the 0/1 label and prediction ``sigmoid(z)`` (objective "binary"),
by full-batch Adam for a fixed number of iterations (numpy; fixed init, so deterministic).

At predict, the θu of every user with support rows (other than repeats of its training rows) is
refitted on all the user's rows (its training rows, if it is a known user, plus those support rows) with
θ0 and θi frozen: in closed form ``θu = Σ (r - θ0 - θi) / (n + l2_user)`` for regression, by Newton's
method for binary. A known user without new support keeps its trained θu; a new user without support
gets θu = 0. A new item (no training rating) has θi = 0: its score is θ0 + θu, item attributes are not
used.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.baselines.base import (
    Objective,
    check_objective,
    check_rows,
    clip_to_scale,
    logit,
    sigmoid,
    unseen_support,
)
from pipeline.features.store import FeatureSet
from pipeline.progress import Progress

log = logging.getLogger(__name__)


def fit_user_bias(
    offset: np.ndarray,
    rating: np.ndarray,
    user: np.ndarray,
    n_users: int,
    l2_user: float,
    objective: str = "regression",
    start: np.ndarray | None = None,
    newton_steps: int = 25,
) -> np.ndarray:
    """θu per user index minimising ``Σ_rows loss(r, offset + θu) + l2_user · θu²`` (0 for a user
    without rows).

    ``offset`` is ``θ0 + θi`` of each row. Regression has the closed form ``Σ (r - offset) / (n + l2_user)``.
    Binary runs ``newton_steps`` Newton steps from ``start`` (default 0), each capped at ±2 so that a user
    whose labels are all equal and ``l2_user = 0`` (no finite optimum) stays finite.
    """
    user = np.asarray(user, dtype=np.int64)
    counts = np.bincount(user, minlength=n_users).astype(np.float64)
    denom = counts + l2_user
    if objective == "regression":
        sums = np.bincount(user, weights=rating - offset, minlength=n_users)
        return np.divide(sums, denom, out=np.zeros(n_users), where=denom > 0)
    theta = np.zeros(n_users) if start is None else np.array(start, dtype=np.float64)
    has_rows = counts > 0
    for _ in range(newton_steps):
        p = sigmoid(offset + theta[user])
        grad = np.bincount(user, weights=p - rating, minlength=n_users) + 2 * l2_user * theta
        hess = np.bincount(user, weights=p * (1 - p), minlength=n_users) + 2 * l2_user
        step = np.divide(grad, hess, out=np.zeros(n_users), where=hess > 0)
        theta -= np.where(has_rows, np.clip(step, -2.0, 2.0), 0.0)
    return np.where(has_rows, theta, 0.0)


class LinearBias:
    """θ0 + θu + θi fitted by full-batch Adam; θu refitted at predict from each user's rows."""

    name = "linear_bias"
    seeded = False

    def __init__(
        self,
        objective: Objective = "regression",
        l2_user: float = 5.0,
        l2_item: float = 10.0,
        iterations: int = 400,
        learning_rate: float = 0.1,
        progress: bool = False,
    ) -> None:
        if l2_user < 0 or l2_item < 0:
            raise ValueError("l2_user and l2_item must be >= 0")
        self.objective = check_objective(objective)
        self.predicts_ratings = objective == "regression"
        self.l2_user = l2_user
        self.l2_item = l2_item
        self.iterations = iterations
        self.learning_rate = learning_rate
        self.progress = progress
        self.theta0: float | None = None
        self.user_bias = np.zeros(0)
        self.item_bias = np.zeros(0)
        self.train: dict[str, np.ndarray] = {}

    def _dloss_dz(self, rating: np.ndarray, z: np.ndarray) -> np.ndarray:
        if self.objective == "regression":
            return -2.0 * (rating - z)
        return sigmoid(z) - rating

    def fit(self, fs: FeatureSet, train: dict[str, np.ndarray]) -> None:
        rows = check_rows(fs, train, "train", self.objective)
        u, i, r = rows["user_index"], rows["item_index"], rows["rating"]
        n = r.size
        start = r.mean() if self.objective == "regression" else logit(r.mean())
        theta = [np.array([start]), np.zeros(fs.n_users), np.zeros(fs.n_items)]
        m = [np.zeros_like(t) for t in theta]
        v = [np.zeros_like(t) for t in theta]
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        with Progress(self.iterations, "linear_bias", enabled=self.progress) as bar:
            for step in range(1, self.iterations + 1):
                dz = self._dloss_dz(r, theta[0][0] + theta[1][u] + theta[2][i])
                grads = [
                    np.array([dz.sum()]) / n,
                    (2.0 * self.l2_user * theta[1] + np.bincount(u, weights=dz, minlength=fs.n_users)) / n,
                    (2.0 * self.l2_item * theta[2] + np.bincount(i, weights=dz, minlength=fs.n_items)) / n,
                ]
                lr = self.learning_rate * 0.5 * (1.0 + np.cos(np.pi * (step - 1) / self.iterations))
                for t, g, m_t, v_t in zip(theta, grads, m, v, strict=True):
                    m_t *= beta1
                    m_t += (1 - beta1) * g
                    v_t *= beta2
                    v_t += (1 - beta2) * g * g
                    t -= lr * (m_t / (1 - beta1**step)) / (np.sqrt(v_t / (1 - beta2**step)) + eps)
                bar.update()
        self.theta0 = float(theta[0][0])
        self.user_bias, self.item_bias = theta[1], theta[2]
        self.item_bias[np.bincount(i, minlength=fs.n_items) == 0] = 0.0
        self.train = rows
        log.debug("linear_bias: θ0=%.4f after %d iterations on %d ratings", self.theta0, self.iterations, n)

    def _fitted_theta0(self) -> float:
        if self.theta0 is None:
            raise RuntimeError("LinearBias used before fit")
        return self.theta0

    def user_biases(self, fs: FeatureSet, support: dict[str, np.ndarray]) -> np.ndarray:
        """θu of every user index given the support rows (see the module docstring)."""
        theta0 = self._fitted_theta0()
        s = check_rows(fs, support, "support", self.objective)
        s = {c: v[unseen_support(fs, self.train, s)] for c, v in s.items()}
        theta_u = self.user_bias.copy()
        refit = np.unique(s["user_index"])
        if refit.size == 0:
            return theta_u
        known = np.isin(self.train["user_index"], refit)
        user = np.r_[self.train["user_index"][known], s["user_index"]]
        item = np.r_[self.train["item_index"][known], s["item_index"]]
        rating = np.r_[self.train["rating"][known], s["rating"]]
        offset = theta0 + self.item_bias[item]
        refitted = fit_user_bias(offset, rating, user, fs.n_users, self.l2_user, self.objective, theta_u)
        theta_u[refit] = refitted[refit]
        return theta_u

    def predict(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray]
    ) -> np.ndarray:
        theta0 = self._fitted_theta0()
        theta_u = self.user_biases(fs, support)
        q = check_rows(fs, query, "query")
        z = theta0 + theta_u[q["user_index"]] + self.item_bias[q["item_index"]]
        return clip_to_scale(fs, z) if self.objective == "regression" else sigmoid(z)
