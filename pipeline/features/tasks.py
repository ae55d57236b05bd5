"""Users and items as dense indices, and each user as a meta-learning task (support set + query set)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd


def sort_ids(ids: Iterable[str]) -> list[str]:
    """Distinct ids in natural order: numeric when every id is digits, else lexical."""
    unique = {str(i) for i in ids}
    if unique and all(i.isdigit() for i in unique):
        return sorted(unique, key=lambda i: (int(i), i))
    return sorted(unique)


def unique_ids(frame: pd.DataFrame, column: str, source: str) -> list[str]:
    """``frame[column]`` in natural order; a null or repeated id is an error naming its row."""
    ids = frame[column]
    null = ids.isna().to_numpy()
    if null.any():
        raise ValueError(f"{source} row {int(np.flatnonzero(null)[0])}: column {column} is null")
    dup = ids.duplicated().to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise ValueError(f"{source} row {row}: column {column} repeats id {ids.iloc[row]!r} (must be unique)")
    return sort_ids(ids.astype(str))


def _positions(values: pd.Series, ids: list[str], column: str, source: str, table: str) -> np.ndarray:
    pos = pd.Index(ids).get_indexer(values.astype("string").fillna("\0"))
    bad = np.flatnonzero(pos < 0)
    if bad.size:
        row = int(bad[0])
        value = values.iloc[row]
        rule = "is null" if pd.isna(value) else f"value {value!r} is not in {table}"
        raise ValueError(f"{source} row {row}: column {column} {rule}")
    return pos.astype(np.int32)


def index_ratings(
    ratings: pd.DataFrame, user_ids: list[str], item_ids: list[str], source: str = "ratings"
) -> dict[str, np.ndarray]:
    """Ratings as ``user_index``/``item_index`` int32, ``rating`` float32, ``timestamp`` int64 (null → 0).

    Rows are ordered by user, then time, then item, whatever order the table had.
    """
    for column in ("user_id", "item_id", "rating"):
        if column not in ratings.columns:
            have = ", ".join(map(str, ratings.columns))
            raise ValueError(f"{source}: missing column {column} (have {have})")
    user_index = _positions(ratings["user_id"], user_ids, "user_id", source, "users")
    item_index = _positions(ratings["item_id"], item_ids, "item_id", source, "items")
    rating = pd.to_numeric(ratings["rating"]).to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(~np.isfinite(rating))
    if bad.size:
        raise ValueError(f"{source} row {int(bad[0])}: column rating is null or not finite")
    if "timestamp" in ratings.columns:
        timestamp = pd.to_numeric(ratings["timestamp"]).astype("Int64").to_numpy(dtype=np.int64, na_value=0)
    else:
        timestamp = np.zeros(len(ratings), dtype=np.int64)
    order = np.lexsort((item_index, timestamp, user_index))
    return {
        "user_index": user_index[order],
        "item_index": item_index[order],
        "rating": rating[order].astype(np.float32),
        "timestamp": timestamp[order],
    }


def split_tasks(user_index: np.ndarray, query_size: int, seed: int) -> np.ndarray:
    """``is_query`` per rating: ``query_size`` random ratings of each user, the rest is the support set.

    A user with at most ``query_size`` ratings gets ``n // 2`` query ratings, so at least one support.
    """
    user_index = np.asarray(user_index, dtype=np.int64)
    n = user_index.size
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.permutation(n), user_index))
    grouped = user_index[order]
    counts = np.bincount(user_index) if n else np.zeros(0, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    rank = np.arange(n) - starts[grouped]
    n_query = np.where(counts > query_size, query_size, counts // 2)
    is_query = np.empty(n, dtype=bool)
    is_query[order] = rank < n_query[grouped]
    return is_query


def make_tasks(ratings: dict[str, np.ndarray], query_size: int, seed: int) -> dict[str, np.ndarray]:
    """The per-user task table: the indexed ratings' rows with ``is_query``."""
    return {
        "user_index": ratings["user_index"],
        "item_index": ratings["item_index"],
        "rating": ratings["rating"],
        "is_query": split_tasks(ratings["user_index"], query_size, seed),
    }
