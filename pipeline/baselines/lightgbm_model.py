"""Gradient-boosted trees on hand-made cold-start features (LightGBM).

Every row is a (user, query item) pair described by: the user's attribute codes and the item's codes
(as plain numbers: native categorical splits overfit the ~20 occupations and zip regions of
MovieLens-100k), genres and a few PCA components of its text embedding; the item's rating statistics
over the training ratings (mean, count, mean shrunk towards the global mean); the statistics of the
user's evidence (mean rating, count, mean residual against the shrunk item means, std); and the bias
estimate ``shrunk item mean + shrunk user residual`` (binary: its logit), which is also the boosting's
starting score, so the trees learn corrections to it.

Objectives: ``"regression"`` (squared error on ratings; predictions clipped to the rating scale),
``"binary"`` (log loss on 0/1 labels; scores are P(label 1)) and ``"lambdarank"`` (LambdaMART grouped by
user, relevance = the rating rounded to an int, gain ``2**rel - 1``; the scores only rank one user's items
and are not ratings).

Train and test features must mean the same thing. A new user at test time reveals only a support set and
is in no item statistic, so each training user gets a *simulated* support/query split of the same
``support_size``, and the item statistics of its rows come from the training ratings of the other
``stat_folds`` user folds (out-of-fold target statistics; leaving out only the row's own rating would leak
the target, since the left-out mean falls as the rating rises). A new item has no statistic, only
attributes and text, so for each fold's users a seeded ``new_item_share`` of the items is hidden from the
statistics: the trees also learn to score items from content alone. At predict, a user's evidence is its
support rows plus, for a known user, its training rows (each row once).
"""

from __future__ import annotations

import logging
import os
from typing import Literal

import lightgbm as lgb
import numpy as np

from pipeline.baselines.base import (
    check_objective,
    check_rows,
    clip_to_scale,
    logit,
    sigmoid,
    unseen_support,
)
from pipeline.evaluation.splits import select_rows, support_mask, user_folds
from pipeline.features.store import FeatureSet

log = logging.getLogger(__name__)

LightGBMObjective = Literal["regression", "binary", "lambdarank"]
NAMES = {"regression": "lightgbm", "lambdarank": "lightgbm_rank", "binary": "lightgbm"}
MAX_RELEVANCE = 30  # LightGBM's default label_gain covers relevances 0..30


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


def hidden_items(n_rows: int, n_items: int, share: float, seed: int) -> np.ndarray:
    """Bool [n_rows, n_items]: which items row g >= 1 of the statistics treats as new (row 0: none)."""
    hide = np.random.default_rng(seed).random((n_rows, n_items)) < share
    hide[0] = False
    return hide


def default_threads() -> int:
    """All cores but one. LightGBM's OpenMP threads spin at barriers: with every core in use and anything
    else running (another stage, the test runner), one fit was measured 5-10x slower on 2 cores."""
    return max(1, (os.cpu_count() or 1) - 1)


