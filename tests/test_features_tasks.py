"""Id indexing and the seeded per-user support/query split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.features.tasks import index_ratings, sort_ids, split_tasks, unique_ids


def test_ids_sorted_naturally() -> None:
    assert sort_ids(["10", "9", "100", "9"]) == ["9", "10", "100"]
    assert sort_ids(["u10", "u9", "7"]) == ["7", "u10", "u9"]


def test_index_ratings_orders_and_types() -> None:
    ratings = pd.DataFrame(
        {
            "user_id": pd.array(["10", "9", "10", "9"], dtype="str"),
            "item_id": pd.array(["b", "a", "a", "b"], dtype="str"),
            "rating": [4.0, 3.5, 1.0, 5.0],
            "timestamp": pd.array([20, None, 5, 7], dtype="Int64"),
        }
    )
    out = index_ratings(ratings, ["9", "10"], ["a", "b"])
    # user "9" (index 0): null time → 0 first, then t=7; user "10": t=5 then t=20
    assert out["user_index"].tolist() == [0, 0, 1, 1]
    assert out["item_index"].tolist() == [0, 1, 0, 1]
    assert out["rating"].tolist() == [3.5, 5.0, 1.0, 4.0]
    assert out["timestamp"].tolist() == [0, 7, 5, 20]
    assert [out[k].dtype for k in ("user_index", "item_index", "rating", "timestamp")] == [
        np.int32,
        np.int32,
        np.float32,
        np.int64,
    ]


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("item_id", "zz", r"ratings row 1: column item_id value 'zz' is not in items"),
        ("user_id", None, r"ratings row 1: column user_id is null"),
        ("rating", None, r"ratings row 1: column rating is null"),
    ],
)
def test_bad_ratings_name_row_and_column(column: str, value: object, message: str) -> None:
    ratings = pd.DataFrame({"user_id": ["1", "1"], "item_id": ["a", "a"], "rating": [1.0, 2.0]})
    ratings[column] = ratings[column].astype(object)
    ratings.loc[1, column] = value
    with pytest.raises(ValueError, match=message):
        index_ratings(ratings, ["1"], ["a"])


def test_duplicate_ids_are_named() -> None:
    with pytest.raises(ValueError, match=r"users row 2: column user_id repeats id '1'"):
        unique_ids(pd.DataFrame({"user_id": ["1", "2", "1"]}), "user_id", "users")


def _user_index(counts: list[int], seed: int = 0) -> np.ndarray:
    users = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(users)


def test_split_sizes_and_partition() -> None:
    counts = [30, 11, 10, 7, 2, 1]
    user_index = _user_index(counts)
    is_query = split_tasks(user_index, query_size=10, seed=42)
    n_query = np.bincount(user_index, weights=is_query).astype(int)
    n_support = np.bincount(user_index, weights=~is_query).astype(int)
    # more than query_size → exactly query_size; otherwise half/half with at least one support rating
    assert n_query.tolist() == [10, 10, 5, 3, 1, 0]
    assert n_support.tolist() == [20, 1, 5, 4, 1, 1]
    assert (n_query + n_support).tolist() == counts


def test_split_is_seeded() -> None:
    user_index = _user_index([40] * 20)
    a = split_tasks(user_index, 10, seed=1)
    np.testing.assert_array_equal(a, split_tasks(user_index, 10, seed=1))
    assert not np.array_equal(a, split_tasks(user_index, 10, seed=2))


def test_split_of_no_ratings() -> None:
    assert split_tasks(np.zeros(0, dtype=np.int32), 10, seed=0).shape == (0,)
