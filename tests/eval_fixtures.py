"""Feature sets built by hand for the evaluation and baseline tests: a planted synthetic one and
MovieLens-100k read straight from the RecBole files (random item text vectors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.features.store import FeatureSet


def _vocab(
    n_users: int, n_items: int, user_fields: dict[str, int], item_fields: dict[str, int], n_multi: int
) -> dict:
    return {
        "user_ids": [str(u + 1) for u in range(n_users)],
        "item_ids": [str(i + 1) for i in range(n_items)],
        "user_fields": list(user_fields),
        "item_fields": list(item_fields),
        "user_vocab": {f: [f"{f}{k}" for k in range(1, c)] for f, c in user_fields.items()},
        "item_vocab": {f: [f"{f}{k}" for k in range(1, c)] for f, c in item_fields.items()},
        "multi_vocab": [f"g{g}" for g in range(n_multi)],
        "text_model": "random",
        "rating_min": 1.0,
        "rating_max": 5.0,
    }


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted_feature_set(
    n_users: int = 60,
    n_items: int = 40,
    per_user: tuple[int, int] = (8, 30),
    seed: int = 0,
    noise: float = 0.3,
    text_dim: int = 16,
) -> tuple[FeatureSet, dict[str, np.ndarray]]:
    """Ratings ``3.5 + bu + bi + noise`` on 1..5, bi partly explained by genres; returns (fs, planted)."""
    rng = np.random.default_rng(seed)
    genres = (rng.random((n_items, 4)) < 0.3).astype(np.float32)
    item_bias = genres @ np.array([0.6, -0.6, 0.3, 0.0]) + rng.normal(0, 0.3, n_items)
    user_bias = rng.normal(0, 0.5, n_users)
    users, items = [], []
    for u in range(n_users):
        n = int(rng.integers(per_user[0], per_user[1] + 1))
        users.append(np.full(n, u))
        items.append(rng.choice(n_items, size=n, replace=False))
    u_idx = np.concatenate(users).astype(np.int32)
    i_idx = np.concatenate(items).astype(np.int32)
    raw = 3.5 + user_bias[u_idx] + item_bias[i_idx] + rng.normal(0, noise, u_idx.size)
    ratings = {
        "user_index": u_idx,
        "item_index": i_idx,
        "rating": np.clip(raw, 1.0, 5.0).astype(np.float32),
        "timestamp": np.arange(u_idx.size, dtype=np.int64),
    }
    fs = FeatureSet(
        user_cats=np.stack([rng.integers(1, 3, n_users), rng.integers(1, 5, n_users)], axis=1),
        item_cats=rng.integers(1, 4, (n_items, 1)),
        item_multi=genres,
        item_text=_unit_rows(rng, n_items, text_dim),
        vocab=_vocab(n_users, n_items, {"gender": 3, "age": 5}, {"decade": 4}, 4),
        ratings=ratings,
    )
    return fs, {"user_bias": user_bias, "item_bias": item_bias}


def movielens_feature_set(mirror: Path, text_dim: int = 384, seed: int = 0) -> FeatureSet:
    """MovieLens-100k as a FeatureSet: user age bucket, gender, occupation, zip region; decade; genres."""
    folder = Path(mirror) / "ml-100k"
    inter = pd.read_csv(folder / "ml-100k.inter", sep="\t")
    users = pd.read_csv(folder / "ml-100k.user", sep="\t", dtype=str)
    items = pd.read_csv(folder / "ml-100k.item", sep="\t", dtype=str, keep_default_na=False)
    inter.columns = [c.split(":")[0] for c in inter.columns]
    users.columns = [c.split(":")[0] for c in users.columns]
    items.columns = [c.split(":")[0] for c in items.columns]
    users = users.sort_values("user_id", key=lambda s: s.astype(int)).reset_index(drop=True)
    items = items.sort_values("item_id", key=lambda s: s.astype(int)).reset_index(drop=True)
    user_pos = {u: k for k, u in enumerate(users["user_id"])}
    item_pos = {i: k for k, i in enumerate(items["item_id"])}

    def codes(values: pd.Series) -> tuple[np.ndarray, list[str]]:
        """Codes 1..n for the known values, 0 for a missing one ("")."""
        vocab = sorted(set(values) - {""})
        lookup = {v: k + 1 for k, v in enumerate(vocab)} | {"": 0}
        return np.array([lookup[v] for v in values], dtype=np.int64), vocab

    age = (users["age"].astype(int) // 10).astype(str)
    fields_u = {
        "age": age,
        "gender": users["gender"],
        "occupation": users["occupation"],
        "zip": users["zip_code"].str[0],
    }
    year = pd.to_numeric(items["release_year"], errors="coerce")
    decade = year.map(lambda y: "" if pd.isna(y) else str(int(y) // 10 * 10))
    user_cols, user_vocab = zip(*(codes(v) for v in fields_u.values()), strict=True)
    item_codes, item_voc = codes(decade)
    genre_lists = items["class"].str.split(" ")
    genre_vocab = sorted({g for gs in genre_lists for g in gs if g})
    multi = np.zeros((len(items), len(genre_vocab)), dtype=np.float32)
    for row, gs in enumerate(genre_lists):
        for g in gs:
            if g:
                multi[row, genre_vocab.index(g)] = 1.0
    rng = np.random.default_rng(seed)
    return FeatureSet(
        user_cats=np.stack(user_cols, axis=1),
        item_cats=item_codes[:, None],
        item_multi=multi,
        item_text=_unit_rows(rng, len(items), text_dim),
        vocab={
            "user_ids": list(users["user_id"]),
            "item_ids": list(items["item_id"]),
            "user_fields": list(fields_u),
            "item_fields": ["decade"],
            "user_vocab": dict(zip(fields_u, user_vocab, strict=True)),
            "item_vocab": {"decade": item_voc},
            "multi_vocab": genre_vocab,
            "text_model": "random",
            "rating_min": 1.0,
            "rating_max": 5.0,
        },
        ratings={
            "user_index": inter["user_id"].astype(str).map(user_pos).to_numpy(np.int32),
            "item_index": inter["item_id"].astype(str).map(item_pos).to_numpy(np.int32),
            "rating": inter["rating"].to_numpy(np.float32),
            "timestamp": inter["timestamp"].to_numpy(np.int64),
        },
    )


def movielens_item_year(mirror: Path) -> np.ndarray:
    """MovieLens-100k release years in :func:`movielens_feature_set`'s item order (NaN where unknown)."""
    items = pd.read_csv(Path(mirror) / "ml-100k" / "ml-100k.item", sep="\t", dtype=str, keep_default_na=False)
    items.columns = [c.split(":")[0] for c in items.columns]
    items = items.sort_values("item_id", key=lambda s: s.astype(int)).reset_index(drop=True)
    return pd.to_numeric(items["release_year"], errors="coerce").to_numpy(np.float64)