class LightGBMModel:
    """LightGBM (regression, binary or lambdarank) on user/item/evidence features; seeded, deterministic."""

    seeded = True

    def __init__(
        self,
        support_size: int,
        seed: int,
        objective: LightGBMObjective = "regression",
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 100,
        text_components: int = 8,
        item_shrinkage: float = 10.0,
        user_shrinkage: float = 5.0,
        stat_folds: int = 5,
        new_item_share: float = 0.2,
        num_threads: int | None = None,
    ) -> None:
        if not 0 <= new_item_share < 1:
            raise ValueError(f"new_item_share must be in [0, 1), got {new_item_share}")
        self.objective = check_objective(objective, tuple(NAMES))
        self.name = NAMES[objective]
        self.predicts_ratings = objective == "regression"
        self.support_size = support_size
        self.seed = seed
        self.text_components = text_components
        self.item_shrinkage = item_shrinkage
        self.user_shrinkage = user_shrinkage
        self.stat_folds = stat_folds
        self.new_item_share = new_item_share
        self.booster = lgb.LGBMModel(
            objective=objective,
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
        self.train: dict[str, np.ndarray] = {}

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
        evidence: dict[str, np.ndarray],
        query: dict[str, np.ndarray],
        stat_row_of_user: np.ndarray,
    ) -> np.ndarray:
        """Feature matrix of the query rows; its last column is the bias estimate (the starting score)."""
        e_user, e_rating = evidence["user_index"], evidence["rating"]
        _, _, e_shrunk = self._item_stats(evidence["item_index"], stat_row_of_user[e_user])
        n = fs.n_users
        count = np.bincount(e_user, minlength=n).astype(np.float64)
        resid_sum = np.bincount(e_user, weights=e_rating - e_shrunk, minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            u_mean = np.bincount(e_user, weights=e_rating, minlength=n) / count
            u_sq = np.bincount(e_user, weights=e_rating**2, minlength=n) / count
            u_resid = resid_sum / count
        u_std = np.sqrt(np.maximum(u_sq - u_mean**2, 0.0))
        u_bias = resid_sum / (count + self.user_shrinkage)
        q_user, q_item = query["user_index"], query["item_index"]
        i_mean, i_count, i_shrunk = self._item_stats(q_item, stat_row_of_user[q_user])
        estimate = i_shrunk + u_bias[q_user]
        if self.objective == "binary":
            estimate = logit(estimate, eps=0.01)
        stats = [i_mean, i_count, i_shrunk, u_mean[q_user], count[q_user], u_resid[q_user], u_std[q_user]]
        return np.column_stack(
            [
                fs.user_cats[q_user],
                fs.item_cats[q_item],
                fs.item_multi[q_item],
                self.text[q_item],
                *stats,
                estimate,
            ]
        ).astype(np.float64)

    def _rows(self, fs: FeatureSet, rows: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
        checked = check_rows(fs, rows, what, self.objective)
        if self.objective == "lambdarank":
            rel = np.rint(checked["rating"])
            bad = (rel < 0) | (rel > MAX_RELEVANCE)
            if bad.any():
                row = int(np.argmax(bad))
                raise ValueError(
                    f"{what}: row {row}, column 'rating' is {checked['rating'][row]}, not a relevance in "
                    f"0..{MAX_RELEVANCE} (objective 'lambdarank')"
                )
        return checked

    def fit(self, fs: FeatureSet, train: dict[str, np.ndarray]) -> None:
        rows = self._rows(fs, train, "train")
        users, items, rating = rows["user_index"], rows["item_index"], rows["rating"]
        self.global_mean = float(rating.mean())
        self.text = text_pca(fs.item_text, self.text_components)
        fold_seed, split_seed, item_seed = (
            int(c.generate_state(1)[0]) for c in np.random.SeedSequence(self.seed).spawn(3)
        )
        folds = user_folds(users, self.stat_folds, fold_seed)
        self.item_sum, self.item_count, stat_row_of_user = out_of_fold_item_totals(
            users, items, rating, fs.n_users, fs.n_items, folds
        )
        hide = hidden_items(len(folds) + 1, fs.n_items, self.new_item_share, item_seed)
        self.item_sum[hide] = self.item_count[hide] = 0.0

        is_support = support_mask(users, self.support_size, split_seed)
        query = select_rows(rows, ~is_support)
        query = select_rows(query, np.argsort(query["user_index"], kind="stable"))
        x = self._features(fs, select_rows(rows, is_support), query, stat_row_of_user)
        target = query["rating"]
        group = None
        if self.objective == "lambdarank":
            target = np.rint(target).astype(np.int64)
            group = np.unique(query["user_index"], return_counts=True)[1]
        self.booster.fit(x, target, init_score=x[:, -1].copy(), group=group)
        self.train = rows
        log.debug("%s: trained on %d simulated query rows x %d features", self.name, *x.shape)

    def predict(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray]
    ) -> np.ndarray:
        if not self.train:
            raise RuntimeError("LightGBMModel.predict called before fit")
        s = self._rows(fs, support, "support")
        q = check_rows(fs, query, "query")
        if q["user_index"].size == 0:
            return np.zeros(0)
        known = np.isin(self.train["user_index"], q["user_index"])
        unseen = unseen_support(fs, self.train, s)
        evidence = {c: np.r_[self.train[c][known], s[c][unseen]] for c in s}
        x = self._features(fs, evidence, q, np.zeros(fs.n_users, dtype=np.int64))
        raw = np.asarray(self.booster.predict(x, raw_score=True), dtype=np.float64) + x[:, -1]
        if self.objective == "regression":
            return clip_to_scale(fs, raw)
        return sigmoid(raw) if self.objective == "binary" else raw
