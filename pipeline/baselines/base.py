"""The one interface every cold-start model is evaluated through, and helpers the models share."""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import numpy as np

from pipeline.features.store import FeatureSet

Objective = Literal["regression", "binary"]
OBJECTIVES: tuple[str, ...] = ("regression", "binary")
QUERY_COLUMNS = ("user_index", "item_index")
RATING_COLUMNS = ("user_index", "item_index", "rating")


@runtime_checkable
class ColdStartModel(Protocol):
    """A recommender that learns from training ratings and scores query rows given the users' support sets.

    ``fit`` gets the training rating rows (``user_index``, ``item_index``, ``rating`` [, ``timestamp``]): the
    ONLY ratings the model may learn from. Items absent from them are new items, scored from item
    attributes and text where the model can; users present in them are known users, whose training
    ratings the model may keep using (support rows that repeat training rows add nothing). ``predict``
    gets the rows (``user_index``, ``item_index``, ``rating``) the query users reveal at test time
    (possibly none for a user: zero-shot) and the query rows (``user_index``, ``item_index``) to score,
    and returns one score per query row, aligned with them.

    ``predicts_ratings`` is True when the scores estimate the ``rating`` column on its own scale, so MAE
    and RMSE apply; False for ranking scores and for probabilities of 0/1 labels.

    ``seeded`` (a class attribute) is True when ``fit`` draws random numbers from the seed the model was
    built with (initialisation, sampling, shuffling), so its scores vary with the seed: the evaluation
    fits it ``eval.seeds`` times per fold and averages; a deterministic fit (False) runs once per fold.
    """

    name: str
    predicts_ratings: bool
    seeded: bool

    def fit(self, fs: FeatureSet, train: dict[str, np.ndarray]) -> None: ...

    def predict(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray]
    ) -> np.ndarray: ...


@runtime_checkable
class Ranker(Protocol):
    """A model with a ranking head apart from its rating scores: when ``ranks`` is True, top-k ranks the
    candidates by :meth:`rank` (higher first; arguments as ``predict``), and MAE and nDCG of the query rows
    use ``predict``."""

    ranks: bool

    def rank(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray]
    ) -> np.ndarray: ...


def check_objective(objective: str, allowed: tuple[str, ...] = OBJECTIVES) -> str:
    """``objective`` if it is one of ``allowed``, else a ValueError naming the choices."""
    if objective not in allowed:
        raise ValueError(f"objective must be one of {list(allowed)}, got {objective!r}")
    return objective


def check_rows(
    fs: FeatureSet,
    rows: dict[str, np.ndarray],
    what: str,
    objective: str | None = None,
) -> dict[str, np.ndarray]:
    """The columns of ``rows`` (``what``: "train", "support" or "query") as int64 indices and float64 ratings.

    A query needs ``user_index`` and ``item_index``; train and support also ``rating`` (pass their
    ``objective``: "binary" ratings must be 0/1 labels). ``{}`` is an empty support set. Raises a
    ValueError naming the row, column and rule broken; train must hold at least one row.
    """
    columns = QUERY_COLUMNS if what == "query" else RATING_COLUMNS
    if what == "support" and not rows:
        rows = {c: np.zeros(0) for c in columns}
    missing = [c for c in columns if c not in rows]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; expected {list(columns)}")
    arrays = {c: np.asarray(rows[c]).ravel() for c in columns}
    n = arrays["user_index"].size
    for c, col in arrays.items():
        if col.size != n:
            raise ValueError(f"{what}: column '{c}' has {col.size} rows, 'user_index' has {n}")
    if what == "train" and n == 0:
        raise ValueError("train: no rating rows to learn from")
    out: dict[str, np.ndarray] = {}
    for c, size in (("user_index", fs.n_users), ("item_index", fs.n_items)):
        col = arrays[c]
        bad = (col < 0) | (col >= size) | (col != np.floor(col))
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(
                f"{what}: row {row}, column '{c}' is {col[row]}, not an index of the feature set's "
                f"{size} {c.split('_')[0]}s [0, {size})"
            )
        out[c] = col.astype(np.int64)
    if "rating" in columns:
        rating = arrays["rating"].astype(np.float64)
        bad = ~np.isfinite(rating)
        if objective == "binary":
            bad |= (rating != 0) & (rating != 1)
        if bad.any():
            row = int(np.argmax(bad))
            rule = "a 0/1 label (objective 'binary')" if objective == "binary" else "a finite number"
            raise ValueError(f"{what}: row {row}, column 'rating' is {rating[row]}, not {rule}")
        out["rating"] = rating
    return out


def unseen_support(
    fs: FeatureSet, train: dict[str, np.ndarray], support: dict[str, np.ndarray]
) -> np.ndarray:
    """Mask of the support rows whose (user, item) is not already a training row.

    The evaluation may pass a known user's training rows as its support set (what a meta-learner adapts
    from); a model that remembers its training rows must not count them twice.
    """
    train_keys = train["user_index"] * fs.n_items + train["item_index"]
    return ~np.isin(support["user_index"] * fs.n_items + support["item_index"], train_keys)


def rating_scale(fs: FeatureSet) -> tuple[float, float]:
    """``(rating_min, rating_max)`` from the feature set's vocab.json."""
    try:
        return float(fs.vocab["rating_min"]), float(fs.vocab["rating_max"])
    except KeyError as exc:
        raise ValueError(f"vocab.json: missing key {exc.args[0]!r} (the rating scale)") from None


def clip_to_scale(fs: FeatureSet, pred: np.ndarray) -> np.ndarray:
    """Predictions clipped to the rating scale, as float64."""
    lo, hi = rating_scale(fs)
    return np.clip(np.asarray(pred, dtype=np.float64), lo, hi)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow warnings for large ``|z|``."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(z, dtype=np.float64)))


def logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """log(p / (1 - p)), with ``p`` clipped to ``[eps, 1 - eps]``."""
    q = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(q) - np.log1p(-q)
