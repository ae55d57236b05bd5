"""Gradient-boosted trees on hand-made cold-start features (LightGBM).

Every row is a (user, query item) pair described by: the user's attribute codes and the item's codes
(as plain numbers: native categorical splits overfit the ~20 occupations and zip regions of
MovieLens-100k), genres and a few PCA components of its text embedding; the item's rating statistics
over training users (mean, count, mean shrunk towards the global mean); the user's support-set
statistics (mean rating, count, mean residual against the shrunk item means, std); and the bias estimate
``shrunk item mean + shrunk user residual``, which is also the boosting's starting score, so the trees
learn corrections to it.

Train and test features must mean the same thing. A new user at test time reveals only a support set and
is in no item statistic, so each training user gets a *simulated* support/query split of the same
``support_size``, and the item statistics of its rows come from the training users of the other
``stat_folds`` user folds (out-of-fold target statistics; leaving out only the row's own rating would leak
the target, since the left-out mean falls as the rating rises).
"""

from __future__ import annotations

import logging
import os

import lightgbm as lgb
import numpy as np

from pipeline.baselines.base import clip_to_scale, training_ratings
from pipeline.evaluation.splits import select_rows, support_mask, user_folds
from pipeline.features.store import FeatureSet

log = logging.getLogger(__name__)


def text_pca(item_text: np.ndarray, n_components: int) -> np.ndarray:
    """The top principal components of the item text embeddings, signs fixed (largest loading positive)."""
    x = np.asarray(item_text, dtype=np.float64)
    x = x - x.mean(axis=0)
    k = min(n_components, *x.shape)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = vt[:k]
    comps *= np.sign(comps[np.arange(k), np.argmax(np.abs(comps), axis=1)])[:, None]
    return x @ comps.T


