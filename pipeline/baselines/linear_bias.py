"""Biases-only model R(u, i) = θ0 + θu + θi: the classic strong baseline for rating prediction.

Training minimises, over the training users' ratings,

    J = Σ (r - θ0 - θu - θi)² + l2_user · Σ_u θu² + l2_item · Σ_i θi²

by full-batch Adam for a fixed number of iterations (numpy; zero init, so deterministic). A new user's θu
minimises the same objective restricted to the user's support set with θ0 and θi frozen, which has the
closed form ``θu = Σ_support (r - θ0 - θi) / (|support| + l2_user)``.
"""

from __future__ import annotations

import logging

import numpy as np
from tqdm.auto import tqdm

from pipeline.baselines.base import clip_to_scale, training_ratings
from pipeline.features.store import FeatureSet

log = logging.getLogger(__name__)


def new_user_bias(residual: np.ndarray, user: np.ndarray, n_users: int, l2_user: float) -> np.ndarray:
    """Closed-form θu per user index from the support residuals ``r - θ0 - θi`` (0 for an empty support)."""
    sums = np.bincount(user, weights=residual, minlength=n_users)
    counts = np.bincount(user, minlength=n_users)
    return sums / (counts + l2_user)


class LinearBias:
    """θ0 + θu + θi, fitted by full-batch Adam; new users get θu in closed form from their support set."""

    name = "linear_bias"

    def __init__(
        self,
        l2_user: float = 5.0,
        l2_item: float = 10.0,
        iterations: int = 400,
        learning_rate: float = 0.1,
        progress: bool = False,
    ) -> None:
        if l2_user < 0 or l2_item < 0:
            raise ValueError("l2_user and l2_item must be >= 0")
        self.l2_user = l2_user
        self.l2_item = l2_item
        self.iterations = iterations
        self.learning_rate = learning_rate
        self.progress = progress
        self.theta0: float | None = None
        self.user_bias = np.zeros(0)
        self.item_bias = np.zeros(0)

    def fit(self, fs: FeatureSet, train_users: np.ndarray) -> None:
        rows = training_ratings(fs, train_users)
        u = rows["user_index"].astype(np.int64)
        i = rows["item_index"].astype(np.int64)
        r = rows["rating"].astype(np.float64)
        n = r.size
        theta = [np.array([r.mean()]), np.zeros(fs.n_users), np.zeros(fs.n_items)]
        m = [np.zeros_like(t) for t in theta]
        v = [np.zeros_like(t) for t in theta]
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        for step in tqdm(range(1, self.iterations + 1), desc="linear_bias", disable=not self.progress):
            err = r - theta[0][0] - theta[1][u] - theta[2][i]
            grads = [
                np.array([-2.0 * err.sum()]) / n,
                2.0 * (self.l2_user * theta[1] - np.bincount(u, weights=err, minlength=fs.n_users)) / n,
                2.0 * (self.l2_item * theta[2] - np.bincount(i, weights=err, minlength=fs.n_items)) / n,
            ]
            lr = self.learning_rate * 0.5 * (1.0 + np.cos(np.pi * (step - 1) / self.iterations))
            for t, g, m_t, v_t in zip(theta, grads, m, v, strict=True):
                m_t *= beta1
                m_t += (1 - beta1) * g
                v_t *= beta2
                v_t += (1 - beta2) * g * g
                t -= lr * (m_t / (1 - beta1**step)) / (np.sqrt(v_t / (1 - beta2**step)) + eps)
        self.theta0 = float(theta[0][0])
        self.user_bias, self.item_bias = theta[1], theta[2]
        log.debug("linear_bias: θ0=%.4f after %d iterations on %d ratings", self.theta0, self.iterations, n)

    def predict(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray]
    ) -> np.ndarray:
        if self.theta0 is None:
            raise RuntimeError("LinearBias.predict called before fit")
        s_items = support["item_index"].astype(np.int64)
        residual = support["rating"].astype(np.float64) - self.theta0 - self.item_bias[s_items]
        theta_u = new_user_bias(residual, support["user_index"].astype(np.int64), fs.n_users, self.l2_user)
        q_users = query["user_index"].astype(np.int64)
        q_items = query["item_index"].astype(np.int64)
        return clip_to_scale(fs, self.theta0 + theta_u[q_users] + self.item_bias[q_items])
