"""Cornac's biased matrix factorisation (``cornac.models.MF``, SGD) retrained at predict on the training
rows plus every support row given: the transductive "just retrain" reference, a peer implementation no
one here wrote.

It is NOT a per-request model: one predict call retrains on the support sets of all the users in that
call at once, so each user's scores also draw on the other users' supports (the evaluation makes one
call per scenario group, split into chunks of users when the candidate rows are many:
``pipeline.evaluation.scenarios.predict_by_user``). Report it in its own column.

``fit`` only keeps the training rows. ``predict`` drops the support rows that repeat a training row, and
trains Cornac's ``MF`` (``k`` factors, ``max_iter`` epochs, ``learning_rate``, ``lambda_reg``, ``use_bias``,
``seed``; one thread, as Cornac runs whenever a seed is given) on the rest plus the training rows, sorted
by (user, item) and then shuffled once by ``numpy.random.default_rng(seed)``: Cornac's SGD visits the rows
in the given order every epoch. Models are cached by a hash of those support rows (the newest
``cache_size``), so the predict calls that give the same support (scenarios of one support group, the
support-size curve) train once. Our indices are Cornac's raw ids (``Dataset.build``); its ``uid_map``
and ``iid_map`` map them back.

A query (u, i) scores ``μ + b_u + b_i + p_u·q_i`` with μ the mean of the rows trained on. Cornac's
``score`` gives a user it never saw ``μ + b_i``; for an item it never saw it raises, and its ``rate``
falls back to μ: here such an item scores ``μ + b_u`` (the user's known bias), as in the other bias
models. Regression scores are clipped to the rating scale; objective "binary" treats the 0/1 labels as
ratings (a linear probability model): scores clipped to [0, 1] that only rank (``predicts_ratings``
False).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from cornac.data import Dataset
from cornac.models import MF

from pipeline.baselines.base import Objective, check_objective, check_rows, clip_to_scale, unseen_support
from pipeline.features.store import FeatureSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retrained:
    """One trained Cornac MF in our index space: ``[b, factors]`` per user and item (zeros for one it
    never saw) and the global mean μ."""

    mean: float
    user_terms: np.ndarray
    item_terms: np.ndarray


def support_key(support: dict[str, np.ndarray]) -> str:
    """sha256 of the support rows, independent of their order."""
    order = np.lexsort((support["item_index"], support["user_index"]))
    digest = hashlib.sha256()
    for c in ("user_index", "item_index", "rating"):
        digest.update(np.ascontiguousarray(support[c][order]).tobytes())
    return digest.hexdigest()


def to_index_space(raw_to_inner: dict[int, int], bias: np.ndarray, factors: np.ndarray, n: int) -> np.ndarray:
    """``(n, 1 + k)`` rows ``[bias, factors]`` by our index, from Cornac's inner-index arrays; zero rows for
    indices Cornac never saw."""
    out = np.zeros((n, 1 + factors.shape[1]))
    raw = np.fromiter(raw_to_inner.keys(), dtype=np.int64, count=len(raw_to_inner))
    inner = np.fromiter(raw_to_inner.values(), dtype=np.int64, count=len(raw_to_inner))
    out[raw, 0] = bias[inner]
    out[raw, 1:] = factors[inner]
    return out


class CornacRetrain:
    """Cornac's MF retrained with every query user's support rows (transductive; module docstring)."""

    name = "cornac_retrain"
    seeded = True

    def __init__(
        self,
        objective: Objective = "regression",
        k: int = 16,
        max_iter: int = 40,
        learning_rate: float = 0.01,
        lambda_reg: float = 0.05,
        use_bias: bool = True,
        seed: int = 0,
        cache_size: int = 8,
    ) -> None:
        if k < 1 or max_iter < 1 or learning_rate <= 0 or lambda_reg < 0 or cache_size < 1:
            raise ValueError("k, max_iter and cache_size must be >= 1, learning_rate > 0, lambda_reg >= 0")
        self.objective = check_objective(objective)
        self.predicts_ratings = objective == "regression"
        self.k = k
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.lambda_reg = lambda_reg
        self.use_bias = use_bias
        self.seed = seed
        self.cache_size = cache_size
        self.train: dict[str, np.ndarray] = {}
        self.cache: OrderedDict[str, Retrained] = OrderedDict()

    def fit(self, fs: FeatureSet, train: dict[str, np.ndarray]) -> None:
        self.train = check_rows(fs, train, "train", self.objective)
        self.cache.clear()

    def retrain(self, fs: FeatureSet, support: dict[str, np.ndarray]) -> Retrained:
        """The model trained on the training rows plus ``support``'s new rows (cached; module docstring)."""
        if not self.train:
            raise RuntimeError("CornacRetrain used before fit")
        s = check_rows(fs, support, "support", self.objective)
        s = {c: v[unseen_support(fs, self.train, s)] for c, v in s.items()}
        key = support_key(s)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        rows = {c: np.r_[self.train[c], s[c]] for c in self.train}
        order = np.lexsort((rows["item_index"], rows["user_index"]))
        order = order[np.random.default_rng(self.seed).permutation(order.size)]
        start = time.perf_counter()
        data = Dataset.build(
            list(
                zip(*(rows[c][order].tolist() for c in ("user_index", "item_index", "rating")), strict=True)
            ),
            seed=self.seed,
        )
        mf = MF(
            k=self.k,
            max_iter=self.max_iter,
            learning_rate=self.learning_rate,
            lambda_reg=self.lambda_reg,
            use_bias=self.use_bias,
            seed=self.seed,
        ).fit(data)
        model = Retrained(
            mean=float(mf.global_mean),
            user_terms=to_index_space(data.uid_map, mf.u_biases, mf.u_factors, fs.n_users),
            item_terms=to_index_space(data.iid_map, mf.i_biases, mf.i_factors, fs.n_items),
        )
        log.debug(
            "cornac_retrain: %d rows (%d support) in %.1f s",
            order.size,
            s["rating"].size,
            time.perf_counter() - start,
        )
        self.cache[key] = model
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return model

    def predict(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray]
    ) -> np.ndarray:
        model = self.retrain(fs, support)
        q = check_rows(fs, query, "query")
        pu, qi = model.user_terms[q["user_index"]], model.item_terms[q["item_index"]]
        z = model.mean + pu[:, 0] + qi[:, 0] + np.einsum("nk,nk->n", pu[:, 1:], qi[:, 1:])
        return clip_to_scale(fs, z) if self.objective == "regression" else np.clip(z, 0.0, 1.0)