def out_of_fold_item_totals(
    user: np.ndarray,
    item: np.ndarray,
    rating: np.ndarray,
    n_users: int,
    n_items: int,
    folds: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-item rating sums and counts [K + 1, n_items], and which row each user reads [n_users].

    Row 0 sums every rating (read by users of no fold: new users); row g (1..K) sums the ratings of the
    users outside ``folds[g - 1]`` (read by that fold's users), so no user's statistics contain its own
    ratings.
    """
    stat_row_of_user = np.zeros(n_users, dtype=np.int64)
    for g, part in enumerate(folds, start=1):
        stat_row_of_user[part] = g
    shape = (len(folds) + 1, n_items)
    flat = stat_row_of_user[user] * n_items + item
    size = shape[0] * shape[1]
    in_fold_sum = np.bincount(flat, weights=rating, minlength=size).reshape(shape)
    in_fold_count = np.bincount(flat, minlength=size).reshape(shape).astype(np.float64)
    in_fold_sum[0] = in_fold_count[0] = 0.0
    total_sum = np.bincount(item, weights=rating, minlength=n_items)
    total_count = np.bincount(item, minlength=n_items).astype(np.float64)
    return total_sum - in_fold_sum, total_count - in_fold_count, stat_row_of_user


def default_threads() -> int:
    """All cores but one. LightGBM's OpenMP threads spin at barriers: with every core in use and anything
    else running (another stage, the test runner), one fit was measured 5-10x slower on 2 cores."""
    return max(1, (os.cpu_count() or 1) - 1)


class LightGBMModel:
    """LGBMRegressor on user/item/support-set features; seeded and deterministic."""

    name = "lightgbm"

    def __init__(
        self,
        support_size: int,
        seed: int,
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 100,
        text_components: int = 8,
        item_shrinkage: float = 10.0,
        user_shrinkage: float = 5.0,
        stat_folds: int = 5,
        num_threads: int | None = None,
    ) -> None:
        self.support_size = support_size
        self.seed = seed
        self.text_components = text_components
        self.item_shrinkage = item_shrinkage
        self.user_shrinkage = user_shrinkage
        self.stat_folds = stat_folds
        self.regressor = lgb.LGBMRegressor(
            n_estimators=n_estimators,
            learning_rate=learning_rate,
            num_leaves=num_leaves,
            min_child_samples=min_child_samples,
            random_state=seed,
            deterministic=True,
            force_row_wise=True,
            n_jobs=num_threads or default_threads(),
            verbose=-1,
        )
        self.global_mean = 0.0
        self.item_sum = np.zeros((1, 0))
        self.item_count = np.zeros((1, 0))
        self.text = np.zeros((0, 0))
        self.fitted = False

    def _item_stats(self, items: np.ndarray, stat_row: np.ndarray) -> tuple[np.ndarray, ...]:
        """(mean, count, shrunk mean) of ``items`` from row ``stat_row`` of the item statistics."""
        total = self.item_sum[stat_row, items]
        count = self.item_count[stat_row, items]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / count, np.nan)
        shrunk = (total + self.item_shrinkage * self.global_mean) / (count + self.item_shrinkage)
        return mean, count, shrunk

    def _features(
        self,
        fs: FeatureSet,
        support: dict[str, np.ndarray],
        query: dict[str, np.ndarray],
        stat_row_of_user: np.ndarray,
    ) -> np.ndarray:
        """Feature matrix of the query rows; its last column is the bias estimate (the starting score)."""
        s_user = support["user_index"].astype(np.int64)
        s_rating = support["rating"].astype(np.float64)
        _, _, s_shrunk = self._item_stats(support["item_index"].astype(np.int64), stat_row_of_user[s_user])
        n = fs.n_users
        count = np.bincount(s_user, minlength=n).astype(np.float64)
        resid_sum = np.bincount(s_user, weights=s_rating - s_shrunk, minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            u_mean = np.bincount(s_user, weights=s_rating, minlength=n) / count
            u_sq = np.bincount(s_user, weights=s_rating**2, minlength=n) / count
            u_resid = resid_sum / count
        u_std = np.sqrt(np.maximum(u_sq - u_mean**2, 0.0))
        u_bias = resid_sum / (count + self.user_shrinkage)
        q_user = query["user_index"].astype(np.int64)
        q_item = query["item_index"].astype(np.int64)
        i_mean, i_count, i_shrunk = self._item_stats(q_item, stat_row_of_user[q_user])
        stats = [i_mean, i_count, i_shrunk, u_mean[q_user], count[q_user], u_resid[q_user], u_std[q_user]]
        return np.column_stack(
            [
                fs.user_cats[q_user],
                fs.item_cats[q_item],
                fs.item_multi[q_item],
                self.text[q_item],
                *stats,
                i_shrunk + u_bias[q_user],
            ]
        ).astype(np.float64)

    def fit(self, fs: FeatureSet, train_users: np.ndarray) -> None:
        rows = training_ratings(fs, train_users)
        users = rows["user_index"].astype(np.int64)
        items = rows["item_index"].astype(np.int64)
        rating = rows["rating"].astype(np.float64)
        self.global_mean = float(rating.mean())
        self.text = text_pca(fs.item_text, self.text_components)

        fold_seed, split_seed = (
            int(c.generate_state(1)[0]) for c in np.random.SeedSequence(self.seed).spawn(2)
        )
        folds = user_folds(users, self.stat_folds, fold_seed)
        self.item_sum, self.item_count, stat_row_of_user = out_of_fold_item_totals(
            users, items, rating, fs.n_users, fs.n_items, folds
        )

        is_support = support_mask(users, self.support_size, split_seed)
        query = select_rows(rows, ~is_support)
        x = self._features(fs, select_rows(rows, is_support), query, stat_row_of_user)
        self.regressor.fit(x, query["rating"].astype(np.float64), init_score=x[:, -1].copy())
        self.fitted = True
        log.debug("lightgbm: trained on %d simulated query rows x %d features", *x.shape)

    def predict(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray]
    ) -> np.ndarray:
        if not self.fitted:
            raise RuntimeError("LightGBMModel.predict called before fit")
        x = self._features(fs, support, query, np.zeros(fs.n_users, dtype=np.int64))
        return clip_to_scale(fs, self.regressor.predict(x) + x[:, -1])
